"""What `sst2dist export-onnx` is asked to do: `ExportOptions`, the options of `export_bundle`, each a flag of the
same name. Standard library only, so the command line reads it without importing the exporter."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from sst2dist.config_fields import Options, in_range, non_negative, option, positive
from sst2dist.data_options import DataColumns, label_column_option, labels_option, text_column_option

OPTIMIZE_LEVELS = ("O1", "O2", "O3", "none")
QUANTIZE_MODES = ("dynamic", "static", "none")
OPENVINO_MODES = ("auto", "on", "off")


def openvino_installed(mode: str) -> str | None:
    """--openvino on needs OpenVINO importable (a failing import hook counts as not installed)."""
    if mode != "on":
        return None
    try:
        found = importlib.util.find_spec("openvino") is not None
    except ImportError:
        found = False
    return None if found else "needs OpenVINO installed (pip install 'sst2dist[openvino]'); without it pass auto or off"


@dataclass(frozen=True)
class ExportOptions(DataColumns, Options):
    opset: int = option(18, "ONNX opset.", checks=[in_range(14, 21)])
    optimize: str = option(
        "O2",
        "ORTOptimizer level for model_optimized.onnx (O2: fused attention, GELU, LayerNorm).",
        choices=OPTIMIZE_LEVELS,
    )
    quantize: str = option(
        "dynamic",
        "int8 variants: dynamic (model_quantized.onnx); static also adds a calibrated model_static_quantized.onnx.",
        choices=QUANTIZE_MODES,
    )
    openvino: str = option(
        "auto",
        "OpenVINO variants (openvino-f32; openvino-bf16 where the CPU has bf16; openvino-int8, NNCF int8 IR, where "
        "NNCF is installed), gated and timed like the others: auto (when OpenVINO is installed), on (required), off.",
        choices=OPENVINO_MODES,
        checks=[openvino_installed],
    )
    data: str | None = option(
        None, "Dataset hub id or local folder (train and dev files) to verify and calibrate on. Default: SST-2."
    )
    text_column: str = text_column_option()
    label_column: str = label_column_option()
    labels: str | None = labels_option()
    max_accuracy_drop: float = option(
        0.5,
        "Most accuracy points a lossy variant (int8, static-int8, openvino-bf16, openvino-int8) may lose vs PyTorch "
        "(also NNCF's accuracy-control limit for openvino-int8).",
        checks=[non_negative],
    )
    min_label_agreement: float = option(
        98.0,
        "Least % of verify sentences on which a lossy variant must give PyTorch's label (flips both ways count).",
        checks=[in_range(0, 100)],
    )
    max_verify_samples: int | None = option(None, "Verify on the first N validation sentences.", checks=[positive])
    keep_failed: bool = option(
        False, "Keep an int8 or static-int8 variant that fails the gate, marked failed (never chosen by default)."
    )
    force: bool = option(False, "Replace an existing bundle at --output.")
