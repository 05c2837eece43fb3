"""`sst2dist predict-ray`: Ray Data batch prediction on a real local Ray (2 CPUs, started once for the module)
gives the same labels and scores as single-process `predict`, in input order; a bad row stops it with `predict`'s
message; a missing bundle fails before Ray starts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import import_blocker

from sst2dist.cli import main
from sst2dist.predict.ray_batch import BadRow, _byte_lines, append_predictions, check_paths, run_predict_ray
from sst2dist.predict.run import BadLine, run_predict
from sst2dist.runtime import load_classifier


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, no dashboard, a small object store (start-up is most of the cost)."""
    import ray
    from ray.data import DataContext

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sentences(sst2_sample_dir: Path) -> list[str]:
    """The sample's 72 validation sentences, three times over in shifted order: 216 rows of varied length."""
    rows = (sst2_sample_dir / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts = [row.split("\t")[0] for row in rows]
    return texts + texts[24:] + texts[:24] + texts[::-1]


def single_process(bundle: Path, texts: list[str], variant: str, tmp_path: Path) -> list[dict]:
    """What plain `predict` writes for `texts` with `variant`."""
    source, target = tmp_path / "single.jsonl", tmp_path / "single-out.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    run_predict(load_classifier(bundle, variant), input_path=str(source), output=str(target))
    return [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]


# --- without Ray -------------------------------------------------------------------------------------------


def test_byte_lines_splits_across_chunks_and_keeps_a_last_line_without_newline() -> None:
    import io

    data = b"first\nsecond line\r\n\nlast"
    assert list(_byte_lines(io.BytesIO(data), chunk=3)) == [b"first\n", b"second line\r\n", b"\n", b"last"]


def test_append_predictions_leaves_error_rows_null() -> None:
    block = pa.table({"text": ["good", None, "fine"]})
    logits = np.array([[0.0, 2.0], [np.nan, np.nan], [1.0, 0.0]], dtype=np.float32)
    rows = append_predictions(block, logits, ["negative", "positive"], True, [0, 2]).to_pylist()
    assert [row["label"] for row in rows] == ["positive", None, "negative"]
    assert rows[1]["score"] is None and rows[1]["scores"] is None and rows[1]["logits"] is None
    assert rows[0]["scores"]["positive"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert rows[2]["logits"] == [1.0, 0.0]


def test_output_path_checks_say_what_to_fix(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must end in .parquet or .jsonl"):
        check_paths(str(source), str(tmp_path / "out.csv"))
    with pytest.raises(ValueError, match="does not exist: create it first"):
        check_paths(str(source), str(tmp_path / "nowhere" / "out.jsonl"))
    with pytest.raises(ValueError, match="input .* does not exist"):
        check_paths(str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl"))
    assert check_paths(str(source), str(tmp_path / "out.parquet")) == "parquet"


def test_missing_bundle_fails_before_ray_starts(tmp_path: Path) -> None:
    """A real subprocess given a cluster address nobody listens on: joining it would hang and fail; the bundle
    check comes first, so the command fails at once naming the bundle, and no Ray session folder is made."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n', encoding="utf-8")
    command = [sys.executable, "-m", "sst2dist.cli", "predict-ray", str(tmp_path / "no-bundle")]
    command += ["--input", str(source), "--output", str(tmp_path / "out.jsonl"), "--address", "127.0.0.1:1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "bundle folder" in result.stderr and "does not exist" in result.stderr
    assert "Ray" not in result.stderr.replace("sst2dist[ray]", "")  # Ray never spoke
    assert not (tmp_path / "out.jsonl").exists()


BLOCK_RAY = import_blocker("ray")


def test_without_ray_the_command_says_which_extra_to_install(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """The base install has no Ray: the command line still loads, and predict-ray names the extra."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_RAY, encoding="utf-8")
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n', encoding="utf-8")
    command = [sys.executable, "-m", "sst2dist.cli", "predict-ray", str(tiny_bundle_dir), "--input", str(source)]
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, "-o", str(tmp_path / "o.jsonl")], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "pip install 'sst2dist[ray]'" in result.stderr, result.stderr


# --- on a local Ray ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_labels_scores_and_order_equal_single_process_predict(
    local_ray, tiny_bundle_dir: Path, sentences: list[str], tmp_path: Path
) -> None:
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(sentences)), "utf-8")
    out = tmp_path / "predictions.jsonl"
    summary = run_predict_ray(str(tiny_bundle_dir), str(source), str(out), actors=2, variant="fp32")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = single_process(tiny_bundle_dir, sentences, "fp32", tmp_path)
    assert summary.written == len(sentences) == len(rows)
    assert [row["line"] for row in rows] == list(range(1, len(sentences) + 1))
    assert [row["text"] for row in rows] == sentences
    assert [row["label"] for row in rows] == [row["label"] for row in expected]
    np.testing.assert_allclose([r["score"] for r in rows], [r["score"] for r in expected], atol=1e-5)
    assert all(abs(sum(row["scores"].values()) - 1) < 1e-6 for row in rows)
    assert all(row["scores"][row["label"]] == row["score"] for row in rows)


