"""Reading SST-2: local formats and the hub through `datasets`, the standard-library reader, the checks both share,
tokenizing."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import import_blocker
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sst2dist.data import DataError, count_empty_sentences, load_sst2, load_validation, read_split, tokenize

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
        ([("fine", 1), ("bad label", 2.5)], "sentence\tlabel", "line 3: label '2.5' is a decimal number"),
        ([("fine", 1)], "review\tlabel", "no sentence column"),
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


# --- the standard-library reader agrees with `load_sst2` ----------------------------------------------------------


def assert_same_validation(folder: Path, limit: int | None = None) -> None:
    sentences, labels = load_validation(str(folder), limit)
    expected = load_sst2(str(folder), max_eval_samples=limit)["validation"]
    assert sentences == expected["sentence"]
    assert labels.dtype == np.int64 and labels.tolist() == expected["label"]


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_stdlib_reader_reads_every_row_as_load_sst2_does(tmp_path: Path, fmt: str) -> None:
    write_split(tmp_path, "train", fmt, ROWS)
    write_split(tmp_path, "dev" if fmt == "tsv" else "validation", fmt, ROWS)
    assert_same_validation(tmp_path)
    assert_same_validation(tmp_path, limit=2)
    file = tmp_path / ("dev.tsv" if fmt == "tsv" else f"validation.{fmt}")
    rows = read_split(file)
    assert (rows.texts, rows.keys) == ([s for s, _ in ROWS], [str(y) for _, y in ROWS])


def test_stdlib_reader_agrees_on_the_sample(sst2_sample_dir: Path) -> None:
    assert_same_validation(sst2_sample_dir)
    rows = read_split(sst2_sample_dir / "train.tsv")
    assert rows.texts == load_sst2(str(sst2_sample_dir))["train"]["sentence"] and set(rows.keys) == {"0", "1"}


@pytest.mark.slow
def test_stdlib_reader_agrees_on_the_real_dev_set(sst2_dir: Path) -> None:
    assert_same_validation(sst2_dir)
    assert len(load_validation(str(sst2_dir))[0]) == 872


BAD_FILES = {
    "int label": ("dev.tsv", "sentence\tlabel\nfine\t1\nbad\t2\n", "line 3: label '2' is not one of the training"),
    "text label": ("dev.tsv", "sentence\tlabel\nfine\t1\nbad\tx\n", "line 3: label 'x' is not one of the training"),
    "empty label": ("dev.tsv", "sentence\tlabel\nfine\t1\nbad\t\n", "line 3: the label is empty"),
    "float label": ("dev.tsv", "sentence\tlabel\nfine\t1.0\n", "line 2: label '1.0' is a decimal number"),
    "csv label": ("validation.csv", 'sentence,label\nfine,1\n"a, b",-1\n', "line 3: label '-1' is not one of the"),
    "json bool": ("validation.jsonl", '{"sentence": "a", "label": true}\n', "line 1: label True is not an integer"),
    "spaced label": ("dev.tsv", "sentence\tlabel\nfine\t 1\n", "line 2: label ' 1' has spaces around it"),
    "two labels": ("dev.tsv", "sentence\tlabel\tlabel\nfine\t1\t0\n", "has more than one label column"),
    "json twice": (
        "validation.jsonl",
        '{"sentence": "a", "label": 1, "label": 0}\n',
        "line 1 has more than one label key",
    ),
    "fewer fields": ("dev.tsv", "sentence\tlabel\nfine\n", "line 2 has fewer fields than the header"),
    "json text": ("validation.jsonl", '{"sentence": 5, "label": 1}\n', "line 1: sentence 5 is not text"),
    "no sentence": ("dev.tsv", "review\tlabel\nfine\t1\n", "has no sentence column"),
    "no label": ("validation.jsonl", '{"sentence": "a", "target": 1}\n', "has no label column"),
    "header only": ("dev.tsv", "sentence\tlabel\n", "has no rows"),
    "empty file": ("dev.tsv", "", "has no rows"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_both_readers_reject_a_bad_file_with_the_same_message(tmp_path: Path, case: str) -> None:
    name, text, message = BAD_FILES[case]
    write_tsv(tmp_path / "train.tsv", ROWS)
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as by_datasets:
        load_sst2(str(tmp_path))
    with pytest.raises(DataError) as by_stdlib:
        load_validation(str(tmp_path))
    assert str(by_stdlib.value) == str(by_datasets.value)
    assert str(tmp_path / name) in str(by_stdlib.value)


def test_text_labels_become_integers_in_both_readers(tmp_path: Path) -> None:
    write_tsv(tmp_path / "train.tsv", ROWS)
    rows = [{"sentence": "fine", "label": "1"}, {"sentence": "poor", "label": "0"}]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load_sst2(str(tmp_path))["validation"]["label"] == [1, 0]
    assert_same_validation(tmp_path)


def test_stdlib_reader_refuses_more_fields_than_the_header(tmp_path: Path) -> None:
    write_tsv(tmp_path / "dev.tsv", [("fine", 1), ("one\ttoo many", 0)])
    with pytest.raises(DataError, match="line 3 has more fields than the header"):
        read_split(tmp_path / "dev.tsv")


BLOCK_DATASETS = (
    import_blocker("datasets", "torch", "transformers", "pandas")
    + """
