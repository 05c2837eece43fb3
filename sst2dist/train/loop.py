"""Fine-tune a BERT-family encoder on SST-2 with a plain Hugging Face Accelerate loop.

    accelerate launch --config_file accelerate_config.yaml -m sst2dist.train \\
        --data ../shared/data/sst2 --output-dir runs/minilm

Reads top to bottom: `train` = `setup` (data, model, optimizer, schedule, state restored from a checkpoint) ->
`fit` (the steps; evaluate, keep the best, checkpoint on schedule) -> `finish` (last evaluation, metrics.json).
The run folder's files live in `run_folder`, the device-side sums and log.jsonl in `log`, the state in
`state`, evaluation in `evaluation`, the --time-budget plan in `budget`. Several CPU processes on one
machine: `sst2dist train --num-processes 2 ...` (`launch`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst2dist.atomic import write_json_atomic
from sst2dist.data import split_labels
from sst2dist.environment import gpu_capability
from sst2dist.train.budget import time_budget_plan
from sst2dist.train.checkpoint import load_checkpoint, save_checkpoint
from sst2dist.train.config import (
    ConfigError,
    TrainConfig,
    check_config,
    parse_config,
    parse_layers,
    resolve_mixed_precision,
)
from sst2dist.train.evaluation import evaluate, evaluate_and_keep_best, make_eval_loader, stopped_early
from sst2dist.train.fingerprint import array_sha256, keep_fingerprint, run_fingerprint, splits_sha256
from sst2dist.train.launch import launch_processes as launch_processes  # `sst2dist train --num-processes` calls it here
from sst2dist.train.log import LOSS_TERMS, RunLog, Window, installed_trackers, start_trackers
from sst2dist.train.run_folder import final_metrics, prepare_output_dir, started_or_undone, write_final_files
from sst2dist.train.state import Run, Teachers, TrainState
from sst2dist.train.step import forward_losses, make_optimizer, train_step

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

    from sst2dist.labels import LabelSet


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; every process stopped at the same step."""


# ---------------------------------------------------------------------------------------------- setup


def make_accelerator(config: TrainConfig) -> Accelerator:
    from accelerate import Accelerator

    precision = resolve_mixed_precision(config.mixed_precision, gpu_capability())
    try:
        log_with = installed_trackers(config.report_to, config.output_dir)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with=log_with or None,
        project_dir=config.output_dir,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:  # each process would silently train alone on part of the data
        raise ConfigError(
            f"launched as {launched} processes but Accelerate runs {accelerator.num_processes}: on machines "
            "without a GPU set ACCELERATE_USE_CPU=true (docs/distributed.md)"
        )
    return accelerator


def load_data(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator
) -> tuple[Dataset, Dataset, dict | None, str]:
    """Tokenized train and validation splits; with a teacher, each training row carries its `teacher_logits`, and
    with --distill-sentence its `teacher_sentence` vector (both computed over the whole split, so one cache serves
    every --max-train-samples); and the sha256 of the rows read (for --resume)."""
    from sst2dist.data import load_sst2, sort_by_length, take_first, tokenize, with_row_vectors
    from sst2dist.distill.teacher import teacher_logits, teacher_sentence_vectors

    limit = None if config.teacher or config.distill_sentence else config.max_train_samples  # logits: whole split
    with accelerator.main_process_first():  # the main process downloads a hub dataset, the others read its cache
        raw = load_sst2(config.data, limit, config.max_eval_samples, config.columns, config.label_order)
    rows, meta, vectors = raw["train"], None, None
    cache = Path(config.teacher_cache) if config.teacher_cache else None
    if config.teacher:
        logits, meta = teacher_logits(
            config.teacher, rows["sentence"], rows["label"], config.max_length, accelerator, cache, split_labels(rows)
        )
        meta = meta | {"logits_sha256": array_sha256(logits[: config.max_train_samples])}  # for --resume
        rows = rows.add_column("teacher_logits", logits.tolist())
    if config.distill_sentence:
        source = config.layer_teacher or config.teacher
        vectors = teacher_sentence_vectors(source, rows, config.max_length, accelerator, cache)
    raw["train"] = take_first(rows, config.max_train_samples)
    rows_sha256 = splits_sha256([(raw[name]["sentence"], raw[name]["label"]) for name in ("train", "validation")])
    with accelerator.main_process_first():  # the main process tokenizes, the others read its cache
        tokenized = tokenize(raw, tokenizer, config.max_length)
    train_set = tokenized["train"]
    if vectors is not None:  # after tokenizing: `map` would copy the 768 floats of every row through Python
        train_set = with_row_vectors(train_set, "teacher_sentence", vectors[: len(train_set)])
    return train_set, sort_by_length(tokenized["validation"]), meta, rows_sha256


