"""What `sst2dist prune` is asked to do: `PruneOptions`, each a flag of the same name. Standard library only, so
the command line reads it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from sst2dist.config_fields import Options, option, positive
from sst2dist.data_options import DataColumns, label_column_option, labels_option, text_column_option


def fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]: the fraction of the source's encoder FLOPs to keep"


@dataclass(frozen=True)
class PruneOptions(DataColumns, Options):
    cost: float = option(
        help="Fraction of the source's encoder FLOPs to keep, 0 < F <= 1 (counted at the samples' mean length).",
        checks=[fraction],
    )
    data: str | None = option(
        None,
        "Dataset hub id or local folder (train and dev files) whose training sentences measure importance, labelled "
        "with the model's labels. Default: SST-2.",
    )
    text_column: str = text_column_option()
    label_column: str = label_column_option()
    labels: str | None = labels_option()
    samples: int = option(
        1536, "Training sentences that measure importance (a seeded random sample).", checks=[positive]
    )
    batch_size: int = option(32, "Sentences per importance batch (one squared gradient each).", checks=[positive])
    max_length: int = option(128, "Truncate sentences to this many tokens.", checks=[positive])
    seed: int = option(0, "Seed of the sentence sample.")
    force: bool = option(False, "Replace an existing pruned model at --output.")
