"""The onnxruntime int8 hold check (`sst2dist/export/int8_hold.py`): int8 against fp32 on held-out TRAIN sentences,
and where it differs too much, the weight MatMuls that measure as most sensitive kept fp32, most sensitive first.

The model: a tiny random BERT whose encoder weights are scaled up (so its sentences' features differ) with a head
fitted on train sentences (a classifier whose labels int8 can flip), and optionally one MatMul made sensitive: an
outlier channel (a constant 1000) in the input of layer 1's attention output projection, whose weight row for that
channel is zero, so fp32 is unchanged while a per-tensor int8 scale rounds every other channel of that input to 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import fit_discriminant_head, make_tiny_model

from sst2dist.data import load_sst2
from sst2dist.export.bundle import export_bundle
from sst2dist.export.card import hold_outcome
from sst2dist.export.int8 import (
    CALIBRATION_SAMPLES,
    calibration_sample,
    int8_recipe,
    onnx_input_names,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from sst2dist.export.int8_hold import HoldCheck, hold_check_rows, kept_counts, prepare_hold_check
from sst2dist.runtime import VARIANT_FILES

SENSITIVE = "/bert/encoder/layer.1/attention/output/dense/MatMul"
OUTLIER_CHANNEL = 3
# Over the hold pool the scaled tiny model's int8 agrees with fp32 on ~98.2 %, its outlier one on ~94.4 %: gate
# limits whose hold limits (HOLD_STRICTNESS = 2.5 times fewer flips and lost points: 96 %, 1.6 points) split the two.
LOOSE_GATE = {"max_accuracy_drop": 4.0, "min_label_agreement": 90.0}


def make_probed_tiny_bert(folder: Path, sst2_dir: Path, outlier: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    make_tiny_model(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            attention = layer.attention
            for linear in (attention.self.query, attention.self.key, attention.self.value, attention.output.dense):
                linear.weight.mul_(10.0)
            layer.intermediate.dense.weight.mul_(10.0)
            layer.output.dense.weight.mul_(10.0)
        if outlier:
            attention = model.bert.encoder.layer[1].attention
            attention.self.value.bias[OUTLIER_CHANNEL] = 1000.0  # attention averages V: a constant 1000 channel
            attention.output.dense.weight[:, OUTLIER_CHANNEL] = 0.0  # ... that the projection ignores
    fit_discriminant_head(model, tokenizer, sst2_dir, margin=2.0)  # logit margins of about 2
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fp32_bundle(sst2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scaled tiny model (no outlier) exported without int8: model.onnx, config and tokenizer to quantize."""
    model = make_probed_tiny_bert(tmp_path_factory.mktemp("plain") / "model", sst2_dir, outlier=False)
    bundle = tmp_path_factory.mktemp("fp32") / "bundle"
    export_bundle(model, bundle, data=str(sst2_dir), max_verify_samples=8, quantize="none", optimize="none")
    return bundle


def hold_check(folder: Path, sst2_dir: Path, gate_limits: tuple[float, float]) -> HoldCheck:
    from transformers import AutoTokenizer

    fp32 = folder / VARIANT_FILES["fp32"]
    train = load_sst2(str(sst2_dir))["train"]
    labels = json.loads((folder / "manifest.json").read_text())["labels"]
    hold = prepare_hold_check(
        train, AutoTokenizer.from_pretrained(folder), onnx_input_names(fp32), labels, CALIBRATION_SAMPLES, gate_limits
    )
    assert isinstance(hold, HoldCheck)
    hold.set_reference(fp32)
    return hold