def load_student(config: TrainConfig, labels: LabelSet) -> torch.nn.Module:
    """--model with a head of `labels`, cut to its --init-layers when given (for training and --eval-only alike)."""
    from sst2dist.modeling import keep_layers, load_model

    model = load_model(config.model, labels)
    if config.init_layers:
        keep_layers(model, parse_layers(config.init_layers))
    return model


def make_sentence_projection(student: torch.nn.Module, train_set: Dataset):  # -> torch.nn.Linear | None
    """--distill-sentence: the learned student -> teacher width map (Patient-KD); None when the widths agree or the
    option is off. Trained with the student and kept in checkpoints, so --resume stays exact."""
    import torch

    if "teacher_sentence" not in train_set.column_names:
        return None
    widths = (student.config.hidden_size, len(train_set[0]["teacher_sentence"]))
    return torch.nn.Linear(*widths) if widths[0] != widths[1] else None


def load_layer_teacher(
    config: TrainConfig, student: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator
):  # -> LayerTeacher | None
    """--distill-hidden/--distill-attention: the teacher model on this device, run under the loop's autocast; it is
    not prepared, so checkpoints do not carry its frozen weights."""
    if not config.layer_distillation:
        return None
    from sst2dist.distill.intermediate import load_layer_teacher as load

    source = config.layer_teacher or config.teacher
    layer_teacher = load(source, student, tokenizer, config.distill_hidden, config.distill_attention)
    layer_teacher.model.to(accelerator.device)
    layer_teacher.autocast = accelerator.autocast
    return layer_teacher


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


# ---------------------------------------------------------------------------------------------- training


def train(config: TrainConfig) -> dict:
    """Run the whole training (or evaluation with --eval-only); return what is written to metrics.json."""
    started = time.perf_counter()
    check_config(config)
    accelerator = make_accelerator(config)
    if config.eval_only:
        return evaluate_only(config, accelerator)
    with started_or_undone(config, accelerator):
        run, state = setup(config, accelerator, started)
    stopped_early = fit(run, state)
    return finish(run, state, stopped_early, started)


