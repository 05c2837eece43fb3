"""Label sets read from the data: N >= 2 classes, integer or text labels, in a stable order, and their names.

A label is kept as its text (`key`): an integer 2 and a TSV cell "2" are the same label. Integer labels are
ordered numerically and text labels alphabetically, unless the user fixes the order (`--labels`, or a
`datasets` ClassLabel). Ids are positions in that order. Names (the model's `id2label`) are the keys, except
SST-2's 0/1, which keep its names negative/positive (so SST-2 stays the reference, and a model named so reads 0/1
data). Standard library only: the bench reads labels without `datasets`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SST2_KEYS = ("0", "1")
SST2_NAMES = ("negative", "positive")
INTEGER = re.compile(r"[-+]?[0-9]+")  # +1/-1 labels too


class DataError(ValueError):
    """The --data value or the data it points to is unusable; the message says what to fix."""


@dataclass(frozen=True)
class LabelSet:
    """The labels as written in the data (`keys`) and as the model names them (`names`), both in id order."""

    keys: tuple[str, ...]
    names: tuple[str, ...]

    @classmethod
    def from_keys(cls, keys: Sequence[str]) -> LabelSet:
        keys = tuple(keys)
        return cls(keys, SST2_NAMES if keys == SST2_KEYS else keys)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> LabelSet:
        """The label set a model was trained on, from its `id2label` names."""
        names = tuple(names)
        return cls(SST2_KEYS if names == SST2_NAMES else names, names)

    @classmethod
    def from_config(cls, config: object) -> LabelSet:
        """From a transformers config (or anything with `id2label`, keys int or str)."""
        id2label = {int(i): name for i, name in config.id2label.items()}
        return cls.from_names([id2label[i] for i in range(len(id2label))])

    @property
    def lookup(self) -> dict[str, int]:
        """Label text -> id: a key or a name (so "0" and "negative" are both SST-2's id 0)."""
        return {**{name: i for i, name in enumerate(self.names)}, **{key: i for i, key in enumerate(self.keys)}}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        return ", ".join(self.names)


def is_sst2_data(data: str | None, label_names: Sequence[str] | None) -> bool:
    """SST-2 is SST-2's labels read from SST-2 (its hub id `stanfordnlp/sst2`, a folder named sst2 or SST-2, or no
    --data recorded): a user's own binary data labelled 0/1 or negative/positive is not."""
    if label_names is not None and tuple(label_names) != SST2_NAMES:
        return False
    return not data or label_names is None or Path(data).expanduser().name.lower() in ("sst2", "sst-2")


def data_name(data: str | None, label_names: Sequence[str] | None) -> str:
    """How reports name what was read: "SST-2" for SST-2 (`is_sst2_data`), else the --data value, a local folder by
    its name ("reviews")."""
    if not data or is_sst2_data(data, label_names):
        return "SST-2"
    path = Path(data).expanduser()
    return path.resolve().name if path.exists() else data


def label_key(value: object) -> str | None:
    """A label's text: an integer or a string as is; None for anything else (booleans, floats, null, lists)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else None


def sorted_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """Integers in numeric order, anything else in alphabetical order."""
    distinct = set(keys)
    if all(INTEGER.fullmatch(key) for key in distinct):
        return tuple(sorted(distinct, key=lambda key: (int(key), key)))  # "01" beside "1": still one order
    return tuple(sorted(distinct))


def check_one_spelling(keys: Iterable[str], source: Path) -> None:
    """Refuse one integer label written two ways (`1` and `01`, `0` and `-0`): they tie in numeric order, so their
    ids would follow string hashing, which differs per process."""
    first: dict[int, str] = {}
    for key in dict.fromkeys(keys):
        if INTEGER.fullmatch(key) and first.setdefault(int(key), key) != key:
            raise DataError(
                f"{source}: labels {first[int(key)]!r} and {key!r} are one integer written two ways: write it one way"
            )


def parse_labels_option(text: str | None) -> tuple[str, ...] | None:
    """`--labels neg,neu,pos` -> ("neg", "neu", "pos"); None when not given."""
    if text is None:
        return None
    labels = tuple(text.split(","))
    blank = any(not label or label != label.strip() for label in labels)
    if len(labels) < 2 or blank or len(set(labels)) < len(labels):
        raise DataError(f"--labels must list at least 2 distinct labels separated by commas, got {text!r}")
    return labels


def check_model_labels(option: str, source: str, trained_on: LabelSet, data_labels: LabelSet) -> None:
    """Refuse a classifier trained on other labels than the data's (its head would map ids to the wrong classes)."""
    if trained_on.names != data_labels.names:
        base = ", or a base encoder" if option == "--model" else ""
        raise DataError(
            f"{option} {source} was trained on the labels ({trained_on.describe()}) but the data's labels are "
            f"({data_labels.describe()}): pass a model trained on these labels in this order{base}"
        )


# ---------------------------------------------------------------------------------------------- scoring by name
# One mapping from a model's output columns to the data's label ids, by label NAME (the model config's id2label),
# for every place that scores predictions against labels: the export gate, the bench, the menu and so the model
# card. A model whose id2label is {0: positive, 1: negative} scores the same everywhere as one with
# {0: negative, 1: positive}.
GENERIC_LABEL = re.compile(r"LABEL_(\d+)")  # what transformers names labels a model was saved without


class LabelMappingError(ValueError):
    """The model's label names do not name the data's labels; the message says which."""


def column_to_data_id(model_labels: Sequence[str], data_labels: Sequence[str] = SST2_NAMES) -> np.ndarray:
    """For each model output column, the data's label id with the same name.

    Names are compared case-insensitively; a model saved without names (LABEL_0, LABEL_1, ...) maps by index.
    Raises LabelMappingError when the names do not match the data's."""
    if len(set(model_labels)) == len(model_labels) and sorted(model_labels) == sorted(data_labels):
        return np.array([list(data_labels).index(name) for name in model_labels], dtype=np.int64)
    wanted = {name.lower(): i for i, name in enumerate(data_labels)}
    names = [str(label).lower() for label in model_labels]
    if sorted(names) == sorted(wanted) and len(names) == len(wanted):
        return np.array([wanted[name] for name in names], dtype=np.int64)
    generic = [GENERIC_LABEL.fullmatch(str(label)) for label in model_labels]
    if len(model_labels) == len(data_labels) and all(m and int(m.group(1)) == i for i, m in enumerate(generic)):
        return np.arange(len(model_labels), dtype=np.int64)
    raise LabelMappingError(
        f"the model's labels {list(model_labels)} do not name the data's labels {list(data_labels)}: "
        "set id2label in the model's config.json to those names"
    )


def check_scorable(model_labels: Sequence[str], data_labels: Sequence[str] = SST2_NAMES) -> None:
    """Refuse, in one sentence, a model trained on other labels than the data's (by name, as `column_to_data_id`
    maps them). Raises LabelMappingError."""
    if len(model_labels) != len(data_labels):
        raise LabelMappingError(
            f"the model was trained on {len(model_labels)} labels ({', '.join(map(str, model_labels))}) but the "
            f"data has {len(data_labels)} ({', '.join(data_labels)}): pass the --data it was trained on"
        )
    column_to_data_id(model_labels, data_labels)


def predicted_label_ids(
    logits: np.ndarray, model_labels: Sequence[str], data_labels: Sequence[str] = SST2_NAMES
) -> np.ndarray:
    """The data's label id of each row's best column, mapped by name (`column_to_data_id`)."""
    return column_to_data_id(model_labels, data_labels)[np.asarray(logits).argmax(axis=-1)]


def label_accuracy(
    logits: np.ndarray, labels: np.ndarray, model_labels: Sequence[str], data_labels: Sequence[str] = SST2_NAMES
) -> float:
    """The share of rows whose predicted label (by name) is the data's label."""
    return float((predicted_label_ids(logits, model_labels, data_labels) == np.asarray(labels)).mean())
