"""The training configuration: one flat dataclass whose fields are the command-line options, each with its checks,
so a TrainConfig is valid once built. `python -m sst2dist.train --help` is generated from it, so each default and
each rule lives here only."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from sst2dist.config_fields import Options, add_arguments, in_range, non_negative, option, positive
from sst2dist.data import DEFAULT_DATA
from sst2dist.data_options import DataColumns, label_column_option, labels_option, text_column_option
from sst2dist.environment import default_mixed_precision, supports_bf16
from sst2dist.labels import parse_labels_option
from sst2dist.modeling import DEFAULT_MODEL
from sst2dist.train.log import trackers

MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")


class ConfigError(ValueError):
    """An option value or the state of the output folder does not allow training."""


def minutes(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else "must be a positive number of minutes"


@dataclass
class TrainConfig(DataColumns, Options):
    error = ConfigError

    data: str = option(DEFAULT_DATA, "dataset-hub id, or a folder with train.tsv + dev.tsv (or csv/jsonl/parquet)")
    text_column: str = text_column_option()
    label_column: str = label_column_option()
    labels: str | None = labels_option()
    model: str = option(DEFAULT_MODEL, "base model: hub id or local folder of a BERT-family encoder")
    output_dir: str = option("runs/minilm", "run folder: model/, metrics.json, log.jsonl, checkpoints/")
    epochs: int = option(2, "passes over the training set", checks=[positive])
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides --epochs)", checks=[positive])
    time_budget: float | None = option(
        None,
        "plan the run to fit this many minutes on this machine: its speed is measured on a few batches first, and "
        "the steps that fit (at most --epochs / --max-steps) get the whole LR schedule; --resume reuses the plan",
        checks=[minutes],
    )
    max_train_samples: int | None = option(None, "use only the first N training rows (quick runs)", checks=[positive])
    max_eval_samples: int | None = option(None, "use only the first N validation rows (quick runs)", checks=[positive])
    batch_size: int = option(64, "training batch size per process", checks=[positive])
    eval_batch_size: int = option(256, "evaluation batch size per process", checks=[positive])
    grad_accum: int = option(1, "micro-batches per optimizer step (gradient accumulation)", checks=[positive])
    lr: float = option(5e-5, "peak learning rate of AdamW", checks=[positive])
    weight_decay: float = option(
        0.01, "AdamW weight decay (never on biases and LayerNorm weights)", checks=[non_negative]
    )
    warmup_ratio: float = option(
        0.06,
        "fraction of the steps spent warming the learning rate up linearly",
        checks=[in_range(0, 1, high_open=True)],
    )
    max_grad_norm: float = option(
        1.0,
        "clip the global gradient norm (model and distillation projections) to this (0: no clipping)",
        checks=[non_negative],
    )
    max_length: int = option(128, "truncate sentences to this many tokens", checks=[positive])
    mixed_precision: str = option(
        "auto",
        "auto: bf16 on a GPU of compute capability >= 8.0 (fp16 on older ones) or on a CPU with AMX/avx512_bf16, "
        "else no; fp16 needs a GPU",
        choices=MIXED_PRECISION_CHOICES,
    )
    eval_every: int = option(
        300, "evaluate every N optimizer steps, and always at the end (0: only at the end)", checks=[non_negative]
    )
    save_every: int = option(
        500, "write a checkpoint every N optimizer steps, and at the end (0: only at the end)", checks=[non_negative]
    )
    keep_checkpoints: int = option(2, "keep the newest N checkpoints", checks=[positive])
    early_stopping_patience: int = option(
        0, "stop after N evaluations without a better accuracy (0: never)", checks=[non_negative]
    )
    log_every: int = option(50, "log the training loss every N optimizer steps", checks=[positive])
    group_by_length: bool = option(True, "batch sentences of similar length together (less padding)")
    pad_to_multiple_of: int = option(1, "round each batch's padded length up to a multiple of N", checks=[positive])
    compile: bool = option(False, "torch.compile the model (experimental; measure before using)")
    seed: int = option(42, "random seed (weights of the new head, dropout, data order)")
    report_to: str = option(
        "none",
        "also log the options and every evaluation to these Accelerate trackers: none, all (every installed one), or "
        "a comma list of tensorboard, mlflow, wandb, comet_ml, aim, clearml, dvclive, swanlab, trackio",
    )
    resume: bool = option(False, "continue from the latest complete checkpoint in --output-dir")
    overwrite: bool = option(False, "delete an earlier run in --output-dir instead of refusing to start")
    eval_only: bool = option(
        False, "only evaluate --model on the validation split; writes OUTPUT_DIR/eval_metrics.json"
    )
    init_layers: str | None = option(
        None, "keep only these encoder layers of --model, e.g. 0,2,4 for a 3-layer student (DistilBERT's init)"
    )
    teacher: str | None = option(
        None,
        "distil from this teacher: a fine-tuned model folder (its logits over the training split are computed "
        "once and cached), a .npz logits file, or packaged:all-mpnet-base-v2-sst2 (shipped logits)",
    )
    distill_alpha: float = option(
        0.5, "weight of the label cross-entropy; the teacher's soft loss gets 1 - alpha", checks=[in_range(0, 1)]
    )
    distill_temperature: float = option(2.0, "softmax temperature of the teacher's soft targets", checks=[positive])
    distill_hidden: float = option(
        0.0,
        "weight of the hidden-state MSE against --layer-teacher's matching layers (TinyBERT); needs the same "
        "tokenizer as the teacher, a learned projection when widths differ",
        checks=[non_negative],
    )
    distill_attention: float = option(
        0.0,
        "weight of the attention-distribution KL against --layer-teacher's matching layers (MiniLM); needs the same "
        "tokenizer and head count as the teacher",
        checks=[non_negative],
    )
    distill_sentence: float = option(
        0.0,
        "weight of the sentence-level loss against --layer-teacher's sentence vectors (Patient-KD: final [CLS] "
        "states, normalised, through a learned projection); works across tokenizers",
        checks=[non_negative],
    )
    layer_teacher: str | None = option(
        None,
        "model folder for --distill-hidden/--distill-attention/--distill-sentence (default: --teacher when it is a "
        "model folder)",
    )
    teacher_cache: str | None = option(
        None,
        "folder for computed teacher logits and sentence vectors (default: $SST2DIST_CACHE or ~/.cache/sst2dist, "
        "teacher-logits/)",
    )

    def __post_init__(self) -> None:
        """Each field's checks, then the rules that involve two fields or parse a value."""
        super().__post_init__()
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: pick one")
        if self.init_layers is not None:
            parse_layers(self.init_layers)
        try:
            parse_labels_option(self.labels)
            trackers(self.report_to)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if (self.layer_distillation or self.distill_sentence) and not (self.layer_teacher or self.teacher):
            raise ConfigError(
                "--distill-hidden/--distill-attention/--distill-sentence match a teacher model's states: pass "
                "--layer-teacher MODEL_DIR (or --teacher MODEL_DIR)"
            )

    @property
    def layer_distillation(self) -> bool:
        return bool(self.distill_hidden or self.distill_attention)


