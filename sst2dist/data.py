"""The package's one reader of labelled splits, `read_splits` (local TSV/CSV/JSONL with the standard library, JSON,
Parquet and hub ids through `datasets`, one set of checks and messages): as `datasets` for training and export
(`load_sst2`), as lists for the bench and the menu (`load_validation`); then tokenizing once, length-grouped batches
and padding."""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sst2dist.data_options import Columns
from sst2dist.labels import INTEGER, DataError, LabelSet, check_one_spelling, label_key, sorted_keys

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_DATA = "stanfordnlp/sst2"
DEFAULT_COLUMNS = Columns()  # sentence, label
SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("validation", "dev", "valid", "val")}
FORMATS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
STDLIB_FORMATS = (".tsv", ".csv", ".jsonl")  # what `read_split` reads without `datasets`
DECIMAL = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


@dataclass
class Rows:
    """One split as read and checked: its texts, its labels as text (`labels.label_key`), where it came from, the
    label order a `datasets` ClassLabel fixes (None: ordered by `sorted_keys`), and each row's line in the file."""

    texts: list[str]
    keys: list[str]
    source: Path
    order: tuple[str, ...] | None = None
    lines: Sequence[int] | None = None


@dataclass
class LabelledSplit:
    texts: list[str]
    ids: list[int]


def read_splits(
    data: str, columns: Columns = DEFAULT_COLUMNS, labels: LabelSet | Sequence[str] | None = None
) -> tuple[dict[str, LabelledSplit], LabelSet]:
    """THE reader every stage uses: the "train" and "validation" splits of `data` (a local folder or a hub id), each
    text with its label id, and the label set (from the training split, or `labels`: the label order as written in
    the data, e.g. --labels, or a model's `LabelSet`). Every check and message lives below it."""
    path = Path(data).expanduser()
    if path.exists():
        splits = {split: read_split(file, columns) for split, file in find_split_files(path).items()}
    else:
        splits = read_hub_splits(data, columns)
    label_set = train_label_set(splits["train"], labels)
    return {split: with_ids(rows, label_set) for split, rows in splits.items()}, label_set


