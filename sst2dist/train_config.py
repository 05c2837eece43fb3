"""The training configuration: one flat dataclass whose fields are the command-line options, checked before
anything runs. `python -m sst2dist.train --help` is generated from it, so each default lives here only."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from sst2dist.data import DEFAULT_DATA
from sst2dist.environment import supports_bf16
from sst2dist.modeling import DEFAULT_MODEL

MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")
REPORT_TO_CHOICES = ("none", "tensorboard")


def option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainConfig:
    data: str = option(DEFAULT_DATA, "dataset-hub id, or a folder with train.tsv + dev.tsv (or csv/jsonl/parquet)")
    model: str = option(DEFAULT_MODEL, "base model: hub id or local folder of a BERT-family encoder")
    output_dir: str = option("runs/minilm", "run folder: model/, metrics.json, log.jsonl, checkpoints/")
    epochs: int = option(2, "passes over the training set")
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides --epochs)")
    time_budget: float | None = option(
        None,
        "plan the run to fit this many minutes on this machine: its speed is measured on a few batches first, and "
        "the steps that fit (at most --epochs / --max-steps) get the whole LR schedule; --resume reuses the plan",
    )
    max_train_samples: int | None = option(None, "use only the first N training rows (quick runs)")
    max_eval_samples: int | None = option(None, "use only the first N validation rows (quick runs)")
    batch_size: int = option(64, "training batch size per process")
    eval_batch_size: int = option(256, "evaluation batch size per process")
    grad_accum: int = option(1, "micro-batches per optimizer step (gradient accumulation)")
    lr: float = option(5e-5, "peak learning rate of AdamW")
    weight_decay: float = option(0.01, "AdamW weight decay (never on biases and LayerNorm weights)")
    warmup_ratio: float = option(0.06, "fraction of the steps spent warming the learning rate up linearly")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)")
    max_length: int = option(128, "truncate sentences to this many tokens")
    mixed_precision: str = option(
        "auto",
        "auto: bf16 on a GPU or a CPU with AMX/avx512_bf16, else no; fp16 needs a GPU",
        choices=MIXED_PRECISION_CHOICES,
    )
    eval_every: int = option(300, "evaluate every N optimizer steps, and always at the end (0: only at the end)")
    save_every: int = option(500, "write a checkpoint every N optimizer steps, and at the end (0: only at the end)")
    keep_checkpoints: int = option(2, "keep the newest N checkpoints")
    early_stopping_patience: int = option(0, "stop after N evaluations without a better accuracy (0: never)")
    log_every: int = option(50, "log the training loss every N optimizer steps")
    group_by_length: bool = option(True, "batch sentences of similar length together (less padding)")
    pad_to_multiple_of: int = option(1, "round each batch's padded length up to a multiple of N")
    compile: bool = option(False, "torch.compile the model (experimental; measure before using)")
    seed: int = option(42, "random seed (weights of the new head, dropout, data order)")
    report_to: str = option("none", "also log to this Accelerate tracker", choices=REPORT_TO_CHOICES)
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
    distill_alpha: float = option(0.5, "weight of the label cross-entropy; the teacher's soft loss gets 1 - alpha")
    distill_temperature: float = option(2.0, "softmax temperature of the teacher's soft targets")
    teacher_cache: str | None = option(
        None, "folder for computed teacher logits (default: $SST2DIST_CACHE or ~/.cache/sst2dist, teacher-logits/)"
    )


class ConfigError(ValueError):
    """An option value or the state of the output folder does not allow training."""


# ---------------------------------------------------------------------------------------------- options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sst2dist.train",
        description="Fine-tune a BERT-family model on SST-2 with Hugging Face Accelerate.",
        epilog="example: accelerate launch --config_file accelerate_config.yaml -m sst2dist.train "
        "--data ../shared/data/sst2 --output-dir runs/minilm",
    )
    types = {"int": int, "float": float, "str": str}
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        extra = {k: v for k, v in spec.metadata.items() if k != "help"}
        help_text = f"{spec.metadata['help']} (default: {spec.default})"
        if spec.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=spec.default, help=help_text)
        else:
            kind = types[str(spec.type).removesuffix(" | None")]
            parser.add_argument(flag, type=kind, default=spec.default, help=help_text, **extra)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Unknown options are an error (argparse exits with status 2 and says which)."""
    return TrainConfig(**vars(build_parser().parse_args(argv)))


def check_config(config: TrainConfig) -> None:
    positive = ["epochs", "batch_size", "eval_batch_size", "grad_accum", "max_length", "log_every"]
    positive += ["pad_to_multiple_of", "keep_checkpoints"]
    positive += [name for name in ("max_steps", "max_train_samples", "max_eval_samples") if getattr(config, name)]
    for name in positive:
        if getattr(config, name) is None or getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(config, name)}")
    for name in ("eval_every", "save_every", "early_stopping_patience", "weight_decay", "max_grad_norm"):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if not 0 <= config.warmup_ratio < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1), got {config.warmup_ratio}")
    budget = config.time_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--time-budget must be a positive number of minutes, got {budget}")
    if not config.lr > 0:
        raise ConfigError(f"--lr must be positive, got {config.lr}")
    if config.resume and config.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    if not 0 <= config.distill_alpha <= 1:
        raise ConfigError(f"--distill-alpha must be in [0, 1], got {config.distill_alpha}")
    if not config.distill_temperature > 0:
        raise ConfigError(f"--distill-temperature must be positive, got {config.distill_temperature}")
    if config.init_layers is not None:
        parse_layers(config.init_layers)


def parse_layers(text: str) -> list[int]:
    """`0,2,4` -> [0, 2, 4]; distinct, non-negative, increasing (the layers keep their order)."""
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        layers = []
    if not layers or any(i < 0 for i in layers) or layers != sorted(set(layers)):
        raise ConfigError(f"--init-layers must be increasing layer indices like 0,2,4, got {text!r}")
    return layers


def resolve_mixed_precision(requested: str, on_gpu: bool) -> str:
    if requested == "auto":
        return "bf16" if on_gpu or supports_bf16() else "no"
    if requested == "fp16" and not on_gpu:
        raise ConfigError(
            "--mixed-precision fp16 needs a GPU: on a CPU Accelerate would silently train in fp32; "
            f"use --mixed-precision {'bf16' if supports_bf16() else 'no'} (or auto)"
        )
    return requested
