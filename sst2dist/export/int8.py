"""The int8 variants of a bundle: dynamic and calibrated static quantization of the fp32 graph, with the recipe
(per-channel weights, attention's activation MatMuls kept fp32, FFN down-projections int8 weight-only), each held
by the hold check on train sentences (`int8_hold`: the most sensitive weight MatMuls kept fp32 where needed)."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sst2dist.environment import acceleration_flags
from sst2dist.export.int8_hold import (
    DYNAMIC,
    HoldCheck,
    calibrated,
    quantize_holding,
    rank_by_sensitivity,
)
from sst2dist.runtime import VARIANT_FILES

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

CALIBRATION_SAMPLES = 256
FUSED_GELU_OPS = ("Gelu", "FastGelu", "BiasGelu")
NO_HOLD_CHECK = "skipped: no train sentences given"


def cpu_quantization_target() -> tuple[str, list[str]]:
    """The ORTQuantizer config name that fits this CPU, and the CPU flags that chose it."""
    machine = platform.machine().lower()
    flags = acceleration_flags()
    if machine in ("arm64", "aarch64"):
        return "arm64", flags
    for name in ("avx512_vnni", "avx512f", "avx2"):
        if name in flags:
            return ("avx512" if name == "avx512f" else name), flags
    return "avx2", flags


def quantize_dynamic_int8(staging: Path, hold: HoldCheck | str = NO_HOLD_CHECK) -> dict:
    """model_quantized.onnx: dynamic int8 of the fp32 graph with the CPU's ORTQuantizer config, held by the hold
    check (`int8_hold`: the most sensitive weight MatMuls kept fp32 where int8 differs too much from fp32).

    The recipe (README, "int8 recipe"): per-channel symmetric int8 weights for every weight MatMul and the
    embedding Gathers (the word embeddings are half the file). Per-channel is what keeps most of the accuracy:
    per-tensor lost 1.0 point on a fine-tuned MiniLM. The FFN down-projections read GELU outputs whose outliers
    ruin a per-tensor int8 activation scale, so they are stored as int8 weights + DequantizeLinear + a float
    MatMul instead: same file size, label agreement 98.2 -> 99.0 %. onnxruntime fuses that pair into its
    MatMulNBits kernel, which by default (session option session.qdq_matmulnbits_accuracy_level = 4) computes in
    int8 with activation scales computed on the fly for each row, not per tensor. The attention MatMuls that multiply
    two activations (Q·Kᵀ, probabilities·V) stay fp32, as onnxruntime's own quantize_dynamic does
    (MatMulConstBOnly) and ORTQuantizer does not. The fp32 graph is quantized, not the optimized one:
    onnxruntime's shape inference fails on the fused operators.
    """
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    target, flags = cpu_quantization_target()
    fp32_path = staging / VARIANT_FILES["fp32"]
    variant_path = staging / VARIANT_FILES["int8"]

    def quantize(kept_fp32: list[str]) -> dict:
        recipe, weight_only = int8_recipe(fp32_path, kept_fp32)
        config = getattr(AutoQuantizationConfig, target)(is_static=False, **recipe)
        quantizer = ORTQuantizer.from_pretrained(staging, file_name=fp32_path.name)
        quantizer.quantize(config, save_dir=staging, file_suffix="quantized")
        store_int8_weights(variant_path, weight_only)
        return {**recipe, "int8_weight_only": weight_only}

    def rank() -> list[tuple[str, float]]:
        return rank_by_sensitivity(fp32_path, *sensitivity_candidates(fp32_path), hold.sensitivity_feeds, DYNAMIC)

    held = quantize_holding(quantize, variant_path, hold, rank)
    return {"mode": "dynamic", "config": target, "cpu_flags": flags, **held}


def int8_recipe(fp32_path: Path, kept_fp32: Sequence[str] = ()) -> tuple[dict, list[str]]:
    """What both int8 variants quantize (per-channel weight MatMuls and Gathers), and the down-projections that
    get int8 weights and no stored activation scale (see store_int8_weights); `kept_fp32` stay fp32 altogether."""
    weight_only = [name for name in down_projections(fp32_path) if name not in kept_fp32]
    recipe = {
        "per_channel": True,
        "operators_to_quantize": ["MatMul", "Gather"],
        "nodes_to_exclude": activation_matmuls(fp32_path) + weight_only + list(kept_fp32),
    }
    return recipe, weight_only


def sensitivity_candidates(fp32_path: Path) -> tuple[list[str], list[str]]:
    """The weight MatMuls the recipe quantizes (the fallback's candidates), and which of them are weight-only."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    activation = set(activation_matmuls(fp32_path))
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and n.name not in activation]
    return matmuls, down_projections(fp32_path)


def activation_matmuls(path: Path) -> list[str]:
    """MatMul nodes with no constant (weight) input: attention's Q·Kᵀ and probabilities·V."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


def down_projections(path: Path) -> list[str]:
    """Weight MatMuls fed by a GELU (fused, or a Mul with an Erf or Tanh a few nodes upstream): the FFN output
    layers, in any BERT-family graph. Found by what feeds them, not by their weight's shape: a pruned FFN can be
    narrower than the hidden state, and pruned heads make query/key/value narrow too."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}

    def reaches(tensor: str, ops: tuple[str, ...], hops: int) -> bool:
        node = producers.get(tensor)
        if node is None or hops == 0:
            return False
        return node.op_type in ops or (
            node.op_type in ("Mul", "Add", "Div") and any(reaches(i, ops, hops - 1) for i in node.input)
        )

    def gelu_output(tensor: str) -> bool:
        # a fused GELU, or the Mul that ends a decomposed one (a pooler's bare Tanh feeds the classifier: not a GELU)
        node = producers.get(tensor)
        if node is None:
            return False
        return node.op_type in FUSED_GELU_OPS or (
            node.op_type == "Mul" and any(reaches(i, ("Erf", "Tanh"), 3) for i in node.input)
        )

    def fed_by_gelu(node: onnx.NodeProto) -> bool:
        activations = [i for i in node.input if i not in weights]
        return len(activations) == 1 and len(activations) < len(node.input) and gelu_output(activations[0])

    return [n.name for n in graph.node if n.op_type == "MatMul" and fed_by_gelu(n)]


