"""Your own data through export-onnx and bench: a 3-class model with named labels, exported from a folder of a
3-class CSV whose columns are `text` and `category` (the gate reports accuracy and macro-F1, the manifest and card
carry the names and the dataset), benched and put on a menu, scored by label name; and what is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

from sst2dist.cli import main
from sst2dist.runtime import Classifier

# The data's labels sorted (bad, good, meh); the model names them in another order, so scoring must go by name.
MODEL_LABELS = ("meh", "bad", "good")
WORDS = {"bad": "a dull, lifeless mess", "good": "a gripping, funny film", "meh": "it is a film of some length"}
LOOSE = ["--max-accuracy-drop", "100", "--min-label-agreement", "0"]  # random weights: their accuracy means nothing


def write_split(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        writer.writerows(rows)


def labelled_rows(count: int, offset: int) -> list[tuple[str, str]]:
    names = sorted(WORDS)
    return [(f"{WORDS[names[i % 3]]} number {offset + i}", names[i % 3]) for i in range(count)]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "reviews"
    folder.mkdir()
    write_split(folder / "train.csv", labelled_rows(24, 0))
    write_split(folder / "dev.csv", labelled_rows(15, 100))
    return folder


@pytest.fixture(scope="module")
def exported(reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The tiny 3-class model, and its bundle (with the calibrated static int8 variant) as the CLI wrote it."""
    from conftest import make_tiny_model

    root = tmp_path_factory.mktemp("nclass")
    model = make_tiny_model(root / "model", labels=MODEL_LABELS)
    args = ["export-onnx", str(model), "--output", str(root / "bundle"), "--data", str(reviews)]
    args += ["--label-column", "category", "--quantize", "static", "--openvino", "off", *LOOSE]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return model, root / "bundle", result.output


