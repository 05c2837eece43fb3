"""Fine-tune a BERT-family encoder on SST-2 with a plain Hugging Face Accelerate loop.

    accelerate launch --config_file accelerate_config.yaml -m sst2dist.train \\
        --data ../shared/data/sst2 --output-dir runs/minilm

Reads top to bottom: config -> data -> model -> optimizer -> loop (evaluate, keep best, checkpoint) -> outputs.
Several CPU processes on one machine: `sst2dist train --num-processes 2 ...` (torchrun + gloo).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst2dist.atomic import write_json_atomic
from sst2dist.checkpoint import (
    CHECKPOINTS_DIR,
    latest_checkpoint,
    load_checkpoint,
    replace_dir,
    save_checkpoint,
)
from sst2dist.data import DEFAULT_DATA
from sst2dist.environment import package_versions, supports_bf16
from sst2dist.modeling import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")
VERSIONED_PACKAGES = ("sst2dist", "torch", "transformers", "accelerate", "datasets")
REPORT_TO_CHOICES = ("none", "tensorboard")
RUN_FILES = ("model", CHECKPOINTS_DIR, "metrics.json", "train_config.json", "log.jsonl")
# Options that may differ between a run and its --resume (they do not change what is computed).
RESUME_MAY_CHANGE = {"resume", "report_to", "data", "output_dir", "log_every", "overwrite"}


def option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainConfig:
    data: str = option(DEFAULT_DATA, "dataset-hub id, or a folder with train.tsv + dev.tsv (or csv/jsonl/parquet)")
    model: str = option(DEFAULT_MODEL, "base model: hub id or local folder of a BERT-family encoder")
    output_dir: str = option("runs/minilm", "run folder: model/, metrics.json, log.jsonl, checkpoints/")
    epochs: int = option(2, "passes over the training set")
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides --epochs)")
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


class ConfigError(ValueError):
    """An option value or the state of the output folder does not allow training."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; every process stopped at the same step."""


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
    if not config.lr > 0:
        raise ConfigError(f"--lr must be positive, got {config.lr}")
    if config.resume and config.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")


def resolve_mixed_precision(requested: str, on_gpu: bool) -> str:
    if requested == "auto":
        return "bf16" if on_gpu or supports_bf16() else "no"
    if requested == "fp16" and not on_gpu:
        raise ConfigError(
            "--mixed-precision fp16 needs a GPU: on a CPU Accelerate would silently train in fp32; "
            f"use --mixed-precision {'bf16' if supports_bf16() else 'no'} (or auto)"
        )
    return requested


# ---------------------------------------------------------------------------------------------- setup


def make_accelerator(config: TrainConfig) -> Accelerator:
    import torch
    from accelerate import Accelerator

    precision = resolve_mixed_precision(config.mixed_precision, on_gpu=torch.cuda.is_available())
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=config.output_dir,
    )


def prepare_output_dir(config: TrainConfig, accelerator: Accelerator) -> Path | None:
    """Refuse to mix two runs in one folder; return the checkpoint to resume from, if any."""
    output_dir = Path(config.output_dir)
    if config.resume:
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(
                f"--resume: no complete checkpoint in {output_dir / CHECKPOINTS_DIR}; run without --resume"
            )
        check_same_config(output_dir / "train_config.json", config)
        return checkpoint
    existing = [name for name in RUN_FILES if (output_dir / name).exists()]
    if existing and not config.overwrite:
        raise ConfigError(
            f"{output_dir} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name in existing:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "train_config.json", asdict(config))
    accelerator.wait_for_everyone()
    return None


def check_same_config(saved_file: Path, config: TrainConfig) -> None:
    saved = json.loads(saved_file.read_text(encoding="utf-8"))
    changed = sorted(
        name for name, value in asdict(config).items() if name not in RESUME_MAY_CHANGE and saved.get(name) != value
    )
    if changed:
        detail = ", ".join(f"--{n.replace('_', '-')} {saved.get(n)} -> {getattr(config, n)}" for n in changed)
        raise ConfigError(f"--resume with different options ({detail}): resume with the run's original options")


def load_data(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator
) -> tuple[Dataset, Dataset]:
    from sst2dist.data import load_sst2, sort_by_length, tokenize

    with accelerator.main_process_first():  # the main process tokenizes, the others read its cache
        raw = load_sst2(config.data, config.max_train_samples, config.max_eval_samples)
        tokenized = tokenize(raw, tokenizer, config.max_length)
    return tokenized["train"], sort_by_length(tokenized["validation"])


def make_train_loader(config: TrainConfig, train_set: Dataset, pad_token_id: int) -> tuple[DataLoader, Any]:
    import torch
    from torch.utils.data import DataLoader

    from sst2dist.data import LengthGroupedBatchSampler, make_collator

    group_batches = 50 if config.group_by_length else 1  # groups of one batch: plain shuffled batches
    sampler = LengthGroupedBatchSampler(train_set["length"], config.batch_size, config.seed, group_batches)
    collate = make_collator(pad_token_id, config.pad_to_multiple_of)
    # Its own generator, so iterating the loader never draws from the global RNG (exact resume).
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, generator=torch.Generator())
    return loader, sampler


