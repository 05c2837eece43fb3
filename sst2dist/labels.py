"""One mapping from a model's output columns to the data's label ids, by label NAME (the model config's
id2label), for every place that scores predictions against labels: the export gate, the bench, the menu and so
the model card. A model whose id2label is {0: positive, 1: negative} scores the same everywhere as one with
{0: negative, 1: positive}. Standard library and numpy only (the bench runs without torch)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from sst2dist.modeling import ID2LABEL

DATA_LABELS = tuple(ID2LABEL[i] for i in sorted(ID2LABEL))  # the data's label ids 0, 1, ... by name
GENERIC_LABEL = re.compile(r"LABEL_(\d+)")  # what transformers names labels a model was saved without


class LabelMappingError(ValueError):
    """The model's label names do not name the data's labels; the message says which."""


def column_to_data_id(model_labels: Sequence[str], data_labels: Sequence[str] = DATA_LABELS) -> np.ndarray:
    """For each model output column, the data's label id with the same name.

    Names are compared case-insensitively; a model saved without names (LABEL_0, LABEL_1, ...) maps by index.
    Raises LabelMappingError when the names do not match the data's."""
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


def predicted_label_ids(
    logits: np.ndarray, model_labels: Sequence[str], data_labels: Sequence[str] = DATA_LABELS
) -> np.ndarray:
    """The data's label id of each row's best column, mapped by name (`column_to_data_id`)."""
    return column_to_data_id(model_labels, data_labels)[np.asarray(logits).argmax(axis=-1)]


def label_accuracy(
    logits: np.ndarray, labels: np.ndarray, model_labels: Sequence[str], data_labels: Sequence[str] = DATA_LABELS
) -> float:
    """The share of rows whose predicted label (by name) is the data's label."""
    return float((predicted_label_ids(logits, model_labels, data_labels) == np.asarray(labels)).mean())