def macro_f1(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
    scores = []
    for c in range(classes):
        hits = int(((predicted == c) & (labels == c)).sum())
        wrong = int(((predicted == c) != (labels == c)).sum())
        scores.append(2 * hits / (2 * hits + wrong) if hits else 0.0)
    return float(np.mean(scores))


def test_the_gate_reports_accuracy_and_macro_f1_by_label_name(exported: tuple, reviews: Path) -> None:
    _, bundle, output = exported
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["labels"] == list(MODEL_LABELS)
    assert manifest["verification"]["labels"] == ["bad", "good", "meh"]
    assert set(manifest["variants"]) == {"fp32", "optimized", "int8", "static-int8"}
    assert all(entry["passed"] for entry in manifest["variants"].values())
    assert "macro-F1" in output and "static-int8" in output
    with (reviews / "dev.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = manifest["verification"]["labels"]
    labels = np.array([names.index(row["category"]) for row in rows])
    for variant, entry in manifest["variants"].items():
        predicted = [p["label"] for p in Classifier(bundle, variant=variant).predict([row["text"] for row in rows])]
        predicted_ids = np.array([names.index(label) for label in predicted])
        result = entry["verification"]
        assert result["by_batch_size"]["32"]["accuracy"] == pytest.approx(float((predicted_ids == labels).mean()))
        assert result["by_batch_size"]["32"]["macro_f1"] == pytest.approx(macro_f1(predicted_ids, labels, 3))
        assert result["macro_f1"] == min(r["macro_f1"] for r in result["by_batch_size"].values())
    assert 0 <= manifest["verification"]["pytorch_macro_f1"] <= 1


def test_the_card_names_the_dataset_and_labels_and_reports_macro_f1(exported: tuple) -> None:
    _, bundle, _ = exported
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    card = ModelCard.load(bundle / "README.md")
    assert card.data.datasets == ["reviews"] and "sentiment-analysis" not in card.data.tags
    results = {result.metric_name: result for result in card.data.eval_results}
    for name, entry in manifest["variants"].items():
        assert results[f"accuracy ({name})"].metric_value == pytest.approx(entry["verification"]["accuracy"], abs=1e-6)
        f1 = results[f"macro-f1 ({name})"]
        assert (f1.metric_type, f1.metric_args) == ("f1", {"average": "macro"})
        assert f1.metric_value == pytest.approx(entry["verification"]["macro_f1"], abs=1e-6)
        assert f1.dataset_name.startswith("reviews validation: all 15 sentences of dev.csv")
    assert "`meh` / `bad` / `good`" in card.text and "3 labels only" in card.text and "SST-2" not in card.text


def test_bench_and_menu_score_the_3_class_bundle_by_name(exported: tuple, reviews: Path, tmp_path: Path) -> None:
    model, bundle, _ = exported
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    common = ["--data", str(reviews), "--label-column", "category", "--threads", "1", "--batch-sizes", "32"]
    common += ["--latency-samples", "2", "--warmup", "0", "--no-progress"]
    args = ["bench", "--model", str(model), "--bundle", str(bundle), "--backends", "torch-fp32,ort-fp32,ort-int8"]
    result = CliRunner().invoke(main, [*args, *common, "--output", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    assert "Accuracy on 15 reviews validation sentences" in result.output
    results = json.loads((tmp_path / "bench" / "results.json").read_text(encoding="utf-8"))
    assert results["dataset"]["label_names"] == ["bad", "good", "meh"]
    assert results["dataset"]["label_counts"] == {"bad": 5, "good": 5, "meh": 5}
    gate = {"torch-fp32": "fp32", "ort-fp32": "fp32", "ort-int8": "int8"}
    for backend, variant in gate.items():
        accuracy = manifest["variants"][variant]["verification"]["by_batch_size"]["32"]["accuracy"]
        assert results["backends"][backend]["metrics"]["accuracy"] == pytest.approx(accuracy), backend
    menu = ["bench", "--menu", f"three={bundle}", "--backends", "ort-fp32", "--output", str(tmp_path / "menu")]
    result = CliRunner().invoke(main, [*menu, *common])
    assert result.exit_code == 0, result.output
    assert "Accuracy on 15 reviews validation sentences" in (tmp_path / "menu" / "menu.md").read_text(encoding="utf-8")
    row = json.loads((tmp_path / "menu" / "menu.json").read_text(encoding="utf-8"))["rows"][0]
    assert row["accuracy"] == pytest.approx(manifest["variants"]["fp32"]["verification"]["accuracy"])


def test_a_2_label_model_or_bundle_on_3_label_data_is_refused_in_one_sentence(
    tiny_model_dir: Path, tiny_bundle_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    data = ["--data", str(reviews), "--label-column", "category"]
    exporting = ["export-onnx", str(tiny_model_dir), "--output", str(tmp_path / "bundle"), *data]
    benching = ["bench", "--bundle", str(tiny_bundle_dir), "--backends", "ort-fp32", *data]
    benching += ["--output", str(tmp_path / "out")]
    sentence = "the model was trained on 2 labels (negative, positive) but the data has 3 (bad, good, meh)"
    for args in (exporting, benching):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert sentence in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_missing_column_is_refused_in_one_sentence(tiny_bundle_dir: Path, reviews: Path, tmp_path: Path) -> None:
    from conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "model", labels=MODEL_LABELS)
    exporting = ["export-onnx", str(model), "--output", str(tmp_path / "bundle")]  # `label` is not in the CSV
    benching = ["bench", "--bundle", str(tiny_bundle_dir), "--backends", "ort-fp32", "--text-column", "review"]
    benching += ["--label-column", "category", "--output", str(tmp_path / "out")]
    for args, missing in ((exporting, "label"), (benching, "review")):
        result = CliRunner().invoke(main, [*args, "--data", str(reviews)])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"train.csv has no {missing} column (columns: ['text', 'category'])" in result.output, result.output
        assert "--text-column and --label-column" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
