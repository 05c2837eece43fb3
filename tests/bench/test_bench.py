"""`sst2dist bench` on the tiny random model and its bundle: schema, ratios, chart, torch-free runs, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sst2dist.bench.report import render_terminal
from sst2dist.bench.run import ALL_BACKENDS, BenchSettings, run_bench
from sst2dist.bench.settings import check_settings
from sst2dist.cli import main
from sst2dist.environment import cpu_kind, supports_bf16, usable_cpus
from tests.conftest import import_blocker

SENTENCES = [
    ("a gripping , funny and moving film .", 1),
    ("dull .", 0),
    ("the actors seem as bored as the audience , and the plot never gets going at all .", 0),
    ("one of the best films of the year , with a score that lingers long after the credits roll .", 1),
    ("an utter mess", 0),
    ("warm , witty and wise", 1),
    ("it 's a long , slow slog through clichés that even the cast seems to regret .", 0),
    ("a small gem", 1),
    ("null", 0),
    ("never quite finds its footing , but the lead performance is worth the ticket", 1),
]
LATENCY_SAMPLES = 6
BATCH_SIZES = (1, 4)


def write_small_sst2(folder: Path) -> Path:
    """A GLUE-layout folder with a handful of labelled sentences of varied length (train.tsv is unused)."""
    rows = "".join(f"{sentence}\t{label}\n" for sentence, label in SENTENCES)
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def small_sst2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_sst2(tmp_path_factory.mktemp("sst2-small"))


@pytest.fixture(scope="module")
def results(tiny_model_dir: Path, tiny_bundle_dir: Path, small_sst2: Path, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("bench") / "out"
    settings = BenchSettings(
        bundle=str(tiny_bundle_dir),
        model=str(tiny_model_dir),
        data=str(small_sst2),
        threads=(1,),
        batch_sizes=BATCH_SIZES,
        output=str(output),
        latency_samples=LATENCY_SAMPLES,
        warmup=1,
        progress=False,
        full=True,
    )
    return run_bench(settings)


def expected_backends(bundle: Path) -> list[str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    variants = {"ort-" + name for name in manifest["variants"]}
    torch = ["torch-fp32", "torch-bf16"] if supports_bf16() else ["torch-fp32"]
    return torch + [name for name in ALL_BACKENDS if name in variants]


def walk_numbers(tree, path=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from walk_numbers(value, (*path, key))
    else:
        yield path, tree


def lookup(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def test_every_default_backend_produced_numbers(results: dict, tiny_bundle_dir: Path) -> None:
    assert list(results["backends"]) == expected_backends(tiny_bundle_dir)
    assert results["baseline"] == "torch-fp32"
    assert results["dataset"]["sentences"] == len(SENTENCES)
    assert results["dataset"]["labels"] == [label for _, label in SENTENCES]
    for name, backend in results["backends"].items():
        assert backend["engine"] == ("pytorch" if name.startswith("torch") else "onnxruntime")
        metrics, raw = backend["metrics"], backend["raw"]
        assert set(metrics["threads"]) == {"1"}
        figures = metrics["threads"]["1"]
        for part in ("tokenize", "model", "total"):
            assert set(figures["latency_ms"][part]) == {"mean", "p50", "p90", "p99"}
            assert len(raw["threads"]["1"]["latency_ms"][part]) == LATENCY_SAMPLES
        assert set(figures["throughput_sentences_per_s"]) == {str(b) for b in BATCH_SIZES}
        assert set(figures["sorted_throughput_sentences_per_s"]) == {str(b) for b in BATCH_SIZES if b > 1}
        for path, value in walk_numbers(metrics):
            assert isinstance(value, float | int) and math.isfinite(value), (name, path, value)
            if path[0] == "accuracy_drop_points":  # one-sided: 0 when at least as accurate as the baseline
                assert value == max(0.0, -metrics["accuracy_delta_points"]), (name, value)
            elif path[0] not in ("accuracy", "accuracy_by_batch_size", "agreement_with_baseline"):
                assert path[0] == "accuracy_delta_points" or value > 0, (name, path, value)
        assert raw["file_size_bytes"] == sum(Path(f).stat().st_size for f in backend["files"])
        cold = raw["cold_start"]
        assert cold["total_seconds"] >= cold["load_seconds"] + cold["first_prediction_seconds"]
        assert cold["peak_rss_bytes"] > 10_000_000
        assert len(raw["predictions"]) == len(SENTENCES)
    for label, present in results["environment"]["cpu"]["flags"].items():
        assert isinstance(present, bool), label
    assert results["environment"]["cpu"]["kind"] == cpu_kind()
    assert results["environment"]["packages"]["onnxruntime"]


def test_ratios_are_recomputed_from_the_raw_figures_of_this_run(results: dict) -> None:
    labels = np.array(results["dataset"]["labels"])
    base = results["backends"][results["baseline"]]
    for name, backend in results["backends"].items():
        raw, metrics = backend["raw"], backend["metrics"]
        latency = np.array(raw["threads"]["1"]["latency_ms"]["total"])
        assert metrics["threads"]["1"]["latency_ms"]["total"]["p50"] == pytest.approx(np.percentile(latency, 50), 1e-3)
        assert metrics["threads"]["1"]["latency_ms"]["total"]["mean"] == pytest.approx(latency.mean(), 1e-3)
        for prefix, key in (("", "throughput"), ("sorted_", "throughput_sorted")):
            for batch, figures in raw["threads"]["1"][key].items():
                speed = figures["sentences"] / figures["seconds"]
                assert metrics["threads"]["1"][f"{prefix}throughput_sentences_per_s"][batch] == pytest.approx(speed)
        sorted_pass, in_order = raw["threads"]["1"]["throughput_sorted"]["4"], raw["threads"]["1"]["throughput"]["4"]
        assert sorted_pass["padded_tokens"] < in_order["padded_tokens"]  # SENTENCES' lengths are mixed
        predictions = np.array(raw["predictions"])
        assert metrics["accuracy"] == pytest.approx((predictions == labels).mean())
        agreement = (predictions == np.array(base["raw"]["predictions"])).mean()
        assert metrics["agreement_with_baseline"] == pytest.approx(agreement)
        assert metrics["file_size_mb"] == pytest.approx(raw["file_size_bytes"] / 1e6)
        checked = 0
        for path, value in walk_numbers(metrics):
            baseline_value = lookup(base["metrics"], path)
            expected = value / baseline_value if baseline_value else None
            assert lookup(backend["vs_baseline"], path) == pytest.approx(expected), (name, path)
            checked += 1
        assert checked > 20
    for path, ratio in walk_numbers(base["vs_baseline"]):
        assert ratio is None or ratio == pytest.approx(1.0), path


def test_report_chart_and_json_are_written(results: dict) -> None:
    import matplotlib.image

    output = Path(results["settings"]["output"])
    assert sorted(p.name for p in output.iterdir()) == ["chart.png", "report.md", "results.json"]
    assert json.loads((output / "results.json").read_text())["backends"].keys() == results["backends"].keys()
    png = output / "chart.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    assert image.std() > 0.01  # not a blank canvas
    report = (output / "report.md").read_text()
    table = render_terminal(results)
    for name in results["backends"]:
        assert f"| {name} |" in report
        assert name in table
    assert "## Environment" in report and "CPU flags:" in report
    cpu = results["environment"]["cpu"]
    for text in (report, table):
        assert f"CPU: {cpu['model']} [{cpu['kind']}]" in text
        assert "bs4 sorted" in text and "Sorted batch 4 vs batch 1" in text
        assert " met" not in text and "NOT met" not in text  # targets live in the README, not in the tool
    assert "split the p50" not in report and "the p50s of each part on its own" in report
    peak = results["peak_estimate"]
    assert peak["backend"] in results["backends"]
    assert all(0 < p["fraction"] < 1 for p in peak["peaks"].values())
    assert bool(peak["peaks"]) != bool(peak["unknown"])


TORCH_BLOCKER = """
import importlib.abc, os, sys