def setup(config: TrainConfig, accelerator: Accelerator, started: float | None = None) -> tuple[Run, TrainState]:
    """Data, model, optimizer and schedule, prepared by Accelerate; the state restored from a checkpoint.

    With --time-budget the number of steps is planned here, before the first step, or on --resume read back from
    the run's train_config.json (`budget.time_budget_plan`).
    """
    import torch
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    from sst2dist.modeling import load_accuracy_metric, load_tokenizer

    resume_from = prepare_output_dir(config, accelerator)
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    train_set, eval_set, teacher_meta, rows_sha256 = load_data(config, tokenizer, accelerator)
    logits_sha256 = teacher_meta and teacher_meta.get("logits_sha256")
    fingerprint = run_fingerprint(config, accelerator, rows_sha256, logits_sha256)
    keep_fingerprint(config, accelerator, fingerprint, resuming=resume_from is not None)
    train_loader, sampler = make_train_loader(config, train_set, tokenizer.pad_token_id)
    eval_loader = make_eval_loader(config, eval_set, tokenizer.pad_token_id)
    model = load_student(config, split_labels(train_set))
    layer_teacher = load_layer_teacher(config, model, tokenizer, accelerator)
    sentence_projection = make_sentence_projection(model, train_set)
    if config.compile:
        model = torch.compile(model, dynamic=True)
    projections = [p for p in (layer_teacher and layer_teacher.projection, sentence_projection) if p is not None]
    optimizer = make_optimizer([model, *projections], config, grad_scaling=accelerator.scaler is not None)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    # Prepared after the model, in this order, so checkpoints keep them as their second and third models.
    if layer_teacher is not None and layer_teacher.projection is not None:
        layer_teacher.projection = accelerator.prepare(layer_teacher.projection)
    if sentence_projection is not None:
        sentence_projection = accelerator.prepare(sentence_projection)
    teachers = Teachers(layer_teacher, sentence_projection)

    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    measured_on = (model, optimizer, train_set, sampler, eval_set, tokenizer.pad_token_id)
    plan = time_budget_plan(
        config, accelerator, resume_from, measured_on,
        lambda batch: forward_losses(model, config, batch, teachers)[0], total_steps, steps_per_epoch, started,
    )  # fmt: skip
    if plan is not None:
        total_steps = plan["planned_steps"]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    accelerator.register_for_checkpointing(scheduler)  # stepped by hand: once per optimizer step
    log = RunLog(accelerator, Path(config.output_dir))
    start_trackers(accelerator, asdict(config))
    run = Run(
        config, accelerator, model, tokenizer, optimizer, scheduler, train_loader, sampler, eval_loader,
        load_accuracy_metric(), log, total_steps, steps_per_epoch, resume_from, teacher_meta,
    )  # fmt: skip
    run.teachers = teachers
    run.time_budget_plan = plan
    if plan is not None and resume_from is None:
        log.write({"step": 0, "event": "time_budget", **plan})

    state = TrainState()
    if resume_from is not None:
        state = TrainState.from_checkpoint(load_checkpoint(accelerator, resume_from), resume_from)
        accelerator.print(f"resuming from {resume_from} (step {state.step})")
    if state.batches_in_epoch >= len(train_loader):  # the checkpoint was taken at an epoch's end
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    run.counts_at_start = (state.samples, state.tokens, state.padded_tokens)
    return run, state


def fit(run: Run, state: TrainState) -> bool:
    """The loop: forward, backward, step; read the device sums, evaluate and checkpoint on schedule.

    Returns True when early stopping ended the run.
    """
    from tqdm.auto import tqdm

    config, accelerator, model = run.config, run.accelerator, run.model
    accelerator.print(
        f"training {run.total_steps} steps ({run.steps_per_epoch}/epoch) on {len(run.sampler.lengths)} sentences, "
        f"{accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}"
        + (f", distilling from {config.teacher}" if config.teacher else "")
    )
    run.progress = tqdm(total=run.total_steps, initial=state.step, disable=not accelerator.is_local_main_process)
    window = Window(accelerator.device, first_step=state.step + 1)
    stop = stopped_early(config, state)  # resumed from the last checkpoint of a run that stopped early
    model.train()
    while state.step < run.total_steps and not stop:
        # The prepared loader re-sets its sampler's epoch from its own counter on every pass: set both.
        run.train_loader.set_epoch(state.epoch)
        run.sampler.set_epoch(state.epoch)
        skip = state.batches_in_epoch
        batches = accelerator.skip_first_batches(run.train_loader, skip) if skip else run.train_loader
        tick = time.perf_counter()
        for batch in batches:
            mask = batch["attention_mask"]
            losses = train_step(run, batch, state.batches_in_epoch)
            state.batches_in_epoch += 1
            window.add(state.step + 1, losses.detach(), mask)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            run.progress.update(1)
            done = state.step >= run.total_steps
            due_log = state.step % config.log_every == 0
            due_eval = bool(config.eval_every) and state.step % config.eval_every == 0 and not done
            due_save = bool(config.save_every) and state.step % config.save_every == 0 and not done
            if not (due_log or due_eval or due_save or done):
                continue
            state.train_seconds += time.perf_counter() - tick
            read_window(run, state, window, log_it=due_log)
            stop = due_eval and evaluate_and_keep_best(run, state)
            if due_save and not stop:
                save_checkpoint(accelerator, run.output_dir, asdict(state), keep=config.keep_checkpoints)
                run.last_save_step = state.step
            tick = time.perf_counter()
            if done or stop:
                break
        else:
            state.train_seconds += time.perf_counter() - tick
        if state.batches_in_epoch >= len(run.train_loader):
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    run.progress.close()
    return stop


