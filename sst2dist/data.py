"""The package's one SST-2 reader: `load_sst2` through `datasets` (a hub id or local files) for training and export,
`load_validation` with the standard library (local TSV/CSV/JSONL) for the base install, the same checks on both;
then tokenizing once, length-grouped batches and padding."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_DATA = "stanfordnlp/sst2"
SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("validation", "dev", "valid", "val")}
FORMATS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
STDLIB_FORMATS = (".tsv", ".csv", ".jsonl")  # what `read_rows` reads without `datasets`
LABELS = (0, 1)


class DataError(ValueError):
    """The --data value or the data it points to is unusable; the message says what to fix."""


def load_sst2(
    data: str = DEFAULT_DATA,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> DatasetDict:
    """SST-2 as a DatasetDict with "train" and "validation" splits of `sentence` (str) and `label` (0/1).

    `data` is a dataset-hub id or a local folder holding train.{tsv,csv,jsonl,parquet} and
    dev|validation.{...} (the GLUE layout is `train.tsv` + `dev.tsv`).
    """
    from datasets import DatasetDict

    path = Path(data).expanduser()
    if path.exists():
        files = find_split_files(path)
        splits = {split: read_split_file(file) for split, file in files.items()}
    else:
        files = {split: Path(f"{data}[{split}]") for split in SPLIT_FILE_STEMS}
        splits = load_hub_splits(data)
    for split, dataset in splits.items():
        check_split(dataset, files[split])
    splits = {split: with_int_labels(ds.select_columns(["sentence", "label"])) for split, ds in splits.items()}
    limits = {"train": max_train_samples, "validation": max_eval_samples}
    return DatasetDict({split: take_first(ds, limits[split]) for split, ds in splits.items()})


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
        found[split] = existing[0]
    return found


def read_split_file(file: Path) -> Dataset:
    from datasets import load_dataset

    check_not_empty(file)
    builder = FORMATS[file.suffix]
    options: dict = {}
    if builder == "csv":
        # GLUE TSVs are unquoted; "null" or "nan" are sentences, not missing values.
        options = {"keep_default_na": False, "delimiter": "\t" if file.suffix == ".tsv" else ","}
        if file.suffix == ".tsv":
            options["quoting"] = csv.QUOTE_NONE
    try:
        return load_dataset(builder, data_files=str(file), split="train", **options)
    except Exception as err:  # datasets raises many types for unparsable files
        if "corresponds to no data" in str(err):
            raise DataError(f"{file} has no rows") from err
        raise DataError(f"could not read {file}: {err}") from err


def load_hub_splits(hub_id: str) -> dict[str, Dataset]:
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
    return {split: loaded[split] for split in SPLIT_FILE_STEMS}


# --- the checks both readers apply -----------------------------------------------------------------------------


def check_split(dataset: Dataset, source: Path) -> None:
    """Refuse what would silently train on wrong data; count (and keep) empty sentences."""
    check_table(dataset.column_names, len(dataset), source)
    check_rows(dataset["sentence"], dataset["label"], source)


def check_not_empty(file: Path) -> None:
    if file.stat().st_size == 0:
        raise DataError(f"{file} has no rows")


def check_table(columns: Sequence[str], rows: int, source: Path) -> None:
    if rows == 0:
        raise DataError(f"{source} has no rows")
    missing = {"sentence", "label"} - set(columns)
    if missing:
        raise DataError(
            f"{source} has no {', '.join(sorted(missing))} column (columns: {list(columns)}); "
            "rename its columns to sentence and label"
        )


def check_rows(sentences: Sequence[object], labels: Sequence[object], source: Path) -> None:
    for index, (sentence, label) in enumerate(zip(sentences, labels, strict=True)):
        if label_value(label) is None:
            raise DataError(f"{source} {describe_row(source, index)}: label {str(label)!r} is not 0 or 1")
        if not isinstance(sentence, str):
            raise DataError(f"{source} {describe_row(source, index)}: sentence {sentence!r} is not text")
    empty = sum(1 for sentence in sentences if not sentence.strip())
    if empty:
        logger.warning("%s: %d empty sentences (kept, they tokenize to [CLS] [SEP])", source, empty)


def label_value(label: object) -> int | None:
    """0 or 1 from an integer or its text ("0", "1"); None for anything else, booleans and floats included."""
    if isinstance(label, int) and not isinstance(label, bool):
        return label if label in LABELS else None
    if isinstance(label, str) and label in ("0", "1"):
        return int(label)
    return None


def with_int_labels(dataset: Dataset) -> Dataset:
    """Labels given as text (e.g. "1" in JSON) become integers, as `read_rows` makes them."""
    if dataset.features["label"].dtype in ("string", "large_string"):
        from datasets import Value

        return dataset.cast_column("label", Value("int64"))
    return dataset


def describe_row(source: Path, index: int) -> str:
    """Row number as a person opening the file would count it (the header is line 1 in TSV/CSV)."""
    if source.suffix in (".tsv", ".csv"):
        return f"line {index + 2}"
    if source.suffix in (".jsonl", ".json"):
        return f"line {index + 1}"
    return f"row {index}"


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


# --- the standard-library reader --------------------------------------------------------------------------------


def load_validation(data: str, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """The first `limit` validation sentences and their labels, for the bench, the menu and bench scripts.

    A local folder whose validation file is TSV/CSV/JSONL is read with the standard library, whatever is
    installed; a hub id, JSON or Parquet goes through `load_sst2`, which needs `datasets`."""
    import numpy as np

    path = Path(data).expanduser()
    if path.exists() and (file := find_split_files(path)["validation"]).suffix in STDLIB_FORMATS:
        sentences, labels = read_rows(file)
        return sentences[:limit], np.asarray(labels[:limit], dtype=np.int64)
    try:
        validation = load_sst2(data, max_train_samples=1, max_eval_samples=limit)["validation"]
    except ImportError as err:
        raise DataError(
            f"reading --data {data} needs `datasets` (pip install 'sst2dist[train]'); "
            "or point --data at a local folder with dev.tsv"
        ) from err
    return list(validation["sentence"]), np.asarray(validation["label"], dtype=np.int64)


def read_rows(file: Path) -> tuple[list[str], list[int]]:
    """One local TSV, CSV or JSONL split file, checked as `load_sst2` checks it: its sentences and 0/1 labels."""
    if file.suffix not in STDLIB_FORMATS:
        raise DataError(f"reading {file.name} needs `datasets` (pip install 'sst2dist[train]'); or use dev.tsv")
    check_not_empty(file)
    try:
        columns, rows = read_jsonl(file) if file.suffix == ".jsonl" else read_delimited(file)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"could not read {file}: {err}") from err
    check_table(columns, len(rows), file)
    sentences, labels = [row.get("sentence") for row in rows], [row.get("label") for row in rows]
    check_rows(sentences, labels, file)
    return sentences, [label_value(label) for label in labels]


def read_delimited(file: Path) -> tuple[list[str], list[dict]]:
    """GLUE TSVs are unquoted and tab-separated; CSVs are quoted as needed. Every cell is text."""
    delimiter, quoting = ("\t", csv.QUOTE_NONE) if file.suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
    with file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
        rows = list(reader)
    for index, row in enumerate(rows):
        if None in row:  # more fields than the header names
            raise DataError(f"could not read {file}: {describe_row(file, index)} has more fields than the header")
    return list(reader.fieldnames or []), rows


def read_jsonl(file: Path) -> tuple[list[str], list[dict]]:
    """One JSON object a line (blank lines skipped); the columns are every key any row has."""
    rows = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"could not read {file}: line {number} is not valid JSON ({err})") from err
            if not isinstance(row, dict):
                raise DataError(f"could not read {file}: line {number} is not a JSON object")
            rows.append(row)
    return list(dict.fromkeys(key for row in rows for key in row)), rows


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