def float_matmuls(path: Path) -> set[str]:
    """The MatMuls of an int8 graph that still run in fp32: float MatMuls fed by no DequantizeLinear (a quantized
    one is a MatMulInteger in the dynamic graph, a MatMul between DequantizeLinears in the static QDQ graph)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {output for n in graph.node if n.op_type == "DequantizeLinear" for output in n.output}
    weights = {tensor.name for tensor in graph.initializer}
    return {
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and weights.intersection(n.input) and not dequantized.intersection(n.input)
    }


def test_hold_sentences_are_train_rows_disjoint_from_the_calibration_sample_and_dev(sst2_dir: Path) -> None:
    splits = load_sst2(str(sst2_dir))
    train = splits["train"]
    rows = hold_check_rows(train, CALIBRATION_SAMPLES)
    assert (rows.start, len(rows)) == (CALIBRATION_SAMPLES, 4096)
    hold = set(train.shuffle(seed=0).select(rows)["sentence"])
    assert len(hold) > 4000  # SST-2's train split repeats a few short phrases
    assert hold.isdisjoint(calibration_sample(train, CALIBRATION_SAMPLES)["sentence"])
    assert hold.isdisjoint(splits["validation"]["sentence"])
    small = train.select(range(CALIBRATION_SAMPLES + 40))
    assert len(hold_check_rows(small, CALIBRATION_SAMPLES)) == 40  # what is left, never a calibration row
    skipped = prepare_hold_check(small, None, [], ["negative", "positive"], CALIBRATION_SAMPLES, (0.5, 98.0))
    assert skipped == (
        f"skipped: 40 train sentences past the {CALIBRATION_SAMPLES} calibration ones cannot resolve the hold limits "
        "(0.2 points, 99.2 %): 1000 needed"
    )
    lifted = prepare_hold_check(train, None, [], ["negative", "positive"], CALIBRATION_SAMPLES, (100.0, 0.0))
    assert lifted.startswith("skipped: the gate's limits are lifted")


def test_a_pool_too_small_to_resolve_the_hold_limits_is_skipped_not_searched(sst2_dir: Path, fp32_bundle: Path) -> None:
    """With the gate's default limits (0.2 points, 99.2 % for the hold check) one flip, moved one standard error,
    costs 200/pool points: a pool of 300 fails on any flip at all (even one that fixes a sentence), so the search
    would keep fp32 MatMuls until a try happened to flip none of 300, and ship that slower file on no evidence. The
    check needs a pool in which one flip can hold: 1,000 sentences here, 125 with limits 4 points / 90 %."""
    from transformers import AutoTokenizer

    train = load_sst2(str(sst2_dir))["train"]
    labels = ["negative", "positive"]
    tokenizer, names = AutoTokenizer.from_pretrained(fp32_bundle), onnx_input_names(fp32_bundle / "model.onnx")

    def prepare(extra_rows: int, gate_limits: tuple[float, float]) -> HoldCheck | str:
        rows = train.select(range(CALIBRATION_SAMPLES + extra_rows))
        return prepare_hold_check(rows, tokenizer, names, labels, CALIBRATION_SAMPLES, gate_limits)

    assert prepare(300, (0.5, 98.0)) == (
        f"skipped: 300 train sentences past the {CALIBRATION_SAMPLES} calibration ones cannot resolve the hold "
        "limits (0.2 points, 99.2 %): 1000 needed"
    )
    loose = (LOOSE_GATE["max_accuracy_drop"], LOOSE_GATE["min_label_agreement"])
    assert isinstance(prepare(125, loose), HoldCheck)
    assert "cannot resolve the hold limits (1.6 points, 96 %): 125 needed" in prepare(124, loose)


def test_kept_counts_double_up_to_half_the_matmuls() -> None:
    assert kept_counts(72) == [1, 2, 4, 8, 16, 32, 36]
    assert kept_counts(12) == [1, 2, 4, 6]
    assert kept_counts(8) == [1, 2, 4]
    assert kept_counts(1) == [1] and kept_counts(0) == []


def test_a_check_that_holds_keeps_every_matmul_int8(fp32_bundle: Path, sst2_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(fp32_bundle, tmp_path / "b"))
    hold = hold_check(folder, sst2_dir, (LOOSE_GATE["max_accuracy_drop"], LOOSE_GATE["min_label_agreement"]))
    top_two = np.sort(hold.reference, axis=-1)
    assert (top_two[:, -1] - top_two[:, -2]).max() <= hold.sentences["margin_cutoff"] + 1e-4  # the least sure
    record = quantize_dynamic_int8(folder, hold)
    check = record["hold_check"]
    assert check["before"]["passed"] and check["after"] == check["before"]
    assert check["before"]["label_agreement"] >= 0.96 and check["limits"]["min_label_agreement"] == 96.0
    assert check["tries"] == [] and check["kept_fp32"] == [] and "sensitivity" not in check
    assert record["nodes_to_exclude"] == int8_recipe(folder / VARIANT_FILES["fp32"])[0]["nodes_to_exclude"]


@pytest.mark.parametrize("variant", ["int8", "static-int8"])
def test_past_the_cap_the_plain_recipe_stays_and_the_gate_decides(
    variant: str, fp32_bundle: Path, sst2_dir: Path, tmp_path: Path
) -> None:
    """The gate's own limits (0.5 points, 98 %) hold this tiny model to 99.2 %, which it never reaches: the search
    keeps 1, 2, 4, then 6 of its 12 weight MatMuls fp32, the most sensitive first; no try holds, so the file is the
    plain recipe again (a try bought size and time, no certain accuracy: one agreed less than none on a tiny MPNet)."""
    from transformers import AutoTokenizer

    folder = Path(shutil.copytree(fp32_bundle, tmp_path / "b"))
    hold = hold_check(folder, sst2_dir, (0.5, 98.0))
    if variant == "int8":
        record = quantize_dynamic_int8(folder, hold)
    else:
        train = load_sst2(str(sst2_dir))["train"]
        record = quantize_static_int8(folder, train, AutoTokenizer.from_pretrained(folder), hold)
    check = record["hold_check"]
    assert not check["before"]["passed"] and check["after"] == check["before"] and "plain recipe" in check["reverted"]
    assert [t["kept_fp32"] for t in check["tries"]] == [1, 2, 4, 6] and check["cap"] == 6
    ranking = list(check["sensitivity"])
    assert len(ranking) == 12 and check["kept_fp32"] == []
    errors = list(check["sensitivity"].values())
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0
    assert record["nodes_to_exclude"] == int8_recipe(folder / VARIANT_FILES["fp32"])[0]["nodes_to_exclude"]
    assert float_matmuls(folder / VARIANT_FILES[variant]).isdisjoint(ranking)  # the file on disk is the plain one
    card = hold_outcome(check)  # the bundle card's sentence: it said "held as quantized" of a reverted search
    assert "held as quantized" not in card and card.startswith("did not hold with up to 6 weight MatMuls kept fp32")


@pytest.mark.slow  # a whole export with both int8 variants and their searches: ~20-45 s on 2 busy cores
def test_a_sensitive_matmul_is_kept_fp32_first_and_the_manifest_and_card_say_so(sst2_dir: Path, tmp_path: Path) -> None:
    model = make_probed_tiny_bert(tmp_path / "model", sst2_dir, outlier=True)
    options = {"data": str(sst2_dir), "max_verify_samples": 32, "optimize": "none", "keep_failed": True}
    manifest = export_bundle(model, tmp_path / "b", quantize="static", **options, **LOOSE_GATE)
    for variant, key in (("int8", "quantization"), ("static-int8", "static_quantization")):
        record = manifest[key]
        check = record["hold_check"]
        assert not check["before"]["passed"] and check["before"]["label_agreement"] < 0.96
        assert [k["node"] for k in check["kept_fp32"]] == [SENSITIVE] and check["after"]["passed"]
        assert check["kept_fp32"][0]["relative_error"] > 0.9 > 0.1 > list(check["sensitivity"].values())[1]
        assert check["after"]["label_agreement"] >= 0.96 and check["limits"]["max_accuracy_drop"] == 1.6
        sentences = check["sentences"]
        assert sentences["rows"] == [CALIBRATION_SAMPLES, CALIBRATION_SAMPLES + 4096] and sentences["pool"] == 4096
        assert (sentences["split"], sentences["shuffle_seed"], sentences["checked"]) == ("train", 0, 512)
        assert sentences["sensitivity"] == {"split": "train", "shuffle_seed": 0, "rows": [0, 32]}
        assert SENSITIVE in record["nodes_to_exclude"]
        assert SENSITIVE in float_matmuls(tmp_path / "b" / VARIANT_FILES[variant])
    card = (tmp_path / "b" / "README.md").read_text()
    assert "held to fp32 on the 512 least-sure of 4096 held-out train sentences" in card
    assert f"kept 1 weight MatMul in fp32, the most sensitive as measured (`{SENSITIVE}`)" in card


def test_a_pool_no_larger_than_the_checked_sentences_records_a_strict_json_cutoff(
    fp32_bundle: Path, sst2_dir: Path
) -> None:
    """Train splits of 356-767 rows give a pool of at most 512: every sentence is checked, no cutoff exists, and
    the record goes into manifest.json, which must stay strict JSON (no `Infinity`)."""
    from transformers import AutoTokenizer

    fp32 = fp32_bundle / VARIANT_FILES["fp32"]
    train = load_sst2(str(sst2_dir), max_train_samples=CALIBRATION_SAMPLES + 144)["train"]
    labels = json.loads((fp32_bundle / "manifest.json").read_text())["labels"]
    tokenizer = AutoTokenizer.from_pretrained(fp32_bundle)
    loose = (LOOSE_GATE["max_accuracy_drop"], LOOSE_GATE["min_label_agreement"])  # a pool of 144 resolves them
    hold = prepare_hold_check(train, tokenizer, onnx_input_names(fp32), labels, CALIBRATION_SAMPLES, loose)
    hold.set_reference(fp32)
    assert hold.sentences["pool"] == hold.sentences["checked"] == 144
    assert hold.sentences["margin_cutoff"] is None
    json.dumps(hold.sentences, allow_nan=False)


def test_a_figure_just_inside_a_limit_does_not_hold_the_flip_counts_noise_is_counted_against_int8(
    fp32_bundle: Path, sst2_dir: Path, tmp_path: Path
) -> None:
    """The L6 MiniLM's int8 held on train with 0.195 points lost against a 0.2 limit, ~25 flips in 4,096 (noise
    √25 = 5 sentences, 0.12 points), and lost 0.69 on dev: a figure inside a limit by less than its own noise is no
    hold. The verdict is on the figures moved one standard error (√flips over the pool) against int8."""
    folder = Path(shutil.copytree(fp32_bundle, tmp_path / "b"))
    hold = hold_check(folder, sst2_dir, (LOOSE_GATE["max_accuracy_drop"], LOOSE_GATE["min_label_agreement"]))
    quantize_dynamic_int8(folder, "skipped: measured by hand below")
    measured = hold.judge(folder / VARIANT_FILES["int8"])
    pool = hold.sentences["pool"]
    flips = round((1 - measured["label_agreement"]) * pool)
    assert flips > 0
    noise = np.sqrt(flips) / pool
    assert measured["label_agreement_bound"] == pytest.approx(measured["label_agreement"] - noise, abs=1e-5)
    assert measured["accuracy_drop_bound"] > measured["accuracy_drop_points"]  # worst batch size: each its own noise
    hold.min_agreement, hold.max_drop = 100 * measured["label_agreement"], 100.0  # agreement exactly at its limit
    assert not hold.judge(folder / VARIANT_FILES["int8"])["passed"]
    hold.min_agreement = 100 * measured["label_agreement_bound"] - 1e-3  # recorded to 5 decimals
    assert hold.judge(folder / VARIANT_FILES["int8"])["passed"]
    hold.min_agreement, hold.max_drop = 0.0, measured["accuracy_drop_points"]  # lost points exactly at their limit
    assert not hold.judge(folder / VARIANT_FILES["int8"])["passed"]
    hold.max_drop = measured["accuracy_drop_bound"] + 1e-3
    assert hold.judge(folder / VARIANT_FILES["int8"])["passed"]
