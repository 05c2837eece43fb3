"""Teacher scoring in shards: resumes after a real SIGKILL without rescoring finished shards, gives one pass's
logits, spreads shards over processes, rescores shards of other data or another teacher, and scores a bundle
through onnxruntime like the model in PyTorch."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model

from sst2dist.distill.scoring import (
    OnnxScorer,
    TorchScorer,
    assemble,
    make_scorer,
    score_in_shards,
    score_sorted,
    score_to_file,
    shard_path,
    shard_ranges,
    teacher_sha256_of,
)
from sst2dist.distill.teacher import LogitsKey, TeacherError, load_logits, save_logits, teacher_weights_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]
WORDS = [
    "a", "gorgeous", "witty", "film", "dull", "and", "lifeless", "mess",
    "it", "works", "never", "again", "fine", "charming", "smart", "wooden",
]  # fmt: skip
# 48 sentences of 1 to 12 words: 6 shards of 8 rows.
SENTENCES = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i % 12)) for i in range(48)]
FP16 = {"rtol": 2e-3, "atol": 2e-3}  # a logit stored as fp16 keeps about 3 significant digits

# The real scorer, slowed down between shards so that the test can kill the process in the middle of the job.
WORKER = """
import json, sys, time
from pathlib import Path
from sst2dist.distill.scoring import TorchScorer, score_in_shards
from sst2dist.distill.logits import LogitsKey

model, folder, sentences_file, key_json = sys.argv[1:]

class Slow(TorchScorer):
    def batch(self, sentences):
        time.sleep(0.4)
        return super().batch(sentences)

sentences = json.loads(Path(sentences_file).read_text())
score_in_shards(Slow(Path(model), 32, bf16=False), sentences, Path(folder), LogitsKey(**json.loads(key_json)),
                shard_rows=8, show_progress=False)
