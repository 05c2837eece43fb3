"""What `sst2dist predict-ray` is asked to do: `RayPredictOptions`, each field the flag of the same name. Standard
library only, so the command line reads it without Ray or onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass

from sst2dist.config_fields import VARIANT_HELP, Options, option, positive

RAY_FORMATS = ("text", "jsonl", "csv", "tsv", "parquet")


@dataclass(frozen=True)
class RayPredictOptions(Options):
    fmt: str | None = option(
        None,
        "Input format. Default: from the suffix of the first file (.jsonl, .csv, .tsv, .parquet), else one text per "
        "line.",
        flags=("--format",),
        choices=RAY_FORMATS,
    )
    field_name: str | None = option(
        None, "JSONL field, CSV column or Parquet column (default: text, sentence).", flags=("--field", "--column")
    )
    address: str | None = option(
        None, "Ray cluster to join, e.g. ray://head:10001 (default: $RAY_ADDRESS, else start a local Ray)."
    )
    num_cpus: int | None = option(
        None,
        "CPUs of the local Ray started without --address (default: the usable CPUs).",
        checks=[positive],
    )
    actors: int | None = option(
        None, "Classifier actors (default: from 1 up to as many as the cluster's CPUs hold).", checks=[positive]
    )
    threads_per_actor: int = option(1, "onnxruntime intra-op threads (and CPUs reserved) per actor.", checks=[positive])
    variant: str | None = option(None, VARIANT_HELP)
    batch_size: int = option(32, "Texts per onnxruntime call.", checks=[positive])
    logits: bool = option(False, "Also write each text's logits (what distillation from a teacher needs).")
    skip_bad: bool = option(False, "Skip lines that give no text (counted on stderr) instead of stopping.")
