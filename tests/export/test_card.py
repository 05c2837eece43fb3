"""The model card every bundle carries (README.md): it parses with huggingface_hub, its model-index round-trips
with the gate's accuracies, it names the base model and teacher of the run, and the manifest does not hash it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from sst2dist.export.card import CARD_FILE, eval_results, write_card
from sst2dist.runtime import Classifier


@pytest.fixture(scope="module")
def manifest(tiny_bundle_dir: Path) -> dict:
    return json.loads((tiny_bundle_dir / "manifest.json").read_text(encoding="utf-8"))


def test_the_exported_card_parses_and_its_model_index_round_trips(tiny_bundle_dir: Path, manifest: dict) -> None:
    card = ModelCard.load(tiny_bundle_dir / CARD_FILE)
    data = card.data
    assert (data.license, data.pipeline_tag, data.library_name) == ("apache-2.0", "text-classification", "onnx")
    assert data.datasets == ["stanfordnlp/sst2"] and data.model_name == tiny_bundle_dir.name
    gated = [name for name, entry in manifest["variants"].items() if entry["passed"]]
    assert [result.metric_name for result in data.eval_results] == [f"accuracy ({name})" for name in gated]
    assert data.eval_results == eval_results(manifest)
    for result, name in zip(data.eval_results, gated, strict=True):
        assert result.metric_value == pytest.approx(manifest["variants"][name]["verification"]["accuracy"])
        assert (result.task_type, result.dataset_split) == ("text-classification", "validation")


def test_the_card_gives_latency_per_variant_with_the_cpu_and_how_to_run_it(
    tiny_bundle_dir: Path, manifest: dict
) -> None:
    text = ModelCard.load(tiny_bundle_dir / CARD_FILE).text
    timings = manifest["variant_timings"]
    assert timings["cpu"]["kind"] in text
    for variant, ms in timings["ms_per_sentence"]["1"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{variant}` |"))
        assert f"{ms:.3g} ms" in row
    for command in ("sst2dist serve", "sst2dist predict ", "sst2dist predict-ray", "## Intended use and limitations"):
        assert command in text


def test_the_manifest_does_not_hash_the_card_so_editing_it_keeps_the_bundle_loadable(
    tiny_bundle_dir: Path, manifest: dict, tmp_path: Path
) -> None:
    hashed = set(manifest.get("files", {})) | {entry["file"] for entry in manifest["variants"].values()}
    assert CARD_FILE not in hashed
    import shutil

    copy = shutil.copytree(tiny_bundle_dir, tmp_path / "bundle")
    card = copy / CARD_FILE
    card.write_text(card.read_text(encoding="utf-8") + "\nEdited by hand.\n", encoding="utf-8")
    assert Classifier(copy, variant="fp32").predict(["a gripping, funny film"])[0]["label"]


def run_folder(root: Path, config: dict) -> Path:
    """A train output folder: train_config.json beside an (empty) model/."""
    (root / "model").mkdir(parents=True)
    (root / "train_config.json").write_text(json.dumps(config), encoding="utf-8")
    return root / "model"


def test_base_model_and_teacher_come_from_the_run_even_through_a_cut_student(manifest: dict, tmp_path: Path) -> None:
    l6 = run_folder(tmp_path / "l6", {"model": "packaged:all-MiniLM-L6-v2", "data": "d", "teacher": "t.npz"})
    l3 = run_folder(tmp_path / "l3", {"model": str(l6), "data": "d", "teacher": "packaged:all-mpnet-base-v2-sst2"})
    write_card(tmp_path, manifest, l3, "l3")
    card = ModelCard.load(tmp_path / CARD_FILE)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "distillation" in card.data.tags
    assert "Distilled from the teacher `packaged:all-mpnet-base-v2-sst2`" in card.text


def test_a_model_folder_without_a_run_has_no_base_model_or_teacher(manifest: dict, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    write_card(tmp_path, manifest, tmp_path / "model", "plain")
    card = ModelCard.load(tmp_path / CARD_FILE)
    assert card.data.base_model is None and "distillation" not in card.data.tags
    assert "Distilled" not in card.text


def test_the_model_index_names_the_sentences_the_gate_read_not_always_the_hub_split(
    tiny_bundle_dir: Path, sst2_sample_dir: Path
) -> None:
    card = ModelCard.load(tiny_bundle_dir / CARD_FILE)
    for result in card.data.eval_results:
        assert result.dataset_type == str(sst2_sample_dir)  # the --data the export read, not stanfordnlp/sst2
        assert result.dataset_name == "SST-2 validation: the first 64 of 72 sentences of dev.tsv"
    assert "the first 64 of 72 sentences of dev.tsv" in card.text
    assert "over 64 in length-sorted batches of 32" in card.text  # batch 1 and batches timed apart


def test_the_card_says_that_the_validation_split_also_picked_the_checkpoint(manifest: dict, tmp_path: Path) -> None:
    same = run_folder(tmp_path / "same", {"model": "m", "data": manifest["verification"]["data"]})
    write_card(tmp_path, manifest, same, "same")
    assert "kept the checkpoint that scored best on the same validation split" in ModelCard.load(
        tmp_path / CARD_FILE
    ).text.replace("\n", " ")
    (tmp_path / "bare").mkdir()
    write_card(tmp_path, manifest, tmp_path / "bare", "bare")
    assert "if it chose its checkpoint on this split" in ModelCard.load(tmp_path / CARD_FILE).text.replace("\n", " ")


def test_the_card_names_the_variants_whose_scores_moved_with_the_batch_as_measured(
    manifest: dict, tmp_path: Path
) -> None:
    """The export measures batch invariance per variant and serve/predict go by that measurement: the card says
    what was measured, not that dynamic int8 always moves (a measured-invariant int8 is a default candidate)."""
    import copy

    from sst2dist.export.card import card_text

    measured = copy.deepcopy(manifest)
    measured["variants"]["int8"]["batch_invariance"]["invariant"] = True
    measured["variants"]["optimized"]["batch_invariance"] |= {"invariant": False, "max_score_diff": 0.002}
    moved = [line for line in card_text(measured, tmp_path, "b").splitlines() if "batch mates" in line]
    assert len(moved) == 1 and "`optimized`" in moved[0] and "`int8`" not in moved[0], moved
    measured["variants"]["optimized"]["batch_invariance"]["invariant"] = True
    assert "batch mates;" not in card_text(measured, tmp_path, "b")


def test_own_binary_data_labelled_like_sst2_is_named_by_its_folder_not_sst2(tmp_path: Path) -> None:
    """Reviews labelled 0/1 (named negative/positive) are not SST-2: the card and the bench reports name the folder
    the gate read, and only SST-2 itself (its hub id, a folder named sst2) is called SST-2."""
    from sst2dist.export.card import dataset_id, verify_set_name
    from sst2dist.labels import SST2_NAMES, data_name

    reviews = tmp_path / "reviews"
    reviews.mkdir()
    own = {"data": str(reviews), "labels": list(SST2_NAMES), "samples": 8, "split_size": 8, "file": "dev.csv"}
    assert dataset_id(own) == "reviews" and data_name(str(reviews), SST2_NAMES) == "reviews"
    assert verify_set_name(own) == "reviews validation: all 8 sentences of dev.csv"
    for sst2 in ("stanfordnlp/sst2", "../shared/data/sst2", str(tmp_path / "SST-2")):
        assert data_name(sst2, SST2_NAMES) == "SST-2" and dataset_id({"data": sst2}) == "stanfordnlp/sst2"


def test_a_card_whose_int8_hold_checks_were_all_skipped_does_not_say_they_held(
    tiny_bundle_dir: Path, manifest: dict
) -> None:
    """The tiny bundle's gate limits are lifted, so the hold check is skipped: the card must say it did not run,
    not that each variant "was then held to fp32" and then that it "was not held"."""
    assert "skipped" in manifest["quantization"]["hold_check"]
    text = ModelCard.load(tiny_bundle_dir / CARD_FILE).text
    assert "int8 recipe:" in text and "was then held to fp32" not in text
    assert "the onnxruntime int8 hold check on held-out train sentences did not run" in text