"""


def key_for(model_dir: Path) -> LogitsKey:
    return LogitsKey(teacher_weights_sha256(model_dir), "d" * 64, 32)


def one_pass(model_dir: Path, sentences: list[str] = SENTENCES) -> np.ndarray:
    return score_sorted(TorchScorer(model_dir, 32, bf16=False), sentences)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sst2dist.distill.scoring"]


def shard_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Finished shards (not temporaries) by name: their inode and modification time."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("shard-*.npz"))}


def kill_after_two_shards(tiny_model_dir: Path, folder: Path, tmp_path: Path) -> None:
    sentences_file = tmp_path / "sentences.json"
    sentences_file.write_text(json.dumps(SENTENCES))
    key = json.dumps(key_for(tiny_model_dir).__dict__)
    command = [
        sys.executable,
        "-c",
        textwrap.dedent(WORKER),
        str(tiny_model_dir),
        str(folder),
        str(sentences_file),
        key,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (len(shard_files(folder)) if folder.is_dir() else 0) < 2:
        assert worker.poll() is None, f"the worker ended before it was killed: {worker.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no two shards within 120 s"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    worker.stderr.close()
    assert worker.returncode == -signal.SIGKILL


@pytest.mark.slow  # a real subprocess loading torch: about 15 s
def test_scoring_resumes_after_a_sigkill_without_rescoring_finished_shards(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "shards"
    kill_after_two_shards(tiny_model_dir, folder, tmp_path)
    finished = shard_files(folder)
    assert 2 <= len(finished) < 6, finished

    key = key_for(tiny_model_dir)
    scored_now = score_in_shards(TorchScorer(tiny_model_dir, 32, bf16=False), SENTENCES, folder, key, shard_rows=8)
    assert scored_now == 48 - 8 * len(finished)
    after = shard_files(folder)
    assert len(after) == 6
    assert {name: after[name] for name in finished} == finished, "a finished shard was written again"
    bar = capsys.readouterr().err
    assert f"{8 * len(finished)}/48" in bar and "48/48" in bar, "the bar counts the resumed rows"

    logits = assemble(folder, SENTENCES, key, "torch-fp32", 8)
    assert logits.dtype == np.float16 and logits.shape == (48, 2)
    np.testing.assert_allclose(logits.astype(np.float32), one_pass(tiny_model_dir), **FP16)


def test_processes_split_the_shards_by_index(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder, key = tmp_path / "shards", key_for(tiny_model_dir)
    scorer = TorchScorer(tiny_model_dir, 32, bf16=False)
    ranges = shard_ranges(len(SENTENCES), 8)
    assert score_in_shards(scorer, SENTENCES, folder, key, rank=1, world=2, shard_rows=8, show_progress=False) == 24
    assert set(shard_files(folder)) == {shard_path(folder, *r).name for r in ranges[1::2]}
    with pytest.raises(TeacherError, match=r"shard-000000000-000000008\.npz is missing: score the missing shards"):
        assemble(folder, SENTENCES, key, scorer.name, 8)
    assert score_in_shards(scorer, SENTENCES, folder, key, rank=0, world=2, shard_rows=8, show_progress=False) == 24
    np.testing.assert_allclose(assemble(folder, SENTENCES, key, scorer.name, 8), one_pass(tiny_model_dir), **FP16)


def test_a_shard_of_other_sentences_or_another_teacher_is_scored_again(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, key = tmp_path / "shards", key_for(tiny_model_dir)
    scorer = TorchScorer(tiny_model_dir, 32, bf16=False)
    sentences = SENTENCES[:24]
    score_in_shards(scorer, sentences, folder, key, shard_rows=8, show_progress=False)
    edited = [*sentences[:8], *(s + " indeed" for s in sentences[8:16]), *sentences[16:]]
    with caplog.at_level(logging.WARNING, logger="sst2dist.distill.scoring"):
        assert score_in_shards(scorer, edited, folder, key, shard_rows=8, show_progress=False) == 8
    [message] = warnings_of(caplog)
    assert "shard-000000008-000000016.npz was scored for other sentences" in message and "scoring it again" in message
    np.testing.assert_allclose(assemble(folder, edited, key, scorer.name, 8), one_pass(tiny_model_dir, edited), **FP16)

    caplog.clear()
    other = make_tiny_model(tmp_path / "other-teacher", seed=5)
    other_key = key_for(other)
    with caplog.at_level(logging.WARNING, logger="sst2dist.distill.scoring"):
        rescored = score_in_shards(
            TorchScorer(other, 32, bf16=False), edited, folder, other_key, shard_rows=8, show_progress=False
        )
    assert rescored == 24 and len(warnings_of(caplog)) == 3
    assert all("was scored for another teacher" in m for m in warnings_of(caplog))
    with pytest.raises(TeacherError, match="scored for another teacher"):
        assemble(folder, edited, key, scorer.name, 8)  # the first teacher's shards are gone, never mixed in


def test_the_logits_file_is_fp16_and_the_loader_reads_it_as_fp32(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sst2dist.distill.teacher import logits_from_file

    path, key = tmp_path / "logits.npz", key_for(tiny_model_dir)
    logits = score_to_file(
        TorchScorer(tiny_model_dir, 32, bf16=False), SENTENCES, key, path, {"teacher": "tiny"}, shard_rows=8
    )
    assert not (tmp_path / ".shards-logits").exists(), "the shards are removed once the file is written"
    with np.load(path) as stored:
        assert stored["logits"].dtype == np.float16
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, one_pass(tiny_model_dir), **FP16)
    loaded, meta = logits_from_file(path, key.data_sha256, len(SENTENCES))
    assert loaded.dtype == np.float32 and meta["scorer"] == "torch-fp32" and meta["key"] == key.__dict__

    save_logits(tmp_path / "half.npz", np.array([[1.5, -2.25]]), {"key": {}}, dtype=np.float16)
    half, _ = load_logits(tmp_path / "half.npz")
    assert half.dtype == np.float32 and half.tolist() == [[1.5, -2.25]]


def test_the_scorer_must_fit_the_teacher(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match=r"--scorer onnx scores with a bundle from `sst2dist export-onnx`"):
        make_scorer(tiny_model_dir, 32, "onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="neither a model folder"):
        make_scorer(tmp_path / "empty", 32)


@pytest.mark.slow
def test_a_bundle_scores_through_onnxruntime_like_the_model_in_pytorch(
    tiny_bundle_dir: Path, tiny_model_dir: Path
) -> None:
    assert teacher_sha256_of(tiny_bundle_dir) == teacher_weights_sha256(tiny_model_dir)
    with pytest.raises(TeacherError, match="--scorer torch scores with a model folder"):
        make_scorer(tiny_bundle_dir, 32, "torch")
    assert isinstance(make_scorer(tiny_bundle_dir, 32), OnnxScorer)
    scorer = OnnxScorer(tiny_bundle_dir, 8, variant="fp32")
    long_sentences = [s + " " + s for s in SENTENCES]  # some past 8 tokens: cut where the key says
    torch_logits = score_sorted(TorchScorer(tiny_model_dir, 8, bf16=False), long_sentences)
    np.testing.assert_allclose(score_sorted(scorer, long_sentences), torch_logits, atol=1e-4)


@pytest.mark.slow
def test_augment_labels_with_a_bundle(tiny_bundle_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from sst2dist.distill.augment import label_with_teacher
    from sst2dist.distill.augment_options import AugmentOptions
    from sst2dist.distill.teacher import data_fingerprint

    output = tmp_path / "aug"
    output.mkdir()
    config = AugmentOptions(data="unused", output=str(output), teacher=str(tiny_bundle_dir), scorer="onnx")
    sentences, labels = SENTENCES[:10], [i % 2 for i in range(10)]
    all_sentences, all_labels = SENTENCES, [i % 2 for i in range(48)]
    summary = label_with_teacher(config, sentences, labels, all_sentences, all_labels, output)
    assert summary["scorer"].startswith("onnx-")
    with np.load(output / "teacher-logits.npz") as stored:
        assert stored["logits"].dtype == np.float16 and stored["logits"].shape == (48, 2)
    logits, meta = load_logits(output / "teacher-logits.npz")
    assert meta["key"]["data_sha256"] == data_fingerprint(all_sentences, all_labels)
    assert meta["key"]["teacher_sha256"] == teacher_weights_sha256(tiny_model_dir)
    variant = summary["scorer"].removeprefix("onnx-")
    expected = score_sorted(OnnxScorer(tiny_bundle_dir, 128, variant=variant), all_sentences)
    np.testing.assert_allclose(logits, expected, **FP16)


# Two runs on one cold cache: "fast" waits until "slow" has started scoring, then finishes first.
CONCURRENT_RUN = """
import json, sys, time
from pathlib import Path
from sst2dist.distill.scoring import TorchScorer, score_to_file
from sst2dist.distill.logits import LogitsKey

