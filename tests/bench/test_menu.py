"""`sst2dist bench --menu`: two tiny bundles, a BERT and an MPNet (no token type ids), in one run without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from test_bench import SENTENCES, TORCH_BLOCKER, write_small_sst2

from sst2dist.bench.measure import onnx_files
from sst2dist.cli import main
from sst2dist.engines import variant_files
from sst2dist.environment import cpu_kind
from sst2dist.runtime import VARIANT_FILES, read_manifest

LATENCY_SAMPLES = 6


@pytest.fixture(scope="module")
def mpnet_bundle(sst2_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_tiny_mpnet

    from sst2dist.export.bundle import export_bundle

    folder = tmp_path_factory.mktemp("tiny-mpnet")
    model = make_tiny_mpnet(folder / "model", seed=1)
    limits = {"max_accuracy_drop": 100.0, "min_label_agreement": 0.0}  # random weights: near-zero logits
    export_bundle(model, folder / "bundle", data=str(sst2_sample_dir), max_verify_samples=16, **limits)
    return folder / "bundle"


@pytest.fixture(scope="module")
def menu_run(tiny_bundle_dir: Path, mpnet_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The CLI in a child process where torch, transformers, optimum and datasets cannot be imported."""
    tmp = tmp_path_factory.mktemp("menu")
    (tmp / "sitecustomize.py").write_text(TORCH_BLOCKER)
    (tmp / "data").mkdir()
    log = tmp / "imports.log"
    command = [sys.executable, "-m", "sst2dist.cli", "bench", "--menu", f"bert={tiny_bundle_dir}",
               "--menu", f"mpnet={mpnet_bundle}", "--data", str(write_small_sst2(tmp / "data")), "--threads", "1",
               "--batch-sizes", "1,4", "--latency-samples", str(LATENCY_SAMPLES), "--warmup", "1", "--no-progress",
               "--output", str(tmp / "{cpu}" / "menu")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp), "IMPORT_LOG": str(log), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    attempts = set(log.read_text().split()) if log.exists() else set()
    assert not attempts & {"torch", "transformers", "optimum", "datasets"}, attempts
    output = tmp / cpu_kind() / "menu"
    return {"menu": json.loads((output / "menu.json").read_text()), "output": output, "stdout": result.stdout}


def test_every_variant_of_every_bundle_is_measured(menu_run: dict, tiny_bundle_dir: Path, mpnet_bundle: Path) -> None:
    menu = menu_run["menu"]
    bundles = {"bert": tiny_bundle_dir, "mpnet": mpnet_bundle}
    expected = {(name, variant) for name, bundle in bundles.items() for variant in read_manifest(bundle)["variants"]}
    assert {(row["model"], row["variant"]) for row in menu["rows"]} == expected
    assert len(menu["rows"]) == len(expected) >= 4
    assert {row["model_type"] for row in menu["rows"]} == {"bert", "mpnet"}
    graph = ort.InferenceSession(str(mpnet_bundle / VARIANT_FILES["fp32"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in graph.get_inputs()] == ["input_ids", "attention_mask"]  # fed only what it declares
    assert menu["settings"]["threads"] == 1 and menu["settings"]["batch_size"] == 4
    assert menu["environment"]["cpu"]["kind"] == cpu_kind()


def test_rows_are_sorted_by_latency_and_figures_recompute(menu_run: dict) -> None:
    menu = menu_run["menu"]
    labels = np.array([label for _, label in SENTENCES])
    assert menu["dataset"]["labels"] == labels.tolist()
    p50s = [row["latency_ms"]["p50"] for row in menu["rows"]]
    assert p50s == sorted(p50s)
    for row in menu["rows"]:
        latencies = menu["raw"][f"{row['model']}/{row['variant']}"]["latency_ms"]
        assert len(latencies) == LATENCY_SAMPLES
        assert row["latency_ms"]["p50"] == pytest.approx(np.percentile(latencies, 50), rel=1e-6)
        assert row["latency_ms"]["p90"] == pytest.approx(np.percentile(latencies, 90), rel=1e-6)
        assert row["latency_vs_fastest"] == pytest.approx(row["latency_ms"]["p50"] / min(p50s))
        assert row["accuracy"] == pytest.approx((np.array(row["predictions"]) == labels).mean())
        files = [f for name in variant_files(row["variant"]) for f in onnx_files(Path(row["bundle"]) / name)]
        assert row["file_size_bytes"] == sum(f.stat().st_size for f in files) > 0
        assert row["file_size_mb"] == pytest.approx(row["file_size_bytes"] / 1e6)
        assert row["sorted_throughput_sentences_per_s"] > 0 and row["passed_gate"] is True
    assert menu["rows"][0]["latency_vs_fastest"] == 1.0


def test_table_report_and_chart_are_written_in_latency_order(menu_run: dict) -> None:
    menu, output = menu_run["menu"], menu_run["output"]
    assert sorted(p.name for p in output.iterdir()) == ["menu.json", "menu.md", "menu.png"]
    assert (output / "menu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (output / "menu.md").read_text()
    assert "| model | variant | accuracy % | p50 ms | p90 ms | x fastest | sorted bs4 sent/s | MB |" in report
    table = [line.split("|")[1:-1] for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    cells = [[cell.strip() for cell in line] for line in table[1:]]
    assert [(c[0], c[1]) for c in cells] == [(row["model"], row["variant"]) for row in menu["rows"]]
    for c, row in zip(cells, menu["rows"], strict=True):
        assert c[2] == f"{100 * row['accuracy']:.2f}" and c[5] == f"{row['latency_vs_fastest']:.2f}x"
    cpu = menu["environment"]["cpu"]
    for text in (report, menu_run["stdout"]):
        assert f"CPU: {cpu['model']} [{cpu['kind']}]" in text
    printed = [line.split()[:2] for line in menu_run["stdout"].splitlines() if line.startswith(("bert ", "mpnet "))]
    assert printed == [[row["model"], row["variant"]] for row in menu["rows"]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bundle", "BERT"], "not both"),
        (["--model", "runs/minilm/model"], "drop --model"),
        (["--backends", "torch-fp32"], "bundle variants only"),
        (["--backends", "ort-static-int8"], "has none of ort-static-int8"),
        (["--menu", "gone=/nonexistent/bundle"], "does not exist"),
        (["--menu", "nameless"], "NAME=BUNDLE_DIR"),
    ],
)
def test_bad_menu_input_fails_before_any_work(
    extra: list[str], message: str, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    extra = [str(tiny_bundle_dir) if arg == "BERT" else arg for arg in extra]
    args = ["bench", "--menu", f"bert={tiny_bundle_dir}", "--data", str(tmp_path), "--output", str(output), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert not output.exists()
