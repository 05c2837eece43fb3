"""Teacher scoring speed: rows/s of PyTorch (bf16 autocast where the CPU has bf16, and fp32) against onnxruntime
(the teacher bundle's variants, int8 and fp32 by default) on the same N training sentences, each in batches of
similar length, the way `sst2dist augment --scorer torch|onnx` scores them.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python bench/teacher_scoring.py --model runs/teacher/model \
        --bundle export/teacher --data ../shared/data/sst2 --rows 4096

Writes bench/results/<cpu-kind>/teacher_scoring.json and .md (or --output DIR): per engine the load time, the
scoring time and rows/s, and how its logits compare with PyTorch fp32 on the same rows (label agreement, largest
|Δlogit|). Run it on a quiet machine: anything else on the CPU slows one engine more than another.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sst2dist.atomic import atomic_open, write_json_atomic
from sst2dist.data import load_sst2
from sst2dist.distill.scoring import OnnxScorer, Scorer, TorchScorer, score_sorted
from sst2dist.environment import cpu_info, supports_bf16


def sample_sentences(data: str, rows: int, seed: int) -> list[str]:
    sentences = list(load_sst2(data)["train"]["sentence"])
    return random.Random(seed).sample(sentences, min(rows, len(sentences)))


def engines(args: argparse.Namespace) -> dict[str, Callable[[], Scorer]]:
    """Name -> a function that loads that scorer; PyTorch fp32 first (the reference)."""
    made = {}
    if args.model:
        made["torch-fp32"] = lambda: TorchScorer(args.model, args.max_length, bf16=False, batch_size=args.torch_batch)
        if supports_bf16():
            made["torch-bf16"] = lambda: TorchScorer(
                args.model, args.max_length, bf16=True, batch_size=args.torch_batch
            )
    for variant in args.variants.split(",") if args.bundle else []:
        made[f"onnx-{variant}"] = lambda v=variant: OnnxScorer(
            args.bundle, args.max_length, variant=v, batch_size=args.onnx_batch, threads=args.threads
        )
    return made


def measure(load: Callable[[], Scorer], sentences: list[str], warmup: int) -> tuple[dict, np.ndarray]:
    started = time.perf_counter()
    scorer = load()
    loaded = time.perf_counter()
    score_sorted(scorer, sentences[:warmup])
    begun = time.perf_counter()
    logits = score_sorted(scorer, sentences)
    seconds = time.perf_counter() - begun
    result = {
        "engine": scorer.name,
        "load_seconds": round(loaded - started, 2),
        "seconds": round(seconds, 3),
        "rows_per_second": round(len(sentences) / seconds, 1),
    }
    return result, logits


def compare(result: dict, logits: np.ndarray, reference: np.ndarray | None) -> dict:
    if reference is None:
        return result
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    return {**result, "label_agreement": round(agreement, 5), "max_abs_diff": float(np.abs(logits - reference).max())}


def markdown(results: dict) -> str:
    cpu = results["cpu"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "no AVX2"
    lines = [
        "# Teacher scoring: PyTorch against onnxruntime",
        "",
        f"CPU: {cpu['model']} [{cpu['kind']}] ({flags}), {cpu.get('logical_cpus', '?')} logical CPUs; "
        f"{results['threads']} threads. {results['rows']} training sentences from `{results['data']}`, "
        f"max length {results['max_length']}, batches of similar length. Command: `{results['command']}`.",
        "",
        "| engine | rows/s | scoring s | load s | label agreement with torch-fp32 | max \\|Δlogit\\| |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in results["cases"]:
        agreement = f"{100 * case['label_agreement']:.2f} %" if "label_agreement" in case else "(reference)"
        diff = f"{case['max_abs_diff']:.4f}" if "max_abs_diff" in case else "–"
        cells = [
            case["engine"],
            f"{case['rows_per_second']:.1f}",
            f"{case['seconds']:.2f}",
            f"{case['load_seconds']:.1f}",
        ]
        lines.append("| " + " | ".join([*cells, agreement, diff]) + " |")
    fastest = max(results["cases"], key=lambda case: case["rows_per_second"])
    lines += ["", f"Fastest here: **{fastest['engine']}**, {fastest['rows_per_second']:.1f} rows/s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="the teacher's model folder (PyTorch engines)")
    parser.add_argument("--bundle", type=Path, help="the teacher's bundle (onnxruntime engines)")
    parser.add_argument("--data", default="../shared/data/sst2")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--variants", default="int8,fp32", help="bundle variants to time, comma-separated")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's and onnxruntime's own")
    parser.add_argument("--torch-batch", type=int, default=128)
    parser.add_argument("--onnx-batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=64, help="rows scored once before timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not (args.model or args.bundle):
        parser.error("pass --model (a teacher model folder), --bundle (its bundle), or both")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sentences = sample_sentences(args.data, args.rows, args.seed)
    cases, reference = [], None
    for name, load in engines(args).items():
        result, logits = measure(load, sentences, args.warmup)
        cases.append(compare(result, logits, reference))
        reference = logits if name == "torch-fp32" else reference
        print(cases[-1], flush=True)
    cpu = cpu_info()
    results = {
        "cpu": cpu,
        "data": args.data,
        "rows": len(sentences),
        "max_length": args.max_length,
        "threads": args.threads or "default",
        "command": " ".join(["python bench/teacher_scoring.py", *sys.argv[1:]]),
        "cases": cases,
    }
    output = args.output or Path("bench/results") / cpu["kind"]
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "teacher_scoring.json", results)
    with atomic_open(output / "teacher_scoring.md") as handle:
        handle.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
