"""--time-budget MINUTES: how many optimizer steps fit in the budget, planned from this machine's measured speed.

Before the first optimizer step, `measure_speed` times a few real training batches, drawn as the loop draws them
(forward and backward; the gradients are discarded, and the weights, the optimizer and the random state are left
as they were), one optimizer step and one evaluation batch. On several processes the slowest one decides and every
process gets the same numbers. `plan_steps` is arithmetic on those numbers: the most optimizer steps whose
training, evaluations and checkpoints, added to what the launch has already spent, fit in the budget less a safety
margin. The plan is recorded in train_config.json and metrics.json; `--resume` reuses it without measuring again.
`time_budget_plan` is what `train.setup` calls: the plan, made or read back, before the schedule is built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sst2dist.train.config import ConfigError
from sst2dist.train.run_folder import forget_unstarted_run, record_plan, recorded_plan

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from accelerate import Accelerator
    from datasets import Dataset

    from sst2dist.train.config import TrainConfig

SAFETY_MARGIN = 0.10  # of the budget, kept for what the estimate misses
MIN_STEPS = 10  # a plan of fewer steps is refused: that is no training
WARMUP_PASSES = 3  # forward + backward passes before timing (allocation, first-call costs)
TIMED_PASSES = 5
MEASURE_SECONDS = 30.0  # the measurement takes fewer passes when one pass is slow
SAVE_BYTES_PER_SECOND = 200e6  # assumed speed of writing checkpoints and models (not measured)
SAVE_OVERHEAD_SECONDS = 0.5  # per save, whatever its size


@dataclass(frozen=True)
class Speed:
    """What a plan is made from: measured by `measure_speed`, or given (tests)."""

    samples_per_second: float  # training over all processes, optimizer step included, at the epoch's mean batch
    samples_per_step: float  # over all processes (the epoch's mean: its last batch can be short)
    evaluation_seconds: float  # one evaluation of the validation split, plus saving the model if it is the best
    checkpoint_seconds: float  # one checkpoint (model, optimizer, random states)
    setup_seconds: float = 0.0  # already spent by this launch before the first step (measurement included)

    @property
    def step_seconds(self) -> float:
        return self.samples_per_step / self.samples_per_second


def events(steps: int, every: int) -> int:
    """Evaluations (or checkpoints) in a run of `steps` steps: every `every` steps (0: never) and at the end."""
    if steps < 1:
        return 0
    return (steps - 1) // every + 1 if every else 1


def run_seconds(steps: int, speed: Speed, eval_every: int, save_every: int) -> float:
    """The launch's estimated wall time for `steps` optimizer steps, setup included."""
    return (
        speed.setup_seconds
        + steps * speed.step_seconds
        + events(steps, eval_every) * speed.evaluation_seconds
        + events(steps, save_every) * speed.checkpoint_seconds
    )


