"""The openvino-int8 variant: NNCF post-training quantization of model.onnx, saved as OpenVINO IR
(openvino_int8.xml + openvino_int8.bin) and gated, timed and chosen like every variant.

The recipe is NNCF's for transformers (`model_type=TRANSFORMER`): int8 weights and activations for the MatMuls,
per-channel weight scales, SmoothQuant to move activation outliers into the weights, fast bias correction, and the
operators its transformer patterns leave in float (Softmax, LayerNorm, GELU). Its ranges are calibrated on TRAIN
sentences (one at a time, unpadded), never on the validation set the gate judges; accuracy control (below) measures
on further TRAIN sentences. At run time the layers NNCF keeps in float get the bf16 hint where the CPU has bf16
(`engines.inference_precision`).

NNCF comes with the `openvino` extra; where it (or OpenVINO) is missing, or `--openvino off` / `--quantize none`
was asked, the variant is left out and manifest["engines"]["openvino"]["skipped"] says why.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sst2dist.engines import INSTALL_OPENVINO, OPENVINO_INT8, VARIANTS, openvino, unavailable_reason
from sst2dist.export.int8 import CALIBRATION_SAMPLES as INT8_CALIBRATION_SAMPLES
from sst2dist.export.int8_hold import HoldCheck
from sst2dist.export.manifest import sha256
from sst2dist.export.options import ExportOptions
from sst2dist.labels import column_to_data_id

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLES = INT8_CALIBRATION_SAMPLES  # static int8's sample (NNCF's default is 300): the hold pool follows it
HELD_OUT_SAMPLES = 300  # without a hold check: the train sentences after the calibration ones
MIN_HELD_OUT = 100  # fewer cannot tell a 0.5-point drop from noise: plain quantization then


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
    options: ExportOptions,
    train: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    hold: HoldCheck | str | None = None,
) -> None:
    """Quantize model.onnx with NNCF into the bundle and add its manifest entry, or record why it was left out.
    Runs after `add_openvino_variants`, which creates manifest["engines"]; `hold`: the onnxruntime int8 variants'
    hold check, whose sentences accuracy control then measures on."""
    why = skip_reason(options.openvino, options.quantize)
    if why:
        manifest["engines"]["openvino"]["skipped"][OPENVINO_INT8] = why
        return
    drop = options.max_accuracy_drop
    record = quantize_openvino_int8(staging, train, tokenizer, drop, manifest["labels"], hold)
    manifest["openvino_quantization"] = record
    add_ir_variant(manifest, staging, OPENVINO_INT8)


def quantize_openvino_int8(
    staging: Path,
    train: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_accuracy_drop: float,
    model_labels: Sequence[str] | None = None,
    hold: HoldCheck | str | None = None,
) -> dict:
    """openvino_int8.xml/.bin from model.onnx; returns what the manifest records about the recipe.

    With enough train sentences beyond the calibration ones, NNCF's accuracy control runs: it quantizes, measures
    the int8 model against the float one on held-out TRAIN sentences, and where the drop exceeds its limit puts the
    most sensitive layers back in float until it does not (costing two passes over the held-out sentences when
    plain quantization already holds). Given a `hold` check that ran, those sentences are its least-sure ones and
    the limit is its own, scaled to them (int8 flips only unsure sentences: 300 random ones held a MiniLM that lost
    0.9 points on dev); else the next HELD_OUT_SAMPLES rows and `max_accuracy_drop`. A held-out sentence counts as
    right when the label its best column names (`model_labels`, default the data's order) is its label, as in the
    gate."""
    from sst2dist.data import split_labels
    from sst2dist.export.int8 import calibration_sample

    ov = openvino()  # first: it makes the telemetry package unimportable, so NNCF falls back to its no-op stub
    import nncf

    model = ov.Core().read_model(str(staging / VARIANTS["fp32"].file))
    names = [port.get_any_name() for port in model.inputs]
    from_hold = isinstance(hold, HoldCheck)  # then the next rows are not read: the hold check's sentences are
    rows = calibration_sample(train, CALIBRATION_SAMPLES + (0 if from_hold else HELD_OUT_SAMPLES))
    feeds = [unpadded_feeds(tokenizer, sentence, names) for sentence in rows["sentence"]]
    calibration, held_out = feeds[:CALIBRATION_SAMPLES], feeds[CALIBRATION_SAMPLES:]
    options = {"model_type": nncf.ModelType.TRANSFORMER, "subset_size": len(calibration)}
    record = {
        "tool": "nncf.quantize",
        "model_type": "transformer",
        "calibration": {"split": "train", "samples": len(calibration), "seed": 0, "padding": "none"},
        "nncf_version": nncf.__version__,
        "accuracy_control": None,
    }
    control = {"split": "train", "held_out": len(held_out), "max_drop_points": max_accuracy_drop}
    labels = list(rows["label"])[CALIBRATION_SAMPLES:]
    if from_hold:
        held_out = [unpadded_feeds(tokenizer, hold.texts[i], names) for i in hold.checked]
        labels, control = list(hold.labels[hold.checked]), hold_control(hold)
    elif len(held_out) < held_out_needed(max_accuracy_drop):
        held_out = []  # too few: plain quantization
    if len(held_out) < MIN_HELD_OUT:
        quantized = nncf.quantize(model, nncf.Dataset(calibration), **options)
    else:
        data_labels = split_labels(train).names
        items = held_out_items(held_out, labels, model_labels or data_labels, data_labels)
        quantized = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(calibration),
            nncf.Dataset(items, lambda item: item["feeds"]),
            held_out_accuracy,
            max_drop=control["max_drop_points"] / 100,
            **options,
        )
        record["tool"] = "nncf.quantize_with_accuracy_control"
        record["accuracy_control"] = control
    save_ir(ov, quantized, staging / VARIANTS[OPENVINO_INT8].file)
    return record


def hold_control(hold: HoldCheck) -> dict:
    """Accuracy control on the hold check's least-sure sentences: its limit on the pool's lost points, as points of
    those sentences (the others count as unchanged, as in the hold check)."""
    pool, checked = hold.sentences["pool"], len(hold.checked)
    return {
        "split": "train",
        "held_out": checked,
        "sentences": f"the hold check's {checked} least-sure of {pool} (rows {hold.sentences['rows']})",
        "max_drop_points": round(hold.max_drop * pool / checked, 4),
        "pool_max_drop_points": hold.max_drop,
    }


def save_ir(ov: Any, model: Any, path: Path) -> None:
    """OpenVINO reports a failed write (a full disk, a file-size limit) as RuntimeError: made an OSError, so the
    export's `writing` says it in one sentence and leaves the earlier bundle in place."""
    try:
        ov.save_model(model, str(path), compress_to_fp16=False)
    except RuntimeError as err:
        raise OSError(errno.EIO, f"OpenVINO could not write {path.name}: {str(err).strip().splitlines()[-1]}") from err


def held_out_items(
    feeds: list[dict[str, np.ndarray]], data_ids: Sequence[int], model_labels: Sequence[str], data_labels: Sequence[str]
) -> list[dict]:
    """NNCF's held-out items: each sentence's feeds and the model's output column that names its label (by name,
    as the gate scores: the model's label order need not be the data's)."""
    column = {int(data_id): index for index, data_id in enumerate(column_to_data_id(model_labels, data_labels))}
    return [{"feeds": f, "label": column[int(data_id)]} for f, data_id in zip(feeds, data_ids, strict=True)]


def held_out_accuracy(compiled: Any, items: Iterable[dict]) -> tuple[float, list[float]]:
    """NNCF's validation function: accuracy on the held-out train items, and each item's 1/0 (for its ranking)."""
    logits = compiled.output(logits_port(compiled))
    correct = [float(compiled(item["feeds"])[logits].argmax(-1)[0] == item["label"]) for item in items]
    return float(np.mean(correct)), correct


def logits_port(compiled: Any) -> int:
    return next((i for i, port in enumerate(compiled.outputs) if "logits" in port.get_names()), 0)


def held_out_needed(max_accuracy_drop: float) -> int:
    """The held-out sentences accuracy control needs: enough that one lost sentence fits inside the limit. With
    fewer, every lost sentence fails it, and NNCF puts layers back in float until int8 loses none, on noise."""
    if max_accuracy_drop <= 0:
        return MIN_HELD_OUT
    return max(MIN_HELD_OUT, math.ceil(round(100 / max_accuracy_drop, 6)))


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
