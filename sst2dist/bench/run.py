"""Benchmark PyTorch against every onnxruntime variant of a bundle, side by side, on the validation sentences of
--data (SST-2 by default).

    results = run_bench(BenchSettings(model="runs/minilm/model", bundle="export/minilm", data="../shared/data/sst2"))

All backends run in one process and one run, interleaved block by block (the backend order rotates every block),
so drift on a shared machine hits them alike. Cold start and peak RSS are measured per backend in a fresh child
process (`python -m sst2dist.bench cold-start SPEC`). Every figure is written to results.json, and also as a
ratio to the baseline of the same run (PyTorch fp32 eager, or the first selected backend without PyTorch).
This module runs the bench and builds its results; `settings` checks what is asked, `measure` times,
`report` renders and writes, `menu` compares several models.

Only the standard library and numpy are imported at module level: ORT-only benches must run without torch.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sst2dist.bench.measure import (
    ALL_BACKENDS,
    PRECISION,
    TORCH_BACKENDS,
    BenchError,
    cold_start,
    cold_start_child,
    flops_counter,
    latency_percentiles,
    measure_latency,
    measure_throughput,
    open_backend,
    warm_up,
)
from sst2dist.bench.settings import BenchSettings, check_settings, parse_int_list
from sst2dist.data import read_validation
from sst2dist.environment import VectorPeak, clock_mhz, cpu_info, package_versions, peak_gops, vector_peaks
from sst2dist.labels import LabelMappingError, check_scorable, predicted_label_ids

# The public names of the bench, wherever they are defined.
__all__ = ["ALL_BACKENDS", "BenchError", "BenchSettings", "parse_int_list", "run_bench"]

BASELINE = "torch-fp32"
PACKAGES = (
    "sst2dist",
    "numpy",
    "onnxruntime",
    "openvino",
    "tokenizers",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
)
SCHEMA_VERSION = 1


# --- the run --------------------------------------------------------------------------------------------------


def run_bench(settings: BenchSettings) -> dict:
    """Measure every backend, write results.json, report.md and chart.png to settings.output; return results."""
    from sst2dist.bench.report import write_outputs

    settings = check_settings(settings)
    sentences, labels, label_set = read_validation(
        settings.data, settings.max_samples, settings.columns, settings.label_order
    )
    check_labels(models_labels(settings), label_set.names)
    settings.latency_samples = min(settings.latency_samples or len(sentences), len(sentences))
    baseline = BASELINE if BASELINE in settings.backends else settings.backends[0]
    if baseline != BASELINE:
        settings.notes.append(f"baseline is {baseline} (the first selected backend): torch-fp32 was not benched")
    load_before = load_average()
    started = time.perf_counter()
    runs, colds, bundle = measure_all(settings, sentences)
    backends = {
        name: backend_results(
            name, {t: runs[t][name] for t in settings.threads}, colds[name], labels, label_set.names, settings
        )
        for name in settings.backends
    }
    add_comparisons(backends, baseline, predictions(runs, settings, label_set.names))
    env = environment(settings.threads, load_before, settings.notes)
    results = {
        **run_header(settings),
        "baseline": baseline,
        "dataset": dataset_summary(settings, sentences, labels, label_set.names),
        "bundle": bundle,
        "environment": env,
        "duration_seconds": time.perf_counter() - started,
        "backends": backends,
    }
    results["peak_estimate"] = peak_estimate(results)
    write_outputs(results, Path(settings.output))
    return results


def models_labels(settings: BenchSettings) -> dict[str, list[str]]:
    """The label names of the bundle and, when a torch backend runs, of --model, by the flag that names each."""
    from sst2dist.runtime import read_manifest

    named = {f"--bundle {settings.bundle}": read_manifest(settings.bundle)["labels"]}
    if settings.model and any(name in TORCH_BACKENDS for name in settings.backends):
        config = json.loads((Path(settings.model) / "config.json").read_text(encoding="utf-8"))
        id2label = config.get("id2label") or {}
        named[f"--model {settings.model}"] = [id2label[str(i)] for i in range(len(id2label))]
    return named


def check_labels(named: dict[str, Sequence[str]], data_labels: Sequence[str]) -> None:
    """Refuse, before timing anything, a model trained on other labels than the data's (bench and menu score by
    label name). Raises BenchError."""
    for model, model_labels in named.items():
        try:
            check_scorable(model_labels, data_labels)
        except LabelMappingError as err:
            raise BenchError(f"{model}: {err}") from err


def run_header(settings) -> dict:
    """What opens every results file: schema, time, command, settings and notes."""
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("progress", "notes")},
        "notes": settings.notes,
    }


def measure_all(settings: BenchSettings, sentences: list[str]) -> tuple[dict[int, dict], dict[str, dict], dict]:
    """Cold starts, then every thread count; returns the raw runs, the cold starts and the bundle's summary."""
    from tqdm import tqdm

    from sst2dist.runtime import read_manifest

    max_length = int(read_manifest(settings.bundle)["max_length"])
    config = json.loads((Path(settings.bundle) / "config.json").read_text(encoding="utf-8"))
    passes = len(settings.batch_sizes) + len(sorted_sizes(settings.batch_sizes))
    per_thread = len(settings.backends) * (settings.latency_samples + len(sentences) * passes)
    units = len(settings.backends) + per_thread * len(settings.threads)
    with tqdm(total=units, unit="sent", file=sys.stderr, disable=not settings.progress, dynamic_ncols=True) as bar:
        longest = sorted(sentences, key=len, reverse=True)[: max(settings.batch_sizes)]
        spec = {"bundle": settings.bundle, "model": settings.model, "max_length": max_length}
        spec |= {"threads": max(settings.threads), "first": sentences[0], "batch": longest}
        colds = {}
        for name in settings.backends:
            bar.set_description(f"cold start {name}")
            colds[name] = cold_start({**spec, "backend": name})
            bar.update(1)
        runs = {}
        for threads in settings.threads:
            bar.set_description(f"{threads} thread{'s' * (threads > 1)}")
            runs[threads] = bench_threads(settings, threads, sentences, max_length, flops_counter(config), bar.update)
    default = serve_default(read_manifest(settings.bundle))
    summary = {"path": settings.bundle, "max_length": max_length, "model_type": config.get("model_type")}
    return runs, colds, {**summary, "default_variant": default}


