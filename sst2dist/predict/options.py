"""What `sst2dist predict` is asked to do: `PredictOptions`, each field the flag of the same name. Standard library
only, so the command line reads it without onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass

from sst2dist.config_fields import VARIANT_HELP, Options, option, positive
from sst2dist.environment import too_many_threads

FORMATS = ("text", "jsonl", "csv", "tsv")


@dataclass(frozen=True)
class PredictOptions(Options):
    input_path: str | None = option(
        None, "File to classify (default: the TEXT arguments, or stdin).", flags=("--input",)
    )
    fmt: str | None = option(
        None,
        "Input format. Default: from the file suffix (.jsonl, .csv, .tsv), else one text per line.",
        flags=("--format",),
        choices=FORMATS,
    )
    field_name: str | None = option(
        None, "JSONL field or CSV column (default: text, sentence).", flags=("--field", "--column")
    )
    output: str | None = option(None, "JSONL file to write atomically (default: stdout).")
    variant: str | None = option(None, VARIANT_HELP)
    threads: int | None = option(
        None,
        "onnxruntime intra-op and tokenizer threads, at most the CPUs this process may use (default: all of them).",
        checks=[positive],
    )
    batch_size: int = option(32, "Texts per onnxruntime call.", checks=[positive])
    skip_bad: bool = option(False, "Skip lines that give no text (counted on stderr) instead of stopping.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threads and (problem := too_many_threads(self.threads)):  # as the bench refuses it
            raise self.error(problem)
