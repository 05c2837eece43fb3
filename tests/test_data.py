from __future__ import annotations

import json
from pathlib import Path

import pytest

from sst2dist.data import DataError, count_empty_sentences, load_sst2, tokenize

ROWS = [("a gorgeous , witty film", 1), ("null", 0), ('he said "no" , twice', 0), ("", 1)]


def write_tsv(path: Path, rows: list[tuple[str, object]], header: str = "sentence\tlabel") -> Path:
    path.write_text(header + "\n" + "".join(f"{s}\t{label}\n" for s, label in rows), encoding="utf-8")
    return path


def write_split(folder: Path, stem: str, fmt: str, rows: list[tuple[str, int]]) -> None:
    file = folder / f"{stem}.{fmt}"
    if fmt == "tsv":
        write_tsv(file, rows)
    elif fmt == "csv":
        import csv

        with file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "label"])
            writer.writerows(rows)
    elif fmt == "jsonl":
        file.write_text("".join(json.dumps({"sentence": s, "label": y}) + "\n" for s, y in rows))
    elif fmt == "parquet":
        from datasets import Dataset

        Dataset.from_dict({"sentence": [s for s, _ in rows], "label": [y for _, y in rows]}).to_parquet(file)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "parquet"])
def test_local_formats_round_trip_every_row(tmp_path: Path, fmt: str) -> None:
    write_split(tmp_path, "train", fmt, ROWS)
    write_split(tmp_path, "validation" if fmt != "tsv" else "dev", fmt, ROWS[:2])
    data = load_sst2(str(tmp_path))
    assert data["train"]["sentence"] == [s for s, _ in ROWS]
    assert data["train"]["label"] == [y for _, y in ROWS]
    assert len(data["validation"]) == 2
    assert count_empty_sentences(data["train"]) == 1


def test_sample_limits_take_the_first_rows(tmp_path: Path) -> None:
    write_tsv(tmp_path / "train.tsv", ROWS)
    write_tsv(tmp_path / "dev.tsv", ROWS)
    data = load_sst2(str(tmp_path), max_train_samples=2, max_eval_samples=3)
    assert data["train"]["sentence"] == ["a gorgeous , witty film", "null"]
    assert len(data["validation"]) == 3


@pytest.mark.parametrize(
    ("train_rows", "header", "message"),
    [
        ([("fine", 1), ("bad label", 2)], "sentence\tlabel", "line 3: label 2 is not 0 or 1"),
        ([("fine", 1)], "text\tlabel", "no sentence column"),
        ([("fine", 1)], "sentence\ttarget", "no label column"),
        ([], "sentence\tlabel", "has no rows"),
    ],
)
def test_bad_data_names_file_and_row(tmp_path: Path, train_rows: list, header: str, message: str) -> None:
    write_tsv(tmp_path / "train.tsv", train_rows, header=header)
    write_tsv(tmp_path / "dev.tsv", ROWS)
    with pytest.raises(DataError, match=message) as info:
        load_sst2(str(tmp_path))
    assert "train.tsv" in str(info.value)


def test_missing_split_file_says_what_is_expected(tmp_path: Path) -> None:
    write_tsv(tmp_path / "train.tsv", ROWS)
    with pytest.raises(DataError, match="no validation file .* dev.tsv"):
        load_sst2(str(tmp_path))


def test_offline_hub_id_says_how_to_use_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="--data ../shared/data/sst2"):
        load_sst2("stanfordnlp/sst2")


def test_tokenize_is_unpadded_and_records_lengths(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    write_tsv(tmp_path / "train.tsv", ROWS)
    write_tsv(tmp_path / "dev.tsv", ROWS)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenized = tokenize(load_sst2(str(tmp_path)), tokenizer, max_length=6)
    lengths = tokenized["train"]["length"]
    assert lengths == [len(ids) for ids in tokenized["train"]["input_ids"]]
    assert max(lengths) == 6  # truncated
    assert lengths[3] == 2  # empty sentence: [CLS] [SEP]
    assert tokenized["train"]["labels"] == [y for _, y in ROWS]


@pytest.mark.slow
def test_real_sst2_has_every_row(sst2_dir: Path) -> None:
    data = load_sst2(str(sst2_dir))
    assert (len(data["train"]), len(data["validation"])) == (67349, 872)
    assert set(data["validation"]["label"]) == {0, 1}