class Block(importlib.abc.MetaPathFinder):
    '''Base install: torch & co. are not importable; every attempt is logged so the test can list them.'''
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in ("torch", "transformers", "optimum", "datasets"):
            with open(os.environ["IMPORT_LOG"], "a") as log:
                log.write(top + "\\n")
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
"""


def test_ort_only_bench_runs_without_torch(tiny_bundle_dir: Path, small_sst2: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(TORCH_BLOCKER)
    log, output = tmp_path / "imports.log", tmp_path / cpu_kind() / "out"
    command = [sys.executable, "-m", "sst2dist.cli", "bench", "--bundle", str(tiny_bundle_dir), "--data",
               str(small_sst2), "--backends", "ort-int8,ort-fp32", "--threads", "1", "--batch-sizes", "2",
               "--latency-samples", "4", "--warmup", "1", "--no-progress",
               "--output", str(tmp_path / "{cpu}" / "out")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "IMPORT_LOG": str(log), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    attempts = set(log.read_text().split()) if log.exists() else set()
    assert not attempts & {"torch", "transformers", "optimum"}, attempts
    saved = json.loads((output / "results.json").read_text())
    assert saved["baseline"] == "ort-int8"
    assert list(saved["backends"]) == ["ort-int8", "ort-fp32"]
    assert any("baseline is ort-int8" in note for note in saved["notes"])
    assert "(x) = value / ort-int8" in result.stdout
    fp32 = saved["backends"]["ort-fp32"]
    p50 = fp32["metrics"]["threads"]["1"]["latency_ms"]["total"]["p50"]
    base_p50 = saved["backends"]["ort-int8"]["metrics"]["threads"]["1"]["latency_ms"]["total"]["p50"]
    assert fp32["vs_baseline"]["threads"]["1"]["latency_ms"]["total"]["p50"] == pytest.approx(p50 / base_p50)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backends", "ort-fp16"], "unknown backend ort-fp16"),
        (["--backends", ","], "--backends is empty"),
        (["--batch-sizes", "0,8"], "--batch-sizes must be whole numbers >= 1"),
        (["--batch-sizes", "8,x"], "--batch-sizes takes comma-separated whole numbers"),
        (["--threads", str(usable_cpus() + 1)], "CPU(s) this process may use"),
        (["--threads", "0"], "--threads must be whole numbers >= 1"),
        (["--backends", "torch-fp32", "--model", "/nonexistent/model"], "--model /nonexistent/model is not a folder"),
        (["--backends", "torch-fp32"], "the PyTorch backends need --model"),
        (["--backends", "ort-static-int8"], "has no ort-static-int8 variant"),
        (["--max-samples", "0"], "--max-samples must be >= 1"),
    ],
)
def test_bad_input_fails_before_any_work(
    extra: list[str], message: str, tiny_bundle_dir: Path, small_sst2: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    args = ["bench", "--bundle", str(tiny_bundle_dir), "--data", str(small_sst2), "--output", str(output), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not output.exists()


def test_missing_bundle_and_output_file(tiny_model_dir: Path, small_sst2: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["bench", "--model", str(tiny_model_dir), "--data", str(small_sst2)]
    result = runner.invoke(main, [*args, "--bundle", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "export-onnx" in result.output
    assert not (tmp_path / "out").exists()
    (tmp_path / "not-a-bundle").mkdir()
    result = runner.invoke(main, [*args, "--bundle", str(tmp_path / "not-a-bundle")])
    assert result.exit_code == 1 and "manifest.json" in result.output


def test_output_that_is_a_file_is_refused(tiny_bundle_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    result = CliRunner().invoke(
        main, ["bench", "--bundle", str(tiny_bundle_dir), "--model", str(tiny_model_dir), "--output", str(target)]
    )
    assert result.exit_code == 1 and "is a file" in result.output
    assert target.read_text() == "keep me"


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    assert "sst2dist bench --model" in result.output and "--backends" in result.output


def test_missing_data_is_a_clear_error(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    args = ["bench", "--bundle", str(tiny_bundle_dir), "--backends", "ort-fp32", "--data", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and str(tmp_path) in result.output
    assert not (tmp_path / "out").exists()


def test_without_matplotlib_the_bench_does_not_say_it_wrote_the_chart(
    tiny_bundle_dir: Path, small_sst2: Path, tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(import_blocker("matplotlib"))
    command = [sys.executable, "-m", "sst2dist.cli", "bench", "--bundle", str(tiny_bundle_dir), "--data",
               str(small_sst2), "--backends", "ort-fp32", "--threads", "1", "--batch-sizes", "2",
               "--latency-samples", "2", "--warmup", "0", "--no-progress",
               "--output", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"Wrote results.json and report.md to {tmp_path / 'out'}" in result.stdout
    assert "chart.png" not in result.stdout.split("Wrote")[-1]
    assert not (tmp_path / "out" / "chart.png").exists()


def test_the_default_matrix_is_small_and_full_is_one_flag_away(
    tiny_model_dir: Path, tiny_bundle_dir: Path, small_sst2: Path, tmp_path: Path
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["variants"]["int8"]["passed"] = False  # kept by --keep-failed
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    common = {"bundle": str(bundle), "model": str(tiny_model_dir), "data": str(small_sst2), "output": str(tmp_path)}
    small = check_settings(BenchSettings(**common))
    assert small.threads == [usable_cpus()] and small.batch_sizes == [1, 32]
    assert small.backends == ["torch-fp32", "ort-fp32", "ort-optimized"]  # the gated variants only
    assert "ort-int8 failed the export gate: not benched (--full benches it too)" in small.notes
    full = check_settings(BenchSettings(**common, full=True))
    assert full.threads == sorted({1, usable_cpus()}) and full.batch_sizes == [1, 8, 32]
    assert full.backends == expected_backends(bundle)
    assert any("ort-int8 failed the export verification gate" in note for note in full.notes)


def test_full_goes_with_bundle_not_menu(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    args = ["bench", "--menu", f"l6={tiny_bundle_dir}", "--full", "--output", str(output)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--full goes with --bundle" in result.output and not output.exists()


def test_the_chart_is_flushed_to_disk_before_it_is_renamed_into_place(
    results: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sst2dist.bench import report

    synced_names: list[str] = []
    real_fsync = os.fsync

    def fsync_and_note(fd: int) -> None:  # the real fsync, with the name of the file it flushed
        synced_names.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_and_note)
    report.write_outputs(json.loads(json.dumps(results, default=str)), tmp_path)
    assert any(name.startswith(".chart.png.") for name in synced_names), synced_names
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_default_variant_the_bench_reports_is_the_one_serve_runs(
    tiny_bundle_dir: Path, small_sst2: Path, tmp_path: Path
) -> None:
    """serve micro-batches by default, so it chooses by the sorted-batch timings at its own threads per worker; a
    bench that reported the batch-1 choice named a variant serve never runs."""
    from sst2dist.runtime import load_classifier
    from sst2dist.serve.limits import ServeLimits, default_threads, default_workers
    from sst2dist.variant_choice import cpu_fingerprint, workload_for

    bundle = Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    counts = {"1", str(usable_cpus())}
    manifest["variant_timings"] |= {
        "cpu": cpu_fingerprint(),
        "machine": {"busy": False},
        "ms_per_sentence": {n: {"fp32": 1.0, "optimized": 2.0, "int8": 2.0} for n in counts},
        "batch_ms_per_sentence": {n: {"fp32": 2.0, "optimized": 1.0, "int8": 2.0} for n in counts},
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    settings = BenchSettings(bundle=str(bundle), data=str(small_sst2), backends=["ort-fp32"], threads=(1,),
                             batch_sizes=(2,), latency_samples=2, warmup=0, progress=False,
                             output=str(tmp_path / "out"))  # fmt: skip
    reported = run_bench(settings)["bundle"]["default_variant"]
    threads, workload = default_threads(default_workers()), workload_for(ServeLimits.max_batch_size)
    assert reported["variant"] == load_classifier(bundle, threads=threads, workload=workload).variant == "optimized"