from sst2dist.data import DataError, load_validation
sentences, labels = load_validation(sys.argv[1], 5)
print(len(sentences), labels.tolist())
try:
    load_validation(sys.argv[2])
except DataError as err:
    print(err)
"""
)


def test_stdlib_reader_runs_without_datasets(sst2_sample_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train.parquet").write_bytes(b"")
    (tmp_path / "validation.parquet").write_bytes(b"")
    command = [sys.executable, "-c", BLOCK_DATASETS, str(sst2_sample_dir), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == "5 [1, 0, 1, 0, 1]"
    assert "needs `datasets` (pip install 'sst2dist[train]')" in second


# --- one reader: every stage reads the same rows and labels, or refuses with the same sentence -------------------


def test_a_bom_csv_from_excel_reads_the_same_in_every_stage(tmp_path: Path) -> None:
    for stem in ("train", "validation"):
        (tmp_path / f"{stem}.csv").write_text("sentence,label\nfine,1\npoor,0\n", encoding="utf-8-sig")
    assert load_validation(str(tmp_path))[1].tolist() == [1, 0]
    assert_same_validation(tmp_path)


BAD_CELLS = [" 1", "1 ", "", "1.0", "pos"]
TEXTS = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


@st.composite
def split_files(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]:
    """Mostly well-formed files (one kind of labels, a usable header), sometimes one bad cell or header."""
    fmt = draw(st.sampled_from(["tsv", "csv", "jsonl"]))
    headers = ["sentence,label"] * 4 + ["text,label", "label,sentence", "sentence,label,label"]
    header = draw(st.sampled_from(headers))
    kind = draw(st.sampled_from([["0", "1", "2"], ["neg", "pos", "neutral"]]))
    cells = st.sampled_from(kind) if draw(st.integers(0, 4)) else st.sampled_from(kind + BAD_CELLS)
    train = draw(st.lists(st.tuples(TEXTS, cells), min_size=2, max_size=6))
    return fmt, header, train, draw(st.lists(st.tuples(TEXTS, cells), min_size=1, max_size=4))


def write_generated(path: Path, fmt: str, header: str, rows: list[tuple[str, str]], bom: bool) -> None:
    import csv

    names = header.split(",")
    cells = [[text if name != "label" else label for name in names] for text, label in rows]
    if fmt == "jsonl":
        pairs = [
            ", ".join(f"{json.dumps(n)}: {json.dumps(c)}" for n, c in zip(names, row, strict=True)) for row in cells
        ]
        text = "".join("{" + line + "}\n" for line in pairs)
    else:
        import io

        buffer = io.StringIO()
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
        csv.writer(buffer, delimiter=delimiter, quoting=quoting, escapechar="\\", lineterminator="\n").writerows(
            [names, *cells]
        )
        text = buffer.getvalue()
    path.write_text(text, encoding="utf-8-sig" if bom else "utf-8")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=split_files(), bom=st.booleans())
def test_train_and_bench_paths_agree_on_generated_files(tmp_path: Path, files: tuple, bom: bool) -> None:
    """The train path (`load_sst2`, datasets) and the bench/menu path (`load_validation`, lists) return the same
    rows and label ids, or refuse with the same one sentence."""
    fmt, header, train_rows, dev_rows = files
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    write_generated(folder / f"train.{fmt}", fmt, header, train_rows, bom)
    write_generated(folder / f"validation.{fmt}", fmt, header, dev_rows, bom)
    outcomes = []
    for read in (lambda: load_sst2(str(folder))["validation"], lambda: load_validation(str(folder))):
        try:
            result = read()
        except DataError as err:
            outcomes.append(("refused", str(err)))
            assert "\n" not in str(err)
        else:
            texts, labels = result if isinstance(result, tuple) else (result["sentence"], result["label"])
            outcomes.append(("read", list(texts), [int(label) for label in labels]))
    assert outcomes[0] == outcomes[1]
    event(outcomes[0][0])


# --- labels from the data ---------------------------------------------------------------------------------------


def write_labelled(folder: Path, labels: list[str], dev: list[str] | None = None) -> Path:
    rows = [(f"sentence {i}", label) for i, label in enumerate(labels)]
    folder.mkdir(parents=True, exist_ok=True)
    write_tsv(folder / "train.tsv", rows)
    write_tsv(folder / "dev.tsv", [(f"dev {i}", label) for i, label in enumerate(dev or labels)])
    return folder


@pytest.mark.parametrize(
    ("labels", "names", "ids"),
    [
        (["1", "0", "1"], ["negative", "positive"], [1, 0, 1]),  # SST-2's 0/1 keep their names
        (["2", "10", "1"], ["1", "2", "10"], [1, 2, 0]),  # integers in numeric order
        (["+1", "-1", "+1"], ["-1", "+1"], [1, 0, 1]),  # signed integers (the +1/-1 convention)
        (["pos", "neg", "neutral"], ["neg", "neutral", "pos"], [2, 0, 1]),  # text in alphabetical order
    ],
)
def test_the_label_set_is_read_from_the_training_split(
    tmp_path: Path, labels: list[str], names: list[str], ids: list[int]
) -> None:
    data = load_sst2(str(write_labelled(tmp_path, labels)))
    assert data["train"].features["label"].names == names
    assert data["train"]["label"] == ids == data["validation"]["label"]


def test_labels_option_fixes_the_order_and_a_models_names_read_its_data(tmp_path: Path) -> None:
    from sst2dist.labels import LabelSet

    folder = write_labelled(tmp_path, ["pos", "neg", "pos"])
    assert load_sst2(str(folder), labels=("pos", "neg"))["train"]["label"] == [0, 1, 0]
    with pytest.raises(DataError, match="train.tsv line 3: label 'neg' is not one of the training labels \\(pos, x\\)"):
        load_sst2(str(folder), labels=("pos", "x"))
    sst2_model = LabelSet.from_names(["negative", "positive"])  # what the bench passes: the model's id2label
    assert load_validation(str(write_labelled(tmp_path / "b", ["1", "0"])), labels=sst2_model)[1].tolist() == [1, 0]


def test_mixed_integer_and_text_labels_and_a_single_label_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train.tsv line 4: label 'pos' mixes text labels into integer ones"):
        load_sst2(str(write_labelled(tmp_path / "a", ["0", "1", "pos"])))
    with pytest.raises(DataError, match="train.tsv has only the label 'pos': a classifier needs at least 2 labels"):
        load_sst2(str(write_labelled(tmp_path / "b", ["pos", "pos"])))


def test_a_class_label_gives_its_names_and_order(tmp_path: Path) -> None:
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos", "mixed"])})
    for split in ("train", "validation"):
        Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, 0, 1]}, features).to_parquet(
            tmp_path / f"{split}.parquet"
        )
    data = load_sst2(str(tmp_path))
    assert data["train"].features["label"].names == ["neg", "pos", "mixed"] and data["train"]["label"] == [2, 0, 1]


def test_one_integer_written_two_ways_is_refused_not_ordered_by_chance(tmp_path: Path) -> None:
    """`01` and `1` (or `-0` and `0`) tie in numeric order: their ids would follow Python's per-process string
    hashing, so training and export could number them differently."""
    with pytest.raises(
        DataError, match="train.tsv: labels '1' and '01' are one integer written two ways: write it one way"
    ):
        load_sst2(str(write_labelled(tmp_path, ["1", "01", "2"], dev=["1"])))


def test_the_text_and_the_label_cannot_be_one_column(tmp_path: Path) -> None:
    from sst2dist.data import Columns

    folder = write_labelled(tmp_path, ["pos", "neg"])
    message = "--text-column and --label-column both name 'label': the text and the label must be two columns"
    with pytest.raises(DataError, match=message):
        load_sst2(str(folder), columns=Columns("label", "label"))
    (folder / "train.tsv").write_text("text\tlabel\nfine\tpos\nawful\tneg\n", encoding="utf-8")
    with pytest.raises(DataError, match="both name 'text'"):  # `text`, read when there is no `sentence`
        load_sst2(str(folder), columns=Columns(label="text"))


def test_labels_that_differ_only_in_case_score_by_their_exact_names() -> None:
    """Training takes `Pos` and `pos` as two labels, so the gate and the bench must map them, not refuse them."""
    from sst2dist.labels import column_to_data_id

    assert column_to_data_id(["pos", "Pos", "neg"], ["Pos", "neg", "pos"]).tolist() == [2, 0, 1]
    assert column_to_data_id(["NEGATIVE", "POSITIVE"]).tolist() == [0, 1]  # one spelling each: case is ignored


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("train.csv", 'sentence,label\n"a review\nin two lines",pos\n\nfine,neg\nawful,1.5\n', 6),
        ("train.jsonl", '{"sentence": "fine", "label": "pos"}\n\n\n{"sentence": "awful", "label": "1.5"}\n', 4),
    ],
)
def test_a_refusal_names_the_line_a_text_editor_shows(tmp_path: Path, name: str, text: str, line: int) -> None:
    """A review spanning lines, or a blank line, comes before the bad row: the message still names its line."""
    (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ndev\tpos\n\nodd\tx\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{name} line {line}: label '1.5' is a decimal number"):
        load_sst2(str(tmp_path))
    (tmp_path / name).write_text(text.replace("1.5", "neg"), encoding="utf-8")
    with pytest.raises(DataError, match="dev.tsv line 4: label 'x' is not one of the training labels"):
        load_sst2(str(tmp_path))


def test_a_class_label_of_one_name_is_refused_like_one_label(tmp_path: Path) -> None:
    """num_labels 1 would make transformers train a regression head (MSE), not a classifier."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["spam"])})
    for split in ("train", "validation"):
        Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 0]}, features).to_parquet(tmp_path / f"{split}.parquet")
    with pytest.raises(DataError, match="train.parquet has only the label 'spam': a classifier needs at least 2"):
        load_sst2(str(tmp_path))