role, model, path, sentences_file, key_json = sys.argv[1:]
started = Path(path).with_name("slow-started")

class Paced(TorchScorer):
    def batch(self, sentences):
        if role == "slow":
            started.touch()
            time.sleep(0.3)
        while role == "fast" and not started.exists():
            time.sleep(0.05)
        return super().batch(sentences)

sentences = json.loads(Path(sentences_file).read_text())
score_to_file(Paced(Path(model), 32, bf16=False), sentences, LogitsKey(**json.loads(key_json)), Path(path), {},
              shard_rows=8, show_progress=False)
"""


@pytest.mark.slow
def test_two_runs_on_one_cold_cache_never_delete_each_others_shards(tiny_model_dir: Path, tmp_path: Path) -> None:
    from dataclasses import asdict

    path = tmp_path / "cache" / "logits.npz"
    sentences_file = tmp_path / "sentences.json"
    sentences_file.write_text(json.dumps(SENTENCES))
    argv = [str(tiny_model_dir), str(path), str(sentences_file), json.dumps(asdict(key_for(tiny_model_dir)))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_RUN, role, *argv], env=env, stderr=subprocess.PIPE, text=True
        )
        for role in ("fast", "slow")
    ]
    errors = [run.communicate(timeout=180)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [error[-1500:] for error in errors]
    np.testing.assert_allclose(load_logits(path)[0], one_pass(tiny_model_dir), **FP16)
    assert not list(path.parent.glob(".shards-*"))


def test_shards_left_by_a_kill_after_the_file_was_written_are_removed_by_the_next_run(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A kill between writing the logits file and removing its shards (found by the kill test under load): the next
    run reads the file, and must remove the shards too, or they stay in the cache for good."""
    from accelerate import Accelerator

    from sst2dist.distill.scoring import shards_folder
    from sst2dist.distill.teacher import cached_outputs

    accelerator, key, path = Accelerator(cpu=True), key_for(tiny_model_dir), tmp_path / "cache" / "logits.npz"
    first, _ = cached_outputs(tiny_model_dir, SENTENCES, key, path, accelerator)
    leftover = shards_folder(path)
    leftover.mkdir()
    (leftover / "rows-00000000-00000008.npz").write_bytes(b"a shard the killed run had not removed")
    again, _ = cached_outputs(tiny_model_dir, SENTENCES, key, path, accelerator)
    np.testing.assert_array_equal(first, again)
    assert not leftover.exists()
