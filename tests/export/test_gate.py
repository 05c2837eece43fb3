"""The export gate's two accuracy limits (net drop and label agreement), and one label mapping (by name) shared by
the gate, the card's model-index and the bench."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification

from sst2dist.bench.run import BenchSettings, run_bench
from sst2dist.cli import main
from sst2dist.data import load_validation
from sst2dist.export.card import CARD_FILE
from sst2dist.export.gate import compare, judge, worst_over_batch_sizes
from tests.conftest import export_tiny_bundle


def two_class_logits(predicted: np.ndarray) -> np.ndarray:
    """Logits whose argmax is `predicted` (0/1), with a margin."""
    return np.stack([1.0 - predicted, predicted.astype(float)], axis=1) * 2.0 - 1.0


def test_flips_both_ways_keep_accuracy_but_fail_the_label_agreement_floor(sst2_sample_dir: Path) -> None:
    _, labels = load_validation(str(sst2_sample_dir))
    reference_predictions = labels.copy()
    reference_predictions[:16] = 1 - labels[:16]  # PyTorch is wrong on the first 16
    variant_predictions = reference_predictions.copy()
    variant_predictions[:8] = labels[:8]  # the variant fixes 8 of those ...
    variant_predictions[-8:] = 1 - labels[-8:]  # ... and breaks 8 others: the same accuracy
    reference, variant = two_class_logits(reference_predictions), two_class_logits(variant_predictions)
    results = [compare(variant, reference, labels) for _ in range(3)]
    reference_accuracy = float((reference_predictions == labels).mean())
    entry = {"size_bytes": 1, "verification": worst_over_batch_sizes(results, reference_accuracy)}
    assert entry["verification"]["accuracy_drop_points"] == 0.0
    judge("int8", entry, {"variants": {"fp32": {"size_bytes": 4}}}, 0.5)
    assert entry["passed"] is False
    assert "label agreement" in entry["failure"] and "limit 98" in entry["failure"]


def leaning_positive(model_dir: Path, folder: Path, swap: bool) -> Path:
    """The tiny classifier with a bias towards "positive"; with `swap`, the same classifier with its output columns
    swapped and id2label {0: positive, 1: negative}."""
    shutil.copytree(model_dir, folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 3.0]))
        if swap:
            model.classifier.weight.copy_(model.classifier.weight.flip(0))
            model.classifier.bias.copy_(model.classifier.bias.flip(0))
            model.config.id2label = {0: "positive", 1: "negative"}
            model.config.label2id = {"positive": 0, "negative": 1}
    model.save_pretrained(folder)
    return folder


def mostly_positive(sample_dir: Path, folder: Path) -> Path:
    """The sample's train.tsv and a dev.tsv of its positive sentences and 8 negative ones (an accuracy far from
    50 %, so scoring by index instead of by name shows)."""
    folder.mkdir()
    shutil.copy(sample_dir / "train.tsv", folder / "train.tsv")
    header, *rows = (sample_dir / "dev.tsv").read_text(encoding="utf-8").splitlines()
    negative = [row for row in rows if row.endswith("\t0")][:8]
    (folder / "dev.tsv").write_text("\n".join([header, *[r for r in rows if r.endswith("\t1")], *negative]) + "\n")
    return folder


def test_a_model_with_id2label_positive_first_scores_the_same_in_gate_card_and_bench(
    tiny_model_dir: Path, sst2_sample_dir: Path, tmp_path: Path
) -> None:
    data = mostly_positive(sst2_sample_dir, tmp_path / "data")
    manifests = {}
    for swap in (False, True):
        model = leaning_positive(tiny_model_dir, tmp_path / f"model-{swap}", swap)
        bundle = export_tiny_bundle(model, data, tmp_path / f"bundle-{swap}", openvino="off", optimize="none")
        manifests[swap] = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifests[True]["labels"] == ["positive", "negative"]
    expected = manifests[False]["verification"]["pytorch_accuracy"]
    assert expected > 0.7
    assert manifests[True]["verification"]["pytorch_accuracy"] == pytest.approx(expected)
    for variant in ("fp32", "int8"):
        accuracy = manifests[False]["variants"][variant]["verification"]["accuracy"]
        assert manifests[True]["variants"][variant]["verification"]["accuracy"] == pytest.approx(accuracy)
    card = ModelCard.load(bundle / CARD_FILE)
    fp32 = next(r for r in card.data.eval_results if r.metric_name == "accuracy (fp32)")
    assert fp32.metric_value == pytest.approx(manifests[False]["variants"]["fp32"]["verification"]["accuracy"])
    settings = BenchSettings(
        bundle=str(bundle),
        model=str(model),
        data=str(data),
        backends=["torch-fp32", "ort-fp32"],
        threads=(1,),
        batch_sizes=(8,),
        latency_samples=2,
        warmup=0,
        output=str(tmp_path / "bench"),
        progress=False,
    )
    results = run_bench(settings)
    for name in ("torch-fp32", "ort-fp32"):
        assert results["backends"][name]["metrics"]["accuracy"] == pytest.approx(expected), name


def test_a_model_whose_label_names_are_not_the_datas_is_refused_before_any_work(
    tiny_model_dir: Path, sst2_sample_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config |= {"id2label": {"0": "bad", "1": "good"}, "label2id": {"bad": 0, "good": 1}}
    (model / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(
        main, ["export-onnx", str(model), "--output", str(tmp_path / "bundle"), "--data", str(sst2_sample_dir)]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the model's labels ['bad', 'good'] do not name the data's labels ['negative', 'positive']" in result.output
    assert not (tmp_path / "bundle").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
