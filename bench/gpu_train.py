"""GPU training benchmark: `sst2dist.train` with bf16 on one GPU.

1. The default recipe (2 epochs, batch 64, lr 5e-5), one seed after another, each run alone on the GPU under
   `accelerate launch --mixed_precision bf16`: samples/s, tokens/s, epoch time, accuracy.
2. `--sweep`: recipes toward the 90.5 % target, all seeds side by side on the same GPU (one process each).
   They share the GPU, so only their accuracies are reported, not their speeds.

    python bench/gpu_train.py --data ../shared/data/sst2 --output bench/results/gpu_train --sweep

Writes OUTPUT/gpu_train.json and OUTPUT/gpu_train.md. `--smoke` shrinks every run to a few steps (checks the
script on a CPU). Stops starting new work, and ends running sweeps, at `--deadline` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_RECIPE: list[str] = []  # train.py's own defaults
SWEEP: dict[str, list[str]] = {
    "b32-lr3e-5-e3": ["--batch-size", "32", "--lr", "3e-5", "--epochs", "3", "--warmup-ratio", "0.1"],
    "b32-lr2e-5-e4": ["--batch-size", "32", "--lr", "2e-5", "--epochs", "4", "--warmup-ratio", "0.1"],
    "b16-lr2e-5-e3": ["--batch-size", "16", "--lr", "2e-5", "--epochs", "3", "--warmup-ratio", "0.1"],
}
SMOKE = ["--max-steps", "6", "--max-train-samples", "400", "--max-eval-samples", "64", "--eval-every", "3"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SST-2 folder (train.tsv, dev.tsv) or hub id")
    parser.add_argument("--model", default="packaged:all-MiniLM-L6-v2", help="base model (train.py --model)")
    parser.add_argument("--output", type=Path, required=True, help="where gpu_train.json/.md go")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/gpu"), help="run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sweep", action="store_true", help="also run the recipes of SWEEP side by side")
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds from start to wrap up by")
    parser.add_argument("--smoke", action="store_true", help="a few steps per run (checks the script)")
    return parser.parse_args()


def train_command(args: argparse.Namespace, run_dir: Path, seed: int, recipe: list[str]) -> list[str]:
    options = ["--data", args.data, "--model", args.model, "--output-dir", str(run_dir), "--seed", str(seed)]
    options += ["--overwrite", "--save-every", "0", *recipe, *(SMOKE if args.smoke else [])]
    return [sys.executable, "-m", "sst2dist.train", *options]


def read_run(run_dir: Path, wall: float | None = None) -> dict:
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        return {"run": run_dir.name, "completed": False}
    metrics = json.loads(metrics_file.read_text())
    keep = ("best_accuracy", "best_step", "final_accuracy", "steps", "epochs", "samples_per_second")
    keep += ("tokens_per_second", "train_seconds", "mixed_precision", "num_processes")
    result = {"run": run_dir.name, "completed": True, **{k: metrics[k] for k in keep}}
    result["epoch_seconds"] = round(metrics["train_seconds"] / metrics["epochs"], 2)
    if wall is not None:
        result["launch_wall_seconds"] = round(wall, 2)
    return result


def run_default(args: argparse.Namespace, started: float) -> list[dict]:
    """Each seed alone on the GPU, through `accelerate launch` as a user would run it."""
    results = []
    for seed in args.seeds:
        if time.perf_counter() - started > args.deadline * 0.6:
            print(f"deadline near: seed {seed} of the default recipe not run", flush=True)
            break
        run_dir = args.runs_dir / f"default-s{seed}"
        command = train_command(args, run_dir, seed, DEFAULT_RECIPE)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
        launch += ["--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", *command[2:]]
        tick = time.perf_counter()
        subprocess.run(launch, check=True)
        results.append(read_run(run_dir, time.perf_counter() - tick))
        print(json.dumps(results[-1]), flush=True)
    return results


def run_sweep(args: argparse.Namespace, started: float) -> list[dict]:
    """Every recipe x seed at once, one process each on the same GPU; killed at the deadline."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running = []
    for name, recipe in SWEEP.items():
        for seed in args.seeds:
            run_dir = args.runs_dir / f"{name}-s{seed}"
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = (args.runs_dir / f"{name}-s{seed}.log").open("w")
            command = train_command(args, run_dir, seed, [*recipe, "--eval-every", "200"])
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((name, seed, run_dir, process))
    while any(p.poll() is None for *_, p in running) and time.perf_counter() - started < args.deadline:
        time.sleep(2)
    for *_, process in running:
        if process.poll() is None:
            process.kill()
    return [{"recipe": name, "seed": seed, **read_run(run_dir)} for name, seed, run_dir, _ in running]


def mean_and_std(values: list[float]) -> dict:
    mean = statistics.mean(values) if values else None
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": spread, "n": len(values)}


def gpu_info() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count()}
    return info


def write_report(output: Path, report: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "gpu_train.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "gpu_train.md").write_text(render_markdown(report))


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# GPU training benchmark: `sst2dist.train`, bf16",
        "",
        f"{env.get('gpu', 'no GPU')}, torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}.",
        f"Command: `{report['command']}`",
        "",
        "## Default recipe, each seed alone on the GPU (`accelerate launch --mixed_precision bf16`)",
        "",
        "| run | best acc | final acc | samples/s | tokens/s | epoch s | train s | launch wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["default"]:
        lines.append(
            f"| {run['run']} | {run['best_accuracy']:.4f} | {run['final_accuracy']:.4f} | "
            f"{run['samples_per_second']:.0f} | {run['tokens_per_second']:.0f} | {run['epoch_seconds']:.1f} | "
            f"{run['train_seconds']:.1f} | {run['launch_wall_seconds']:.1f} |"
        )
    if report.get("sweep"):
        lines += ["", "## Recipes toward 90.5 %, all runs side by side on the same GPU (accuracy only)", ""]
        lines += ["| recipe | seeds done | best acc mean ± std | final acc mean ± std | options |"]
        lines += ["|---|---:|---:|---:|---|"]
        for name, row in report["sweep_summary"].items():
            best, final = row["best_accuracy"], row["final_accuracy"]
            lines.append(f"| {name} | {best['n']} | {mean_std(best)} | {mean_std(final)} | `{' '.join(SWEEP[name])}` |")
    if report.get("notes"):
        lines += ["", "## Notes", "", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def mean_std(summary: dict) -> str:
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}" if summary["n"] else "—"


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    report: dict = {"command": " ".join(["python", *sys.argv]), "environment": gpu_info(), "smoke": args.smoke}
    report["default"] = run_default(args, started)
    report["default_summary"] = {
        key: mean_and_std([r[key] for r in report["default"] if r["completed"]])
        for key in ("best_accuracy", "final_accuracy", "samples_per_second", "epoch_seconds")
    }
    write_report(args.output, report)
    if args.sweep:
        report["sweep"] = run_sweep(args, started)
        report["sweep_summary"] = {
            name: {
                key: mean_and_std([r[key] for r in report["sweep"] if r["recipe"] == name and r["completed"]])
                for key in ("best_accuracy", "final_accuracy")
            }
            for name in SWEEP
        }
        write_report(args.output, report)
    print(render_markdown(report), flush=True)


if __name__ == "__main__":
    main()
