"""onnxruntime against OpenVINO on one bundle: every (engine, variant) side by side on the validation sentences.

Per variant: batch-1 model latency (p50, p90) and length-sorted batch-32 throughput (sentences/s), each also as a
ratio to onnxruntime fp32, and label agreement with onnxruntime fp32; all variants interleaved block by block, in
one process, at one thread count. Which variant the bundle's recorded timings make the default on this CPU (batch 1
and batches) is reported beside them. The bundle must have been exported with OpenVINO installed
(`sst2dist export-onnx ... --openvino on`) for the OpenVINO rows to appear.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/engines.py --bundle export/minilm --data ../shared/data/sst2

Writes engines.json and engines.md to bench/results/{cpu}/engines/BUNDLE_NAME (or --output DIR), the CPU named.
Run it on a quiet machine: the timings are meaningless while another job shares the cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sst2dist.bench.measure import (
    OrtBackend,
    latency_percentiles,
    measure_latency,
    measure_throughput,
    warm_up,
)
from sst2dist.data import load_validation
from sst2dist.engines import engine_of, unavailable_reason
from sst2dist.environment import cpu_fingerprint, cpu_kind, usable_cpus
from sst2dist.runtime import read_manifest
from sst2dist.variant_choice import LATENCY, THROUGHPUT, describe_cpu, recorded_choice

BASELINE = "fp32"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle folder from `sst2dist export-onnx`")
    parser.add_argument("--data", required=True, help="SST-2 folder with dev.tsv (or a hub id, with `datasets`)")
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="threads per variant (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="sorted-batch throughput batch size")
    parser.add_argument("--sentences", type=int, default=None, help="first N validation sentences (default: all)")
    parser.add_argument("--latency-sentences", type=int, default=None, help="batch-1 sentences (default: all)")
    parser.add_argument("--warmup", type=int, default=16, help="untimed sentences per variant first")
    parser.add_argument("--output", type=Path, default=None, help="results folder")
    return parser.parse_args()


def runnable_variants(manifest: dict) -> tuple[list[str], dict[str, str]]:
    """The bundle's variants this process can run (fp32 first), and why the others are left out."""
    names, left_out = [], {}
    for name in manifest["variants"]:
        why = unavailable_reason(name)
        if why:
            left_out[name] = why
        else:
            names.append(name)
    if BASELINE not in names:
        raise SystemExit(f"{BASELINE} is not runnable in this bundle: export it again with `sst2dist export-onnx`")
    return [BASELINE, *(name for name in names if name != BASELINE)], left_out


def measure(args: argparse.Namespace) -> dict:
    manifest = read_manifest(args.bundle)
    names, left_out = runnable_variants(manifest)
    sentences, _ = load_validation(args.data, args.sentences)
    latency_sentences = sentences[: args.latency_sentences]
    backends = {name: OrtBackend(name, args.bundle, args.threads, variant=name) for name in names}
    warm_up(backends, sentences, args.warmup, [args.batch_size])
    latency = measure_latency(backends, latency_sentences, lambda _: None)
    no_flops = {name: lambda rows, length: 0.0 for name in names}
    throughput = measure_throughput(backends, sentences, args.batch_size, no_flops, lambda _: None, sort=True)
    reference = throughput[BASELINE]["logits"].argmax(-1)
    rows = []
    for name in names:
        model = latency_percentiles(latency[name]["model"])
        sent_s = len(sentences) / throughput[name]["model_seconds"]
        rows.append(
            {
                "variant": name,
                "engine": engine_of(name),
                "precision": manifest["variants"][name].get("precision"),
                "passed_gate": bool(manifest["variants"][name].get("passed")),
                "batch1_model_ms": model,
                f"sorted_bs{args.batch_size}_sent_s": round(sent_s, 1),
                "agreement_vs_fp32": float((throughput[name]["logits"].argmax(-1) == reference).mean()),
            }
        )
    base = rows[0]
    for row in rows:
        row["batch1_speedup_vs_fp32"] = round(base["batch1_model_ms"]["p50"] / row["batch1_model_ms"]["p50"], 3)
        key = f"sorted_bs{args.batch_size}_sent_s"
        row[f"sorted_bs{args.batch_size}_speedup_vs_fp32"] = round(row[key] / base[key], 3)
    return {
        "bundle": str(Path(args.bundle).resolve()),
        "cpu": cpu_fingerprint(),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "sentences": len(sentences),
        "latency_sentences": len(latency_sentences),
        "statistic": "model time only (tokenization excluded); throughput over length-sorted batches",
        "left_out": left_out,
        "default_here": {w: recorded_choice(manifest, args.threads, w) for w in (LATENCY, THROUGHPUT)},
        "rows": rows,
    }


def markdown(results: dict) -> str:
    size = results["batch_size"]
    lines = [
        f"# Engines: {Path(results['bundle']).name}",
        "",
        f"CPU: {describe_cpu(results['cpu'])}; {results['threads']} thread(s); {results['sentences']} validation "
        f"sentences ({results['latency_sentences']} at batch 1); {results['statistic']}.",
        "",
        f"| engine | variant | gate | batch-1 p50 ms | p90 ms | x fp32 | sorted bs{size} sent/s | x fp32 | agreement |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['engine']} | {row['variant']} | {'passed' if row['passed_gate'] else 'FAILED'} "
            f"| {row['batch1_model_ms']['p50']:.3f} | {row['batch1_model_ms']['p90']:.3f} "
            f"| {row['batch1_speedup_vs_fp32']:.2f}x | {row[f'sorted_bs{size}_sent_s']:.1f} "
            f"| {row[f'sorted_bs{size}_speedup_vs_fp32']:.2f}x | {100 * row['agreement_vs_fp32']:.2f} % |"
        )
    lines.append("")
    for workload, choice in results["default_here"].items():
        lines.append(
            f"- default for {workload} (recorded timings): {choice['variant'] or 'chosen at load'}: {choice['detail']}"
        )
    for name, why in results["left_out"].items():
        lines.append(f"- {name} left out: {why}")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    results = measure(args)
    output = args.output or Path(__file__).parent / "results" / cpu_kind() / "engines" / Path(args.bundle).name
    output.mkdir(parents=True, exist_ok=True)
    (output / "engines.json").write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    (output / "engines.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    print(f"wrote {output}/engines.json and engines.md")


if __name__ == "__main__":
    main()