def load_sst2(
    data: str = DEFAULT_DATA,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    labels: LabelSet | Sequence[str] | None = None,
) -> DatasetDict:
    """`read_splits` as a DatasetDict with "train" and "validation" splits of `sentence` (str) and `label` (a
    ClassLabel whose names are the label names, `label_names`).

    `data` is a dataset-hub id or a local folder holding train.{tsv,csv,jsonl,parquet} and
    dev|validation.{...} (the GLUE layout is `train.tsv` + `dev.tsv`).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    splits, label_set = read_splits(data, columns, labels)
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=list(label_set.names))})
    limits = {"train": max_train_samples, "validation": max_eval_samples}
    return DatasetDict(
        {
            split: take_first(Dataset.from_dict({"sentence": rows.texts, "label": rows.ids}, features), limits[split])
            for split, rows in splits.items()
        }
    )


def split_labels(dataset: Dataset) -> LabelSet:
    """The label set of a split `load_sst2` made (its ClassLabel, `labels` once tokenized): the model's
    num_labels, id2label and label2id."""
    return LabelSet.from_names(dataset.features["labels" if "labels" in dataset.features else "label"].names)


def find_split_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"--data {folder} is a file; point it at a folder holding train and dev files")
    found = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        candidates = [folder / f"{stem}{ext}" for stem in stems for ext in FORMATS]
        existing = [file for file in candidates if file.is_file()]
        if not existing:
            names = ", ".join(f"{stems[0]}{ext}" for ext in FORMATS)
            raise DataError(f"no {split} file in {folder}: expected one of {names} (or dev.tsv for validation)")
        if len(existing) > 1:  # a CSV export beside GLUE's TSV: reading either one by chance is wrong data
            listed = ", ".join(file.name for file in existing)
            raise DataError(f"{folder} has {len(existing)} {split} files ({listed}): keep one")
        found[split] = existing[0]
    return found


def read_split(file: Path, columns: Columns = DEFAULT_COLUMNS) -> Rows:
    """One local split file, checked: TSV, CSV and JSONL with the standard library, JSON and Parquet by `datasets`."""
    if file.suffix not in STDLIB_FORMATS:
        return dataset_rows(read_with_datasets(file), file, columns)
    check_not_empty(file)
    try:
        header, rows, lines = read_jsonl(file) if file.suffix == ".jsonl" else read_delimited(file)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"could not read {file}: {err}") from err
    return checked_rows(header, len(rows), lambda name: [row.get(name) for row in rows], file, columns, lines)


def read_with_datasets(file: Path) -> Dataset:
    from datasets import load_dataset

    check_not_empty(file)
    try:
        return load_dataset(FORMATS[file.suffix], data_files=str(file), split="train")
    except Exception as err:  # datasets raises many types for unparsable files
        if "corresponds to no data" in str(err):
            raise DataError(f"{file} has no rows") from err
        raise DataError(f"could not read {file}: {err}") from err


def read_hub_splits(hub_id: str, columns: Columns) -> dict[str, Rows]:
    from datasets import load_dataset

    try:
        loaded = load_dataset(hub_id)
    except (ConnectionError, OSError, ValueError) as err:
        raise DataError(
            f"could not load dataset {hub_id!r} from the hub ({err.__class__.__name__}): it may be unreachable "
            "or offline (HF_HUB_OFFLINE); point --data at a local folder with train.tsv and dev.tsv instead, "
            "e.g. --data ../shared/data/sst2"
        ) from err
    missing = [split for split in SPLIT_FILE_STEMS if split not in loaded]
    if missing:
        raise DataError(f"dataset {hub_id!r} has no {', '.join(missing)} split (it has {list(loaded)})")
    return {split: dataset_rows(loaded[split], Path(f"{hub_id}[{split}]"), columns) for split in SPLIT_FILE_STEMS}


def dataset_rows(dataset: Dataset, source: Path, columns: Columns) -> Rows:
    """A `datasets` split through the same checks; a ClassLabel column gives its names and their order."""
    from datasets import ClassLabel

    feature = dataset.features.get(columns.label)
    if not isinstance(feature, ClassLabel):
        return checked_rows(dataset.column_names, len(dataset), dataset.__getitem__, source, columns)

    def column(name: str) -> list:
        values = dataset[name]
        return [feature.names[v] if name == columns.label and 0 <= v < len(feature.names) else v for v in values]

    rows = checked_rows(dataset.column_names, len(dataset), column, source, columns)
    rows.order = tuple(feature.names)
    return rows


# --- the checks every split goes through ------------------------------------------------------------------------


def check_not_empty(file: Path) -> None:
    if file.stat().st_size == 0:
        raise DataError(f"{file} has no rows")


def checked_rows(
    header: Sequence[str],
    count: int,
    column: Callable[[str], list],
    source: Path,
    columns: Columns,
    lines: Sequence[int] | None = None,
) -> Rows:
    """Refuse what would silently train on wrong data; count (and keep) empty texts."""
    if count == 0:
        raise DataError(f"{source} has no rows")
    text = columns.text_in(header)
    duplicated = [name for name in (text, columns.label) if list(header).count(name) > 1]  # others are not read
    if duplicated:
        raise DataError(f"{source} has more than one {duplicated[0]} column: rename or remove the extra one")
    missing = [name for name in (text, columns.label) if name not in header]
    if missing:
        raise DataError(
            f"{source} has no {', '.join(missing)} column (columns: {list(header)}): rename the columns or name "
            "them with --text-column and --label-column"
        )
    texts, values = column(text), column(columns.label)
    keys = [checked_key(value, f"{source} {describe_row(source, index, lines)}") for index, value in enumerate(values)]
    for index, sentence in enumerate(texts):
        if not isinstance(sentence, str):
            raise DataError(f"{source} {describe_row(source, index, lines)}: sentence {sentence!r} is not text")
    empty = sum(1 for sentence in texts if not sentence.strip())
    if empty:
        logger.warning("%s: %d empty sentences (kept, they tokenize to [CLS] [SEP])", source, empty)
    return Rows(texts, keys, source, lines=lines)


def checked_key(value: object, where: str) -> str:
    key = label_key(value)
    if key is None:
        raise DataError(f"{where}: label {value!r} is not an integer or text")
    if not key.strip():
        raise DataError(f"{where}: the label is empty: give every row a label")
    if key != key.strip():
        raise DataError(f"{where}: label {key!r} has spaces around it: remove them")
    if DECIMAL.fullmatch(key):
        raise DataError(f"{where}: label {key!r} is a decimal number: write class labels as integers or words")
    return key


def train_label_set(train: Rows, labels: LabelSet | Sequence[str] | None) -> LabelSet:
    """The given labels, else a ClassLabel's order, else the training split's labels in `sorted_keys` order."""
    if labels is not None:
        return labels if isinstance(labels, LabelSet) else LabelSet.from_keys(labels)
    if train.order is None:
        check_one_kind(train)
    label_set = LabelSet.from_keys(sorted_keys(train.keys) if train.order is None else train.order)
    if len(label_set) < 2:  # num_labels 1 is a regression head in transformers
        raise DataError(f"{train.source} has only the label {train.keys[0]!r}: a classifier needs at least 2 labels")
    return label_set


def check_one_kind(train: Rows) -> None:
    """Integer and text labels mixed are a typo more often than a label set ("1" beside "pos"); so are `1` and `01`."""
    integers = [bool(INTEGER.fullmatch(key)) for key in train.keys]
    if any(integers) and not all(integers):
        index = integers.index(not integers[0])
        raise DataError(
            f"{train.source} {describe_row(train.source, index, train.lines)}: label {train.keys[index]!r} mixes "
            f"{'text' if integers[0] else 'integer'} labels into {'integer' if integers[0] else 'text'} ones: "
            "use one kind"
        )
    check_one_spelling(train.keys, train.source)


def with_ids(rows: Rows, label_set: LabelSet) -> LabelledSplit:
    """Each label's id; a label outside the set (a dev label train never has, a train label not in --labels) is
    refused with its line."""
    lookup = label_set.lookup
    for index, key in enumerate(rows.keys):
        if key not in lookup:
            where = f"{rows.source} {describe_row(rows.source, index, rows.lines)}"
            raise DataError(
                f"{where}: label {key!r} is not one of the training labels ({label_set.describe()}): fix the row, or "
                "add the label to the training data (or to --labels)"
            )
    return LabelledSplit(rows.texts, [lookup[key] for key in rows.keys])


def describe_row(source: Path, index: int, lines: Sequence[int] | None = None) -> str:
    """Where a row is, as a person opening the file would count: its line as the reader met it (`lines`: TSV, CSV,
    JSONL), a JSON file's line, else the row of a Parquet file or hub split."""
    if lines is not None:
        return f"line {lines[index]}"
    return f"line {index + 1}" if source.suffix == ".json" else f"row {index}"