def store_int8_weights(path: Path, node_names: list[str]) -> None:
    """Replace these MatMuls' fp32 weights by per-output-channel int8 + DequantizeLinear (no activation scale is
    stored: onnxruntime's MatMulNBits quantizes these activations row by row when it runs)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    for node in [n for n in graph.node if n.name in node_names]:
        name = next(i for i in node.input if i in initializers)
        weight = numpy_helper.to_array(initializers[name])
        scale = (np.abs(weight).max(axis=0) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros_like(quantized[0]), f"{name}_zero_point"),
            ]
        )
        inputs = [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"]
        dequantize = helper.make_node("DequantizeLinear", inputs, [name], name=f"{name}_dequantize", axis=1)
        graph.node.insert(list(graph.node).index(node), dequantize)
    onnx.save(model, str(path))


def read_float_activations(path: Path, node_names: Sequence[str]) -> None:
    """Point these (fp32) nodes back at the float tensors they read. The QDQ quantizer gives a quantized tensor one
    QuantizeLinear -> DequantizeLinear pair that every consumer reads, excluded nodes too: a query MatMul kept fp32
    beside an int8 key MatMul would still see int8-rounded activations."""
    import onnx

    if not node_names:
        return
    model = onnx.load(str(path))
    producers = {output: node for node in model.graph.node for output in node.output}

    def float_source(tensor: str) -> str:
        dequantize = producers.get(tensor)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return tensor
        quantize = producers.get(dequantize.input[0])
        return quantize.input[0] if quantize is not None and quantize.op_type == "QuantizeLinear" else tensor

    for node in (n for n in model.graph.node if n.name in set(node_names)):
        node.input[:] = [float_source(name) for name in node.input]
    onnx.save(model, str(path))


def quantize_static_int8(
    staging: Path, train: Dataset, tokenizer: PreTrainedTokenizerBase, hold: HoldCheck | str = NO_HOLD_CHECK
) -> dict:
    """model_static_quantized.onnx: int8 activations too, their ranges calibrated (min/max) on train sentences.
    Same recipe as the dynamic variant (down-projections weight-only); the fixed scales make it batch-invariant.
    Its own hold check and fallback: a fixed calibrated range errs where dynamic int8's per-batch range does not,
    so its sensitivity is measured with those ranges."""
    from datasets import Dataset
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

    target, flags = cpu_quantization_target()
    fp32_path = staging / VARIANT_FILES["fp32"]
    variant_path = staging / VARIANT_FILES["static-int8"]
    sample = calibration_sample(train, CALIBRATION_SAMPLES)
    features = tokenizer(list(sample["sentence"]), truncation=True)  # calibrated one sentence at a time: no padding
    calibration = Dataset.from_dict({name: features[name] for name in onnx_input_names(fp32_path)})
    recipe, _ = int8_recipe(fp32_path)
    config = getattr(AutoQuantizationConfig, target)(is_static=True, **recipe)
    augmented = staging / "calibration_augmented.onnx"
    ranges = ORTQuantizer.from_pretrained(staging, file_name=fp32_path.name).fit(
        dataset=calibration,
        calibration_config=AutoCalibrationConfig.minmax(calibration),
        operators_to_quantize=config.operators_to_quantize,
        onnx_augmented_model_name=augmented,
    )  # once: keeping nodes fp32 only drops ranges it needs
    augmented.unlink(missing_ok=True)

    def quantize(kept_fp32: list[str]) -> dict:
        recipe, weight_only = int8_recipe(fp32_path, kept_fp32)
        config = getattr(AutoQuantizationConfig, target)(is_static=True, **recipe)
        quantizer = ORTQuantizer.from_pretrained(staging, file_name=fp32_path.name)
        quantizer.quantize(config, save_dir=staging, file_suffix="static_quantized", calibration_tensors_range=ranges)
        store_int8_weights(variant_path, weight_only)
        read_float_activations(variant_path, kept_fp32)
        return {**recipe, "int8_weight_only": weight_only}

    def rank() -> list[tuple[str, float]]:
        candidates = sensitivity_candidates(fp32_path)
        return rank_by_sensitivity(fp32_path, *candidates, hold.sensitivity_feeds, calibrated(ranges))

    held = quantize_holding(quantize, variant_path, hold, rank)
    return {
        "mode": "static",
        "config": target,
        "cpu_flags": flags,
        "calibration": {"split": "train", "samples": len(sample), "method": "minmax", "seed": 0},
        **held,
    }


def calibration_sample(train: Dataset, samples: int) -> Dataset:
    """The first `samples` train rows after a fixed shuffle: what both calibrated variants see (never dev)."""
    return train.shuffle(seed=0).select(range(min(samples, len(train))))


def onnx_input_names(path: Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