def serve_default(manifest: dict) -> dict:
    """What `serve` runs here with its defaults (the variant export prints and the card states): chosen for its
    micro-batches at its threads per worker, not for the thread counts this bench measured."""
    from sst2dist.serve.limits import ServeLimits, default_threads, default_workers
    from sst2dist.variant_choice import recorded_choice, workload_for

    threads = default_threads(default_workers())
    return recorded_choice(manifest, threads, workload_for(ServeLimits.max_batch_size))


def sorted_sizes(batch_sizes: Sequence[int]) -> list[int]:
    """Batch sizes worth a length-sorted pass too (at batch 1 sorting changes nothing)."""
    return [size for size in batch_sizes if size > 1]


def bench_threads(
    settings: BenchSettings, threads: int, sentences: list[str], max_length: int, flops, tick
) -> dict[str, dict]:
    """Every measurement at one thread count, every backend interleaved."""
    backends = {
        name: open_backend(name, settings.bundle, settings.model, threads, max_length) for name in settings.backends
    }
    for backend in backends.values():
        backend.set_threads(threads)
    warm_up(backends, sentences, settings.warmup, settings.batch_sizes)
    latency = measure_latency(backends, sentences[: settings.latency_samples], tick)
    counters = dict.fromkeys(backends, flops)
    throughput = {size: measure_throughput(backends, sentences, size, counters, tick) for size in settings.batch_sizes}
    by_length = {
        size: measure_throughput(backends, sentences, size, counters, tick, sort=True)
        for size in sorted_sizes(settings.batch_sizes)
    }
    return {
        name: {
            "labels": backends[name].labels,
            "engine": backends[name].engine,
            "threads_used": backends[name].threads_used(),
            "files": [str(p) for p in backends[name].files],
            "latency_ms": latency[name],
            "throughput": {size: throughput[size][name] for size in settings.batch_sizes},
            "throughput_sorted": {size: by_length[size][name] for size in by_length},
        }
        for name in backends
    }