def plan_steps(
    minutes: float,
    speed: Speed,
    full_steps: int,
    eval_every: int,
    save_every: int,
    where: str = "this CPU",
    margin: float = SAFETY_MARGIN,
    min_steps: int = MIN_STEPS,
) -> int:
    """The most optimizer steps (at most `full_steps`) whose run fits in `minutes` less the margin.

    Raises ConfigError, naming the smallest budget that would do, when not even `min_steps` steps fit.
    """
    usable = minutes * 60 * (1 - margin)

    def fits(steps: int) -> bool:
        return run_seconds(steps, speed, eval_every, save_every) <= usable

    least = min(min_steps, full_steps)
    if not fits(least):
        needed = math.ceil(run_seconds(least, speed, eval_every, save_every) / (1 - margin) / 6) / 10
        raise ConfigError(
            f"--time-budget {minutes:g} min is too short: at {speed.samples_per_second:,.1f} samples/s measured on "
            f"{where}, with {speed.setup_seconds:.0f} s of setup, {least} steps and their evaluation and checkpoint "
            f"need at least {needed:.1f} min, so give --time-budget {needed:.1f} or more"
        )
    low, high = least, full_steps  # fits(low) holds; the run's time grows with its steps
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def plan_record(
    minutes: float,
    speed: Speed,
    planned: int,
    full_steps: int,
    steps_per_epoch: int,
    config: Any,
    cpu_kind: str,
    num_processes: int,
    mixed_precision: str,
    margin: float = SAFETY_MARGIN,
) -> dict:
    """What train_config.json and metrics.json keep of the decision (and --resume reuses)."""
    return {
        "minutes": minutes,
        "cpu_kind": cpu_kind,
        "num_processes": num_processes,
        "mixed_precision": mixed_precision,
        "measured_samples_per_second": round(speed.samples_per_second, 2),
        "seconds_per_step": round(speed.step_seconds, 4),
        "seconds_per_evaluation": round(speed.evaluation_seconds, 2),
        "seconds_per_checkpoint": round(speed.checkpoint_seconds, 2),
        "setup_seconds": round(speed.setup_seconds, 2),
        "safety_margin": margin,
        "planned_steps": planned,
        "full_steps": full_steps,
        "planned_epochs": round(planned / steps_per_epoch, 3),
        "planned_evaluations": events(planned, config.eval_every),
        "planned_checkpoints": events(planned, config.save_every),
        "estimated_minutes": round(run_seconds(planned, speed, config.eval_every, config.save_every) / 60, 2),
    }


def plan_line(plan: dict) -> str:
    """time budget 10 min: 96 samples/s measured on amd-epyc-avx2 -> 850 of 2,106 steps (0.8 epochs)"""
    return (
        f"time budget {plan['minutes']:g} min: {plan['measured_samples_per_second']:,.0f} samples/s measured on "
        f"{plan['cpu_kind']} -> {plan['planned_steps']:,} of {plan['full_steps']:,} steps "
        f"({plan['planned_epochs']:.1f} epochs, about {plan['estimated_minutes']:.1f} min)"
    )


# ---------------------------------------------------------------------------------------------- the run's plan


def time_budget_plan(
    config: TrainConfig,
    accelerator: Accelerator,
    resume_from: Path | None,
    measured_on: tuple,
    loss_of: Callable[[dict], torch.Tensor],
    full_steps: int,
    steps_per_epoch: int,
    started: float | None,
) -> dict | None:
    """The run's --time-budget plan: None without a budget, read back from train_config.json on --resume, else
    made now (`plan_time_budget`)."""
    if config.time_budget is None:
        return None
    if resume_from is None:
        return plan_time_budget(config, accelerator, measured_on, loss_of, full_steps, steps_per_epoch, started)
    plan = recorded_plan(config)
    accelerator.print(
        f"time budget {plan['minutes']:g} min: reusing the recorded plan, {plan['planned_steps']:,} of "
        f"{plan['full_steps']:,} steps (measured {plan['measured_samples_per_second']:,.0f} samples/s on "
        f"{plan['cpu_kind']})"
    )
    return plan


def plan_time_budget(
    config: TrainConfig,
    accelerator: Accelerator,
    measured_on: tuple,
    loss_of: Callable[[dict], torch.Tensor],
    full_steps: int,
    steps_per_epoch: int,
    started: float | None,
) -> dict:
    """--time-budget on a new run: measure this machine, plan the steps, record and print the decision.

    `measured_on` = (model, optimizer, train_set, sampler, eval_set, pad_token_id), as the loop will use them;
    `loss_of` is the loop's loss of a batch. A budget too short for a handful of steps is refused before anything
    is trained, and leaves no run behind.
    """
    from sst2dist.data import make_collator
    from sst2dist.environment import cpu_kind

    model, optimizer, train_set, sampler, eval_set, pad_token_id = measured_on
    collate = make_collator(pad_token_id, config.pad_to_multiple_of)
    since = time.perf_counter() if started is None else started
    speed = measure_speed(accelerator, model, optimizer, loss_of, train_set, sampler, collate, eval_set, config, since)
    kind = cpu_kind()
    try:
        planned = plan_steps(config.time_budget, speed, full_steps, config.eval_every, config.save_every, kind)
    except ConfigError:
        forget_unstarted_run(config, accelerator)
        raise
    plan = plan_record(
        config.time_budget, speed, planned, full_steps, steps_per_epoch, config, kind,
        accelerator.num_processes, accelerator.mixed_precision,
    )  # fmt: skip
    record_plan(config, accelerator, plan)
    accelerator.print(plan_line(plan))
    return plan


