"""Runtime Classifier: tokenizer parity with transformers, predictions, variants, bad bundles, no torch."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import import_blocker

from sst2dist.runtime import (
    VARIANT_FILES,
    BundleError,
    Classifier,
    clean_text,
    load_classifier,
    recorded_sha256,
)
from sst2dist.variant_choice import candidates

EDGE_TEXTS = [
    "",
    "I loved it 😍🍿🎬 — best film of 2024 👍🏽",
    "这部电影非常好看，演员的表演很出色。",
    "映画はとても面白かったです",
    "Café crème, naïve façade, Ångström, São Paulo, résumé",
    "   leading and trailing   spaces \t tabs\nnewline  ",
    "ALL CAPS and MiXeD CaSe !!! ??? ...",
    "wow " * 1250,  # 5,000 characters, far over 512 tokens
    "unbelievablyyyyyy supercalifragilisticexpialidocious",
]


def transformers_encoding(model_dir: Path, texts: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return dict(tokenizer(texts, padding=True, truncation=True, return_tensors="np"))


def assert_same_encoding(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert set(ours) == {"input_ids", "attention_mask", "token_type_ids"}
    for name, array in ours.items():
        assert array.dtype == np.int64
        np.testing.assert_array_equal(array, theirs[name], err_msg=name)


def test_tokenizer_parity_on_edge_cases(tiny_bundle_dir: Path, tiny_model_dir: Path) -> None:
    classifier = Classifier(tiny_bundle_dir)
    ours = classifier.encode(EDGE_TEXTS)
    assert_same_encoding(ours, transformers_encoding(tiny_model_dir, EDGE_TEXTS))
    assert classifier.max_length == 512  # MiniLM's tokenizer_config model_max_length, not tokenizer.json's 128
    assert ours["input_ids"].shape == (len(EDGE_TEXTS), 512)


@pytest.mark.slow
def test_tokenizer_parity_on_validation_sentences(tiny_bundle_dir: Path, tiny_model_dir: Path, sst2_dir: Path) -> None:
    with open(sst2_dir / "dev.tsv", encoding="utf-8") as file:
        sentences = [row["sentence"] for row in csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)]
    assert len(sentences) == 872
    classifier = Classifier(tiny_bundle_dir)
    for start in range(0, len(sentences), 64):  # padded batches, as served
        batch = sentences[start : start + 64]
        assert_same_encoding(classifier.encode(batch), transformers_encoding(tiny_model_dir, batch))


def test_token_counts_and_truncate_false(tiny_bundle_dir: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    classifier = Classifier(tiny_bundle_dir)
    expected = [len(tokenizer(text)["input_ids"]) for text in EDGE_TEXTS]
    assert classifier.token_counts(EDGE_TEXTS) == expected
    assert expected[0] == 2 and expected[7] > 1000
    with pytest.raises(ValueError, match="text 7 has .* tokens, over .* 512"):
        classifier.encode(EDGE_TEXTS, truncate=False)
    short = classifier.encode(EDGE_TEXTS[:3], truncate=False)
    np.testing.assert_array_equal(short["input_ids"], classifier.encode(EDGE_TEXTS[:3])["input_ids"])


def test_predict_shapes_labels_and_batching(tiny_bundle_dir: Path) -> None:
    classifier = Classifier(tiny_bundle_dir, threads=1)
    assert classifier.choice.reason == "recorded"  # the fastest gated variant by the export's timings
    assert classifier.variant in candidates(classifier.manifest)
    assert classifier.labels == ["negative", "positive"]
    texts = ["a gripping, funny film", "dull and lifeless", *EDGE_TEXTS]
    probabilities = classifier.predict_proba(texts, batch_size=4)
    assert probabilities.shape == (len(texts), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    predictions = classifier.predict(texts, batch_size=4)
    assert [p["label"] for p in predictions] == [classifier.labels[i] for i in probabilities.argmax(1)]
    assert [p["score"] for p in predictions] == pytest.approx(probabilities.max(1).tolist())
    one_by_one = classifier.logits(texts, batch_size=1)
    np.testing.assert_allclose(one_by_one, classifier.logits(texts, batch_size=32), atol=1e-3)
    assert classifier.predict([]) == [] and classifier.predict_proba([]).shape == (0, 2)
    with pytest.raises(ValueError, match="list of strings"):
        classifier.predict("not a list")


def test_every_variant_loads_and_agrees(tiny_bundle_dir: Path) -> None:
    texts = ["a gripping, funny film", "dull and lifeless", "it is a movie"]
    fp32 = Classifier(tiny_bundle_dir, variant="fp32").logits(texts)
    for variant in ("optimized", "int8"):
        classifier = Classifier(tiny_bundle_dir, variant=variant)
        assert classifier.variant == variant
        np.testing.assert_allclose(classifier.logits(texts), fp32, atol=0.05)


def test_bad_bundles_and_variants(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="unknown variant 'fp16'"):
        Classifier(tiny_bundle_dir, variant="fp16")
    with pytest.raises(BundleError, match="'static-int8' is not in"):
        Classifier(tiny_bundle_dir, variant="static-int8")
    with pytest.raises(BundleError, match="does not exist"):
        Classifier(tmp_path / "missing")
    with pytest.raises(BundleError, match="no manifest.json"):
        Classifier(tmp_path)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        Classifier(tiny_bundle_dir, threads=0)


def test_default_skips_a_variant_that_failed_the_gate(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["variants"]["int8"]["passed"] = False
    manifest["variant_timings"]["machine"] = {"busy": False}  # recorded on a quiet machine
    for by_variant in manifest["variant_timings"]["ms_per_sentence"].values():  # int8 would be by far the fastest
        by_variant.update({"int8": 0.01, "optimized": 1.0, "fp32": 2.0})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert Classifier(bundle).variant == "optimized"
    with pytest.warns(UserWarning, match="failed the export verification gate"):
        Classifier(bundle, variant="int8")
    (bundle / VARIANT_FILES["optimized"]).unlink()
    with pytest.raises(BundleError, match="'optimized' is not in"):
        Classifier(bundle)


BLOCK_TORCH = import_blocker("torch", "transformers", "optimum")


def test_runtime_runs_without_torch(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    script = textwrap.dedent(
        f"""
        import sys
        try:
            import torch
        except ImportError:
            pass
        else:
            sys.exit("the torch blocker did not work")
        from sst2dist.runtime import Classifier
        print(Classifier({str(tiny_bundle_dir)!r}).predict(["a fine film"]))
        assert not any(m.split(".")[0] in ("torch", "transformers", "optimum") for m in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "'label':" in result.stdout


class Recording(Classifier):
    """The real classifier, noting the padded width of every batch it runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.widths: list[int] = []

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        self.widths.append(encoded["input_ids"].shape[1])
        return super().run(encoded)


def test_batches_run_sorted_by_length_and_answer_in_the_callers_order(tiny_bundle_dir: Path) -> None:
    classifier = Recording(tiny_bundle_dir, variant="optimized", threads=1)  # scores independent of batch mates
    short, long = (
        ["fine", "dull", "a film", "ok"],
        ["a long, winding and ultimately rewarding film " * k for k in (3, 4)],
    )
    texts = [long[0], short[0], short[1], long[1], short[2], short[3], "a mid-length sentence about it"]
    alone = np.concatenate([classifier.logits([text]) for text in texts])
    classifier.widths.clear()
    batched = classifier.logits(texts, batch_size=2)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    counts = sorted(classifier.token_counts(texts))
    assert classifier.widths == [max(counts[i : i + 2]) for i in range(0, len(texts), 2)], "batches were not by length"
    assert [p["label"] for p in classifier.predict(texts, batch_size=3)] == [
        classifier.labels[i] for i in alone.argmax(1)
    ]
    one_batch = Recording(tiny_bundle_dir, variant="optimized", threads=1)
    np.testing.assert_allclose(one_batch.logits(texts, batch_size=len(texts)), alone, atol=1e-5)
    assert len(one_batch.widths) == 1
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        classifier.logits(texts, batch_size=0)


def test_load_classifier_picks_the_batch_invariant_variant_and_names_bad_bundles(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    default = load_classifier(tiny_bundle_dir)
    assert default.variant in ("optimized", "fp32")  # int8 passed too, but its scores move with batch mates
    assert load_classifier(tiny_bundle_dir, "int8").variant == "int8"
    with pytest.raises(BundleError, match="does not exist"):
        load_classifier(tmp_path / "missing")
    with pytest.raises(BundleError, match="threads must be >= 1"):
        load_classifier(tiny_bundle_dir, threads=0)
    corrupt = Path(shutil.copytree(tiny_bundle_dir, tmp_path / "corrupt"))
    (corrupt / VARIANT_FILES[default.variant]).write_bytes(b"not an onnx model")
    with pytest.raises(BundleError, match="is corrupt: its sha256 is"):
        load_classifier(corrupt)
    without_hashes(corrupt)  # a bundle from before the hashes: onnxruntime is what notices
    with pytest.raises(BundleError, match="looks corrupt; export it again"):
        load_classifier(corrupt)


# --- integrity: the manifest's sha256 of every file a Classifier loads ----------------------------------


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # ASCII stays ASCII: tokenizer.json may still parse, with one vocabulary entry changed
    path.write_bytes(bytes(data))


def without_hashes(bundle: Path) -> dict:
    """Rewrite the manifest as bundles exported before support-file and variant hashes were checked."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("files", None)
    for entry in manifest["variants"].values():
        entry.pop("sha256", None)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize("name", [VARIANT_FILES["optimized"], "tokenizer.json", "config.json"])
def test_a_flipped_byte_is_refused_naming_the_file_and_the_manifests_hash(
    tiny_bundle_dir: Path, tmp_path: Path, name: str
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))
    recorded = json.loads((bundle / "manifest.json").read_text())
    expected = recorded_sha256(recorded, name)
    assert expected, f"the export recorded no sha256 for {name}"
    flip_one_byte(bundle / name)
    for load in (lambda: Classifier(bundle, variant="optimized"), lambda: load_classifier(bundle, "optimized")):
        with pytest.raises(BundleError) as caught:
            load()
        message = str(caught.value)
        assert str(bundle / name) in message and expected in message, message
        assert "export the bundle again" in message


