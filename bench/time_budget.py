"""`make demo`'s training under `--time-budget`: wall time, the plan and dev accuracy, per precision, on this CPU.

Each case is the demo's training command with a budget (default 10 minutes), one after the other, alone:

  auto   the default precision (bf16 where the CPU has AMX/avx512_bf16, else fp32)
  fp32   --mixed-precision no: what a CPU without native bf16 trains in (on this CPU, only a stand-in for one)

    HF_HUB_OFFLINE=1 .venv/bin/python bench/time_budget.py --data ../shared/data/sst2
    HF_HUB_OFFLINE=1 .venv/bin/python bench/time_budget.py --collect runs/budget-auto runs/budget-fp32 \
        --wall-seconds 530 561

Writes bench/results/<cpu-kind>/time_budget.json and .md (or --output DIR). `--collect` only reads run folders
that the same commands wrote (`--wall-seconds`: the launches' wall times, measured outside, e.g. by `time`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sst2dist.atomic import write_json_atomic
from sst2dist.environment import cpu_info

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = {"auto": [], "fp32": ["--mixed-precision", "no"]}


def run_case(name: str, data: str, budget: float, runs: Path) -> dict:
    output = runs / f"budget-{name}"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_config.yaml",
        "-m", "sst2dist.train", "--data", data, "--output-dir", str(output), "--overwrite",
        "--time-budget", str(budget), *CASES[name],
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    return summarize_run(output, time.perf_counter() - started)


def summarize_run(run: Path, wall_seconds: float | None = None) -> dict:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    plan = metrics.get("time_budget_plan") or {}
    return {
        "run": run.name,
        "mixed_precision": metrics["mixed_precision"],
        "wall_seconds": round(wall_seconds, 1) if wall_seconds else None,
        "train_seconds": metrics["train_seconds"],
        "steps": metrics["steps"],
        "epochs": metrics["epochs"],
        "best_accuracy": metrics["best_accuracy"],
        "final_accuracy": metrics["final_accuracy"],
        "samples_per_second": metrics["samples_per_second"],
        "plan": plan,
    }


def markdown(results: dict) -> str:
    cpu = results["cpu"]
    lines = [
        "# Training under `--time-budget`",
        "",
        f"CPU: {cpu['model']} [{cpu['kind']}] ({', '.join(f for f, on in cpu['flags'].items() if on) or 'no AVX2'}), "
        f"{cpu.get('logical_cpus', '?')} logical CPUs. Budget: "
        f"{results['budget_minutes']} min. Command: `{results['command']}`.",
        "",
        "| case | precision | planned / full steps | epochs | measured samples/s | train s | wall s | best dev acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in results["cases"]:
        plan = case["plan"]
        cells = [
            case["run"], case["mixed_precision"], f"{plan.get('planned_steps', '?')} / {plan.get('full_steps', '?')}",
            f"{case['epochs']:.2f}", f"{plan.get('measured_samples_per_second', 0):.0f}",
            f"{case['train_seconds']:.0f}",
            f"{case['wall_seconds']:.0f}" if case["wall_seconds"] else "–", f"{100 * case['best_accuracy']:.2f} %",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/sst2")
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--collect", type=Path, nargs="*", help="summarize these run folders instead of training")
    parser.add_argument(
        "--wall-seconds", type=float, nargs="*", default=[], help="with --collect: each run's wall time"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    cpu = cpu_info()
    if args.collect:
        walls = args.wall_seconds + [None] * (len(args.collect) - len(args.wall_seconds))
        cases = [summarize_run(run, wall) for run, wall in zip(args.collect, walls, strict=True)]
    else:
        cases = [run_case(name, args.data, args.budget, args.runs) for name in CASES]
    results = {
        "cpu": cpu,
        "budget_minutes": args.budget,
        "command": "accelerate launch --config_file accelerate_config.yaml -m sst2dist.train "
        f"--data {args.data} --time-budget {args.budget} [--mixed-precision no]",
        "cases": cases,
    }
    output = args.output or Path("bench/results") / cpu["kind"]
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "time_budget.json", results)
    (output / "time_budget.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
