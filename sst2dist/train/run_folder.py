"""The run folder (--output-dir): what a run keeps there, refusing to mix two runs in it, the --resume check,
swapping the best model into `model/`, and the metrics.json and train_config.json written when a run ends."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst2dist.atomic import WriteError, replace_dir, write_json_atomic, writing
from sst2dist.environment import package_versions
from sst2dist.train.checkpoint import CHECKPOINTS_DIR, latest_checkpoint
from sst2dist.train.config import ConfigError, TrainConfig
from sst2dist.train.fingerprint import FINGERPRINT_KEY

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from sst2dist.train.state import Run, TrainState

PLAN_KEY = "time_budget_plan"  # in train_config.json and metrics.json: the --time-budget plan
VERSIONED_PACKAGES = ("sst2dist", "torch", "transformers", "accelerate", "datasets")
COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper module
RUN_FILES = ("model", CHECKPOINTS_DIR, "metrics.json", "train_config.json", "log.jsonl")
REPLACED_DIR = ".replaced"  # --overwrite: the earlier run's files, until the new run has started (`started_or_undone`)
# Options that may differ between a run and its --resume (they do not change what is computed).
# Paths may change: what they point at is compared by `fingerprint` (rows read, weights, teacher logits).
RESUME_MAY_CHANGE = {
    "resume", "report_to", "data", "output_dir", "log_every", "overwrite", "teacher_cache",
    "model", "teacher", "layer_teacher", "mixed_precision",
}  # fmt: skip


def prepare_output_dir(config: TrainConfig, accelerator: Accelerator) -> Path | None:
    """Refuse to mix two runs in one folder; return the checkpoint to resume from, if any."""
    output_dir = Path(config.output_dir)
    if config.resume:
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None and not killed_before_first_checkpoint(output_dir):
            raise ConfigError(
                f"--resume: no complete checkpoint in {output_dir / CHECKPOINTS_DIR}; run without --resume"
            )
        check_same_config(output_dir / "train_config.json", config)
        if checkpoint is not None:
            return checkpoint
        # Killed before its first checkpoint: nothing to continue, so the same run starts over (--resume is
        # always the right answer to a kill).
    existing = [name for name in RUN_FILES if (output_dir / name).exists()]
    if existing and not (config.overwrite or config.resume):
        raise ConfigError(
            f"{output_dir} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replaced = output_dir / REPLACED_DIR
        shutil.rmtree(replaced, ignore_errors=True)  # left by a launch killed before it started
        for name in existing:
            path = output_dir / name
            if config.overwrite:
                replaced.mkdir(exist_ok=True)
                path.rename(replaced / name)
            else:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "train_config.json", asdict(config))
    accelerator.wait_for_everyone()
    return None


@contextmanager
def started_or_undone(config: TrainConfig, accelerator: Accelerator) -> Iterator[None]:
    """A new run refused before its first step (bad data, a model of other labels, a tracker that would not start)
    takes back the train_config.json it wrote, so the same command runs once the input is fixed, and puts back the
    run --overwrite was to replace; a config this launch did not write (another run's, or the one --resume
    continues) stays. Once the run has started, the replaced run is deleted."""
    output_dir = Path(config.output_dir)
    written_here = not config.resume and (config.overwrite or not (output_dir / "train_config.json").exists())
    try:
        yield
    except ValueError:
        if written_here and accelerator.is_main_process:
            (output_dir / "train_config.json").unlink(missing_ok=True)
            for path in (output_dir / REPLACED_DIR).glob("*"):
                path.rename(output_dir / path.name)
            shutil.rmtree(output_dir / REPLACED_DIR, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        shutil.rmtree(output_dir / REPLACED_DIR, ignore_errors=True)


def killed_before_first_checkpoint(output_dir: Path) -> bool:
    """A run started here (train_config.json) that neither finished (metrics.json) nor saved a checkpoint."""
    started = (output_dir / "train_config.json").is_file()
    return started and not (output_dir / "metrics.json").exists() and latest_checkpoint(output_dir) is None


def record_plan(config: TrainConfig, accelerator: Accelerator, plan: dict) -> None:
    """--time-budget: keep the plan in train_config.json before the first step, where --resume finds it."""
    if accelerator.is_main_process:
        write_train_config(config, {PLAN_KEY: plan})


def recorded_plan(config: TrainConfig) -> dict:
    """--resume with --time-budget: the plan the run was started with (its measurement is not repeated)."""
    saved_file = Path(config.output_dir) / "train_config.json"
    plan = json.loads(saved_file.read_text(encoding="utf-8")).get(PLAN_KEY)
    if not isinstance(plan, dict) or not isinstance(plan.get("planned_steps"), int):
        raise ConfigError(f"--resume --time-budget: {saved_file} records no time-budget plan to continue")
    return plan


def forget_unstarted_run(config: TrainConfig, accelerator: Accelerator) -> None:
    """A run refused before its first step leaves no train_config.json behind, so the next try needs no
    --overwrite."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (Path(config.output_dir) / "train_config.json").unlink(missing_ok=True)