@pytest.mark.slow
def test_parquet_in_and_out_with_logits_through_the_command_line(
    local_ray, tiny_bundle_dir: Path, sentences: list[str], tmp_path: Path
) -> None:
    part_a, part_b = tmp_path / "in" / "part-0.parquet", tmp_path / "in" / "part-1.parquet"
    part_a.parent.mkdir()
    pq.write_table(pa.table({"review": sentences[:100]}), part_a)
    pq.write_table(pa.table({"review": sentences[100:]}), part_b)
    out = tmp_path / "predictions.parquet"
    args = ["predict-ray", str(tiny_bundle_dir), "--input", str(part_a.parent), "--column", "review"]
    args += ["--output", str(out), "--logits", "--variant", "fp32", "--actors", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["file", "line", "id", "text", "label", "score", "scores", "logits"]
    assert table.column("text").to_pylist() == sentences
    assert table.column("line").to_pylist() == list(range(1, 101)) + list(range(1, len(sentences) - 99))
    logits = np.array(table.column("logits").to_pylist())
    expected = load_classifier(tiny_bundle_dir, "fp32").logits(sentences)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert f"wrote {len(sentences)} predictions" in result.output


@pytest.mark.slow
def test_a_bad_row_gets_predicts_error_and_writes_nothing(
    local_ray, tiny_bundle_dir: Path, sentences: list[str], tmp_path: Path
) -> None:
    lines = [json.dumps({"text": t}) for t in sentences[:50]]
    lines[30] = json.dumps({"text": "   "})
    lines[40] = '{"text": "unterminated'
    source, out = tmp_path / "bad.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BadLine) as from_predict:
        run_predict(load_classifier(tiny_bundle_dir, "fp32"), input_path=str(source), output=str(tmp_path / "p.jsonl"))
    with pytest.raises(BadRow) as from_ray:
        run_predict_ray(str(tiny_bundle_dir), str(source), str(out), variant="fp32")
    assert str(from_ray.value) == str(from_predict.value) == "line 31: the text is empty or whitespace-only"
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))

    summary = run_predict_ray(str(tiny_bundle_dir), str(source), str(out), variant="fp32", skip_bad=True)
    assert summary.written == 48 and summary.skipped[0] == str(from_predict.value)
    assert summary.skipped[1].startswith("line 41: not valid JSON")


