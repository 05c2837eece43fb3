"""Export a fine-tuned sequence classifier to a verified ONNX deploy bundle.

    model folder ──► model.onnx (Optimum main_export) ──► model_optimized.onnx (ORTOptimizer)
                          └──► model_quantized.onnx (dynamic int8) [+ model_static_quantized.onnx]
    every variant ──► verified against PyTorch on real SST-2 sentences ──► manifest.json ──► rename into place

Optimum's own export check runs on dummy inputs and only warns; this gate runs the bundle through the
runtime `Classifier` (the code that will serve it) on the validation set and refuses a bad variant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sst2dist.atomic import replace_dir
from sst2dist.environment import acceleration_flags, package_versions
from sst2dist.runtime import MANIFEST_FILE, VARIANT_FILES, Classifier, default_variant

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

OPTIMIZE_LEVELS = ("O1", "O2", "O3", "none")
QUANTIZE_MODES = ("dynamic", "static", "none")
VERIFY_BATCH_SIZES = (1, 8, 32)
# fp32 and the O2 graph match PyTorch to ~1e-6 on MiniLM; 1e-4 leaves room for other CPUs' kernels.
LOGIT_TOLERANCE = {"fp32": 1e-4, "optimized": 1e-4}
CALIBRATION_SAMPLES = 256
INT8_TARGET_SIZE_RATIO = 0.30
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# Only these CPU flags decide the quantization config; they are recorded in the manifest.
VERSIONED_PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnx", "tokenizers")


class ExportError(ValueError):
    """The model folder, the output path or a verification result rules the export out."""


def export_bundle(
    model_dir: str | Path,
    output_dir: str | Path,
    *,
    opset: int = 18,
    optimize: str = "O2",
    quantize: str = "dynamic",
    data: str | None = None,
    max_accuracy_drop: float = 0.5,
    force: bool = False,
    keep_failed: bool = False,
    max_verify_samples: int | None = None,
) -> dict:
    """Write a verified bundle to `output_dir` and return its manifest.

    The bundle is built in a hidden temporary folder beside `output_dir` and renamed into place only when
    every variant passed the gate (int8 may be kept as failed with `keep_failed`), so a failed or
    interrupted export leaves nothing behind and an existing bundle is replaced only with `force`.
    """
    from sst2dist.data import DEFAULT_DATA, load_sst2

    model_dir, output_dir = Path(model_dir).expanduser(), Path(output_dir).expanduser()
    check_options(opset, optimize, quantize, max_accuracy_drop, max_verify_samples)
    weights = check_model_dir(model_dir)
    check_output_dir(output_dir, force)
    model, tokenizer = load_source(model_dir)
    data = data or DEFAULT_DATA
    splits = load_sst2(data, max_eval_samples=max_verify_samples)

    new_parents = [p for p in (output_dir.parent, *output_dir.parent.parents) if not p.exists()]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would make the published bundle private
        manifest = new_manifest(model_dir, weights, tokenizer, model, opset, optimize, quantize)
        build_variants(staging, model_dir, manifest, optimize, quantize, splits["train"], tokenizer)
        manifest["verification"] = verify_bundle(
            staging, model, tokenizer, splits["validation"], manifest, max_accuracy_drop, data
        )
        check_gate(manifest, keep_failed)
        manifest["default_variant"] = default_variant(manifest)
        write_manifest(staging, manifest)
        replace_dir(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in new_parents:  # deepest first: leave no empty folders behind either
            parent.rmdir()
        raise
    return manifest


# --- checks before anything is written ---


def check_options(
    opset: int, optimize: str, quantize: str, max_accuracy_drop: float, max_verify_samples: int | None
) -> None:
    if not 14 <= opset <= 21:
        raise ExportError(f"--opset {opset} is out of range: use 14..21 (18 is the default)")
    if optimize not in OPTIMIZE_LEVELS:
        raise ExportError(f"--optimize {optimize!r} is unknown: choose one of {', '.join(OPTIMIZE_LEVELS)}")
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"--quantize {quantize!r} is unknown: choose one of {', '.join(QUANTIZE_MODES)}")
    if max_accuracy_drop < 0:
        raise ExportError(f"--max-accuracy-drop must be >= 0 (points), got {max_accuracy_drop}")
    if max_verify_samples is not None and max_verify_samples < 1:
        raise ExportError(f"--max-verify-samples must be >= 1, got {max_verify_samples}")


def check_model_dir(model_dir: Path) -> list[Path]:
    """The folder's weight files, after checking it holds a sequence classifier."""
    if not model_dir.is_dir():
        raise ExportError(f"model folder {model_dir} does not exist: pass the folder `sst2dist train` wrote")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{model_dir} has no config.json: it is not a saved model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{config_file} is unreadable ({err}): save the model again") from err
    architectures = config.get("architectures") or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        found = ", ".join(architectures) or "no architecture"
        raise ExportError(
            f"{model_dir} holds {found}, not a sequence classifier: export a fine-tuned "
            "*ForSequenceClassification folder (the `model/` folder `sst2dist train` writes)"
        )
    weights = sorted(p for pattern in ("model*.safetensors", "pytorch_model*.bin") for p in model_dir.glob(pattern))
    if not weights:
        raise ExportError(f"{model_dir} has no weights ({' or '.join(WEIGHT_FILES)}): save the model again")
    if not (model_dir / "tokenizer.json").is_file():
        raise ExportError(f"{model_dir} has no tokenizer.json: save the fast tokenizer beside the model")
    return weights