def check_same_config(saved_file: Path, config: TrainConfig) -> None:
    saved = json.loads(saved_file.read_text(encoding="utf-8"))
    changed = sorted(
        name for name, value in asdict(config).items() if name not in RESUME_MAY_CHANGE and saved.get(name) != value
    )
    if changed:
        detail = ", ".join(f"--{n.replace('_', '-')} {saved.get(n)} -> {getattr(config, n)}" for n in changed)
        raise ConfigError(f"--resume with different options ({detail}): resume with the run's original options")


def save_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, target: Path) -> None:
    """`save_pretrained` model + tokenizer into a temporary folder, then swap it in."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # every process calls it (it gathers under FSDP/DeepSpeed)
    # --compile: the keys carry the compile wrapper's prefix, which from_pretrained would not match (random weights)
    state_dict = {name.replace(COMPILED_PREFIX, ""): value for name, value in state_dict.items()}
    if accelerator.is_main_process:
        tmp = target.with_name(f".tmp-{target.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with writing("the best model", target, errors=(Exception,)):  # only serializes what is in memory
                bare = accelerator.unwrap_model(model, keep_torch_compile=False)
                bare.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
                replace_dir(tmp, target)
        except WriteError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()


def final_metrics(run: Run, state: TrainState, stopped_early: bool, started: float) -> dict:
    """What metrics.json holds: accuracies, steps, what was seen, speed, how it ran, the package versions."""
    accelerator = run.accelerator
    return {
        "best_accuracy": state.best_accuracy,
        "best_step": state.best_step,
        "final_accuracy": run.final_accuracy,
        "eval_samples": run.eval_samples,
        "steps": state.step,
        "epochs": round(state.step / run.steps_per_epoch, 3),
        "stopped_early": stopped_early,
        "train_samples_seen": state.samples,
        "train_tokens_seen": state.tokens,
        "train_padded_tokens_seen": state.padded_tokens,
        "train_seconds": round(state.train_seconds, 2),
        "samples_per_second": round(state.samples / state.train_seconds, 2),
        "tokens_per_second": round(state.tokens / state.train_seconds, 1),
        "wall_seconds_this_launch": round(time.perf_counter() - started, 2),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "resumed_from": str(run.resume_from) if run.resume_from else None,
        "teacher": run.teacher_meta,
        "versions": package_versions(VERSIONED_PACKAGES),
    } | ({PLAN_KEY: run.time_budget_plan} if run.time_budget_plan else {})


def write_final_files(run: Run, metrics: dict) -> None:
    """metrics.json, and train_config.json with what `auto` and the launch resolved to (main process only)."""
    accelerator = run.accelerator
    if not accelerator.is_main_process:
        return
    write_json_atomic(run.output_dir / "metrics.json", metrics)
    resolved = {"resolved_mixed_precision": accelerator.mixed_precision, "total_steps": run.total_steps}
    resolved["num_processes"] = accelerator.num_processes
    if run.time_budget_plan:
        resolved[PLAN_KEY] = run.time_budget_plan
    write_train_config(run.config, resolved)


def write_train_config(config: TrainConfig, extra: dict) -> None:
    """train_config.json: the options and `extra`, keeping the run's recorded fingerprint (main process)."""
    path = Path(config.output_dir) / "train_config.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    kept = {FINGERPRINT_KEY: saved[FINGERPRINT_KEY]} if FINGERPRINT_KEY in saved else {}
    write_json_atomic(path, asdict(config) | kept | extra)
