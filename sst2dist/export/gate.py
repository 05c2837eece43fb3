"""The export's verification gate: every variant against PyTorch on real validation sentences, at several batch
sizes, judged by its limits (logits for the exact variants fp32/optimized/openvino-f32, accuracy for int8 and
openvino-bf16); a failure stops the export, except an OpenVINO variant's: the bundle serves without OpenVINO, so a
failed one is kept, marked failed, and never chosen."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sst2dist.engines import OPENVINO, engine_of
from sst2dist.export.manifest import write_manifest
from sst2dist.runtime import Classifier

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger("sst2dist.export")

VERIFY_BATCH_SIZES = (1, 8, 32)
# fp32 and the O2 graph match PyTorch to ~1e-6 on MiniLM; 1e-4 leaves room for other CPUs' kernels. OpenVINO's
# f32 hint runs the same fp32 graph exactly (without the hint it would pick bf16 on AMX CPUs).
LOGIT_TOLERANCE = {"fp32": 1e-4, "optimized": 1e-4, "openvino-f32": 1e-4}
INT8_VARIANTS = ("int8", "static-int8")
INT8_TARGET_SIZE_RATIO = 0.30


class ExportError(ValueError):
    """The model folder, the output path or a verification result rules the export out."""


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
    must match PyTorch's logits within LOGIT_TOLERANCE and agree on every label; int8 variants and
    openvino-bf16 may lose at most `max_accuracy_drop` accuracy points (their agreement and max |Δlogit| are
    recorded too). Results go into each variant's manifest entry.
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
    if name in INT8_VARIANTS:
        fp32_size = manifest["variants"]["fp32"]["size_bytes"]
        entry["size_ratio_vs_fp32"] = round(entry["size_bytes"] / fp32_size, 4)
        entry["meets_size_target"] = entry["size_ratio_vs_fp32"] <= INT8_TARGET_SIZE_RATIO


def check_gate(manifest: dict, keep_failed: bool) -> None:
    """Raise with every failure's numbers, unless only int8 variants failed and `keep_failed` is set; a failed
    OpenVINO variant never stops the export (see the module's docstring)."""
    failed = {name: entry["failure"] for name, entry in manifest["variants"].items() if not entry["passed"]}
    exact = [name for name in failed if name in LOGIT_TOLERANCE and engine_of(name) != OPENVINO]
    fatal = [msg for name, msg in failed.items() if engine_of(name) != OPENVINO and (name in exact or not keep_failed)]
    if fatal:
        hint = "" if exact else " (--keep-failed keeps it, marked failed)"
        raise ExportError("verification failed: " + "; ".join(fatal) + hint)
    for message in failed.values():
        logger.warning("kept a failed variant: %s", message)