# ---------------------------------------------------------------------------------------------- measurement


def measure_speed(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_of: Callable[[dict], torch.Tensor],
    train_set: Dataset,
    sampler: Any,
    collate: Callable[[list[dict]], dict],
    eval_set: Dataset,
    config: Any,
    started: float,
) -> Speed:
    """Time this machine on real batches; every process returns the same Speed (the slowest process's)."""
    import torch

    device, world = accelerator.device, accelerator.num_processes
    sync = device_sync(device)
    lengths, multiple = sampler.lengths, config.pad_to_multiple_of
    epoch = list(sampler)  # this epoch's batches in the loop's order; process i gets batches i, i + N, ...
    mean_tokens = sum(padded_tokens(batch, lengths, multiple) for batch in epoch) / len(epoch)
    mine = epoch[accelerator.process_index :: world] or epoch
    picks = [mine[i % len(mine)] for i in range(WARMUP_PASSES + TIMED_PASSES)]

    def one_pass(rows: list[int]) -> float:  # fetching and collating the rows counts too: the loop does it
        sync()
        tick = time.perf_counter()
        batch = {k: v.to(device) for k, v in collate(train_set.__getitems__(rows)).items()}
        accelerator.backward(loss_of(batch))
        sync()
        return time.perf_counter() - tick

    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):  # dropout draws here: the run's random state stays as it was
        model.train()
        seconds, tokens = time_training_passes(accelerator, optimizer, one_pass, picks, lengths, multiple)
        clip = gradient_clipping(model, config.max_grad_norm)
        optimizer_seconds = time_optimizer_step(optimizer, clip, sync)  # on the last pass's gradients, then undone
        eval_seconds_per_token = time_evaluation(model, eval_set, collate, config.eval_batch_size, device, sync)
        model.train()
    step_seconds = config.grad_accum * mean_tokens * seconds / tokens + optimizer_seconds
    evaluation_seconds, checkpoint_seconds = evaluation_and_checkpoint_seconds(
        model, eval_set, eval_seconds_per_token, config, world
    )
    step_seconds, evaluation_seconds, setup_seconds = slowest_of(
        accelerator, step_seconds, evaluation_seconds, time.perf_counter() - started
    )
    samples_per_step = world * config.grad_accum * len(lengths) / len(epoch)
    return Speed(
        samples_per_step / step_seconds, samples_per_step, evaluation_seconds, checkpoint_seconds, setup_seconds
    )


def device_sync(device: Any) -> Callable[[], None]:
    """Waits for the GPU's queued work before a clock is read; nothing to wait for on a CPU."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return sync


def gradient_clipping(model: torch.nn.Module, max_grad_norm: float) -> Callable[[], None]:
    """Clips the gradients as the loop does (none when `max_grad_norm` is 0), with torch's own clipping:
    Accelerate's would also mark an fp16 GradScaler as unscaled."""
    import torch

    def clip() -> None:
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)

    return clip


def slowest_of(accelerator: Accelerator, *values: float) -> list[float]:
    """The largest of each value over the processes, the same on every process (every process must call it)."""
    import torch

    gathered = accelerator.gather(torch.tensor([values], dtype=torch.float64, device=accelerator.device))
    return gathered.reshape(accelerator.num_processes, len(values)).max(dim=0).values.tolist()


