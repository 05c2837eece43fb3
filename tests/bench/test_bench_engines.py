"""The bench records each backend's real engine (OpenVINO variants as openvino), its version and the thread settings
the engine reports."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from sst2dist.bench.run import BenchSettings, run_bench
from tests.conftest import export_tiny_bundle

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install -e '.[openvino]' (make setup does)")


def test_openvino_backends_are_recorded_as_openvino_with_version_and_threads(
    tiny_model_dir: Path, sst2_sample_dir: Path, tmp_path: Path
) -> None:
    bundle = export_tiny_bundle(
        tiny_model_dir, sst2_sample_dir, tmp_path / "bundle", openvino="on", optimize="none", quantize="none"
    )
    settings = BenchSettings(
        bundle=str(bundle),
        data=str(sst2_sample_dir),
        backends=["ort-fp32", "openvino-f32"],
        threads=(1,),
        batch_sizes=(4,),
        max_samples=8,
        latency_samples=2,
        warmup=0,
        output=str(tmp_path / "bench"),
        progress=False,
    )
    backends = run_bench(settings)["backends"]
    assert backends["openvino-f32"]["engine"] == "openvino"
    assert backends["openvino-f32"]["engine_version"] == version("openvino")
    assert backends["ort-fp32"]["engine"] == "onnxruntime"
    assert backends["ort-fp32"]["engine_version"] == version("onnxruntime")
    assert backends["ort-fp32"]["threads_used"]["1"]["intra_op_num_threads"] == 1
    assert backends["openvino-f32"]["threads_used"]["1"]["INFERENCE_NUM_THREADS"] >= 1
