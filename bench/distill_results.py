"""Collect the teacher's and the students' training results into bench/results/distill/ (JSON + Markdown).

    python bench/distill_results.py --runs runs --output bench/results/distill

Reads `RUNS/teacher/metrics.json` and every `RUNS/students/<model>-s<seed>/metrics.json`, copies each run's
metrics, config and log beside the summary, and reports best dev accuracy per model as mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from sst2dist.atomic import write_json_atomic
from sst2dist.environment import acceleration_flags, cpu_info

RUN_FILES = ("metrics.json", "train_config.json", "log.jsonl")
# What each run name under runs/students stands for (every run: teacher logits, T = 2, batch 64, best dev eval).
RECIPES = {
    "teacher": "all-mpnet-base-v2, 1 epoch, batch 32, lr 2e-5",
    "l6": "MiniLM L6, 2 epochs, alpha 0.2, lr 5e-5",
    "l3": "layers 0,2,4 of MiniLM, 2 epochs, alpha 0.2, lr 5e-5",
    "l3lr": "layers 0,2,4 of MiniLM, 3 epochs, alpha 0.2, lr 1e-4",
    "l6aug": "MiniLM L6, 1 epoch augmented, alpha 0, lr 5e-5",
    "l6aug2ep": "MiniLM L6, 2 epochs augmented, alpha 0, lr 1e-4",
    "l3aug": "layers 0,2,4 of MiniLM, 1 epoch augmented, alpha 0, lr 1e-4",
    "l3aug2ep": "layers 0,2,4 of MiniLM, 2 epochs augmented, alpha 0, lr 2e-4",
    "l3froml6": "layers 0,2,4 of the same seed's l6aug, 1 epoch augmented, alpha 0, lr 1e-4",
    "l3froml6-025": "layers 0,2,5 of l6aug, 1 epoch augmented, alpha 0, lr 1e-4",
    "l3froml6e2": "layers 0,2,4 of the same seed's l6aug, 2 epochs augmented, alpha 0, lr 1e-4",
    "l3froml6-lr5e-5": "layers 0,2,4 of l6aug, 1 epoch augmented, alpha 0, lr 5e-5",
    "l3froml6-lr2e-4": "layers 0,2,4 of l6aug, 1 epoch augmented, alpha 0, lr 2e-4",
}


def collect(runs: Path, output: Path) -> dict:
    found = {"teacher": [runs / "teacher"]} if (runs / "teacher" / "metrics.json").is_file() else {}
    for run in sorted((runs / "students").glob("*-s*")):
        if (run / "metrics.json").is_file():
            found.setdefault(run.name.rsplit("-s", 1)[0], []).append(run)
    models = {}
    for model, model_runs in found.items():
        rows = []
        for run in model_runs:
            metrics = json.loads((run / "metrics.json").read_text())
            config = json.loads((run / "train_config.json").read_text())
            rows.append(
                {
                    "run": run.name,
                    "seed": config["seed"],
                    "best_accuracy": metrics["best_accuracy"],
                    "final_accuracy": metrics["final_accuracy"],
                    "train_seconds": metrics["train_seconds"],
                    "samples_per_second": metrics["samples_per_second"],
                }
            )
            copy_run(run, output / run.name)
        best = [r["best_accuracy"] for r in rows]
        models[model] = {
            "runs": rows,
            "best_accuracy_mean": statistics.mean(best),
            "best_accuracy_std": statistics.stdev(best) if len(best) > 1 else 0.0,
        }
    cpu = cpu_info()
    return {"cpu": {"model": cpu["model"], "kind": cpu["kind"], "flags": acceleration_flags()}, "models": models}


def copy_run(run: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        shutil.copy(run / name, target / name)


def markdown(results: dict) -> str:
    lines = [
        "# Teacher and students: dev accuracy",
        "",
        f"CPU: {results['cpu']['model']} [{results['cpu']['kind']}] ({', '.join(results['cpu']['flags'])}), 2 cores.",
        "",
        "| model | recipe | seeds | best dev accuracy (mean ± std) | per seed | train seconds (mean) | samples/s |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for model, entry in results["models"].items():
        runs = entry["runs"]
        per_seed = ", ".join(f"{r['seed']}: {100 * r['best_accuracy']:.2f}" for r in runs)
        seconds = statistics.mean(r["train_seconds"] for r in runs)
        rate = statistics.mean(r["samples_per_second"] for r in runs)
        mean, std = 100 * entry["best_accuracy_mean"], 100 * entry["best_accuracy_std"]
        cells = [
            model,
            RECIPES.get(model, ""),
            str(len(runs)),
            f"{mean:.2f} ± {std:.2f} %",
            per_seed,
            f"{seconds:,.0f}",
            f"{rate:,.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--output", type=Path, default=Path("bench/results/distill"))
    args = parser.parse_args()
    results = collect(args.runs, args.output)
    write_json_atomic(args.output / "results.json", results)
    (args.output / "results.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