def take_first(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    if limit <= 0:
        raise DataError(f"a sample limit must be positive, got {limit}")
    return dataset.select(range(limit))


def with_row_vectors(dataset: Dataset, name: str, vectors: np.ndarray) -> Dataset:
    """`dataset` with one more column, a fixed-size vector per row, straight from the array (no Python floats)."""
    import pyarrow as pa
    from datasets import Dataset, concatenate_datasets

    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return concatenate_datasets([dataset, Dataset(pa.table({name: column}))], axis=1)


def count_empty_sentences(dataset: Dataset) -> int:
    return sum(1 for sentence in dataset["sentence"] if not sentence.strip())


# --- the standard-library side: what the bench and the menu read ------------------------------------------------


def load_validation(data: str, limit: int | None = None, **reading) -> tuple[list[str], np.ndarray]:
    """`read_validation` without the label set (`reading`: its columns and labels)."""
    return read_validation(data, limit, **reading)[:2]


def read_validation(
    data: str,
    limit: int | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    labels: LabelSet | Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray, LabelSet]:
    """The first `limit` validation texts, their label ids (`read_splits`; the model's `LabelSet` as `labels` gives
    its ids) and the label set the ids index. A local TSV/CSV/JSONL folder needs only the standard library."""
    import numpy as np

    try:
        splits, label_set = read_splits(data, columns, labels)
    except ImportError as err:
        hint = "or point --data at a local folder with dev.tsv"
        raise DataError(f"reading --data {data} needs `datasets` (pip install 'sst2dist[train]'); {hint}") from err
    validation = splits["validation"]
    return validation.texts[:limit], np.asarray(validation.ids[:limit], dtype=np.int64), label_set


def read_delimited(file: Path) -> tuple[list[str], list[dict], list[int]]:
    """GLUE TSVs are unquoted and tab-separated; CSVs are quoted as needed. Every cell is text; a UTF-8 BOM (an
    Excel export) is not part of the first column's name. Blank lines are skipped; also returns each row's line."""
    delimiter, quoting = ("\t", csv.QUOTE_NONE) if file.suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
    with file.open(encoding="utf-8-sig", newline="") as handle:
        reader, numbered, previous = csv.reader(handle, delimiter=delimiter, quoting=quoting), [], 0
        for row in reader:  # a row starts on the line after the previous one ended (quoted newlines, blank lines)
            if row:
                numbered.append((previous + 1, row))
            previous = reader.line_num
    header, lines, rows = numbered[0][1] if numbered else [], [n for n, _ in numbered[1:]], [r for _, r in numbered[1:]]
    for index, row in enumerate(rows):
        if len(row) != len(header):
            more = "more" if len(row) > len(header) else "fewer"
            raise DataError(f"could not read {file}: line {lines[index]} has {more} fields than the header")
    return header, [dict(zip(header, row, strict=True)) for row in rows], lines


def read_jsonl(file: Path) -> tuple[list[str], list[dict], list[int]]:
    """One JSON object a line (blank lines skipped); the columns are every key any row has. Also each row's line."""
    rows, lines = [], []
    with file.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=unique_keys)
            except json.JSONDecodeError as err:
                raise DataError(f"could not read {file}: line {number} is not valid JSON ({err})") from err
            except DuplicateKeyError as err:
                raise DataError(
                    f"{file} line {number} has more than one {err} key: rename or remove the extra one"
                ) from err
            if not isinstance(row, dict):
                raise DataError(f"could not read {file}: line {number} is not a JSON object")
            rows.append(row)
            lines.append(number)
    return list(dict.fromkeys(key for row in rows for key in row)), rows, lines


