"""The onnxruntime int8 hold check and its fallback: quantize with the recipe, compare the int8 graph with the fp32
graph on held-out TRAIN sentences, and where they differ too much keep the most sensitive weight MatMuls in fp32,
1, 2, 4, 8 ... of them (ranked by measured sensitivity), until the check holds; where no try holds by half of
them, the plain recipe stays and the gate decides.

Everything here reads TRAIN sentences only: the dev set stays the gate's honest held-out check. The hold pool is
the train rows right after the calibration sample in the same fixed shuffle, so static int8 is never checked on
what calibrated it; the sensitivity is measured on the first calibration sentences (a ranking, not a verdict).

int8 flips only sentences whose fp32 margin (best minus second logit) is smaller than the change int8 makes to
it, so the check runs int8 on the HOLD_CHECK_SAMPLES least-sure sentences of a pool of HOLD_POOL_SAMPLES and counts
flips over the whole pool: the statistical power of the pool at the cost of the few (`max_abs_logit_diff` against
`margin_cutoff` in the record shows whether a sentence outside them could have flipped).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sst2dist.engines import OrtSession
from sst2dist.labels import predicted_label_ids

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger("sst2dist.export")

HOLD_POOL_SAMPLES = 4096  # one flip is 0.025 % of the pool
HOLD_CHECK_SAMPLES = 512  # the least-sure of the pool, the only ones int8 runs on
MIN_HOLD_SAMPLES = 100  # and at least `resolving_pool`: a smaller pool is skipped and the gate decides
HOLD_BATCH_SIZES = (1, 8, 32)  # the gate's: dynamic int8's activation scales move with the batch and its padding
# The hold limits are the gate's divided by this (99.2 %, 0.2 points with the default 98 %, 0.5). A fine-tuned model
# is surer of train sentences than of dev ones, so int8 flips fewer of them: on the pruned MPNet (93.0 % dev),
# quantized as is, dev flipped 1.9-2.8 times the train pool's share (static 2.0-2.4) and lost 1.5-2.6 times its points.
HOLD_STRICTNESS = 2.5
SENSITIVITY_SAMPLES = 32  # calibration sentences the per-node errors are measured on (a ranking, not a verdict)
MAX_KEPT_FRACTION = 0.5  # past half of the weight MatMuls in fp32, int8 saves little: the plain recipe stays


@dataclass
class HoldCheck:
    """The hold pool (its sentences, their data label ids), the limits derived from the gate's, the sensitivity
    sentences and, once `set_reference` ran the fp32 graph on the pool, its least-sure sentences to run int8 on."""

    texts: list[str]
    labels: np.ndarray
    model_labels: list[str]
    data_labels: list[str]
    encode: Callable[[list[str], int], list[tuple[np.ndarray, dict[str, np.ndarray]]]]
    sensitivity_feeds: list[dict[str, np.ndarray]]
    max_drop: float
    min_agreement: float
    sentences: dict
    checked: np.ndarray = field(init=False)  # pool positions of the least-sure sentences
    reference: np.ndarray = field(init=False)  # the fp32 logits of those
    batches: dict = field(init=False)

    def set_reference(self, fp32_path: Path) -> None:
        pool = run_batches(fp32_path, self.encode(self.texts, 32), len(self.texts), len(self.model_labels))
        top_two = np.sort(pool, axis=-1)[:, -2:]
        margins = top_two[:, 1] - top_two[:, 0]
        self.checked = np.argsort(margins, kind="stable")[:HOLD_CHECK_SAMPLES]
        self.reference = pool[self.checked]
        texts = [self.texts[i] for i in self.checked]
        self.batches = {size: self.encode(texts, size) for size in HOLD_BATCH_SIZES}
        # every pool sentence checked: no cutoff (None, as JSON's null: manifest.json stays strict JSON)
        cutoff = round(float(margins[self.checked].max()), 4) if len(self.checked) < len(margins) else None
        self.sentences |= {"checked": len(self.checked), "margin_cutoff": cutoff}

    def judge(self, int8_path: Path) -> dict:
        """Over the pool, worst of HOLD_BATCH_SIZES: int8's label agreement with fp32 and its accuracy drop (the
        sentences outside the checked ones counted as unchanged), each also moved one standard error against int8
        (`*_bound`: the flip count's own noise, √flips), and the verdict, on the bounds: a measured figure just
        inside a limit is as likely just outside it."""
        pool, labels = len(self.texts), self.labels[self.checked]
        reference_right = self.right(self.reference, labels)
        worst = {"agreement": 1.0, "drop": -100.0, "agreement_bound": 1.0, "drop_bound": -100.0, "logit_diff": 0.0}
        for batch_size in HOLD_BATCH_SIZES:
            logits = run_batches(int8_path, self.batches[batch_size], len(self.checked), len(self.model_labels))
            flips = int((logits.argmax(-1) != self.reference.argmax(-1)).sum())
            noise = float(np.sqrt(flips)) / pool
            drop = 100 * (reference_right - self.right(logits, labels)) / pool
            worst["agreement"] = min(worst["agreement"], 1 - flips / pool)
            worst["agreement_bound"] = min(worst["agreement_bound"], 1 - flips / pool - noise)
            worst["drop"] = max(worst["drop"], drop)
            worst["drop_bound"] = max(worst["drop_bound"], drop + 100 * noise)
            worst["logit_diff"] = max(worst["logit_diff"], float(np.abs(logits - self.reference).max()))
        passed = worst["drop_bound"] <= self.max_drop and 100 * worst["agreement_bound"] >= self.min_agreement
        return {
            "label_agreement": round(worst["agreement"], 5),
            "label_agreement_bound": round(worst["agreement_bound"], 5),
            "accuracy_drop_points": round(worst["drop"], 4),
            "accuracy_drop_bound": round(worst["drop_bound"], 4),
            "max_abs_logit_diff": round(worst["logit_diff"], 4),
            "passed": passed,
        }

    def right(self, logits: np.ndarray, labels: np.ndarray) -> int:
        return int((predicted_label_ids(logits, self.model_labels, self.data_labels) == labels).sum())

    def limits(self) -> dict:
        return {
            "max_accuracy_drop": round(self.max_drop, 4),
            "min_label_agreement": round(self.min_agreement, 4),
            "strictness": HOLD_STRICTNESS,
        }


def run_batches(path: Path, batches: list, rows: int, labels: int) -> np.ndarray:
    session = OrtSession(path.read_bytes(), threads=1)  # the gate's setting: one thread, beside PyTorch
    logits = np.empty((rows, labels), dtype=np.float32)
    for positions, feeds in batches:
        logits[positions] = session.run(feeds)
    return logits


def hold_check_rows(train: Dataset, calibration_samples: int, samples: int = HOLD_POOL_SAMPLES) -> range:
    """Positions, in train.shuffle(seed=0) (the calibration sample's shuffle), of the hold pool: the `samples`
    rows right after the first `calibration_samples`, so the two never share a sentence."""
    return range(min(calibration_samples, len(train)), min(calibration_samples + samples, len(train)))


def hold_limits(gate_limits: tuple[float, float]) -> tuple[float, float]:
    """(max accuracy drop in points, min label agreement in %) of the hold check: HOLD_STRICTNESS times fewer
    lost points and flips than the gate's."""
    max_drop, min_agreement = gate_limits
    return max_drop / HOLD_STRICTNESS, 100 - (100 - min_agreement) / HOLD_STRICTNESS


def resolving_pool(max_drop: float, min_agreement: float) -> int:
    """The smallest pool in which one flip, moved one standard error against int8 (two flips' worth), stays inside
    each hold limit that allows any flip: in a smaller one every flip fails, so a try would hold only by flipping
    nothing, which says nothing about the model at that size."""
    needed = MIN_HOLD_SAMPLES
    for limit in (max_drop, 100 - min_agreement):  # points, and % of flips
        if limit > 0:
            needed = max(needed, math.ceil(round(200 / limit, 6)))
    return needed


def prepare_hold_check(
    train: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    input_names: Sequence[str],
    model_labels: Sequence[str],
    calibration_samples: int,
    gate_limits: tuple[float, float],
) -> HoldCheck | str:
    """The hold check for this train split, or why it is skipped (too few train sentences past the calibration
    sample). `gate_limits`: the gate's (max accuracy drop in points, min label agreement in %)."""
    from sst2dist.data import split_labels

    if gate_limits[0] >= 100 and gate_limits[1] <= 0:  # untrained anchors: nothing to hold, spare the runs
        return "skipped: the gate's limits are lifted (accuracy drop 100 points, agreement 0 %)"
    shuffled = train.shuffle(seed=0)
    rows = hold_check_rows(train, calibration_samples)
    max_drop, min_agreement = hold_limits(gate_limits)
    if len(rows) < (needed := resolving_pool(max_drop, min_agreement)):
        return (
            f"skipped: {len(rows)} train sentences past the {calibration_samples} calibration ones cannot resolve "
            f"the hold limits ({max_drop:g} points, {min_agreement:g} %): {needed} needed"
        )
    pool = shuffled.select(rows)
    calibration = shuffled.select(range(min(SENSITIVITY_SAMPLES, calibration_samples, len(train))))
    return HoldCheck(
        texts=list(pool["sentence"]),
        labels=np.array(pool["label"]),
        model_labels=list(model_labels),
        data_labels=list(split_labels(train).names),
        encode=lambda texts, size: encoded_batches(tokenizer, texts, input_names, size),
        sensitivity_feeds=[encoded_batches(tokenizer, [s], input_names, 1)[0][1] for s in calibration["sentence"]],
        max_drop=max_drop,
        min_agreement=min_agreement,
        sentences={
            "split": "train",
            "shuffle_seed": 0,
            "rows": [rows.start, rows.stop],
            "pool": len(rows),
            "after_calibration_samples": calibration_samples,
            "sensitivity": {"split": "train", "shuffle_seed": 0, "rows": [0, len(calibration)]},
        },
    )


def encoded_batches(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], input_names: Sequence[str], batch_size: int
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(row positions, int64 feeds) per batch, sorted by token length and padded to the longest, as the runtime
    Classifier batches them."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        encoded = tokenizer([texts[i] for i in rows], padding=True, truncation=True, return_tensors="np")
        batches.append((rows, {name: encoded[name].astype(np.int64) for name in input_names}))
    return batches


# --- the fallback ---

Quantize = Callable[[list[str]], dict]  # nodes kept fp32 -> the recipe it wrote the variant file with


def quantize_holding(
    quantize: Quantize,
    variant_path: Path,
    hold: HoldCheck | str,
    rank: Callable[[], list[tuple[str, float]]],
) -> dict:
    """Quantize with the recipe; where the hold check fails, keep the `rank()`-first weight MatMuls fp32, greedily
    (1, 2, 4 ... up to MAX_KEPT_FRACTION of them), until it holds. Returns the final recipe with a `hold_check`
    record; the variant file is the try that held, else the plain recipe (past the cap the gate decides)."""
    recipe = quantize([])
    if isinstance(hold, str):
        return {**recipe, "hold_check": {"skipped": hold}}
    before = hold.judge(variant_path)
    record = {"sentences": hold.sentences, "limits": hold.limits(), "before": before, "tries": [], "kept_fp32": []}
    if before["passed"]:
        return {**recipe, "hold_check": {**record, "after": before}}
    ranked = rank()
    record["sensitivity"] = {name: round(error, 6) for name, error in ranked}
    after = before
    for count in kept_counts(len(ranked)):
        kept = [name for name, _ in ranked[:count]]
        recipe = quantize(kept)
        after = hold.judge(variant_path)
        record["tries"].append({"kept_fp32": count, **after})
        logger.info("int8 hold check with %d MatMul(s) kept fp32: %s", count, after)
        record["kept_fp32"] = [{"node": name, "relative_error": round(error, 6)} for name, error in ranked[:count]]
        if after["passed"]:
            break
    record["cap"] = kept_counts(len(ranked))[-1] if ranked else 0
    if not after["passed"]:
        # no try held: the fp32 MatMuls bought no certain accuracy (a try can even agree less than none), only size
        # and time, so the plain recipe stays and the gate decides
        recipe, after = quantize([]), before
        record["kept_fp32"], record["reverted"] = [], "no try held: the plain recipe stays, the gate decides"
    return {**recipe, "hold_check": {**record, "after": after}}


def kept_counts(candidates: int) -> list[int]:
    """1, 2, 4, 8 ... and last the cap (MAX_KEPT_FRACTION of the candidates, at least 1)."""
    cap = max(1, int(candidates * MAX_KEPT_FRACTION)) if candidates else 0
    counts, count = [], 1
    while count < cap:
        counts.append(count)
        count *= 2
    return counts + [cap] if cap else []


# --- measured sensitivity ---


@dataclass(frozen=True)
class ActivationScheme:
    """How a variant rounds a MatMul's activations to int8: its input over the range calibration fixed for that
    tensor, else the tensor's own min and max each run (DynamicQuantizeLinear); its output too where calibration
    fixed a range for it (static int8's QDQ graph quantizes a quantized MatMul's output; dynamic int8 does not)."""

    fixed: dict[str, tuple[float, float]]

    def input_range(self, name: str, values: np.ndarray) -> tuple[float, float]:
        return self.fixed.get(name) or (float(values.min()), float(values.max()))

    def output_range(self, name: str) -> tuple[float, float] | None:
        return self.fixed.get(name)


DYNAMIC = ActivationScheme({})


def calibrated(ranges) -> ActivationScheme:  # ranges: onnxruntime's TensorsData from ORTQuantizer.fit
    low_high = {name: data.range_value for name, data in ranges.items()}
    return ActivationScheme({name: (float(np.min(low)), float(np.max(high))) for name, (low, high) in low_high.items()})


def rank_by_sensitivity(
    fp32_path: Path,
    candidates: Sequence[str],
    weight_only: Sequence[str],
    feeds: Sequence[dict[str, np.ndarray]],
    scheme: ActivationScheme,
) -> list[tuple[str, float]]:
    """The candidate MatMuls, most sensitive first, with their relative output error ‖XW − Q(Q(X)Q(W))‖ / ‖XW‖
    over `feeds`: X the fp32 graph's real input activation, quantized as the recipe quantizes it (weights int8 per
    output channel; activations and, where `scheme` says so, the product uint8; for the `weight_only` MatMuls,
    activations int8 per row as MatMulNBits does at run time)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    weights = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node if n.name in set(candidates)}
    inputs = {name: next(i for i in node.input if i not in weights) for name, node in nodes.items()}
    matrices = {name: weight_matrix(node, weights, numpy_helper) for name, node in nodes.items()}
    quantized = {name: fake_quantize_columns(w) for name, w in matrices.items()}
    activations = sorted(set(inputs.values()))
    model.graph.output.extend(onnx.helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None) for a in activations)
    session = OrtSession(model.SerializeToString(), threads=1).session
    error, norm = dict.fromkeys(nodes, 0.0), dict.fromkeys(nodes, 0.0)
    for feed in feeds:
        values = dict(zip(activations, session.run(activations, feed), strict=True))
        for name, node in nodes.items():
            x = values[inputs[name]].reshape(-1, matrices[name].shape[0])
            if name in weight_only:  # no activation range stored, before or after
                exact, approximate = x @ matrices[name], fake_quantize_rows(x) @ quantized[name]
            else:
                x_q = fake_quantize(x, scheme.input_range(inputs[name], x))
                exact, approximate = x @ matrices[name], x_q @ quantized[name]
                output_range = scheme.output_range(node.output[0])
                if output_range is not None:
                    approximate = fake_quantize(approximate, output_range)
            error[name] += float(np.square(approximate - exact).sum())
            norm[name] += float(np.square(exact).sum())
    relative = {name: float(np.sqrt(error[name] / max(norm[name], 1e-30))) for name in nodes}
    return sorted(relative.items(), key=lambda item: -item[1])


def weight_matrix(node, weights: dict, numpy_helper) -> np.ndarray:
    return numpy_helper.to_array(next(weights[i] for i in node.input if i in weights)).astype(np.float32)


def fake_quantize(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """uint8 asymmetric over `value_range` (widened to hold 0, as onnxruntime does), then back to float."""
    low, high = min(0.0, value_range[0]), max(0.0, value_range[1])
    scale = (high - low) / 255 or 1.0
    zero_point = np.round(-low / scale)
    return (np.clip(np.round(values / scale) + zero_point, 0, 255) - zero_point) * scale


def fake_quantize_rows(values: np.ndarray) -> np.ndarray:
    """int8 symmetric, one scale per row."""
    scale = np.abs(values).max(axis=1, keepdims=True) / 127
    scale[scale == 0] = 1.0
    return np.clip(np.round(values / scale), -127, 127) * scale


def fake_quantize_columns(weight: np.ndarray) -> np.ndarray:
    """int8 symmetric, one scale per output channel (column of the [in, out] weight)."""
    return fake_quantize_rows(weight.T).T
