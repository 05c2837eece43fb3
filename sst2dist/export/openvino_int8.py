"""The openvino-int8 variant: NNCF post-training quantization of model.onnx, saved as OpenVINO IR
(openvino_int8.xml + openvino_int8.bin) and gated, timed and chosen like every variant.

The recipe is NNCF's for transformers (`model_type=TRANSFORMER`): int8 weights and activations for the MatMuls,
per-channel weight scales, SmoothQuant to move activation outliers into the weights, and the sensitive operators
(Softmax, LayerNorm, GELU, the attention's activation-by-activation MatMuls' float paths) kept in float. Its ranges
are calibrated on TRAIN sentences (one at a time, unpadded), never on the validation set the gate judges. At run
time the layers NNCF keeps in float get the bf16 hint where the CPU has bf16 (`engines.inference_precision`).

NNCF comes with the `openvino` extra; where it (or OpenVINO) is missing, or `--openvino off` / `--quantize none`
was asked, the variant is left out and manifest["engines"]["openvino"]["skipped"] says why.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sst2dist.engines import INSTALL_OPENVINO, OPENVINO_INT8, VARIANTS, openvino, unavailable_reason
from sst2dist.export.manifest import sha256

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 300  # NNCF's default subset; the probe: 9 s on MiniLM, -0.34 points


def nncf_missing() -> str | None:
    """Why NNCF cannot be used here, or None."""
    try:
        found = importlib.util.find_spec("nncf") is not None
    except ImportError:  # an import hook that blocks it
        found = False
    return None if found else f"NNCF is not installed ({INSTALL_OPENVINO})"


def skip_reason(openvino_mode: str, quantize: str) -> str | None:
    """Why the export leaves openvino-int8 out, or None when it builds it."""
    if openvino_mode == "off":
        return "--openvino off"
    if quantize == "none":
        return "--quantize none"
    return unavailable_reason(OPENVINO_INT8) or nncf_missing()


def add_openvino_int8(
    manifest: dict,
    staging: Path,
    openvino_mode: str,
    quantize: str,
    train: Dataset,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Quantize model.onnx with NNCF into the bundle and add its manifest entry, or record why it was left out.
    Runs after `add_openvino_variants`, which creates manifest["engines"]."""
    why = skip_reason(openvino_mode, quantize)
    if why:
        manifest["engines"]["openvino"]["skipped"][OPENVINO_INT8] = why
        return
    manifest["openvino_quantization"] = quantize_openvino_int8(staging, train, tokenizer)
    add_ir_variant(manifest, staging, OPENVINO_INT8)


def quantize_openvino_int8(staging: Path, train: Dataset, tokenizer: PreTrainedTokenizerBase) -> dict:
    """openvino_int8.xml/.bin from model.onnx; returns what the manifest records about the recipe."""
    from sst2dist.export.int8 import calibration_sample

    ov = openvino()  # first: it makes the telemetry package unimportable, so NNCF falls back to its no-op stub
    import nncf

    model = ov.Core().read_model(str(staging / VARIANTS["fp32"].file))
    sample = calibration_sample(train, CALIBRATION_SAMPLES)
    names = [port.get_any_name() for port in model.inputs]
    feeds = [unpadded_feeds(tokenizer, sentence, names) for sentence in sample["sentence"]]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
    )
    spec = VARIANTS[OPENVINO_INT8]
    ov.save_model(quantized, str(staging / spec.file), compress_to_fp16=False)
    return {
        "tool": "nncf.quantize",
        "model_type": "transformer",
        "calibration": {"split": "train", "samples": len(feeds), "seed": 0, "padding": "none"},
        "nncf_version": nncf.__version__,
    }


def unpadded_feeds(tokenizer: PreTrainedTokenizerBase, sentence: str, names: list[str]) -> dict[str, np.ndarray]:
    encoded = tokenizer(sentence, truncation=True, return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in names}


def add_ir_variant(manifest: dict, staging: Path, name: str) -> None:
    """An IR variant's entry: the .xml like any variant's file, its weights file hashed beside it (the runtime
    checks both before loading), size_bytes the two together."""
    spec = VARIANTS[name]
    graph, weights = staging / spec.file, staging / str(spec.weights)
    manifest["variants"][name] = {
        "file": graph.name,
        "sha256": sha256(graph),
        "weights": {"file": weights.name, "sha256": sha256(weights), "size_bytes": weights.stat().st_size},
        "size_bytes": graph.stat().st_size + weights.stat().st_size,
        "opset": None,  # OpenVINO IR, not ONNX
        "engine": spec.engine,
        "precision": spec.precision,
        "passed": None,
    }
    logger.info("openvino-int8: %.1f MB", manifest["variants"][name]["size_bytes"] / 1e6)