def predictions(runs: dict[int, dict], settings: BenchSettings, data_labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Labels (the data's ids, by name) from the input-order pass at the most threads and the largest batch."""
    top, widest = runs[max(settings.threads)], max(settings.batch_sizes)
    return {
        name: predicted_label_ids(top[name]["throughput"][widest]["logits"], top[name]["labels"], data_labels)
        for name in top
    }


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment(threads: Sequence[int], load_before: list[float] | None, notes: list[str]) -> dict:
    """The fingerprint of the machine and its load; a note when it was busy before the run."""
    thread_env = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM")
    torch = sys.modules.get("torch")
    env = {
        "cpu": cpu_info(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(PACKAGES),
        "threads": {
            "measured": list(threads),
            "onnxruntime": "intra_op_num_threads = threads, inter_op_num_threads = 1, sequential",
            "openvino": "NUM_STREAMS and INFERENCE_NUM_THREADS from threads (engines.stream_config)",
            "per_backend": "backends.<name>.threads_used: what each engine reports",
            "torch": "torch.set_num_threads(threads)" if torch else None,
            "torch_interop": torch.get_num_interop_threads() if torch else None,
            "env": {name: os.environ.get(name) for name in thread_env},
        },
        "load_average_before": load_before,
        "load_average": load_average(),
    }
    usable = env["cpu"]["usable_cpus"]
    if load_before and load_before[0] > 0.5 * usable:
        notes.append(
            f"the machine was busy before this run (1-min load average {load_before[0]:.1f} on {usable} CPUs): "
            "figures, multi-threaded ones most, are noisy; rerun on a quiet machine"
        )
    return env


# --- results --------------------------------------------------------------------------------------------------


def backend_results(
    name: str, runs: dict[int, dict], cold: dict, labels: np.ndarray, data_labels: Sequence[str], settings
) -> dict:
    """Raw figures and the summary metrics of one backend (accuracy by label name against `data_labels`); ratios
    are added once the baseline is known."""
    figures = runs[max(settings.threads)]
    size = sum(Path(p).stat().st_size for p in figures["files"])
    accuracy_by_batch = {
        str(b): float((predicted_label_ids(t["logits"], figures["labels"], data_labels) == labels).mean())
        for b, t in figures["throughput"].items()
    }
    metrics = {
        "accuracy": accuracy_by_batch[str(max(settings.batch_sizes))],
        "accuracy_by_batch_size": accuracy_by_batch,
        "file_size_mb": size / 1e6,
        "cold_start_seconds": cold["total_seconds"],
        "peak_rss_mb": cold["peak_rss_bytes"] / 1e6,
        "threads": {str(t): thread_metrics(runs[t]) for t in settings.threads},
    }
    raw = {
        "file_size_bytes": size,
        "cold_start": cold,
        "threads": {str(t): thread_raw(runs[t]) for t in settings.threads},
    }
    return {
        "engine": figures["engine"],
        "engine_version": engine_version(figures["engine"]),
        "precision": PRECISION[name],
        "threads_used": {str(t): runs[t]["threads_used"] for t in settings.threads},
        "files": figures["files"],
        "labels": figures["labels"],
        "metrics": metrics,
        "raw": raw,
    }


def engine_version(engine: str) -> str | None:
    """The installed version of the engine's distribution (pytorch is the `torch` distribution)."""
    distribution = {"pytorch": "torch"}.get(engine, engine)
    return package_versions((distribution,))[distribution]


def thread_metrics(run: dict) -> dict:
    metrics = {"latency_ms": {part: latency_percentiles(values) for part, values in run["latency_ms"].items()}}
    for prefix, key in (("", "throughput"), ("sorted_", "throughput_sorted")):
        passes = run[key]
        metrics[f"{prefix}throughput_sentences_per_s"] = {
            str(b): t["sentences"] / t["seconds"] for b, t in passes.items()
        }
        metrics[f"{prefix}model_gflops_per_s"] = {
            str(b): t["flops"] / t["model_seconds"] / 1e9 for b, t in passes.items()
        }
    return metrics


def thread_raw(run: dict) -> dict:
    def without_logits(passes: dict) -> dict:
        return {str(b): {key: value for key, value in t.items() if key != "logits"} for b, t in passes.items()}

    return {
        "latency_ms": {part: [round(v, 4) for v in values] for part, values in run["latency_ms"].items()},
        "throughput": without_logits(run["throughput"]),
        "throughput_sorted": without_logits(run["throughput_sorted"]),
    }


def ratio_tree(values, baseline):
    """The same nested shape as `values`, each number divided by the baseline's number at the same place."""
    if isinstance(values, dict):
        return {k: ratio_tree(v, baseline.get(k) if isinstance(baseline, dict) else None) for k, v in values.items()}
    if isinstance(values, int | float) and isinstance(baseline, int | float) and baseline:
        return values / baseline
    return None


def add_comparisons(backends: dict[str, dict], baseline: str, predictions: dict[str, np.ndarray]) -> None:
    """Agreement and accuracy against the baseline, and every metric as a ratio to the baseline's.

    The accuracy comparison is one-sided: `accuracy_drop_points` is 0 for a backend more accurate than the
    baseline; `accuracy_delta_points` keeps the sign."""
    base = backends[baseline]["metrics"]["accuracy"]
    for name, result in backends.items():
        metrics = result["metrics"]
        result["raw"]["predictions"] = predictions[name].tolist()
        metrics["agreement_with_baseline"] = float((predictions[name] == predictions[baseline]).mean())
        metrics["accuracy_delta_points"] = 100 * (metrics["accuracy"] - base)
        metrics["accuracy_drop_points"] = max(0.0, -metrics["accuracy_delta_points"])
    for result in backends.values():
        result["vs_baseline"] = ratio_tree(result["metrics"], backends[baseline]["metrics"])


def fastest_throughput(backends: dict[str, dict]) -> dict | None:
    """The backend, thread count, batch size and order with the most sentences/s."""
    best = None
    for name, result in backends.items():
        for threads, figures in result["metrics"]["threads"].items():
            for order, prefix in (("input", ""), ("sorted", "sorted_")):
                for batch, speed in figures[f"{prefix}throughput_sentences_per_s"].items():
                    if best is None or speed > best["sentences_per_s"]:
                        gflops = figures[f"{prefix}model_gflops_per_s"][batch]
                        best = {"backend": name, "threads": int(threads), "batch_size": int(batch), "order": order}
                        best |= {"sentences_per_s": speed, "model_gflops_per_s": gflops}
    return best


def peak_estimate(
    results: dict, peaks: list[VectorPeak] | None = None, clock: tuple[float, str] | None = None
) -> dict | None:
    """The share of this CPU's peak that the fastest backend reaches, the peak derived from the detected ISA and
    clock (`vector_peaks`, `clock_mhz`); `unknown` says why there is no share instead of borrowing a peak."""
    best = fastest_throughput(results["backends"])
    if best is None:
        return None
    peaks = vector_peaks() if peaks is None else peaks
    clock = clock_mhz() if clock is None else clock
    precision = PRECISION[best["backend"]]
    used = [p for p in peaks if p.precision == precision]
    estimate = best | {
        "precision": precision,
        "clock_mhz": clock[0] if clock else None,
        "clock_source": clock[1] if clock else None,
        "assumption": ", ".join(f"{p.ops_per_cycle} {p.precision} ops/cycle/core ({p.isa})" for p in used) or None,
        "flops_counted": "2 x encoder weights x padded tokens + attention matmuls, model time only",
        "peaks": {},
        "unknown": None,
    }
    if not clock:
        estimate["unknown"] = "the CPU clock is unknown (no cpufreq max, no cpu MHz in /proc/cpuinfo)"
    elif not used:
        estimate["unknown"] = f"no known {precision} peak for this CPU's instruction set"
    else:
        for label, peak in peak_gops(precision, best["threads"], used, clock[0]).items():
            estimate["peaks"][label] = {"peak_gflops_per_s": peak, "fraction": best["model_gflops_per_s"] / peak}
    return estimate


def dataset_summary(
    settings: BenchSettings, sentences: list[str], labels: np.ndarray, data_labels: Sequence[str]
) -> dict:
    """What was read; `labels` are ids into `label_names`."""
    return {
        "data": settings.data,
        "split": "validation",
        "sentences": len(sentences),
        "latency_sentences": settings.latency_samples,
        "label_names": list(data_labels),
        "label_counts": {name: int((labels == i).sum()) for i, name in enumerate(data_labels)},
        "labels": labels.tolist(),
        "mean_characters": float(np.mean([len(s) for s in sentences])),
    }


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "cold-start":
        print(json.dumps(cold_start_child(json.loads(argv[1]))))
        return
    raise SystemExit("usage: python -m sst2dist.bench cold-start SPEC_JSON (internal; use `sst2dist bench`)")


if __name__ == "__main__":
    main(sys.argv[1:])