def padded_tokens(rows: list[int], row_lengths: Any, multiple: int) -> int:
    """Tokens in the batch of `rows` once padded to its longest row, rounded up to a multiple of `multiple`."""
    return len(rows) * -(-max(row_lengths[i] for i in rows) // multiple) * multiple


def time_training_passes(
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    one_pass: Callable[[list[int]], float],
    picks: list[list[int]],
    lengths: Any,
    multiple: int,
) -> tuple[float, int]:
    """(seconds, padded tokens) of the timed forward + backward passes, after the warm-up ones; fewer passes when
    the first (the slowest process's) is slow. The last pass's gradients are left for `time_optimizer_step`."""
    first = slowest_of(accelerator, one_pass(picks[0]))[0]
    optimizer.zero_grad(set_to_none=True)
    passes = max(2, min(WARMUP_PASSES + TIMED_PASSES, int(MEASURE_SECONDS / max(first, 1e-9))))
    timed = min(TIMED_PASSES, max(1, passes - WARMUP_PASSES))
    warm = passes - timed
    for rows in picks[1:warm]:
        one_pass(rows)
        optimizer.zero_grad(set_to_none=True)
    seconds, tokens = 0.0, 0
    for index, rows in enumerate(picks[warm : warm + timed]):
        if index:
            optimizer.zero_grad(set_to_none=True)
        seconds += one_pass(rows)
        tokens += padded_tokens(rows, lengths, multiple)
    return seconds, tokens


def evaluation_and_checkpoint_seconds(
    model: torch.nn.Module, eval_set: Dataset, eval_seconds_per_token: float, config: Any, world: int
) -> tuple[float, float]:
    """One evaluation of the validation split (its padded tokens shared by the processes, plus saving the model
    in case it is the best) and one checkpoint (the model and Adam's 2 moments), at the assumed write speed."""
    eval_lengths, batch_size, multiple = eval_set["length"], config.eval_batch_size, config.pad_to_multiple_of
    eval_tokens = sum(
        padded_tokens(list(range(start, min(start + batch_size, len(eval_lengths)))), eval_lengths, multiple)
        for start in range(0, len(eval_lengths), batch_size)
    )
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model_save = SAVE_OVERHEAD_SECONDS + parameter_bytes / SAVE_BYTES_PER_SECOND
    evaluation_seconds = eval_seconds_per_token * eval_tokens / world + model_save  # the best model is saved too
    checkpoint_seconds = SAVE_OVERHEAD_SECONDS + 3 * parameter_bytes / SAVE_BYTES_PER_SECOND  # + Adam's 2 moments
    return evaluation_seconds, checkpoint_seconds


def time_optimizer_step(optimizer: torch.optim.Optimizer, clip: Callable[[], None], sync: Callable[[], None]) -> float:
    """Seconds of one gradient clipping and optimizer step (the second of two: the first allocates the optimizer's
    state); the weights are restored and the state emptied afterwards, so the first real step starts from exactly
    what it would have."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper would count the steps
    params = [p for group in inner.param_groups for p in group["params"]]
    saved = [p.detach().clone() for p in params]
    seconds = 0.0
    try:
        for _ in range(2):
            sync()
            tick = time.perf_counter()
            clip()
            inner.step()
            sync()
            seconds = time.perf_counter() - tick
    finally:
        with torch.no_grad():
            for param, value in zip(params, saved, strict=True):
                param.copy_(value)
        inner.state.clear()
        optimizer.zero_grad(set_to_none=True)
    return seconds


def time_evaluation(
    model: torch.nn.Module,
    eval_set: Dataset,
    collate: Callable[[list[dict]], dict],
    batch_size: int,
    device: Any,
    sync: Callable[[], None],
) -> float:
    """Seconds per padded token of evaluation, on one batch of median length (the split is sorted by length)."""
    import torch

    middle = len(eval_set) // 2
    start = max(0, min(middle - batch_size // 2, len(eval_set) - batch_size))
    batch = collate([eval_set[i] for i in range(start, min(start + batch_size, len(eval_set)))])
    batch = {k: v.to(device) for k, v in batch.items() if k != "teacher_logits"}
    model.eval()
    seconds = 0.0
    with torch.no_grad():
        for _ in range(2):  # the first pass allocates for the larger batch
            sync()
            tick = time.perf_counter()
            model(**batch)
            sync()
            seconds = time.perf_counter() - tick
    return seconds / batch["attention_mask"].numel()