def read_window(run: Run, state: TrainState, window: Window, log_it: bool) -> None:
    """The one host sync between logs: gather every process's sums, stop on a non-finite loss, log the means."""
    accelerator = run.accelerator
    rows = accelerator.gather(window.packed()).reshape(accelerator.num_processes, -1).cpu().double()
    terms = len(LOSS_TERMS)
    losses, first_bad = rows[:, :terms].sum(0), rows[:, terms]
    counts, batches = rows[:, terms + 1 : terms + 4].sum(0), rows[:, terms + 4].sum()
    if (first_bad > 0).any():
        stop_on_non_finite_loss(run, int(first_bad[first_bad > 0].min()), window.first_step, state.step)
    state.samples, state.tokens, state.padded_tokens = (
        base + int(total) for base, total in zip(run.counts_at_start, counts.tolist(), strict=True)
    )
    if not log_it:
        return
    means = dict(zip(LOSS_TERMS, (losses / batches).tolist(), strict=True))
    config = run.config
    weights = {
        "loss_hidden": config.distill_hidden,
        "loss_attention": config.distill_attention,
        "loss_sentence": config.distill_sentence,
    }
    shown = ["loss"] + (["loss_ce", "loss_kd"] if config.teacher or any(weights.values()) else [])
    shown += [term for term, weight in weights.items() if weight]
    record = {"step": state.step} | {term: round(means[term], 5) for term in shown}
    loss = means["loss"]
    rate = (state.step - window.first_step + 1) / (time.perf_counter() - window.started)
    run.log.write(record | {"lr": run.scheduler.get_last_lr()[0], "steps_per_second": round(rate, 3)})
    run.progress.set_postfix(loss=f"{loss:.4f}")
    window.restart(state.step + 1)


def stop_on_non_finite_loss(run: Run, bad_step: int, first: int, last: int) -> None:
    """Every process reads the same gathered sums, so they all stop here, before anything of steps first..last
    is evaluated or written."""
    run.log.write({"step": bad_step, "event": "non_finite_loss", "window": [first, last]})
    raise NonFiniteLossError(
        f"the training loss is not finite at step {bad_step} (checked over steps {first}-{last}): stopped on every "
        "process; no checkpoint or model was written from these steps. Lower --lr, keep --max-grad-norm > 0, "
        "or try --mixed-precision no"
    )


def finish(run: Run, state: TrainState, stopped_early: bool, started: float) -> dict:
    """Evaluate and checkpoint the last step (unless just done), write metrics.json; return the metrics."""
    if run.last_eval_step != state.step:
        evaluate_and_keep_best(run, state)
    if run.last_save_step != state.step:
        save_checkpoint(run.accelerator, run.output_dir, asdict(state), keep=run.config.keep_checkpoints)
    metrics = final_metrics(run, state, stopped_early, started)
    write_final_files(run, metrics)
    logged = {k: v for k, v in metrics.items() if k not in ("versions", "teacher")}
    run.log.write({"step": state.step, "event": "done", **logged})
    run.accelerator.end_training()
    return metrics


def evaluate_only(config: TrainConfig, accelerator: Accelerator) -> dict:
    """--eval-only: the accuracy of --model on the validation split, written to eval_metrics.json."""
    from accelerate.utils import set_seed

    from sst2dist.modeling import load_accuracy_metric, load_tokenizer

    set_seed(config.seed)  # a base model's new classification head is random

    tokenizer = load_tokenizer(config.model)
    eval_config = dataclasses.replace(config, max_train_samples=1, teacher=None)
    _, eval_set, *_ = load_data(eval_config, tokenizer, accelerator)
    eval_loader = make_eval_loader(config, eval_set, tokenizer.pad_token_id)
    model, eval_loader = accelerator.prepare(load_student(config, split_labels(eval_set)), eval_loader)
    accuracy, counted = evaluate(model, eval_loader, accelerator, load_accuracy_metric())
    metrics = {"model": config.model, "eval_accuracy": accuracy, "eval_samples": counted}
    metrics |= {"num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision}
    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(config.output_dir) / "eval_metrics.json", metrics)
    accelerator.print(json.dumps(metrics))
    return metrics


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        train(parse_config(argv))
    except (ValueError, NonFiniteLossError) as err:  # DataError, ModelNotFoundError, ConfigError ...
        print(f"sst2dist.train: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