@pytest.mark.slow
def test_a_missing_column_stops_even_with_skip_bad(local_ray, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    source.write_text("review,stars\nfine,5\n", encoding="utf-8")
    with pytest.raises(BadRow, match=r"line 1: the header \['review', 'stars'\] has no 'text' or 'sentence' column"):
        run_predict_ray(str(tiny_bundle_dir), str(source), str(tmp_path / "o.jsonl"), skip_bad=True)


def steered(bundle: Path, folder: Path) -> Path:
    """A copy of `bundle` whose recorded timings (on this CPU) make fp32 fastest at batch 1 and optimized fastest
    in sorted batches: a caller that chose by the wrong workload would run another variant."""
    from sst2dist.environment import cpu_fingerprint

    copy = Path(shutil.copytree(bundle, folder))
    manifest = json.loads((copy / "manifest.json").read_text())
    timings = manifest["variant_timings"]
    timings["cpu"] = cpu_fingerprint()
    timings["machine"] = {"busy": False}  # recorded on a quiet machine
    timings["ms_per_sentence"] = {"1": {"fp32": 1.0, "optimized": 2.0, "int8": 2.0}}
    timings["batch_ms_per_sentence"] = {"1": {"fp32": 2.0, "optimized": 1.0, "int8": 2.0}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.slow
def test_predict_and_predict_ray_choose_alike_and_write_the_same_rows(
    local_ray, tiny_bundle_dir: Path, sentences: list[str], tmp_path: Path
) -> None:
    """No variant pinned: both commands choose by the same workload rule, so they run the same variant and write
    the same rows (line, id, text, label, score, scores), including after a skipped line."""
    bundle = steered(tiny_bundle_dir, tmp_path / "bundle")
    lines = [json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(sentences[:60])]
    lines[7] = json.dumps({"id": "r7", "text": "  "})
    source = tmp_path / "reviews.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs = {name: tmp_path / f"{name}.jsonl" for name in ("predict", "ray")}
    args = [str(bundle), "--input", str(source), "--skip-bad", "--output"]
    single = CliRunner().invoke(main, ["predict", *args, str(outputs["predict"]), "--threads", "1"])
    ray_run = CliRunner().invoke(main, ["predict-ray", *args, str(outputs["ray"]), "--actors", "1"])
    assert single.exit_code == 0 and ray_run.exit_code == 0, single.output + ray_run.output
    assert "variant optimized" in single.stderr and "variant optimized" in ray_run.stderr
    rows = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in outputs.items()}
    assert rows["predict"] == rows["ray"]  # labels and scores equal, not merely close
    assert list(rows["predict"][0]) == ["line", "id", "text", "label", "score", "scores"]
    assert [row["line"] for row in rows["predict"]] == [n for n in range(1, 61) if n != 8]
    assert [row["id"] for row in rows["predict"]] == [f"r{n - 1}" for n in range(1, 61) if n != 8]


@pytest.mark.slow
def test_a_local_or_remote_style_glob_reads_every_matching_file(
    local_ray, tiny_bundle_dir: Path, sentences: list[str], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for part, texts in enumerate((sentences[:30], sentences[30:50])):
        (folder / f"part-{part}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), "utf-8")
    (folder / "notes.md").write_text("# not input\n", encoding="utf-8")
    for pattern in (f"{folder}/part-*.jsonl", f"file://{folder}/*.jsonl"):
        out = tmp_path / "out.jsonl"
        args = ["predict-ray", str(tiny_bundle_dir), "--input", pattern, "--output", str(out), "--variant", "fp32"]
        result = CliRunner().invoke(main, [*args, "--actors", "1"])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [row["text"] for row in rows] == sentences[:50], pattern
        assert [Path(row["file"]).name for row in rows] == ["part-0.jsonl"] * 30 + ["part-1.jsonl"] * 20


def test_a_remote_folder_without_a_format_is_refused_in_one_sentence(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "parquet-folder"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["fine"]}), folder / "part-0.parquet")
    for given, message in ((f"file://{folder}/", "cannot tell the format of"), (f"{folder}/*.csv", "matches no file")):
        args = ["predict-ray", str(tiny_bundle_dir), "--input", given, "--output", str(tmp_path / "o.jsonl")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_an_actor_refuses_a_bundle_exported_again_after_the_driver_chose(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """The driver settles the variant; an actor that loads the bundle after an `export-onnx --force` replaced it
    would run another export's files: it refuses, so no output mixes two exports."""
    from sst2dist.predict.ray_batch import ClassifyBlock, loaded_files
    from sst2dist.runtime import BundleError

    bundle = Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))
    files = loaded_files(load_classifier(bundle, "fp32", 1))
    assert ClassifyBlock(str(bundle), "fp32", 1, 32, False, files).classifier.variant == "fp32"
    tokenizer = bundle / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text(encoding="utf-8") + " ", encoding="utf-8")  # another export's
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"]["sha256"] = hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="changed while predict-ray ran"):
        ClassifyBlock(str(bundle), "fp32", 1, 32, False, files)


LOCAL_RAY_CPUS = """
import ray
from sst2dist.predict.ray_batch import ray_session
with ray_session(None, None):
    print("CPU", ray.cluster_resources()["CPU"])
"""


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin one")
def test_a_local_ray_gets_the_cpus_this_process_may_use() -> None:
    """Ray alone counts every core (2.0 under `taskset -c 0` on two); the local Ray predict-ray starts gets one."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", LOCAL_RAY_CPUS], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CPU 1.0" in done.stdout


def test_more_threads_per_actor_than_any_ray_node_has_is_refused_not_waited_on(
    local_ray, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    """An actor reserving more CPUs than a node has never starts: Ray Data waited for it forever."""
    import threading

    source = tmp_path / "in.txt"
    source.write_text("a fine film\n", encoding="utf-8")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            run_predict_ray(str(tiny_bundle_dir), str(source), str(tmp_path / "o.jsonl"), threads_per_actor=3)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert outcome, "predict-ray waited for an actor that cannot start"
    assert isinstance(outcome[0], ValueError) and "--threads-per-actor 3" in str(outcome[0]), outcome
    assert not (tmp_path / "o.jsonl").exists()