def test_a_folder_with_two_files_for_one_split_is_refused_not_read_by_chance(tmp_path: Path) -> None:
    """A GLUE folder the user added a CSV export to: which file is read must not be a silent choice."""
    write_labelled(tmp_path, ["pos", "neg"])
    write_split(tmp_path, "train", "csv", [("other rows", "neg"), ("and more", "pos")])
    with pytest.raises(DataError, match="has 2 train files \\(train.tsv, train.csv\\): keep one"):
        load_sst2(str(tmp_path))
    (tmp_path / "train.csv").unlink()
    write_split(tmp_path, "validation", "tsv", [("stale", "pos")])
    with pytest.raises(DataError, match="has 2 validation files \\(validation.tsv, dev.tsv\\): keep one"):
        load_sst2(str(tmp_path))


def test_unread_columns_may_repeat_like_the_empty_ones_of_a_spreadsheet_export(tmp_path: Path) -> None:
    """Trailing empty cells give a CSV header like `sentence,label,,`: two unnamed columns that nothing reads."""
    for split in ("train", "dev"):
        (tmp_path / f"{split}.csv").write_text("sentence,label,,\nfine,pos,,\nawful,neg,,\n", encoding="utf-8")
    assert load_sst2(str(tmp_path))["train"]["label"] == [1, 0]
    (tmp_path / "train.csv").write_text("sentence,label,label\nfine,pos,neg\n", encoding="utf-8")
    with pytest.raises(DataError, match="train.csv has more than one label column"):
        load_sst2(str(tmp_path))