# ---------------------------------------------------------------------------------------------- options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sst2dist.train",
        description="Fine-tune a BERT-family model on SST-2, or your own text classification data, with Hugging "
        "Face Accelerate.",
        epilog="example: accelerate launch --config_file accelerate_config.yaml -m sst2dist.train "
        "--data ../shared/data/sst2 --output-dir runs/minilm",
    )
    return add_arguments(parser, TrainConfig)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Unknown options are an error (argparse exits with status 2 and says which); a bad value raises ConfigError."""
    return TrainConfig(**vars(build_parser().parse_args(argv)))


def check_config(config: TrainConfig) -> None:
    """Check a config again (after fields were changed in place); building one already checks it."""
    config.__post_init__()


def parse_layers(text: str) -> list[int]:
    """`0,2,4` -> [0, 2, 4]; distinct, non-negative, increasing (the layers keep their order)."""
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        layers = []
    if not layers or any(i < 0 for i in layers) or layers != sorted(set(layers)):
        raise ConfigError(f"--init-layers must be increasing layer indices like 0,2,4, got {text!r}")
    return layers


def resolve_mixed_precision(requested: str, gpu_capability: tuple[int, int] | None) -> str:
    """`gpu_capability`: the GPU's CUDA compute capability, None on a CPU."""
    if requested == "auto":
        return default_mixed_precision(gpu_capability)
    if requested == "fp16" and gpu_capability is None:
        raise ConfigError(
            "--mixed-precision fp16 needs a GPU: on a CPU Accelerate would silently train in fp32; "
            f"use --mixed-precision {'bf16' if supports_bf16() else 'no'} (or auto)"
        )
    return requested
