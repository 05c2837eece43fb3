"""Macro-F1 as a local `evaluate` module, so `evaluate.load(path)` works without the hub (like ../accuracy)."""

import datasets
import evaluate

_DESCRIPTION = "Macro-F1: the unweighted mean over the classes of each class's F1 (2 * precision * recall / (p + r))."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    labels (list of int, optional): the classes to average over (default: every class in either list); a class
        that is never predicted nor present counts as F1 0.
Returns:
    f1 (float): the macro-averaged F1, in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(
        self, predictions: list[int], references: list[int], labels: list[int] | None = None
    ) -> dict[str, float]:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        if not references:
            raise ValueError("F1 of an empty set is undefined")
        classes = sorted(set(predictions) | set(references)) if labels is None else list(labels)
        pairs = list(zip(predictions, references, strict=True))
        return {"f1": sum(class_f1(pairs, c) for c in classes) / len(classes)}


def class_f1(pairs: list[tuple[int, int]], label: int) -> float:
    """F1 of one class: 2 TP / (2 TP + FP + FN); 0 when the class is neither predicted nor present."""
    true_positives = sum(1 for p, r in pairs if p == label and r == label)
    wrong = sum(1 for p, r in pairs if (p == label) != (r == label))
    return 2 * true_positives / (2 * true_positives + wrong) if true_positives else 0.0
