"""The flags of every command that reads --data (train, augment, export-onnx, bench): the text and label columns
(`Columns`, which `data.read_splits` takes) and the label order, declared once here and placed in each command's
options dataclass. Standard library only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sst2dist.config_fields import option
from sst2dist.labels import DataError, parse_labels_option


@dataclass(frozen=True)
class Columns:
    """Which columns hold the text and the label (--text-column, --label-column); `text` is read when the default
    `sentence` is absent."""

    text: str = "sentence"
    label: str = "label"

    def text_in(self, header: Sequence[str]) -> str:
        text = "text" if self.text == "sentence" and "sentence" not in header and "text" in header else self.text
        if text == self.label:  # the model would read its answer
            raise DataError(
                f"--text-column and --label-column both name {text!r}: the text and the label must be two columns"
            )
        return text


def label_list(text: str) -> str | None:
    """--labels: at least 2 distinct labels separated by commas."""
    try:
        parse_labels_option(text)
    except DataError:
        return "must list at least 2 distinct labels separated by commas"
    return None


def text_column_option() -> Any:
    return option("sentence", "Column holding the text (`text` is read when `sentence` is absent).")


def label_column_option() -> Any:
    return option("label", "Column holding the label: integers or text, 2 or more classes.")


def labels_option() -> Any:
    return option(
        None,
        "The labels as written in the data, in the order of the model's ids, e.g. neg,neu,pos (default: read from "
        "the training split, integers in numeric order, text in alphabetical order).",
        checks=[label_list],
    )


class DataColumns:
    """For an options dataclass with the fields above: the `Columns` and label order they ask for."""

    text_column: str
    label_column: str
    labels: str | None

    @property
    def columns(self) -> Columns:
        return Columns(self.text_column, self.label_column)

    @property
    def label_order(self) -> tuple[str, ...] | None:
        return parse_labels_option(self.labels)
