"""What `sst2dist augment` is asked to do: `AugmentOptions`, each field the flag of the same name. Standard library
only, so the command line reads it without importing the augmenter (numpy, transformers)."""

from __future__ import annotations

from dataclasses import dataclass

from sst2dist.config_fields import Options, in_range, option, positive
from sst2dist.data_options import label_column_option, labels_option, text_column_option

DEFAULT_EMBEDDINGS = "packaged:all-MiniLM-L6-v2"


class AugmentError(ValueError):
    """The augmentation settings or inputs are unusable; the message says what to fix."""


@dataclass(frozen=True)
class AugmentOptions(Options):
    error = AugmentError

    data: str  # the command's --data and --output are required, so written there by hand
    output: str
    text_column: str = text_column_option()
    label_column: str = label_column_option()
    labels: str | None = labels_option()
    teacher: str | None = option(
        None, "Fine-tuned teacher that labels the new sentences: its model folder, or its bundle (export-onnx)."
    )
    teacher_logits: str | None = option(
        None, "The teacher's logits for the original rows (.npz or packaged:…), if any."
    )
    scorer: str | None = option(
        None,
        "Engine that scores: torch (a model folder) or onnx (a bundle); default: what --teacher is.",
        choices=("torch", "onnx"),
    )
    embeddings: str = option(DEFAULT_EMBEDDINGS, "Model whose word embeddings pick swaps.")
    variants: int = option(2, "New sentences made from each original sentence.", checks=[positive])
    replace_prob: float = option(0.4, "Chance each word is swapped.", checks=[in_range(0, 1)])
    neighbours: int = option(15, "A word is swapped for one of its N nearest words.", checks=[positive])
    min_words: int = option(4, "Only sentences of at least N words are augmented.", checks=[positive])
    max_length: int = option(128, "Teacher's max tokens (match the training run).", checks=[positive])
    seed: int = option(0, "Random seed: same seed, same sentences.")
    force: bool = option(False, "Replace an existing --output folder.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.replace_prob == 0:
            raise AugmentError("--replace-prob must be in (0, 1], got 0.0: at 0 no word is ever swapped")
        if self.teacher_logits and not self.teacher:
            raise AugmentError("--teacher-logits covers the original rows only: also pass --teacher MODEL_DIR")
        if self.scorer and not self.teacher:
            raise AugmentError(f"--scorer {self.scorer} scores with a teacher: also pass --teacher")
