"""Bench pieces that need no model: the peak estimate per ISA, the one-sided accuracy comparison, length-sorted
throughput with fake backends, the {cpu} output placeholder, --menu parsing, and the reports built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sst2dist.bench import run as bench_run
from sst2dist.bench.measure import BenchError, measure_throughput
from sst2dist.bench.menu import parse_menu_items
from sst2dist.bench.report import peak_line
from sst2dist.bench.run import add_comparisons, peak_estimate
from sst2dist.bench.settings import output_folder
from sst2dist.environment import VectorPeak, cpu_kind

AVX2_EPYC = [VectorPeak("fp32", "AVX2 FMA, 2 x 256-bit", 32)]
XEON = [
    VectorPeak("fp32", "AVX-512 FMA, 2 x 512-bit", 64),
    VectorPeak("int8", "AVX-512 VNNI", 256),
    VectorPeak("int8", "AMX int8", 2048),
]


def speed_results(backend: str = "ort-fp32") -> dict:
    """Two thread counts; the fastest pass is 2 threads, sorted batches of 32, at 40 GFLOP/s in the model."""
    figures = {
        "throughput_sentences_per_s": {"1": 100.0, "32": 150.0},
        "model_gflops_per_s": {"1": 20.0, "32": 30.0},
        "sorted_throughput_sentences_per_s": {"32": 210.0},
        "sorted_model_gflops_per_s": {"32": 40.0},
    }
    slow = {key: {b: v / 2 for b, v in values.items()} for key, values in figures.items()}
    return {"backends": {backend: {"metrics": {"threads": {"1": slow, "2": figures}}}}}


def test_peak_is_derived_from_the_isa_and_clock_and_names_them() -> None:
    estimate = peak_estimate(speed_results(), AVX2_EPYC, (2600.0, "/proc/cpuinfo cpu MHz"))
    assert (estimate["threads"], estimate["batch_size"], estimate["order"]) == (2, 32, "sorted")
    peak = 2 * 2.6 * 32  # cores x GHz x fp32 FLOP/cycle/core
    assert estimate["peaks"] == {
        "fp32 AVX2 FMA, 2 x 256-bit": {"peak_gflops_per_s": pytest.approx(peak), "fraction": pytest.approx(40 / peak)}
    }
    assert estimate["unknown"] is None and "AVX2 FMA" in estimate["assumption"]
    line = peak_line({"peak_estimate": estimate})
    assert "of fp32 AVX2 FMA, 2 x 256-bit peak (166 GFLOP/s)" in line and "AVX-512" not in line
    xeon = peak_estimate(speed_results(), XEON, (2600.0, "cpufreq max"))
    assert xeon["peaks"]["fp32 AVX-512 FMA, 2 x 512-bit"]["peak_gflops_per_s"] == pytest.approx(2 * peak)


def test_int8_peaks_list_every_int8_engine_and_unknown_is_said() -> None:
    estimate = peak_estimate(speed_results("ort-int8"), XEON, (2000.0, "cpufreq max"))
    assert list(estimate["peaks"]) == ["int8 AVX-512 VNNI", "int8 AMX int8"]
    unknown = peak_estimate(speed_results("ort-int8"), AVX2_EPYC, (2600.0, "cpufreq max"))
    assert unknown["peaks"] == {} and "no known int8 peak" in unknown["unknown"]
    assert "share of peak unknown: no known int8 peak" in peak_line({"peak_estimate": unknown})


def test_an_unknown_clock_gives_no_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_run, "clock_mhz", lambda: None)
    estimate = peak_estimate(speed_results(), AVX2_EPYC)
    assert estimate["peaks"] == {} and "clock is unknown" in estimate["unknown"]


def test_accuracy_comparison_is_one_sided() -> None:
    backends = {
        name: {"metrics": {"accuracy": accuracy}, "raw": {}}
        for name, accuracy in (("torch-fp32", 0.90), ("ort-int8", 0.91), ("ort-fp32", 0.88))
    }
    predictions = {name: np.array([1, 0, 1]) for name in backends}
    add_comparisons(backends, "torch-fp32", predictions)
    better, worse = backends["ort-int8"]["metrics"], backends["ort-fp32"]["metrics"]
    assert better["accuracy_delta_points"] == pytest.approx(1.0) and better["accuracy_drop_points"] == 0.0
    assert worse["accuracy_delta_points"] == pytest.approx(-2.0) and worse["accuracy_drop_points"] == pytest.approx(2.0)


class FakeBackend:
    """Logits = (length, position in `TEXTS`): shows which row came back where; pads to the longest text."""

    def __init__(self, texts: list[str]) -> None:
        self.index = {text: i for i, text in enumerate(texts)}

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        longest = max(len(t) for t in texts)
        return {"attention_mask": np.ones((len(texts), longest)), "texts": texts}

    def run(self, encoded: dict) -> np.ndarray:
        return np.array([[len(t), self.index[t]] for t in encoded["texts"]], dtype=np.float32)


def test_length_sorted_throughput_pads_less_and_keeps_input_order() -> None:
    texts = [("x" * n) + str(i) for i, n in enumerate([40, 2, 35, 3, 30, 1, 45, 4])]
    backends = {"a": FakeBackend(texts), "b": FakeBackend(texts)}
    flops = {"a": lambda rows, length: rows * length, "b": lambda rows, length: 0.0}
    ticks: list[int] = []
    in_order = measure_throughput(backends, texts, 2, flops, ticks.append)
    by_length = measure_throughput(backends, texts, 2, flops, ticks.append, sort=True)
    for raw in (in_order, by_length):
        for figures in raw.values():
            np.testing.assert_array_equal(figures["logits"][:, 1], np.arange(len(texts)))
            assert figures["sentences"] == len(texts)
    assert by_length["a"]["padded_tokens"] < in_order["a"]["padded_tokens"]
    assert by_length["a"]["flops"] == by_length["a"]["padded_tokens"]
    assert sum(ticks) == 2 * 2 * len(texts)


def test_output_folder_replaces_the_cpu_placeholder(tmp_path: Path) -> None:
    folder = output_folder(str(tmp_path / "results" / "{cpu}" / "minilm"), Path("unused"))
    assert folder == str(tmp_path / "results" / cpu_kind() / "minilm")
    assert output_folder(None, tmp_path / "default") == str(tmp_path / "default")
    (tmp_path / "file").write_text("keep")
    with pytest.raises(BenchError, match="is a file"):
        output_folder(str(tmp_path / "file"), Path("unused"))


def test_menu_items_are_name_equals_folder() -> None:
    assert parse_menu_items(["teacher=export/teacher", " L3 = export/l3 "]) == {
        "teacher": "export/teacher",
        "L3": "export/l3",
    }
    for bad in (["export/l6"], ["=export/l6"], ["L6="], ["a/b=export/l6"]):
        with pytest.raises(BenchError, match="NAME=BUNDLE_DIR"):
            parse_menu_items(bad)
    with pytest.raises(BenchError, match="twice"):
        parse_menu_items(["L6=a", "L6=b"])
