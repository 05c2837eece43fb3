"""The Accelerate training loop: options, the run folder and state, batching, real `accelerate launch` runs, exact
resume, NaN guard, several processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sst2dist.data import LengthGroupedBatchSampler, make_collator
from sst2dist.environment import cpu_kind, supports_bf16
from sst2dist.train.budget import MIN_STEPS, Speed, events, plan_steps, run_seconds
from sst2dist.train.config import (
    ConfigError,
    TrainConfig,
    build_parser,
    parse_config,
    resolve_mixed_precision,
)
from sst2dist.train.loop import launch_processes, main
from sst2dist.train.run_folder import RUN_FILES, prepare_output_dir, recorded_plan
from sst2dist.train.state import TrainState

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(command: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def train_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "sst2dist.train", *map(str, args)]


def quick_options(sst2_dir: Path, model: Path, output_dir: Path) -> list[str]:
    return ["--data", str(sst2_dir), "--model", str(model), "--output-dir", str(output_dir), "--log-every", "2"]


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ options


def test_every_option_is_in_help_with_its_default() -> None:
    help_text = build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in help_text
    assert "(default: 5e-05)" in help_text and "(default: auto)" in help_text


def test_unknown_option_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--epochs", "1", "--learning-rate", "1e-4"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --learning-rate" in capsys.readouterr().err


def test_options_become_a_typed_config() -> None:
    config = parse_config(["--lr", "1e-4", "--max-steps", "7", "--no-group-by-length", "--resume"])
    assert (config.lr, config.max_steps, config.group_by_length, config.resume) == (1e-4, 7, False, True)
    assert parse_config([]) == TrainConfig()
    assert (parse_config(["--time-budget", "2.5"]).time_budget, TrainConfig().time_budget) == (2.5, None)


def test_fp16_on_cpu_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_mixed_precision("fp16", None)
    assert main(["--mixed-precision", "fp16", "--output-dir", str(tmp_path / "run")]) == 1
    assert "fp16 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_auto_mixed_precision_follows_the_hardware() -> None:
    """bf16 only on GPUs with bf16 tensor cores (A100 8.0, H100 9.0); T4 (7.5) and V100 (7.0) get fp16."""
    assert resolve_mixed_precision("auto", (8, 0)) == resolve_mixed_precision("auto", (9, 0)) == "bf16"
    assert resolve_mixed_precision("auto", (7, 5)) == resolve_mixed_precision("auto", (7, 0)) == "fp16"
    assert resolve_mixed_precision("auto", None) == ("bf16" if supports_bf16() else "no")
    assert resolve_mixed_precision("fp16", (8, 0)) == "fp16"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--warmup-ratio", "1.5"], "--warmup-ratio must be in"),
        (["--resume", "--overwrite"], "contradict"),
        (["--time-budget", "0"], "--time-budget must be a positive number of minutes, got 0.0"),
        (["--time-budget", "-1.5"], "--time-budget must be a positive number of minutes, got -1.5"),
        (["--time-budget", "nan"], "--time-budget must be a positive number of minutes, got nan"),
        (["--time-budget", "inf"], "--time-budget must be a positive number of minutes, got inf"),
    ],
)
def test_bad_values_are_clear_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_a_time_budget_that_is_not_a_number_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--time-budget", "ten"])
    assert exit_info.value.code == 2 and "--time-budget: invalid float value: 'ten'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ time budget

# 96 samples/s at batch 64 (the AVX2 EPYC's fp32 speed), an evaluation 8 s, a checkpoint 2 s, 41 s of setup.
EPYC = Speed(samples_per_second=96, samples_per_step=64, evaluation_seconds=8, checkpoint_seconds=2, setup_seconds=41)


def test_the_plan_is_the_most_steps_that_fit_the_budget_less_the_margin() -> None:
    planned = plan_steps(10, EPYC, full_steps=2106, eval_every=300, save_every=500)
    # 41 s + 706 steps x 2/3 s + 3 evaluations (300, 600, 706) + 2 checkpoints (500, 706) <= 540 s = 90 % of 10 min
    assert planned == 706 and (events(706, 300), events(706, 500)) == (3, 2)
    assert run_seconds(planned, EPYC, 300, 500) <= 540 < run_seconds(planned + 1, EPYC, 300, 500)
    assert plan_steps(10, EPYC, 2106, 300, 500, margin=0) > planned  # the margin is kept free


def test_the_plan_follows_the_measured_speed() -> None:
    def planned(samples_per_second: float, full_steps: int = 2106) -> int:
        speed = Speed(samples_per_second, 64, evaluation_seconds=8, checkpoint_seconds=2, setup_seconds=41)
        return plan_steps(10, speed, full_steps, eval_every=300, save_every=500)

    assert planned(96) < planned(192) < planned(318) == 2106  # the AMX Xeon's 318 samples/s: the whole run fits
    assert planned(192) > 1.9 * planned(96)
    assert planned(192, full_steps=1000) == 1000  # --max-steps / --epochs still cap the plan: the smaller wins
    # More evaluations and checkpoints leave fewer steps.
    assert plan_steps(10, EPYC, 2106, eval_every=50, save_every=50) < plan_steps(10, EPYC, 2106, 300, 500)
    assert events(0, 300) == 0 and events(1, 0) == 1 and events(300, 300) == 1 and events(301, 300) == 2


def test_a_budget_too_short_for_a_handful_of_steps_names_the_minimum() -> None:
    with pytest.raises(ConfigError) as error:
        plan_steps(0.5, EPYC, 2106, 300, 500, where="amd-epyc-avx2")
    message = str(error.value)
    # 41 s + 10 steps x 2/3 s + 1 evaluation + 1 checkpoint = 57.7 s, / 0.9 = 64 s: 1.1 min
    assert message.startswith("--time-budget 0.5 min is too short: at 96.0 samples/s measured on amd-epyc-avx2")
    assert message.endswith("need at least 1.1 min, so give --time-budget 1.1 or more") and ". " not in message
    assert plan_steps(1.1, EPYC, 2106, 300, 500) >= MIN_STEPS
    assert plan_steps(1.1, EPYC, full_steps=4, eval_every=300, save_every=500) == 4  # a shorter run: all of it


def test_resume_with_a_budget_needs_the_recorded_plan(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path), time_budget=10, resume=True)
    (tmp_path / "train_config.json").write_text(json.dumps({**TrainConfig().__dict__, "time_budget": 10}))
    with pytest.raises(ConfigError, match="records no time-budget plan"):
        recorded_plan(config)
    plan = {"minutes": 10, "planned_steps": 850, "full_steps": 2106}
    (tmp_path / "train_config.json").write_text(json.dumps({"time_budget": 10, "time_budget_plan": plan}))
    assert recorded_plan(config) == plan


# ------------------------------------------------------------------------------------------ run folder and state


def test_a_second_run_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.json\): pass --resume"):
        prepare_output_dir(TrainConfig(output_dir=str(tmp_path)), accelerator=None)


def test_resume_needs_a_complete_checkpoint_and_the_same_options(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path), resume=True)
    with pytest.raises(ConfigError, match="no complete checkpoint in"):
        prepare_output_dir(config, accelerator=None)
    checkpoint = tmp_path / "checkpoints" / "step-00000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 4}))
    saved = {**TrainConfig().__dict__, "lr": 1e-4, "log_every": 7}  # log_every may change on resume, lr may not
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"--resume with different options \(--lr 0.0001 -> 5e-05\)"):
        prepare_output_dir(config, accelerator=None)
    assert prepare_output_dir(TrainConfig(output_dir=str(tmp_path), resume=True, lr=1e-4), None) == checkpoint


def test_the_checkpointed_state_keeps_its_format(tmp_path: Path) -> None:
    """trainer_state.json holds exactly these keys: older checkpoints must still resume."""
    saved = {"step": 7, "epoch": 1, "batches_in_epoch": 2, "best_accuracy": 0.5, "best_step": 4}
    saved |= {"evals_without_improvement": 1, "samples": 224, "tokens": 3000, "padded_tokens": 4000}
    saved |= {"train_seconds": 1.5}
    assert TrainState.from_checkpoint(saved, tmp_path) == TrainState(**saved)
    assert list(TrainState().__dict__) == list(saved)
    with pytest.raises(ConfigError, match="unknown trainer state \\(global_step\\)"):
        TrainState.from_checkpoint({**saved, "global_step": 7}, tmp_path)


def test_launching_no_processes_is_refused() -> None:
    with pytest.raises(ConfigError, match="--num-processes must be a positive integer, got 0"):
        launch_processes(0, [])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin one")
def test_launched_processes_share_the_cpus_this_process_may_use() -> None:
    """`taskset -c 0` on a bigger machine: one usable CPU, so one OpenMP thread, not the machine's cores."""
    probe = "from sst2dist.train.launch import process_env; print(process_env(1, cuda=False)['OMP_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stdout + done.stderr[-2000:]


