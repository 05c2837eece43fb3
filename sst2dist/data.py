"""Load SST-2 (a dataset-hub id or local files, always through `datasets`), validate it and tokenize it once."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_DATA = "stanfordnlp/sst2"
SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("validation", "dev", "valid", "val")}
FORMATS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
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
    splits = {split: ds.select_columns(["sentence", "label"]) for split, ds in splits.items()}
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


def check_split(dataset: Dataset, source: Path) -> None:
    """Refuse what would silently train on wrong data; count (and keep) empty sentences."""
    missing = {"sentence", "label"} - set(dataset.column_names)
    if missing:
        raise DataError(
            f"{source} has no {', '.join(sorted(missing))} column (columns: {dataset.column_names}); "
            "rename its columns to sentence and label"
        )
    if len(dataset) == 0:
        raise DataError(f"{source} has no rows")
    for index, (sentence, label) in enumerate(zip(dataset["sentence"], dataset["label"], strict=True)):
        if label not in LABELS or isinstance(label, bool):
            raise DataError(f"{source} {describe_row(source, index)}: label {label!r} is not 0 or 1")
        if not isinstance(sentence, str):
            raise DataError(f"{source} {describe_row(source, index)}: sentence {sentence!r} is not text")
    empty = count_empty_sentences(dataset)
    if empty:
        logger.warning("%s: %d empty sentences (kept, they tokenize to [CLS] [SEP])", source, empty)


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


def count_empty_sentences(dataset: Dataset) -> int:
    return sum(1 for sentence in dataset["sentence"] if not sentence.strip())


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
        if "teacher_logits" in rows[0]:
            batch["teacher_logits"] = torch.tensor([row["teacher_logits"] for row in rows], dtype=torch.float32)
        for key, pad in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in rows[0]:
                batch[key] = torch.tensor([row[key] + [pad] * (width - len(row[key])) for row in rows])
        return batch

    return collate