def make_eval_loader(config: TrainConfig, eval_set: Dataset, pad_token_id: int) -> DataLoader:
    from torch.utils.data import DataLoader

    from sst2dist.data import make_collator

    collate = make_collator(pad_token_id, config.pad_to_multiple_of)
    return DataLoader(eval_set, batch_size=config.eval_batch_size, collate_fn=collate)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, biases and LayerNorm weights (all 1-D) do not."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, fused=True)


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate(model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, metric: Any) -> tuple[float, int]:
    """Accuracy over the whole validation split; gather_for_metrics drops the samples repeated to even out
    the processes' shards, so every row counts exactly once."""
    import torch

    model.eval()
    counted = 0
    for batch in loader:
        with torch.no_grad():
            logits = model(**batch).logits
        predictions, references = accelerator.gather_for_metrics((logits.argmax(dim=-1), batch["labels"]))
        metric.add_batch(predictions=predictions, references=references)
        counted += len(references)
    model.train()
    return metric.compute()["accuracy"], counted


def save_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, target: Path) -> None:
    """`save_pretrained` model + tokenizer into a temporary folder, then swap it in."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # every process calls it (it gathers under FSDP/DeepSpeed)
    if accelerator.is_main_process:
        tmp = target.with_name(f".tmp-{target.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, target)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- logging


class RunLog:
    """log.jsonl lines and Accelerate trackers, from the main process only."""

    def __init__(self, accelerator: Accelerator, output_dir: Path) -> None:
        self.accelerator = accelerator
        self.path = output_dir / "log.jsonl"

    def write(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and k not in ("step", "time")}
        self.accelerator.log(numbers, step=record.get("step"))


# ---------------------------------------------------------------------------------------------- training


def train(config: TrainConfig) -> dict:
    """Run the whole training (or evaluation with --eval-only); return what is written to metrics.json."""
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from sst2dist.modeling import load_accuracy_metric, load_model, load_tokenizer

    started = time.perf_counter()
    check_config(config)
    accelerator = make_accelerator(config)
    if config.eval_only:
        return evaluate_only(config, accelerator)
    output_dir = Path(config.output_dir)
    resume_from = prepare_output_dir(config, accelerator)
    set_seed(config.seed)

    tokenizer = load_tokenizer(config.model)
    train_set, eval_set = load_data(config, tokenizer, accelerator)
    train_loader, sampler = make_train_loader(config, train_set, tokenizer.pad_token_id)
    eval_loader = make_eval_loader(config, eval_set, tokenizer.pad_token_id)
    model = load_model(config.model)
    if config.compile:
        model = torch.compile(model, dynamic=True)
    optimizer = make_optimizer(model, config)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    accelerator.register_for_checkpointing(scheduler)  # stepped by hand: once per optimizer step
    metric = load_accuracy_metric()
    log = RunLog(accelerator, output_dir)
    accelerator.init_trackers("sst2dist", config={k: str(v) for k, v in asdict(config).items()})

    # Everything needed to continue exactly where a checkpoint left off.
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best_accuracy": -1.0, "best_step": 0}
    state |= {"evals_without_improvement": 0, "samples": 0, "tokens": 0, "padded_tokens": 0, "train_seconds": 0.0}
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
        accelerator.print(f"resuming from {resume_from} (step {state['step']})")
    if state["batches_in_epoch"] >= len(train_loader):  # the checkpoint was taken at an epoch's end
        state |= {"epoch": state["epoch"] + 1, "batches_in_epoch": 0}

    accelerator.print(
        f"training {total_steps} steps ({steps_per_epoch}/epoch) on {len(train_set)} sentences, "
        f"{accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}"
    )
    progress = tqdm(total=total_steps, initial=state["step"], disable=not accelerator.is_local_main_process)
    # samples, tokens, padded tokens seen by this process since (re)start; on the device, for reduce()
    local = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    window_loss, window_batches, window_start = 0.0, 0, time.perf_counter()
    last_eval_step = last_save_step = -1
    final_accuracy, eval_samples, stop = None, 0, False
    model.train()

    def seen(totals: torch.Tensor) -> dict:
        """Counts over all processes since the run began: the checkpoint's plus this launch's."""
        names = ("samples", "tokens", "padded_tokens")
        return {name: state[name] + int(total) for name, total in zip(names, totals.tolist(), strict=True)}

    def checkpoint() -> None:
        totals = accelerator.reduce(local.clone(), reduction="sum")
        save_checkpoint(accelerator, output_dir, state | seen(totals), keep=config.keep_checkpoints)

    def evaluate_and_keep_best() -> bool:
        """Evaluate; save the model when it is the best so far; True when early stopping says stop."""
        nonlocal final_accuracy, eval_samples, last_eval_step
        accuracy, eval_samples = evaluate(model, eval_loader, accelerator, metric)
        final_accuracy, last_eval_step = accuracy, state["step"]
        improved = accuracy > state["best_accuracy"]
        if improved:
            state.update(best_accuracy=accuracy, best_step=state["step"], evals_without_improvement=0)
            save_model(accelerator, model, tokenizer, output_dir / "model")
        else:
            state["evals_without_improvement"] += 1
        best = state["best_accuracy"]
        log.write(
            {"step": state["step"], "eval_accuracy": accuracy, "eval_samples": eval_samples, "best_accuracy": best}
        )
        progress.set_postfix(acc=f"{accuracy:.4f}", best=f"{state['best_accuracy']:.4f}")
        patience = config.early_stopping_patience
        return bool(patience) and state["evals_without_improvement"] >= patience

    while state["step"] < total_steps and not stop:
        # The prepared loader re-sets its sampler's epoch from its own counter on every pass: set both.
        train_loader.set_epoch(state["epoch"])
        sampler.set_epoch(state["epoch"])
        skip = state["batches_in_epoch"]
        batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        tick = time.perf_counter()
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                stop_if_not_finite(accelerator, loss, state, log)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:  # fp16 overflow
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state["batches_in_epoch"] += 1
            mask = batch["attention_mask"]
            local += torch.stack([mask.new_tensor(len(mask)), mask.sum(), mask.new_tensor(mask.numel())])
            window_loss, window_batches = window_loss + loss.item(), window_batches + 1
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            progress.update(1)

            if state["step"] % config.log_every == 0:
                window_mean = torch.tensor(window_loss / window_batches, device=accelerator.device)
                mean_loss = accelerator.reduce(window_mean, "mean").item()
                seconds = time.perf_counter() - window_start
                rate = round(config.log_every / seconds, 3)
                lr = scheduler.get_last_lr()[0]
                log.write({"step": state["step"], "loss": round(mean_loss, 5), "lr": lr, "steps_per_second": rate})
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                window_loss, window_batches, window_start = 0.0, 0, time.perf_counter()
            done = state["step"] >= total_steps
            if config.eval_every and state["step"] % config.eval_every == 0 and not done:
                state["train_seconds"] += time.perf_counter() - tick
                stop = evaluate_and_keep_best()
                tick = time.perf_counter()
            if config.save_every and state["step"] % config.save_every == 0 and not done and not stop:
                state["train_seconds"] += time.perf_counter() - tick
                checkpoint()
                last_save_step, tick = state["step"], time.perf_counter()
            if done or stop:
                break
        state["train_seconds"] += time.perf_counter() - tick
        if state["batches_in_epoch"] >= len(train_loader):
            state |= {"epoch": state["epoch"] + 1, "batches_in_epoch": 0}

    progress.close()
    if last_eval_step != state["step"]:
        evaluate_and_keep_best()
    if last_save_step != state["step"]:
        checkpoint()
    totals = seen(accelerator.reduce(local, reduction="sum"))
    samples, tokens = totals["samples"], totals["tokens"]
    metrics = {
        "best_accuracy": state["best_accuracy"],
        "best_step": state["best_step"],
        "final_accuracy": final_accuracy,
        "eval_samples": eval_samples,
        "steps": state["step"],
        "epochs": round(state["step"] / steps_per_epoch, 3),
        "stopped_early": stop,
        "train_samples_seen": samples,
        "train_tokens_seen": tokens,
        "train_padded_tokens_seen": totals["padded_tokens"],
        "train_seconds": round(state["train_seconds"], 2),
        "samples_per_second": round(samples / state["train_seconds"], 2),
        "tokens_per_second": round(tokens / state["train_seconds"], 1),
        "wall_seconds_this_launch": round(time.perf_counter() - started, 2),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "resumed_from": str(resume_from) if resume_from else None,
        "versions": package_versions(VERSIONED_PACKAGES),
    }
    if accelerator.is_main_process:
        write_json_atomic(output_dir / "metrics.json", metrics)
        resolved = {"resolved_mixed_precision": accelerator.mixed_precision, "total_steps": total_steps}
        resolved["num_processes"] = accelerator.num_processes
        write_json_atomic(output_dir / "train_config.json", asdict(config) | resolved)
    log.write({"step": state["step"], "event": "done", **{k: v for k, v in metrics.items() if k != "versions"}})
    accelerator.end_training()
    return metrics


def stop_if_not_finite(accelerator: Accelerator, loss: torch.Tensor, state: dict, log: RunLog) -> None:
    """Every process learns whether any process saw a NaN/inf loss, so they all stop at the same step."""
    import torch

    bad = accelerator.reduce((~torch.isfinite(loss.detach())).float().reshape(1), reduction="sum")
    if bad.item() == 0:
        return
    step = state["step"] + 1
    log.write({"step": step, "event": "non_finite_loss", "loss": str(loss.item())})
    raise NonFiniteLossError(
        f"the training loss is {loss.item()} (not finite) at step {step}: stopped on every process; "
        "no checkpoint or model was written from this step. Lower --lr, keep --max-grad-norm > 0, "
        "or try --mixed-precision no"
    )


def evaluate_only(config: TrainConfig, accelerator: Accelerator) -> dict:
    from accelerate.utils import set_seed

    from sst2dist.modeling import load_accuracy_metric, load_model, load_tokenizer

    set_seed(config.seed)  # a base model's new classification head is random

    tokenizer = load_tokenizer(config.model)
    _, eval_set = load_data(dataclasses.replace(config, max_train_samples=1), tokenizer, accelerator)
    eval_loader = make_eval_loader(config, eval_set, tokenizer.pad_token_id)
    model, eval_loader = accelerator.prepare(load_model(config.model), eval_loader)
    accuracy, counted = evaluate(model, eval_loader, accelerator, load_accuracy_metric())
    metrics = {"model": config.model, "eval_accuracy": accuracy, "eval_samples": counted}
    metrics |= {"num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision}
    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(config.output_dir) / "eval_metrics.json", metrics)
    accelerator.print(json.dumps(metrics))
    return metrics


def launch_processes(num_processes: int, argv: list[str]) -> int:
    """Run `python -m sst2dist.train ARGV` in N processes on this machine (torchrun; gloo on a CPU).

    `accelerate launch --cpu --num_processes N` starts a single process, so this goes through
    torch.distributed.run directly and tells Accelerate to stay on the CPU when there is no GPU.
    """
    import subprocess

    import torch

    if num_processes < 1:
        raise ConfigError(f"--num-processes must be a positive integer, got {num_processes}")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}"]
    return subprocess.run([*command, "-m", "sst2dist.train", *argv], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = parse_config(argv)
    try:
        train(config)
    except (ValueError, NonFiniteLossError) as err:  # DataError, ModelNotFoundError, ConfigError ...
        print(f"sst2dist.train: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