# ------------------------------------------------------------------------------------------ batching


def test_length_grouped_batches_cover_every_row_once_with_little_padding() -> None:
    import random

    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=3, group_batches=10)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 63
    assert sorted(i for batch in epoch0 for i in batch) == list(range(1000))
    assert sum(len(batch) < 16 for batch in epoch0) == 1

    def padded_tokens(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    plain = LengthGroupedBatchSampler(lengths, batch_size=16, seed=3, group_batches=1)
    assert padded_tokens(epoch0) < 0.75 * padded_tokens(list(plain))

    assert list(sampler) == epoch0  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != epoch0


def test_grouped_batches_shard_across_processes_without_loss() -> None:
    from accelerate.data_loader import BatchSamplerShard

    sampler = LengthGroupedBatchSampler([5 + i % 17 for i in range(203)], batch_size=8, seed=0)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=i)) for i in range(2)]
    assert len(shards[0]) == len(shards[1])
    seen = [i for shard in shards for batch in shard for i in batch]
    assert set(seen) == set(range(203))


def test_collator_pads_to_the_longest_member() -> None:
    rows = [
        {"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": 1},
        {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": 0},
    ]
    batch = make_collator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert make_collator(pad_token_id=0, pad_to_multiple_of=8)(rows)["input_ids"].shape == (2, 8)


# ------------------------------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_accelerate_launch_trains_and_writes_a_pipeline_ready_model(
    sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    options = quick_options(sst2_dir, tiny_model_dir, out)
    options += ["--max-train-samples", "96", "--max-eval-samples", "48", "--batch-size", "16", "--epochs", "2"]
    options += ["--eval-every", "4", "--save-every", "4", "--keep-checkpoints", "2", "--report-to", "tensorboard"]
    launch = [str(BIN / "accelerate"), "launch", "--config_file", "accelerate_config.yaml", "-m", "sst2dist.train"]
    result = run([*launch, *options])
    assert result.returncode == 0, result.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["epochs"] == 2.0
    assert metrics["eval_samples"] == 48 and metrics["train_samples_seen"] == 192
    assert 0 <= metrics["best_accuracy"] <= 1 and metrics["samples_per_second"] > 0
    assert metrics["versions"]["accelerate"] and metrics["num_processes"] == 1
    config = json.loads((out / "train_config.json").read_text())
    assert config["model"] == str(tiny_model_dir) and config["total_steps"] == 12
    evals = [r for r in read_log(out) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert any("loss" in r for r in read_log(out))
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-00000008", "step-00000012"]
    assert list((out / "sst2dist").glob("events.out.tfevents.*"))  # tensorboard

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out / "model"), device="cpu")
    predictions = classify(["a gorgeous, witty film", "dull and lifeless"])
    assert {p["label"] for p in predictions} <= {"negative", "positive"}

    again = run(train_command(*options))  # the same folder again: refused, nothing touched
    assert again.returncode == 1 and "already holds a run" in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_early_stopping_ends_the_run_after_patience_evaluations(
    sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from accelerate.state import AcceleratorState, GradientState

    out = tmp_path / "run"
    options = quick_options(sst2_dir, tiny_model_dir, out)
    options += ["--max-train-samples", "64", "--max-eval-samples", "32", "--batch-size", "8", "--max-steps", "8"]
    options += ["--lr", "1e-12", "--warmup-ratio", "0", "--eval-every", "1", "--early-stopping-patience", "2"]
    try:
        assert main([*options, "--mixed-precision", "no"]) == 0  # in-process: quicker than a launch
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    metrics = json.loads((out / "metrics.json").read_text())
    # lr ~ 0: the accuracy never improves on the first evaluation, so the third one stops the run.
    assert (metrics["steps"], metrics["stopped_early"], metrics["best_step"]) == (3, True, 1)
    assert [r["step"] for r in read_log(out) if "eval_accuracy" in r] == [1, 2, 3]


@pytest.mark.slow
def test_resume_mid_epoch_gives_the_same_weights_as_a_straight_run(
    sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """With --time-budget too: the straight run measures, the resumed one reuses its plan, and measuring changes
    nothing (the same weights as a run without a budget)."""
    from safetensors.torch import load_file

    def options(out: Path) -> list[str]:
        extra = ["--max-train-samples", "160", "--max-eval-samples", "32", "--batch-size", "32", "--epochs", "3"]
        extra += ["--eval-every", "4", "--save-every", "7", "--keep-checkpoints", "5", "--lr", "1e-3"]
        return quick_options(sst2_dir, tiny_model_dir, out) + extra  # 5 batches/epoch: step 7 is mid-epoch

    straight, resumed, plain = tmp_path / "straight", tmp_path / "resumed", tmp_path / "plain"
    result = run(train_command(*options(straight), "--time-budget", "30"), timeout=600)  # ample: all 15 steps fit
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((straight / "metrics.json").read_text())["time_budget_plan"]
    assert plan["planned_steps"] == plan["full_steps"] == 15 and "samples/s measured on" in result.stdout
    # An interruption right after the step-7 checkpoint: a fresh process only has that checkpoint.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step-00000007", resumed / "checkpoints" / "step-00000007")
    shutil.copy(straight / "train_config.json", resumed / "train_config.json")
    result = run(train_command(*options(resumed), "--time-budget", "30", "--resume"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing the recorded plan" in result.stdout and "samples/s measured on" not in result.stdout
    result = run(train_command(*options(plain)), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("step-00000007") and metrics["time_budget_plan"] == plan
    final_a = load_file(straight / "checkpoints" / "step-00000015" / "model.safetensors")
    final_b = load_file(resumed / "checkpoints" / "step-00000015" / "model.safetensors")
    final_c = load_file(plain / "checkpoints" / "step-00000015" / "model.safetensors")
    initial = load_file(straight / "checkpoints" / "step-00000007" / "model.safetensors")
    assert final_a.keys() == final_b.keys() == final_c.keys()
    assert all((final_a[k] == final_b[k]).all() and (final_a[k] == final_c[k]).all() for k in final_a)
    assert any((final_a[k] != initial[k]).any() for k in final_a)  # it did train after the checkpoint


@pytest.mark.slow
def test_a_time_budget_plans_the_steps_from_the_measured_speed(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A real run: 600,000 steps asked for, more than any machine fits in the budget; the plan is recorded, the run
    does exactly the planned steps with the schedule annealed to 0 at its end, and --resume keeps to the plan."""
    out = tmp_path / "run"
    options = quick_options(sst2_sample_dir, tiny_model_dir, out) + ["--log-every", "1", "--mixed-precision", "no"]
    options += ["--max-train-samples", "48", "--batch-size", "16", "--epochs", "200000"]  # 3 steps/epoch: 600,000
    options += ["--eval-every", "0", "--save-every", "0"]
    budget = 0.75
    result = run(train_command(*options, "--time-budget", budget), timeout=600)
    if result.returncode == 1 and "is too short" in result.stderr:  # a machine this loaded: take its own advice
        budget = 2 * float(re.search(r"give --time-budget ([0-9.]+) or more", result.stderr)[1])
        result = run(train_command(*options, "--time-budget", budget), timeout=600 + int(budget * 60))
    assert result.returncode == 0, result.stderr[-3000:]
    options += ["--time-budget", str(budget)]

    metrics = json.loads((out / "metrics.json").read_text())
    plan = metrics["time_budget_plan"]
    assert plan == json.loads((out / "train_config.json").read_text())["time_budget_plan"]
    assert (plan["minutes"], plan["full_steps"], plan["cpu_kind"]) == (budget, 600_000, cpu_kind())
    assert MIN_STEPS <= metrics["steps"] == plan["planned_steps"] < plan["full_steps"]
    assert plan["measured_samples_per_second"] > 0 and plan["estimated_minutes"] <= budget * 0.9
    assert plan["planned_epochs"] == round(plan["planned_steps"] / 3, 3)
    line = (
        f"time budget {budget:g} min: {plan['measured_samples_per_second']:,.0f} samples/s measured on {cpu_kind()} -> "
    )
    assert line + f"{plan['planned_steps']:,} of 600,000 steps" in result.stdout
    log = read_log(out)
    assert log[0]["event"] == "time_budget" and log[0]["planned_steps"] == plan["planned_steps"]
    steps = [r for r in log if "lr" in r]
    assert steps[-1]["step"] == plan["planned_steps"] and steps[-1]["lr"] == 0.0  # the short run annealed
    assert max(r["lr"] for r in steps) == pytest.approx(5e-5, rel=0.05)

    # --resume reads the plan back instead of measuring again: changed by hand, the resumed run follows it.
    config = json.loads((out / "train_config.json").read_text())
    config["time_budget_plan"]["planned_steps"] += 3
    (out / "train_config.json").write_text(json.dumps(config))
    result = run(train_command(*options, "--resume"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "samples/s measured on" not in result.stdout
    assert f"reusing the recorded plan, {plan['planned_steps'] + 3:,} of 600,000 steps" in result.stdout
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["steps"] == plan["planned_steps"] + 3 and resumed["time_budget_plan"] == config["time_budget_plan"]
    assert [r["event"] for r in read_log(out) if r.get("event") == "time_budget"] == ["time_budget"]


@pytest.mark.slow
def test_a_budget_too_short_to_train_is_refused_and_leaves_no_run(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from accelerate.state import AcceleratorState, GradientState

    out = tmp_path / "run"
    options = quick_options(sst2_sample_dir, tiny_model_dir, out) + ["--time-budget", "0.001"]
    try:
        assert main([*options, "--mixed-precision", "no", "--max-train-samples", "32"]) == 1
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    error = capsys.readouterr().err
    assert "--time-budget 0.001 min is too short" in error and "so give --time-budget" in error
    assert not [name for name in RUN_FILES if (out / name).exists()]  # the next try needs no --overwrite


@pytest.mark.slow
def test_nan_loss_stops_every_process_at_the_same_step(sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    options = quick_options(sst2_dir, tiny_model_dir, out)
    options += ["--max-train-samples", "128", "--max-eval-samples", "16", "--batch-size", "16"]
    options += ["--lr", "1e6", "--save-every", "1", "--max-steps", "30"]  # an absurd lr: the loss explodes
    result = run([str(BIN / "sst2dist"), "train", "--num-processes", "2", *options])
    assert result.returncode == 1
    assert "not finite" in result.stderr and "failed in one of the 2 processes" in result.stderr

    stops = [r for r in read_log(out) if r.get("event") == "non_finite_loss"]
    assert len(stops) == 1
    bad_step = stops[0]["step"]
    assert f"at step {bad_step}" in result.stderr
    saved = [int(p.name.removeprefix("step-")) for p in (out / "checkpoints").glob("step-*")]
    assert saved and max(saved) == bad_step - 1
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


@pytest.mark.slow
def test_two_processes_and_one_evaluate_a_checkpoint_identically(sst2_dir: Path, tmp_path: Path) -> None:
    """All 872 validation rows, each counted once, whatever the number of processes."""
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"eval{processes}"
        options = ["--data", sst2_dir, "--output-dir", out, "--eval-only", "--mixed-precision", "no"]
        options += ["--eval-batch-size", "100"]  # 9 batches: uneven shards that Accelerate pads with repeats
        result = run([str(BIN / "sst2dist"), "train", "--num-processes", str(processes), *map(str, options)])
        assert result.returncode == 0, result.stderr[-3000:]
        results[processes] = json.loads((out / "eval_metrics.json").read_text())
    assert results[2]["num_processes"] == 2
    assert results[1]["eval_samples"] == results[2]["eval_samples"] == 872
    assert results[1]["eval_accuracy"] == results[2]["eval_accuracy"]
    # The (random, seeded) head predicts both classes: a constant answer would hide mis-gathered samples.
    assert round(results[1]["eval_accuracy"] * 872) not in (428, 444)


@pytest.mark.slow
def test_training_steps_never_read_the_device_between_logs(
    sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every host read of a tensor (.item(), .tolist(), .cpu(), .numpy(), bool()) is counted: a run of 9 steps
    makes exactly as many as a run of 3, so no step waits for the device (the loss and the NaN check stay there
    until a log, evaluation or checkpoint reads them). Reads inside transformers are the model's own (BERT's SDPA
    path checks `torch.all(mask == 1)` once per forward) and are not counted."""
    import sys

    import torch
    from accelerate.state import AcceleratorState, GradientState

    reads = {"count": 0}
    for name in ("item", "tolist", "cpu", "numpy", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, _original=original, **kwargs: object) -> object:
            reads["count"] += "/transformers/" not in sys._getframe(1).f_code.co_filename
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = {}
    for steps in (3, 9):
        options = quick_options(sst2_dir, tiny_model_dir, tmp_path / f"run{steps}")
        options += ["--max-train-samples", "320", "--max-eval-samples", "16", "--batch-size", "16"]
        options += ["--max-steps", str(steps), "--log-every", "1000", "--eval-every", "0", "--save-every", "0"]
        reads["count"] = 0
        try:
            assert main([*options, "--mixed-precision", "no"]) == 0
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        counts[steps] = reads["count"]
    assert counts[3] == counts[9] > 0


def test_a_launch_that_accelerate_does_not_join_is_refused(tmp_path: Path) -> None:
    """torchrun said 2 processes but nothing set up the process group: each would train alone, so it stops."""
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0"}
    command = train_command("--eval-only", "--output-dir", tmp_path / "run", "--mixed-precision", "no")
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1 and "launched as 2 processes but Accelerate runs 1" in result.stderr