def test_only_the_files_loaded_are_checked(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))
    flip_one_byte(bundle / VARIANT_FILES["int8"])
    assert Classifier(bundle, variant="optimized").predict(["fine"])[0]["label"] in ("negative", "positive")
    with pytest.raises(BundleError, match="model_quantized.onnx is corrupt"):
        Classifier(bundle, variant="int8")


def test_a_manifest_without_hashes_is_accepted_silently(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))
    without_hashes(bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reference = Classifier(tiny_bundle_dir, variant="optimized").logits(["a fine film"])
        np.testing.assert_array_equal(Classifier(bundle, variant="optimized").logits(["a fine film"]), reference)


def test_clean_text_replaces_only_lone_surrogates() -> None:
    assert clean_text("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert clean_text("pair \U0001f600, café") == "pair \U0001f600, café"


# --- what is hashed is what is loaded: a bundle replaced mid-load never gives a mixed classifier ----------------


def with_other_tokenizer(bundle: Path, folder: Path) -> Path:
    """`bundle` re-exported with a different tokenizer (two vocabulary ids swapped) and the same model files, its
    manifest recording the new tokenizer's hash: what an `export-onnx --force` of another model can leave."""
    other = Path(shutil.copytree(bundle, folder))
    tokenizer = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    vocab["film"], vocab["the"] = vocab["the"], vocab["film"]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"]["sha256"] = hashlib.sha256((other / "tokenizer.json").read_bytes()).hexdigest()
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


class SwapOnOpen:
    """At the `at`-th file opened under `bundle`, replace the bundle folder by `other` with `replace_dir`'s two
    renames: an export landing while a Classifier loads. A real audit hook on Python's `open`, not a mock."""

    installed: SwapOnOpen | None = None
    hooked = False

    def __init__(self, bundle: Path, other: Path, at: int):
        self.bundle, self.other, self.at, self.opened = bundle, other, at, 0
        if not SwapOnOpen.hooked:  # hooks cannot be removed: one for the session, pointed at the current swap
            sys.addaudithook(SwapOnOpen.hook)
            SwapOnOpen.hooked = True
        SwapOnOpen.installed = self

    @staticmethod
    def hook(event: str, args: tuple) -> None:
        swap = SwapOnOpen.installed
        if swap is None or event != "open" or not str(args[0]).startswith(str(swap.bundle)):
            return
        swap.opened += 1
        if swap.opened == swap.at:
            SwapOnOpen.installed = None
            swap.bundle.rename(swap.bundle.with_name("old"))
            swap.other.rename(swap.bundle)


def test_a_bundle_replaced_while_loading_never_mixes_tokenizer_and_model(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """Whichever file the swap lands before, the classifier's tokenizer is the one its manifest records (the model
    files are the same in both exports), or the load is refused."""
    for at in range(1, 8):
        case = tmp_path / str(at)
        bundle = Path(shutil.copytree(tiny_bundle_dir, case / "bundle"))
        other = with_other_tokenizer(bundle, case / "other")
        encoding = {  # the ids of "the film" under each export's tokenizer, by the tokenizer hash its manifest records
            recorded_sha256(json.loads((folder / "manifest.json").read_text()), "tokenizer.json"): Classifier(
                folder, variant="fp32"
            )
            .encode(["the film"])["input_ids"]
            .tolist()
            for folder in (bundle, other)
        }
        SwapOnOpen(bundle, other, at)
        try:
            classifier = Classifier(bundle, variant="fp32")
        except BundleError as err:
            assert "export the bundle again" in str(err)
            continue
        finally:
            SwapOnOpen.installed = None
        loaded = classifier.encode(["the film"])["input_ids"].tolist()
        assert loaded == encoding[recorded_sha256(classifier.manifest, "tokenizer.json")], f"mixed at open {at}"


# --- one notion of usable CPUs: the process's affinity mask, not the machine's cores ---------------------------

THREAD_PROBE = """
import json, os, sys
from sst2dist.runtime import Classifier
from sst2dist.serve.limits import default_threads, default_workers
from sst2dist.bench.settings import BenchError, check_counts

tasks = lambda: len(os.listdir("/proc/self/task"))
threads = int(sys.argv[2]) if len(sys.argv) > 2 else None
before = tasks()
classifier = Classifier(sys.argv[1], variant="fp32", threads=threads)
loaded = tasks()
classifier.encode(["a gripping, funny film about very little"] * 4000)
try:
    check_counts([2], [1], None, None, 0)
    refused = None
except BenchError as err:
    refused = str(err)
workers = default_workers()
print(json.dumps({"session": loaded - before, "tokenizer": tasks() - loaded, "workers": workers,
                  "threads": default_threads(workers), "refused": refused}))
"""


def thread_probe(bundle: Path, *args: str, cpus: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    command = [sys.executable, "-c", THREAD_PROBE, str(bundle), *args]
    done = subprocess.run(
        ["taskset", "-c", cpus, *command] if cpus else command, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin one")
def test_defaults_and_thread_pools_follow_the_cpus_this_process_may_use(tiny_bundle_dir: Path) -> None:
    pinned = thread_probe(tiny_bundle_dir, cpus="0")  # `taskset -c 0`: one usable CPU on a bigger machine
    assert pinned["workers"] == 1 and pinned["threads"] == 1
    assert pinned["session"] == 0, "an onnxruntime session without threads started a pool past the usable CPU"
    assert pinned["tokenizer"] <= 1
    assert pinned["refused"] and "--threads 2" in pinned["refused"] and "1 CPU" in pinned["refused"]
    one_thread = thread_probe(tiny_bundle_dir, "1")  # every CPU usable, --threads 1
    assert one_thread["session"] == 0 and one_thread["tokenizer"] <= 1, one_thread
