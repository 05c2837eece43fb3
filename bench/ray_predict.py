"""Sentences/s of `sst2dist predict-ray` with 1 and 2 actors against plain `sst2dist predict` on the same CPU.

The same SST-2 training sentences (a JSONL file) go through: plain `predict` with onnxruntime at 1 thread and at
all `--num-cpus` threads, then `predict-ray` on one local Ray (`--num-cpus` CPUs, started once, its start-up timed
apart) with 1, then 2, ... actors of one thread each. Every run is end to end (read, classify, write the output
file) and, for Ray, includes starting the actors and loading the bundle in each; best of `--repeat`. The labels
of every run must equal plain predict's. Scaling = sentences/s with N actors / (N x sentences/s with 1 actor).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ray_predict.py --bundle export/minilm --data ../shared/data/sst2

Writes bench/results/ray_predict/ray_predict.json and .md (or --output DIR). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sst2dist.environment import cpu_info, usable_cpus


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle folder from `sst2dist export-onnx`")
    parser.add_argument("--data", required=True, help="SST-2 folder (its training sentences are classified)")
    parser.add_argument("--rows", type=int, default=20000, help="sentences per run")
    parser.add_argument("--variant", default=None, help="bundle variant (default: predict's choice on this CPU)")
    parser.add_argument("--num-cpus", type=int, default=usable_cpus(), help="CPUs of the local Ray; most actors")
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting; the fastest counts")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "ray_predict")
    return parser.parse_args()


def best_of(repeat: int, run: Callable[[], None]) -> float:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def labels_of(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=["label"]).column("label").to_pylist()
    return [json.loads(line)["label"] for line in path.read_text(encoding="utf-8").splitlines()]


def measure(args: argparse.Namespace, source: Path, work: Path) -> dict:
    import ray
    from ray.data import DataContext

    from sst2dist.predict.ray_batch import run_predict_ray
    from sst2dist.predict.run import run_predict
    from sst2dist.runtime import load_classifier

    rows, runs = args.rows, []
    from sst2dist.predict.options import PredictOptions
    from sst2dist.variant_choice import workload_for

    workload = workload_for(PredictOptions.batch_size)  # predict's and predict-ray's rule at their batch size
    variant = args.variant or load_classifier(args.bundle, threads=1, workload=workload).variant  # one for all runs
    reference = work / "plain.jsonl"
    for threads in sorted({1, args.num_cpus}):
        classifier = load_classifier(args.bundle, variant, threads)
        seconds = best_of(
            args.repeat, lambda c=classifier: run_predict(c, input_path=str(source), output=str(reference))
        )
        runs.append({"engine": "predict", "threads": threads, "seconds": seconds, "sentences_per_s": rows / seconds})
    expected = labels_of(reference)

    start = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    DataContext.get_current().enable_progress_bars = False
    try:
        for actors in range(1, args.num_cpus + 1):
            out = work / f"ray-{actors}.parquet"

            def run(actors: int = actors, out: Path = out) -> None:
                run_predict_ray(args.bundle, str(source), str(out), variant=variant, actors=actors)

            seconds = best_of(args.repeat, run)
            if labels_of(out) != expected:
                raise SystemExit(f"predict-ray with {actors} actor(s) gave other labels than plain predict")
            runs.append({"engine": "predict-ray", "actors": actors, "threads": 1, "seconds": seconds})
            runs[-1]["sentences_per_s"] = rows / seconds
    finally:
        ray.shutdown()
    one_actor = next(r["sentences_per_s"] for r in runs if r.get("actors") == 1)
    for run in runs:
        if run["engine"] == "predict-ray":
            run["scaling"] = run["sentences_per_s"] / (run["actors"] * one_actor)
    return {"rows": rows, "variant": variant, "ray_start_s": ray_start, "runs": runs}


def markdown(results: dict) -> str:
    cpu = results["cpu"]
    lines = [
        "# predict-ray against plain predict",
        "",
        f"CPU: {cpu['model']} (`{cpu['kind']}`), {cpu['usable_cpus']} usable CPUs. Bundle `{results['bundle']}`, "
        f"variant `{results['variant']}`, {results['rows']} SST-2 training sentences, end to end (read, classify, "
        f"write), best of {results['repeat']}. Local Ray start-up: {results['ray_start_s']:.1f} s (not counted).",
        "",
        "| engine | actors | threads each | seconds | sentences/s | scaling vs 1 actor |",
        "|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        scaling = f"{100 * run['scaling']:.0f} %" if "scaling" in run else ""
        lines.append(
            f"| {run['engine']} | {run.get('actors', '')} | {run['threads']} | {run['seconds']:.2f} | "
            f"{run['sentences_per_s']:.0f} | {scaling} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    from sst2dist.data import load_sst2

    sentences = list(load_sst2(args.data)["train"]["sentence"][: args.rows])
    args.rows = len(sentences)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "sentences.jsonl"
        source.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences), encoding="utf-8")
        results = measure(args, source, Path(folder))
    results |= {"bundle": str(args.bundle), "repeat": args.repeat, "cpu": cpu_info()}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "ray_predict.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (args.output / "ray_predict.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