class DuplicateKeyError(ValueError):
    """A JSON object names a key twice (json.loads would silently keep the last)."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    names = [name for name, _ in pairs]
    duplicated = [name for name in dict.fromkeys(names) if names.count(name) > 1]
    if duplicated:
        raise DuplicateKeyError(duplicated[0])
    return dict(pairs)


def tokenize(dataset: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DatasetDict:
    """Tokenize once (batched, cached by `datasets`), unpadded: batches are padded later to their longest."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch["sentence"], truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    tokenized = dataset.map(encode, batched=True, remove_columns=["sentence"], desc="Tokenizing")
    return tokenized.rename_column("label", "labels")


class LengthGroupedBatchSampler:
    """Batches of similar-length examples in a new random order each epoch, seeded by `seed + epoch`.

    The indices are shuffled, cut into groups of `group_batches` batches, each group is sorted by length and
    cut into batches, and the batches are shuffled: little padding, still random. Only the last batch of an
    epoch can be short. `batch_size` is None for Accelerate, which then shards these variable-size batches
    across processes (process i gets batches i, i + N, ...) instead of re-cutting them.
    """

    batch_size = None

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_batches: int = 50) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.lengths = lengths
        self.per_batch = batch_size
        self.seed = seed
        self.group_size = batch_size * group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full_groups, rest = divmod(len(self.lengths), self.group_size)
        return full_groups * (self.group_size // self.per_batch) + -(-rest // self.per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.group_size):
            group = sorted(order[start : start + self.group_size], key=self.lengths.__getitem__, reverse=True)
            batches += [group[i : i + self.per_batch] for i in range(0, len(group), self.per_batch)]
        for position in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[position]


def sort_by_length(dataset: Dataset) -> Dataset:
    """For evaluation: neighbours have similar lengths, so fixed-size batches carry little padding."""
    lengths = dataset["length"]
    return dataset.select(sorted(range(len(dataset)), key=lengths.__getitem__))


def make_collator(pad_token_id: int, pad_to_multiple_of: int = 1) -> Callable[[list[dict]], dict]:
    """Pad a list of tokenized rows to the longest member (rounded up to `pad_to_multiple_of`) as tensors."""

    def collate(rows: list[dict]) -> dict:
        import torch

        longest = max(len(row["input_ids"]) for row in rows)
        width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        batch = {"labels": torch.tensor([row["labels"] for row in rows])}
        for carried in ("teacher_logits", "teacher_sentence"):  # what a teacher gave each row (distillation)
            if carried in rows[0]:
                batch[carried] = torch.tensor([row[carried] for row in rows], dtype=torch.float32)
        for key, pad in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in rows[0]:
                batch[key] = torch.tensor([row[key] + [pad] * (width - len(row[key])) for row in rows])
        return batch

    return collate
