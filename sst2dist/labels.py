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

SST2_KEYS = ("0", "1")
SST2_NAMES = ("negative", "positive")
INTEGER = re.compile(r"-?[0-9]+")


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


def label_key(value: object) -> str | None:
    """A label's text: an integer or a string as is; None for anything else (booleans, floats, null, lists)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else None


def sorted_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """Integers in numeric order, anything else in alphabetical order."""
    distinct = set(keys)
    if all(INTEGER.fullmatch(key) for key in distinct):
        return tuple(sorted(distinct, key=int))
    return tuple(sorted(distinct))


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
