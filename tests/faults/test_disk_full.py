"""A full disk at every writer: each command runs under RLIMIT_FSIZE (writes past the limit fail with EFBIG, as on
a full disk) and must exit non-zero with one sentence naming the path and what it was writing, leave what was
there before byte for byte, and leave no temporary files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from fault_harness import BIN, ENV, leftovers, run, run_limited, snapshot

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sst2"
SST2DIST = BIN / "sst2dist"


def assert_one_sentence(result, what: str, path: Path) -> None:
    """Exit 1 with one error line: one sentence with `what` and `path`, no traceback."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = error_lines(result)
    assert f"could not write {what} {path}" in line and "File too large" in line, line
    assert line.count(". ") == 0, line  # one sentence


def error_lines(result) -> list[str]:
    """The lines of stderr that report an error (a progress bar may still be redrawn after it)."""
    return [line for line in result.stderr.splitlines() if "could not write" in line or "rror" in line]


def train_command(*args: object) -> list[object]:
    return [sys.executable, "-m", "sst2dist.train", *args]


def train_options(model: Path, out: Path, *extra: object) -> list[object]:
    return [
        "--data", SAMPLE, "--model", model, "--output-dir", out, "--batch-size", 8, "--max-steps", 4,
        "--eval-every", 2, "--save-every", 2, "--max-eval-samples", 16, "--lr", 1e-12, "--mixed-precision", "no",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_or_saving_the_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The tiny model's weights are 4 MB and its optimizer state 8 MB: a 6 MB limit lets the best model through
    but not the checkpoint, a 1 MB one stops the best model."""
    straight = tmp_path / "straight"
    run(train_command(*train_options(tiny_model_dir, straight)))
    # A run killed after its step-2 checkpoint; lr ~ 0, so the evaluation at step 4 is no better (no model write).
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("step-00000004", "metrics.json"))
    before = snapshot(resumed)
    result = run_limited(train_command(*train_options(tiny_model_dir, resumed, "--resume")), 6_000_000)
    assert_one_sentence(result, "the checkpoint", resumed / "checkpoints" / "step-00000004")
    after = snapshot(resumed)
    assert {k: v for k, v in after.items() if k != "log.jsonl"} == {k: v for k, v in before.items() if k != "log.jsonl"}
    assert not leftovers(resumed)

    fresh = tmp_path / "fresh"
    result = run_limited(train_command(*train_options(tiny_model_dir, fresh)), 1_000_000)
    assert_one_sentence(result, "the best model", fresh / "model")
    assert not leftovers(fresh) and not (fresh / "model").exists()
    assert (fresh / "train_config.json").is_file()


@pytest.mark.slow
def test_a_full_disk_while_caching_the_teacher_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    """3,000 rows of logits are ~22 KB; train_config.json (written first) is ~2 KB. The scoring's shard folder
    may stay, holding only complete shards: it is what a rerun continues from."""
    from conftest import make_tiny_model
    from test_kill import write_data

    data, cache = write_data(tmp_path / "data", rows=3000), tmp_path / "cache"

    def command(teacher: Path, out: Path) -> list[object]:
        return train_command(
            "--data", data, "--model", tiny_model_dir, "--teacher", teacher, "--output-dir", out,
            "--max-steps", 1, "--max-train-samples", 8, "--teacher-cache", cache,
        )  # fmt: skip

    run(command(make_tiny_model(tmp_path / "teacher-a", seed=1), tmp_path / "a"))
    [earlier] = list(cache.glob("*.npz"))
    before = earlier.read_bytes()
    result = run_limited(command(make_tiny_model(tmp_path / "teacher-b", seed=2), tmp_path / "b"), 8_000)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [last] = error_lines(result)
    assert "could not write" in last and str(cache) in last and "File too large" in last, last
    assert list(cache.glob("*.npz")) == [earlier] and earlier.read_bytes() == before
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_full_disk_while_exporting_a_bundle(tiny_model_dir: Path, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "exports" / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    before = snapshot(bundle)
    command = [SST2DIST, "export-onnx", tiny_model_dir, "--output", bundle, "--data", SAMPLE, "--force"]
    command += ["--max-verify-samples", 16, "--max-accuracy-drop", 100]
    result = run_limited(command, 1_000_000)
    assert_one_sentence(result, "the bundle", bundle)
    assert snapshot(bundle) == before and not leftovers(bundle.parent)


@pytest.mark.slow
def test_a_full_disk_while_augmenting(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {**ENV, "SST2DIST_CACHE": str(tmp_path / "cache")}
    output = tmp_path / "aug"
    command = [SST2DIST, "augment", "--data", SAMPLE, "--output", output, "--embeddings", tiny_model_dir]
    command += ["--teacher", tiny_model_dir, "--min-words", 3, "--variants", 2]
    run(command, env=env)
    before = snapshot(output)
    result = run_limited([*command, "--force", "--seed", 1], 4_000, env=env)
    assert_one_sentence(result, "the augmented data", output)
    assert snapshot(output) == before and not leftovers(tmp_path / "aug") and not list(tmp_path.glob(".aug*"))


def test_a_full_disk_while_writing_predictions(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a gripping, funny film number {i}\n" for i in range(200)), encoding="utf-8")
    output = tmp_path / "predictions.jsonl"
    output.write_text('{"label": "earlier", "score": 1.0}\n', encoding="utf-8")
    command = [SST2DIST, "predict", tiny_bundle_dir, "--input", texts, "--output", output]
    result = run_limited(command, 2_000)
    assert_one_sentence(result, "the predictions", output)
    assert output.read_text(encoding="utf-8") == '{"label": "earlier", "score": 1.0}\n'
    assert not leftovers(tmp_path)


@pytest.mark.slow
def test_a_full_disk_while_writing_the_bench_report(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "results.json").write_text('{"earlier": true}\n', encoding="utf-8")
    command = [SST2DIST, "bench", "--bundle", tiny_bundle_dir, "--backends", "ort-fp32", "--data", SAMPLE]
    command += ["--output", report, "--threads", 1, "--batch-sizes", 1, "--max-samples", 8, "--latency-samples", 2]
    command += ["--warmup", 0, "--no-progress"]
    result = run_limited(command, 2_000)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [last] = error_lines(result)
    assert f"could not write the bench report {report}" in last and "File too large" in last, last
    assert (report / "results.json").read_text(encoding="utf-8") == '{"earlier": true}\n'
    assert not leftovers(report)


def test_a_failed_write_is_one_sentence_naming_what_and_where(tmp_path: Path) -> None:
    """In-process: the error is a ValueError too (every command reports those in one sentence) and nothing is
    left beside the target."""
    from sst2dist.atomic import WriteError, atomic_open, writing

    target = tmp_path / "missing" / "out.json"
    missing = rf"could not write the report {target} \(No such file or directory\)"
    with pytest.raises(WriteError, match=missing), atomic_open(target, "the report") as handle:
        handle.write("{}")
    hidden = r"could not write the checkpoint .*step-1 \(enforce fail at inline_container.cc:672; unexpected pos"
    with pytest.raises(ValueError, match=hidden), writing("the checkpoint", tmp_path / "step-1", (Exception,)):
        raise RuntimeError("enforce fail at inline_container.cc:672. unexpected pos 704 vs 598")
    assert not list(tmp_path.rglob("*"))


def test_a_full_disk_while_appending_to_the_training_log(tmp_path: Path, accelerator) -> None:
    """log.jsonl on a device that is always full (/dev/full, ENOSPC on every write): the run stops with the one
    sentence every writer gives, naming the log."""
    from sst2dist.atomic import WriteError
    from sst2dist.train.log import RunLog

    (tmp_path / "log.jsonl").symlink_to("/dev/full")
    with pytest.raises(WriteError, match=r"^could not write the training log .*log\.jsonl \(No space left on device\)"):
        RunLog(accelerator, tmp_path).write({"step": 1, "loss": 0.5})