def check_output_dir(output_dir: Path, force: bool) -> None:
    if output_dir.is_file():
        raise ExportError(f"--output {output_dir} is a file: give a folder path for the bundle")
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not (output_dir / MANIFEST_FILE).is_file():
        raise ExportError(
            f"--output {output_dir} is a non-empty folder that is not a bundle: choose a new or empty folder"
        )
    if not force:
        raise ExportError(f"a bundle already exists at {output_dir}: pass --force to replace it")


def load_source(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    except Exception as err:  # safetensors/torch/transformers raise many types for damaged files
        raise ExportError(
            f"could not load the model in {model_dir} ({err.__class__.__name__}: {err}): "
            "its weights or tokenizer are unreadable; save the model again"
        ) from err
    return model, tokenizer


# --- building the variants ---


def build_variants(
    staging: Path,
    model_dir: Path,
    manifest: dict,
    optimize: str,
    quantize: str,
    train: Dataset,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    export_fp32(model_dir, staging, manifest["opset"])
    add_variant(manifest, staging, "fp32")
    if optimize != "none":
        optimize_graph(staging, optimize)
        add_variant(manifest, staging, "optimized")
        manifest["optimization"] = fusion_report(staging / VARIANT_FILES["optimized"])
    if quantize != "none":
        manifest["quantization"] = quantize_dynamic_int8(staging)
        add_variant(manifest, staging, "int8")
    if quantize == "static":
        manifest["static_quantization"] = quantize_static_int8(staging, train, tokenizer)
        add_variant(manifest, staging, "static-int8")
    with_labels(staging, manifest["labels"])


def export_fp32(model_dir: Path, staging: Path, opset: int) -> None:
    """model.onnx with dynamic batch and sequence axes, plus config.json and the tokenizer files."""
    from optimum.exporters.onnx import main_export

    try:
        main_export(
            str(model_dir),
            staging,
            task="text-classification",  # explicit: no hub look-up to infer it
            opset=opset,
            device="cpu",
            do_validation=False,  # verify_bundle does a stricter check on real sentences
            local_files_only=True,
            library_name="transformers",
        )
    except Exception as err:  # Optimum raises ValueError, KeyError, RuntimeError... for unsupported models
        raise ExportError(
            f"Optimum could not export {model_dir} to ONNX ({err.__class__.__name__}: {err}); "
            "sst2dist supports BERT-family sequence classifiers"
        ) from err
    if not (staging / VARIANT_FILES["fp32"]).is_file():
        raise ExportError(f"Optimum wrote no {VARIANT_FILES['fp32']} for {model_dir}")


def optimize_graph(staging: Path, level: str) -> None:
    """model_optimized.onnx: ORTOptimizer's fused attention, GELU and LayerNorm (O2), for CPU."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    optimizer = ORTOptimizer.from_pretrained(staging, file_names=[VARIANT_FILES["fp32"]])
    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=False)
    optimizer.optimize(config, save_dir=staging, file_suffix="optimized")


FUSED_OPERATORS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization")
FUSED_OPERATORS += ("BiasGelu", "FastGelu", "Gelu", "LayerNormalization")


def fusion_report(path: Path) -> dict:
    """Which fused operators the optimizer produced. ORTOptimizer runs BERT's fusion patterns on any BERT-family
    graph; where a model's graph does not match them (MPNet's relative-position attention), fewer fuse, and the
    manifest says so rather than the export failing."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = {op: sum(n.op_type == op for n in graph.node) for op in FUSED_OPERATORS}
    fused = {op: count for op, count in counts.items() if count}
    missing = [op for op in ("Attention", "SkipLayerNormalization") if op not in fused]
    note = f"not fused for this model type: {', '.join(missing)}" if missing else None
    return {"fused_operators": fused, "note": note}


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


def quantize_dynamic_int8(staging: Path) -> dict:
    """model_quantized.onnx: dynamic int8 of the fp32 graph with the CPU's ORTQuantizer config.

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
    recipe, weight_only = int8_recipe(fp32_path)
    config = getattr(AutoQuantizationConfig, target)(is_static=False, **recipe)
    quantizer = ORTQuantizer.from_pretrained(staging, file_name=fp32_path.name)
    quantizer.quantize(config, save_dir=staging, file_suffix="quantized")
    store_int8_weights(staging / VARIANT_FILES["int8"], weight_only)
    return {"mode": "dynamic", "config": target, "cpu_flags": flags, **recipe, "int8_weight_only": weight_only}


def int8_recipe(fp32_path: Path) -> tuple[dict, list[str]]:
    """What both int8 variants quantize (per-channel weight MatMuls and Gathers), and the down-projections that
    get int8 weights and no stored activation scale (see store_int8_weights)."""
    weight_only = down_projections(fp32_path)
    recipe = {
        "per_channel": True,
        "operators_to_quantize": ["MatMul", "Gather"],
        "nodes_to_exclude": activation_matmuls(fp32_path) + weight_only,
    }
    return recipe, weight_only


def activation_matmuls(path: Path) -> list[str]:
    """MatMul nodes with no constant (weight) input: attention's Q·Kᵀ and probabilities·V."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


def down_projections(path: Path) -> list[str]:
    """Weight MatMuls whose [in, out] weight narrows (in > out): the FFN output layers, in any BERT-family graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}

    def narrows(node: onnx.NodeProto) -> bool:
        weight = next((shapes[i] for i in node.input if len(shapes.get(i, [])) == 2), None)
        return weight is not None and weight[0] > weight[1]

    return [n.name for n in graph.node if n.op_type == "MatMul" and narrows(n)]


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


def quantize_static_int8(staging: Path, train: Dataset, tokenizer: PreTrainedTokenizerBase) -> dict:
    """model_static_quantized.onnx: int8 activations too, their ranges calibrated (min/max) on train sentences.
    Same recipe as the dynamic variant (down-projections weight-only); the fixed scales make it batch-invariant."""
    from datasets import Dataset
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

    target, flags = cpu_quantization_target()
    fp32_path = staging / VARIANT_FILES["fp32"]
    sample = train.shuffle(seed=0).select(range(min(CALIBRATION_SAMPLES, len(train))))
    features = tokenizer(list(sample["sentence"]), truncation=True)  # calibrated one sentence at a time: no padding
    calibration = Dataset.from_dict({name: features[name] for name in onnx_input_names(fp32_path)})
    recipe, weight_only = int8_recipe(fp32_path)
    config = getattr(AutoQuantizationConfig, target)(is_static=True, **recipe)
    quantizer = ORTQuantizer.from_pretrained(staging, file_name=fp32_path.name)
    augmented = staging / "calibration_augmented.onnx"
    ranges = quantizer.fit(
        dataset=calibration,
        calibration_config=AutoCalibrationConfig.minmax(calibration),
        operators_to_quantize=config.operators_to_quantize,
        onnx_augmented_model_name=augmented,
    )
    augmented.unlink(missing_ok=True)
    quantizer.quantize(config, save_dir=staging, file_suffix="static_quantized", calibration_tensors_range=ranges)
    store_int8_weights(staging / VARIANT_FILES["static-int8"], weight_only)
    return {
        "mode": "static",
        "config": target,
        "cpu_flags": flags,
        "calibration": {"split": "train", "samples": len(sample), "method": "minmax", "seed": 0},
        **recipe,
        "int8_weight_only": weight_only,
    }


def onnx_input_names(path: Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def with_labels(staging: Path, labels: list[str]) -> None:
    """Make sure config.json names the labels (a model saved without them would say LABEL_0, LABEL_1)."""
    config_file = staging / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# --- manifest ---


def new_manifest(
    model_dir: Path,
    weights: list[Path],
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    opset: int,
    optimize: str,
    quantize: str,
) -> dict:
    return {
        "format": "sst2dist-bundle/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": "text-classification",
        "source": {
            "model_dir": str(model_dir.resolve()),
            "weights": [{"file": w.name, "sha256": sha256(w)} for w in weights],
        },
        "labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "max_length": max_length(tokenizer, model),
        "pad_token": tokenizer.pad_token,
        "opset": opset,
        "optimize": optimize,
        "quantize": quantize,
        "versions": package_versions(VERSIONED_PACKAGES),
        "cpu": {"machine": platform.machine(), "flags": acceleration_flags()},
        "variants": {},
    }


def max_length(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    """Where transformers truncates (tokenizer_config's model_max_length), capped by the position table."""
    return int(min(tokenizer.model_max_length, model.config.max_position_embeddings))


def add_variant(manifest: dict, staging: Path, name: str) -> None:
    path = staging / VARIANT_FILES[name]
    manifest["variants"][name] = {
        "file": path.name,
        "sha256": sha256(path),
        "size_bytes": path.stat().st_size,
        "opset": onnx_opset(path),
        "passed": None,
    }


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


# --- verification gate ---


def verify_bundle(
    bundle: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    validation: Dataset,
    manifest: dict,
    max_accuracy_drop: float,
    data: str,
) -> dict:
    """PyTorch vs every variant on the validation sentences, at several batch sizes (1 and padded batches).

    Each variant runs through the runtime Classifier, so its tokenizer is checked too. fp32 and optimized
    must match PyTorch's logits within LOGIT_TOLERANCE and agree on every label; int8 variants may lose at
    most `max_accuracy_drop` accuracy points. Results go into each variant's manifest entry.
    """
    write_manifest(bundle, manifest)  # the Classifier reads max_length and labels from it
    texts, labels = list(validation["sentence"]), np.array(validation["label"])
    reference = {size: pytorch_logits(model, tokenizer, texts, size) for size in VERIFY_BATCH_SIZES}
    reference_accuracy = accuracy(reference[VERIFY_BATCH_SIZES[-1]], labels)
    for name, entry in manifest["variants"].items():
        started = time.perf_counter()
        classifier = Classifier(bundle, variant=name, threads=1)  # no thread spinning beside PyTorch
        results = [compare(classifier.logits(texts, size), reference[size], labels) for size in VERIFY_BATCH_SIZES]
        entry["verification"] = worst_over_batch_sizes(results, reference_accuracy)
        entry["verification"]["seconds"] = round(time.perf_counter() - started, 1)
        judge(name, entry, manifest, max_accuracy_drop)
    return {
        "data": data,
        "split": "validation",
        "samples": len(texts),
        "batch_sizes": list(VERIFY_BATCH_SIZES),
        "pytorch_accuracy": reference_accuracy,
        "max_accuracy_drop": max_accuracy_drop,
        "logit_tolerance": LOGIT_TOLERANCE,
    }


def pytorch_logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int
) -> np.ndarray:
    import torch

    batches = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the ONNX side; small batches spend more time waking threads than computing
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                encoded = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
                batches.append(model(**encoded).logits.float().numpy())
    finally:
        torch.set_num_threads(threads)
    return np.concatenate(batches)


def compare(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "max_abs_logit_diff": float(np.abs(logits - reference).max()),
        "label_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
        "accuracy": accuracy(logits, labels),
    }


def worst_over_batch_sizes(results: list[dict], reference_accuracy: float) -> dict:
    """The worst case over the batch sizes."""
    worst_accuracy = min(r["accuracy"] for r in results)
    return {
        "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in results),
        "label_agreement": min(r["label_agreement"] for r in results),
        "accuracy": worst_accuracy,
        "accuracy_drop_points": round(100 * (reference_accuracy - worst_accuracy), 4),
        "by_batch_size": dict(zip(map(str, VERIFY_BATCH_SIZES), results, strict=True)),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def judge(name: str, entry: dict, manifest: dict, max_accuracy_drop: float) -> None:
    result = entry["verification"]
    if name in LOGIT_TOLERANCE:
        tolerance = LOGIT_TOLERANCE[name]
        entry["passed"] = result["max_abs_logit_diff"] <= tolerance and result["label_agreement"] == 1.0
        entry["failure"] = (
            None
            if entry["passed"]
            else (
                f"variant {name}: max |Δlogit| vs PyTorch {result['max_abs_logit_diff']:.3g} "
                f"(limit {tolerance:g}), label agreement {100 * result['label_agreement']:.2f}% (limit 100%)"
            )
        )
        return
    entry["passed"] = result["accuracy_drop_points"] <= max_accuracy_drop
    entry["failure"] = (
        None
        if entry["passed"]
        else (
            f"variant {name}: accuracy {100 * result['accuracy']:.2f}% is {result['accuracy_drop_points']:.2f} "
            f"points below PyTorch (limit {max_accuracy_drop:g})"
        )
    )
    fp32_size = manifest["variants"]["fp32"]["size_bytes"]
    entry["size_ratio_vs_fp32"] = round(entry["size_bytes"] / fp32_size, 4)
    entry["meets_size_target"] = entry["size_ratio_vs_fp32"] <= INT8_TARGET_SIZE_RATIO


def check_gate(manifest: dict, keep_failed: bool) -> None:
    """Raise with every failure's numbers, unless only int8 variants failed and `keep_failed` is set."""
    failed = {name: entry["failure"] for name, entry in manifest["variants"].items() if not entry["passed"]}
    fatal = [msg for name, msg in failed.items() if name in LOGIT_TOLERANCE or not keep_failed]
    if fatal:
        hint = "" if any(name in LOGIT_TOLERANCE for name in failed) else " (--keep-failed keeps it, marked failed)"
        raise ExportError("verification failed: " + "; ".join(fatal) + hint)
    for message in failed.values():
        logger.warning("kept a failed variant: %s", message)
