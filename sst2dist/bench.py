"""Benchmark PyTorch against every onnxruntime variant of a bundle, side by side, on the real SST-2 sentences.

    results = run_bench(BenchSettings(model="runs/minilm/model", bundle="export/minilm", data="../shared/data/sst2"))

All backends run in one process and one run, interleaved block by block (the backend order rotates every block),
so drift on a shared machine hits them alike. Cold start and peak RSS are measured per backend in a fresh child
process (`python -m sst2dist.bench cold-start SPEC`). Every figure is written to results.json, and also as a
ratio to the baseline of the same run (PyTorch fp32 eager, or the first selected backend without PyTorch).

Only the standard library and numpy are imported at module level: ORT-only benches must run without torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sst2dist.atomic import atomic_open, atomic_path
from sst2dist.data import DEFAULT_DATA
from sst2dist.environment import ACCELERATION_FLAGS, cpu_flags, package_versions, supports_bf16
from sst2dist.modeling import ID2LABEL, LABEL2ID

TORCH_BACKENDS = {"torch-fp32": "fp32", "torch-bf16": "bf16"}
ORT_BACKENDS = {"ort-fp32": "fp32", "ort-optimized": "optimized", "ort-int8": "int8", "ort-static-int8": "static-int8"}
ALL_BACKENDS = (*TORCH_BACKENDS, *ORT_BACKENDS)
BASELINE = "torch-fp32"
PRECISION = {
    "torch-fp32": "fp32",
    "torch-bf16": "bf16",
    "ort-fp32": "fp32",
    "ort-optimized": "fp32",
    "ort-int8": "int8",
    "ort-static-int8": "int8",
}
# Peak operations per cycle per core on this Xeon (Sapphire Rapids class): two 512-bit FMA ports
# (2 x 16 fp32 x 2), two 512-bit VPDPBUSD ports (2 x 64 int8 MAC x 2), one AMX TMUL (bf16 512 MAC, int8 1024 MAC).
PEAK_OPS_PER_CYCLE = {
    "fp32": ("fp32 AVX-512 FMA", 64),
    "int8": ("int8 AVX-512 VNNI", 256),
    "bf16": ("bf16 AMX", 1024),
    "int8-amx": ("int8 AMX", 2048),
}
PACKAGES = ("sst2dist", "numpy", "onnxruntime", "tokenizers", "torch", "transformers", "optimum", "optimum-onnx")
LATENCY_BLOCK = 32  # sentences per interleaving block at batch 1
THROUGHPUT_BLOCK = 64  # sentences (at least one batch) per interleaving block for throughput
SCHEMA_VERSION = 1


class BenchError(ValueError):
    """The bench settings are unusable; the message says what to fix."""


@dataclass
class BenchSettings:
    bundle: str
    model: str | None = None
    data: str = DEFAULT_DATA
    backends: Sequence[str] | None = None  # None: every backend this machine and bundle support
    threads: Sequence[int] | None = None  # None: 1 and every core
    batch_sizes: Sequence[int] = (1, 8, 32)
    output: str | None = None  # None: bench/results/<bundle folder name>
    max_samples: int | None = None  # validation sentences for accuracy and throughput (None: all 872)
    latency_samples: int | None = None  # sentences timed one by one at batch 1 (None: as many as max_samples)
    warmup: int = 20
    progress: bool = True
    notes: list[str] = field(default_factory=list)


# --- settings ---------------------------------------------------------------------------------------------


def parse_int_list(text: str, option: str) -> list[int]:
    """'1,2' -> [1, 2]; a clear error for anything that is not a list of whole numbers."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise BenchError(f"{option} takes comma-separated whole numbers like 1,8,32, got {text!r}") from err
    if not values:
        raise BenchError(f"{option} is empty: give at least one number, e.g. {option} 1")
    return sorted(set(values))


def torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def check_settings(settings: BenchSettings) -> BenchSettings:
    """Validate everything before any work starts, and pick the default backends. Raises BenchError."""
    from sst2dist.runtime import VARIANT_FILES, read_manifest

    cores = os.cpu_count() or 1
    if settings.threads is None:
        settings.threads = sorted({1, cores})
    for value, option in ((settings.threads, "--threads"), (settings.batch_sizes, "--batch-sizes")):
        if not value or any(not isinstance(n, int) or n < 1 for n in value):
            raise BenchError(f"{option} must be whole numbers >= 1, got {list(value)}")
    if max(settings.threads) > cores:
        raise BenchError(f"--threads {max(settings.threads)} is more than this machine's {cores} CPU cores")
    for value, option in ((settings.max_samples, "--max-samples"), (settings.latency_samples, "--latency-samples")):
        if value is not None and value < 1:
            raise BenchError(f"{option} must be >= 1, got {value}")
    if settings.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {settings.warmup}")

    manifest = read_manifest(settings.bundle)  # BundleError (a ValueError) for a missing or foreign folder
    in_bundle = {
        name
        for name, variant in ORT_BACKENDS.items()
        if variant in manifest.get("variants", {}) and (Path(settings.bundle) / VARIANT_FILES[variant]).is_file()
    }
    settings.backends = pick_backends(settings, in_bundle)
    for name in settings.backends:
        if name in ORT_BACKENDS and not manifest["variants"][ORT_BACKENDS[name]].get("passed"):
            settings.notes.append(f"{name} failed the export verification gate (see manifest.json); benched anyway")
    if any(name in TORCH_BACKENDS for name in settings.backends):
        check_torch_model(settings.model)
    if settings.output is None:
        settings.output = str(Path("bench") / "results" / Path(settings.bundle).resolve().name)
    if Path(settings.output).exists() and not Path(settings.output).is_dir():
        raise BenchError(f"--output {settings.output} is a file: give a folder for the results")
    settings.threads = sorted(set(settings.threads))
    settings.batch_sizes = sorted(set(settings.batch_sizes))
    return settings


def pick_backends(settings: BenchSettings, in_bundle: set[str]) -> list[str]:
    if settings.backends is None:
        chosen = [name for name in ALL_BACKENDS if name in in_bundle or name in TORCH_BACKENDS]
        if not supports_bf16():
            chosen.remove("torch-bf16")
            settings.notes.append("torch-bf16 skipped: this CPU has neither amx_bf16 nor avx512_bf16")
        if not torch_installed():
            raise BenchError(
                "PyTorch is not installed, so the torch baselines cannot run: install the train extra "
                "(pip install 'sst2dist[train]') or bench only the bundle, e.g. --backends ort-fp32,ort-int8"
            )
        return chosen
    chosen = list(dict.fromkeys(settings.backends))
    if not chosen:
        raise BenchError(f"--backends is empty: choose from {', '.join(ALL_BACKENDS)}")
    unknown = [name for name in chosen if name not in ALL_BACKENDS]
    if unknown:
        raise BenchError(f"unknown backend {', '.join(unknown)}: choose from {', '.join(ALL_BACKENDS)}")
    missing = [name for name in chosen if name in ORT_BACKENDS and name not in in_bundle]
    if missing:
        raise BenchError(
            f"{settings.bundle} has no {', '.join(missing)} variant: export it (sst2dist export-onnx) "
            "or drop it from --backends"
        )
    if "torch-bf16" in chosen and not supports_bf16():
        raise BenchError("torch-bf16 needs a CPU with amx_bf16 or avx512_bf16; drop it from --backends")
    if any(name in TORCH_BACKENDS for name in chosen) and not torch_installed():
        raise BenchError(
            "PyTorch is not installed: install the train extra (pip install 'sst2dist[train]') "
            "or pass only ORT backends, e.g. --backends ort-fp32,ort-int8"
        )
    return chosen


def check_torch_model(model: str | None) -> None:
    if model is None:
        raise BenchError(
            "the PyTorch backends need --model (the trained model folder, e.g. runs/minilm/model); "
            "or bench only the bundle with --backends ort-fp32,ort-optimized,ort-int8"
        )
    path = Path(model).expanduser()
    if not path.is_dir():
        raise BenchError(f"--model {model} is not a folder: point it at the trained model folder (runs/.../model)")
    if not (path / "config.json").is_file():
        raise BenchError(f"--model {model} has no config.json: point it at a folder saved by `save_pretrained`")


# --- backends -----------------------------------------------------------------------------------------------


class OrtBackend:
    """One bundle variant through the runtime's Classifier (the exact code path `serve` uses)."""

    def __init__(self, name: str, bundle: str, threads: int, max_length: int | None = None):
        from sst2dist.runtime import VARIANT_FILES, Classifier

        self.name = name
        self.classifier = Classifier(bundle, variant=ORT_BACKENDS[name], threads=threads)
        self.labels = self.classifier.labels
        self.files = onnx_files(Path(bundle) / VARIANT_FILES[ORT_BACKENDS[name]])

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.classifier.encode(texts)

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        return self.classifier.run(encoded)

    def set_threads(self, threads: int) -> None:
        """ORT fixes its thread pool per session: one backend object per thread count (see bench_threads)."""


class TorchBackend:
    """PyTorch eager, fp32 or bf16 autocast, with the transformers tokenizer: what a plain deployment runs."""

    def __init__(self, name: str, model: str, threads: int, max_length: int | None = None):
        import torch

        from sst2dist.modeling import load_model, load_tokenizer

        self.name = name
        self.torch = torch
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model).eval()
        self.max_length = max_length or self.tokenizer.model_max_length
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.files = weight_files(Path(model))
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)

    def encode(self, texts: list[str]):
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).data

    def run(self, encoded) -> np.ndarray:
        with self.torch.inference_mode(), self.autocast():
            logits = self.model(**encoded).logits
        return logits.float().numpy()

    def autocast(self):
        if self.name == "torch-bf16":
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return self.torch.autocast("cpu", enabled=False)


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors / pytorch_model.bin and their shards; not training_args.bin or optimizer states."""
    names = ("model.safetensors", "model-0", "pytorch_model.bin", "pytorch_model-0")
    return [p for p in sorted(folder.iterdir()) if p.name.startswith(names) and p.suffix in (".safetensors", ".bin")]


Backend = OrtBackend | TorchBackend


def open_backend(name: str, bundle: str, model: str | None, threads: int, max_length: int) -> Backend:
    if name in ORT_BACKENDS:
        return OrtBackend(name, bundle, threads)
    return TorchBackend(name, str(model), threads, max_length)


def onnx_files(path: Path) -> list[Path]:
    """The ONNX file plus its external-data file, when the exporter split the weights out."""
    extra = [p for p in (path.with_name(path.name + "_data"), path.with_suffix(".onnx.data")) if p.is_file()]
    return [path, *extra]


def class_ids(logits: np.ndarray, labels: list[str]) -> np.ndarray:
    """Predicted SST-2 label ids (0 negative, 1 positive), by label name when the model uses SST-2's names."""
    best = logits.argmax(axis=-1)
    if set(labels) == set(ID2LABEL.values()):
        return np.array([LABEL2ID[labels[i]] for i in best], dtype=np.int64)
    return best


def mask_of(encoded) -> np.ndarray:
    return np.asarray(encoded["attention_mask"])


# --- measurements -------------------------------------------------------------------------------------------


def rotations(names: list[str]) -> Iterator[list[str]]:
    """The backend order for block 0, 1, 2, ...: rotated by one each block so none always runs first."""
    block = 0
    while True:
        shift = block % len(names)
        yield names[shift:] + names[:shift]
        block += 1


def chunks(items: Sequence, size: int) -> list:
    return [items[i : i + size] for i in range(0, len(items), size)]


def warm_up(backends: dict[str, Backend], sentences: list[str], settings: BenchSettings) -> None:
    """Untimed calls on sentences spread from shortest to longest, so kernels built per input shape
    (oneDNN primitives for bf16, for instance) exist for the usual lengths before timing starts."""
    by_length = sorted(sentences, key=len)
    count = min(settings.warmup, len(by_length))
    spread = [by_length[int(i)] for i in np.linspace(0, len(by_length) - 1, count)] if count else []
    for backend in backends.values():
        for sentence in spread:
            backend.run(backend.encode([sentence]))
        for batch_size in settings.batch_sizes if count else ():
            backend.run(backend.encode(sentences[:batch_size]))


def measure_latency(
    backends: dict[str, Backend], sentences: list[str], tick: Callable[[int], None]
) -> dict[str, dict[str, list[float]]]:
    """Batch-1 latency in ms per sentence: tokenize, model, total. The first call of each block is not timed,
    so the previous backend's still-spinning thread pool is never charged to this one."""
    times = {name: {"tokenize": [], "model": [], "total": []} for name in backends}
    for block, order in zip(chunks(sentences, LATENCY_BLOCK), rotations(list(backends)), strict=False):
        for name in order:
            backend = backends[name]
            backend.run(backend.encode(block[:1]))
            for sentence in block:
                start = time.perf_counter()
                encoded = backend.encode([sentence])
                encoded_at = time.perf_counter()
                backend.run(encoded)
                done = time.perf_counter()
                times[name]["tokenize"].append((encoded_at - start) * 1e3)
                times[name]["model"].append((done - encoded_at) * 1e3)
                times[name]["total"].append((done - start) * 1e3)
            tick(len(block))
    return times


def measure_throughput(
    backends: dict[str, Backend],
    sentences: list[str],
    batch_size: int,
    flops_per_batch: Callable[[int, int], float],
    tick: Callable[[int], None],
) -> dict[str, dict]:
    """Sentences/s over every sentence in real order, batches padded to their longest member."""
    raw = {
        name: {"seconds": 0.0, "tokenize_seconds": 0.0, "model_seconds": 0.0, "padded_tokens": 0, "flops": 0.0}
        for name in backends
    }
    logits: dict[str, list[np.ndarray]] = {name: [] for name in backends}
    batches = chunks(sentences, batch_size)
    batches_per_block = max(1, THROUGHPUT_BLOCK // batch_size)
    for block, order in zip(chunks(batches, batches_per_block), rotations(list(backends)), strict=False):
        for name in order:
            backend, figures = backends[name], raw[name]
            for batch in block:
                start = time.perf_counter()
                encoded = backend.encode(batch)
                encoded_at = time.perf_counter()
                logits[name].append(backend.run(encoded))
                done = time.perf_counter()
                rows, length = mask_of(encoded).shape
                figures["tokenize_seconds"] += encoded_at - start
                figures["model_seconds"] += done - encoded_at
                figures["seconds"] += done - start
                figures["padded_tokens"] += rows * length
                figures["flops"] += flops_per_batch(rows, length)
            tick(sum(len(batch) for batch in block))
    for name, figures in raw.items():
        figures["sentences"] = len(sentences)
        figures["logits"] = np.concatenate(logits[name])
    return raw


def summarize(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def flops_counter(config: dict) -> Callable[[int, int], float]:
    """Matmul FLOPs of a BERT encoder for a [rows, length] batch: 2 x weights x tokens, plus attention scores.

    Embedding lookups, layer norms and softmax are left out (they are not matmuls)."""
    hidden = config.get("hidden_size", 0)
    layers = config.get("num_hidden_layers", 0)
    inner = config.get("intermediate_size", 4 * hidden)
    weights_per_layer = 4 * hidden * hidden + 2 * hidden * inner

    def flops(rows: int, length: int) -> float:
        dense = 2 * weights_per_layer * rows * length
        attention = 2 * 2 * rows * length * length * hidden  # QK^T and attention x V
        return float(layers * (dense + attention) + 2 * rows * hidden * hidden)  # + pooler

    return flops


def bench_threads(
    settings: BenchSettings, threads: int, sentences: list[str], max_length: int, flops, tick
) -> dict[str, dict]:
    """Every measurement at one thread count, every backend interleaved."""
    backends = {
        name: open_backend(name, settings.bundle, settings.model, threads, max_length) for name in settings.backends
    }
    for backend in backends.values():
        backend.set_threads(threads)
    warm_up(backends, sentences, settings)
    latency = measure_latency(backends, sentences[: settings.latency_samples], tick)
    throughput = {size: measure_throughput(backends, sentences, size, flops, tick) for size in settings.batch_sizes}
    return {
        name: {
            "labels": backends[name].labels,
            "files": [str(p) for p in backends[name].files],
            "latency_ms": latency[name],
            "throughput": {size: throughput[size][name] for size in settings.batch_sizes},
        }
        for name in backends
    }


# --- cold start in a fresh process --------------------------------------------------------------------------


def cold_start(name: str, settings: BenchSettings, threads: int, max_length: int, texts: list[str]) -> dict:
    """Import + load + first prediction, and the peak RSS after one largest batch, in a fresh Python process."""
    spec = {
        "backend": name,
        "bundle": settings.bundle,
        "model": settings.model,
        "threads": threads,
        "max_length": max_length,
        "first": texts[0],
        "batch": texts[1:],
    }
    command = [sys.executable, "-m", "sst2dist.bench", "cold-start", json.dumps(spec)]
    started = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True, timeout=900)
    process_seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise BenchError(f"the cold-start process for {name} failed:\n{child.stderr[-2000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["process_seconds"] = process_seconds
    return result


def cold_start_child(spec: dict) -> dict:
    started = time.perf_counter()
    if spec["backend"] in TORCH_BACKENDS:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    else:
        import sst2dist.runtime  # noqa: F401  (onnxruntime + tokenizers)
    imported = time.perf_counter()
    backend = open_backend(spec["backend"], spec["bundle"], spec["model"], spec["threads"], spec["max_length"])
    loaded = time.perf_counter()
    backend.run(backend.encode([spec["first"]]))
    predicted = time.perf_counter()
    backend.run(backend.encode(spec["batch"]))
    return {
        "import_seconds": imported - started,
        "load_seconds": loaded - imported,
        "first_prediction_seconds": predicted - loaded,
        "total_seconds": predicted - started,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": spec["threads"],
        "rss_batch_size": len(spec["batch"]),
    }


# --- environment --------------------------------------------------------------------------------------------


def cpu_info() -> dict:
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = cpu_flags()
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
        threads_per_core = len(expand_cpu_list(siblings))
    except OSError:
        threads_per_core = None
    return {
        "model": fields.get("model name", platform.processor()),
        "mhz": float(fields["cpu MHz"]) if "cpu MHz" in fields else None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_per_core": threads_per_core,
        "flags": {flag: flag in flags for flag in ACCELERATION_FLAGS},
    }


def expand_cpu_list(text: str) -> list[int]:
    cpus = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def environment(settings: BenchSettings) -> dict:
    thread_env = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM")
    return {
        "cpu": cpu_info(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(PACKAGES),
        "threads": {
            "measured": list(settings.threads),
            "onnxruntime": "intra_op_num_threads = threads, inter_op_num_threads = 1, sequential",
            "torch": "torch.set_num_threads(threads)" if "torch" in sys.modules else None,
            "torch_interop": sys.modules["torch"].get_num_interop_threads() if "torch" in sys.modules else None,
            "env": {name: os.environ.get(name) for name in thread_env},
        },
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# --- results ------------------------------------------------------------------------------------------------


def backend_results(name: str, runs: dict[int, dict], cold: dict, labels: np.ndarray, settings) -> dict:
    """Raw figures and the summary metrics of one backend; ratios are added once the baseline is known."""
    top = max(settings.threads)
    figures = runs[top]
    size = sum(Path(p).stat().st_size for p in figures["files"])
    accuracy_by_batch = {
        str(b): float((class_ids(t["logits"], figures["labels"]) == labels).mean())
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
        "engine": "pytorch" if name in TORCH_BACKENDS else "onnxruntime",
        "precision": PRECISION[name],
        "files": figures["files"],
        "labels": figures["labels"],
        "metrics": metrics,
        "raw": raw,
    }


def thread_metrics(run: dict) -> dict:
    return {
        "latency_ms": {part: summarize(values) for part, values in run["latency_ms"].items()},
        "throughput_sentences_per_s": {str(b): t["sentences"] / t["seconds"] for b, t in run["throughput"].items()},
        "model_gflops_per_s": {str(b): t["flops"] / t["model_seconds"] / 1e9 for b, t in run["throughput"].items()},
    }


def thread_raw(run: dict) -> dict:
    return {
        "latency_ms": {part: [round(v, 4) for v in values] for part, values in run["latency_ms"].items()},
        "throughput": {
            str(b): {key: value for key, value in t.items() if key != "logits"} for b, t in run["throughput"].items()
        },
    }


def ratio_tree(values, baseline):
    """The same nested shape as `values`, each number divided by the baseline's number at the same place."""
    if isinstance(values, dict):
        return {k: ratio_tree(v, baseline.get(k) if isinstance(baseline, dict) else None) for k, v in values.items()}
    if isinstance(values, int | float) and isinstance(baseline, int | float) and baseline:
        return values / baseline
    return None


def add_comparisons(backends: dict[str, dict], baseline: str, predictions: dict[str, np.ndarray]) -> None:
    for name, result in backends.items():
        result["raw"]["predictions"] = predictions[name].tolist()
        result["metrics"]["agreement_with_baseline"] = float((predictions[name] == predictions[baseline]).mean())
        result["metrics"]["accuracy_delta_points"] = 100 * (
            result["metrics"]["accuracy"] - backends[baseline]["metrics"]["accuracy"]
        )
    for result in backends.values():
        result["vs_baseline"] = ratio_tree(result["metrics"], backends[baseline]["metrics"])


def peak_estimate(results: dict, cpu: dict) -> dict | None:
    """The share of the CPU's peak that the fastest backend reaches at its fastest thread count and batch size."""
    best = None
    for name, result in results["backends"].items():
        for threads, figures in result["metrics"]["threads"].items():
            for batch, speed in figures["throughput_sentences_per_s"].items():
                if best is None or speed > best[0]:
                    best = (speed, name, int(threads), batch, figures["model_gflops_per_s"][batch])
    if best is None or not cpu.get("mhz") or not best[4]:
        return None
    speed, name, threads, batch, gflops = best
    precision = PRECISION[name]
    peaks = {}
    for key in (precision, "int8-amx") if precision == "int8" else (precision,):
        label, ops = PEAK_OPS_PER_CYCLE[key]
        peak = threads * cpu["mhz"] / 1e3 * ops
        peaks[label] = {"peak_gflops_per_s": peak, "fraction": gflops / peak}
    return {
        "backend": name,
        "threads": threads,
        "batch_size": int(batch),
        "sentences_per_s": speed,
        "model_gflops_per_s": gflops,
        "assumption": f"{threads} cores x {cpu['mhz']:.0f} MHz x "
        + ", ".join(f"{ops} {label}" for label, ops in PEAK_OPS_PER_CYCLE.values())
        + " ops per cycle per core",
        "flops_counted": "2 x encoder weights x padded tokens + attention matmuls, model time only",
        "peaks": peaks,
    }


# --- report: tables, Markdown, chart ----------------------------------------------------------------------


def times(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def summary_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Accuracy and footprint, one row per backend; (x) is the value divided by the baseline's."""
    header = ["backend", "accuracy %", "vs base pts", "agree %", "file MB", "cold start s", "peak RSS MB"]
    rows = []
    for name, result in results["backends"].items():
        m, r = result["metrics"], result["vs_baseline"]
        rows.append(
            [
                name,
                f"{100 * m['accuracy']:.2f}",
                f"{m['accuracy_delta_points']:+.2f}",
                f"{100 * m['agreement_with_baseline']:.1f}",
                f"{m['file_size_mb']:.1f} ({times(r['file_size_mb'])})",
                f"{m['cold_start_seconds']:.2f} ({times(r['cold_start_seconds'])})",
                f"{m['peak_rss_mb']:.0f} ({times(r['peak_rss_mb'])})",
            ]
        )
    return header, rows


def speed_table(results: dict, threads: str) -> tuple[list[str], list[list[str]]]:
    """Batch-1 latency (ms, tokenization included), its split, speedup, and throughput per batch size."""
    batch_sizes = [str(b) for b in results["settings"]["batch_sizes"]]
    header = ["backend", "p50 ms", "p90 ms", "p99 ms", "mean ms", "tok p50", "model p50", "speedup"]
    header += [f"bs{b} sent/s" for b in batch_sizes]
    rows = []
    for name, result in results["backends"].items():
        m, r = result["metrics"]["threads"][threads], result["vs_baseline"]["threads"][threads]
        total = m["latency_ms"]["total"]
        speedup = 1 / r["latency_ms"]["total"]["p50"] if r["latency_ms"]["total"]["p50"] else None
        row = [name, *(f"{total[k]:.2f}" for k in ("p50", "p90", "p99", "mean"))]
        row += [f"{m['latency_ms']['tokenize']['p50']:.2f}", f"{m['latency_ms']['model']['p50']:.2f}", times(speedup)]
        throughput, ratio = m["throughput_sentences_per_s"], r["throughput_sentences_per_s"]
        row += [f"{throughput[b]:.0f} ({times(ratio[b])})" for b in batch_sizes]
        rows.append(row)
    return header, rows


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def target_lines(results: dict) -> list[str]:
    """The issue's targets at the highest thread count, when the baseline is PyTorch fp32."""
    backends, threads = results["backends"], str(max(results["settings"]["threads"]))
    if results["baseline"] != BASELINE:
        return []

    def speedup(name: str) -> float:
        return 1 / backends[name]["vs_baseline"]["threads"][threads]["latency_ms"]["total"]["p50"]

    lines = []
    if "ort-int8" in backends:
        gain, delta = speedup("ort-int8"), backends["ort-int8"]["metrics"]["accuracy_delta_points"]
        met = gain >= 4 and delta >= -0.5
        lines.append(
            f"ORT int8 >= 4x faster at p50, accuracy within 0.5 pts: {gain:.2f}x, "
            f"{delta + 0.0:+.2f} pts -> {'met' if met else 'NOT met'}"
        )
    fp32 = [name for name in ("ort-fp32", "ort-optimized") if name in backends]
    if fp32:
        best = max(fp32, key=speedup)
        met = speedup(best) >= 2.5
        lines.append(
            f"ORT fp32/optimized >= 2.5x faster at p50: {best} {speedup(best):.2f}x -> {'met' if met else 'NOT met'}"
        )
    return lines


def peak_line(results: dict) -> str | None:
    peak = results.get("peak_estimate")
    if not peak:
        return None
    shares = ", ".join(
        f"{100 * p['fraction']:.1f}% of {label} peak ({p['peak_gflops_per_s']:.0f} GFLOP/s)"
        for label, p in peak["peaks"].items()
    )
    return (
        f"Best throughput: {peak['backend']} at batch {peak['batch_size']}, {peak['threads']} threads: "
        f"{peak['sentences_per_s']:.0f} sentences/s, {peak['model_gflops_per_s']:.1f} GFLOP/s in the model = "
        f"{shares}."
    )


def render_terminal(results: dict) -> str:
    data = results["dataset"]
    parts = [
        f"Accuracy on {data['sentences']} SST-2 validation sentences; (x) = value / {results['baseline']}",
        plain_table(*summary_table(results)),
    ]
    for threads in results["backends"][results["baseline"]]["metrics"]["threads"]:
        parts += [
            "",
            f"{threads} thread(s): batch-1 latency over {data['latency_sentences']} sentences "
            f"(tokenization included), throughput over {data['sentences']}",
            plain_table(*speed_table(results, threads)),
        ]
    extra = [line for line in (*target_lines(results), peak_line(results), *results["notes"]) if line]
    return "\n".join(parts + [""] + extra)


def render_markdown(results: dict) -> str:
    data, env = results["dataset"], results["environment"]
    cpu = env["cpu"]
    lines = [
        "# sst2dist bench",
        "",
        f"{results['created']}, bundle `{results['bundle']['path']}`, data `{data['data']}` "
        f"({data['sentences']} validation sentences). Baseline: **{results['baseline']}**; "
        "`(x)` is each figure divided by the baseline's from this same run.",
        "",
        "## Accuracy and footprint",
        "",
        markdown_table(*summary_table(results)),
    ]
    for threads in results["backends"][results["baseline"]]["metrics"]["threads"]:
        lines += [
            "",
            f"## Speed, {threads} thread(s)",
            "",
            f"Latency: batch 1 over {data['latency_sentences']} real sentences after warm-up, tokenization "
            "included (`tok`/`model` split the p50). Throughput: all sentences in order, batches padded to "
            "their longest member.",
            "",
            markdown_table(*speed_table(results, threads)),
        ]
    extra = [line for line in (*target_lines(results), peak_line(results), *results["notes"]) if line]
    if extra:
        lines += ["", "## Notes", "", *(f"- {line}" for line in extra)]
    flags = ", ".join(flag for flag, present in cpu["flags"].items() if present) or "none"
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    lines += [
        "",
        "![latency and throughput](chart.png)",
        "",
        "## Environment",
        "",
        f"- CPU: {cpu['model']}, {cpu['mhz']} MHz, {cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical "
        f"CPUs, {cpu['threads_per_core']} thread(s) per core",
        f"- CPU flags: {flags}",
        f"- Threads: {', '.join(map(str, env['threads']['measured']))}; onnxruntime {env['threads']['onnxruntime']}; "
        f"torch interop threads {env['threads']['torch_interop']}; env {env['threads']['env']}",
        f"- Load average (1/5/15 min) before: {rounded(env.get('load_average_before'))}, "
        f"after: {rounded(env['load_average'])}",
        f"- {env['os']}, Python {env['python']}; {packages}",
        f"- Duration: {results['duration_seconds']:.0f} s",
        "",
    ]
    return "\n".join(lines)


def rounded(values: list[float] | None) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "unknown"


def write_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    names = list(results["backends"])
    top = str(max(results["settings"]["threads"]))
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    latencies = [results["backends"][n]["raw"]["threads"][top]["latency_ms"]["total"] for n in names]
    left.boxplot(latencies, whis=(1, 99), showfliers=False)
    left.set_xticks(range(1, len(names) + 1), names, rotation=20)
    left.set_yscale("log")
    left.yaxis.set_major_formatter(ScalarFormatter())
    left.yaxis.set_minor_formatter(NullFormatter())
    left.set_ylabel("ms per sentence, log scale (tokenization included)")
    left.set_title(f"Batch-1 latency, {top} thread(s) (whiskers p1-p99)")
    left.grid(axis="y", alpha=0.3)
    styles = ["-", "--", ":", "-."]
    for index, name in enumerate(names):
        for t_index, (threads, figures) in enumerate(results["backends"][name]["metrics"]["threads"].items()):
            speed = figures["throughput_sentences_per_s"]
            right.plot(
                [int(b) for b in speed],
                list(speed.values()),
                styles[t_index % 4],
                marker="o",
                color=f"C{index}",
                label=f"{name}, {threads} thr",
            )
    right.set_xscale("log", base=2)
    right.set_xticks(results["settings"]["batch_sizes"], [str(b) for b in results["settings"]["batch_sizes"]])
    right.set_xlabel("batch size")
    right.set_ylabel("sentences / s")
    right.set_title("Throughput (batches padded to their longest member)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


# --- the run ------------------------------------------------------------------------------------------------


def load_validation(data: str, limit: int | None) -> tuple[list[str], np.ndarray]:
    """The validation split through `sst2dist.data`; on the base install (no `datasets`), a local TSV/CSV."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        sentences, labels = read_local_validation(data)
        return sentences[:limit], np.asarray(labels[:limit], dtype=np.int64)
    from sst2dist.data import load_sst2

    validation = load_sst2(data, max_train_samples=1, max_eval_samples=limit)["validation"]
    return list(validation["sentence"]), np.asarray(validation["label"], dtype=np.int64)


def read_local_validation(data: str) -> tuple[list[str], list[int]]:
    """GLUE-style dev.tsv (or a validation CSV) with the standard library, for benches without `datasets`."""
    import csv

    from sst2dist.data import DataError, find_split_files

    if not Path(data).expanduser().exists():
        raise DataError(
            f"--data {data} is not a local folder, and reading a hub dataset needs the train extra "
            "(pip install 'sst2dist[train]'); point --data at a folder with dev.tsv"
        )
    file = find_split_files(Path(data).expanduser())["validation"]
    if file.suffix not in (".tsv", ".csv"):
        raise DataError(f"reading {file.name} needs `datasets` (pip install 'sst2dist[train]'); or use dev.tsv")
    delimiter, quoting = ("\t", csv.QUOTE_NONE) if file.suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
    with file.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=delimiter, quoting=quoting))
    try:
        sentences, labels = [row["sentence"] for row in rows], [int(row["label"]) for row in rows]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{file} needs a sentence and a 0/1 label column on every row ({err})") from err
    if not rows or set(labels) - {0, 1}:
        raise DataError(f"{file} needs at least one row, and labels 0 or 1 only")
    return sentences, labels


def run_bench(settings: BenchSettings) -> dict:
    """Measure every backend, write results.json, report.md and chart.png to settings.output; return results."""
    from tqdm import tqdm

    from sst2dist.runtime import read_manifest

    settings = check_settings(settings)
    manifest = read_manifest(settings.bundle)
    max_length = int(manifest["max_length"])
    config = json.loads((Path(settings.bundle) / "config.json").read_text(encoding="utf-8"))
    sentences, labels = load_validation(settings.data, settings.max_samples)
    settings.latency_samples = min(settings.latency_samples or len(sentences), len(sentences))
    baseline = BASELINE if BASELINE in settings.backends else settings.backends[0]
    if baseline != BASELINE:
        settings.notes.append(f"baseline is {baseline} (the first selected backend): torch-fp32 was not benched")

    per_thread = len(settings.backends) * (settings.latency_samples + len(sentences) * len(settings.batch_sizes))
    units = len(settings.backends) + per_thread * len(settings.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    with tqdm(total=units, unit="sent", file=sys.stderr, disable=not settings.progress, dynamic_ncols=True) as bar:
        longest = sorted(sentences, key=len, reverse=True)[: max(settings.batch_sizes)]
        colds = {}
        for name in settings.backends:
            bar.set_description(f"cold start {name}")
            colds[name] = cold_start(name, settings, max(settings.threads), max_length, [sentences[0], *longest])
            bar.update(1)
        flops = flops_counter(config)
        runs: dict[int, dict] = {}
        for threads in settings.threads:
            bar.set_description(f"{threads} thread{'s' * (threads > 1)}")
            runs[threads] = bench_threads(settings, threads, sentences, max_length, flops, bar.update)

    backends = {
        name: backend_results(name, {t: runs[t][name] for t in settings.threads}, colds[name], labels, settings)
        for name in settings.backends
    }
    top, widest = max(settings.threads), max(settings.batch_sizes)
    predictions = {
        name: class_ids(runs[top][name]["throughput"][widest]["logits"], runs[top][name]["labels"])
        for name in settings.backends
    }
    add_comparisons(backends, baseline, predictions)
    env = environment(settings)
    env["load_average_before"] = list(load_before) if load_before else None
    if load_before and load_before[0] > 0.5 * env["cpu"]["usable_cpus"]:
        settings.notes.append(
            f"the machine was busy before this run (1-min load average {load_before[0]:.1f} on "
            f"{env['cpu']['usable_cpus']} CPUs): figures, multi-threaded ones most, are noisy; rerun on a quiet machine"
        )
    results = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("progress", "notes")},
        "notes": settings.notes,
        "baseline": baseline,
        "dataset": dataset_summary(settings, sentences, labels),
        "bundle": {"path": settings.bundle, "max_length": max_length, "model_type": config.get("model_type")},
        "environment": env,
        "duration_seconds": time.perf_counter() - started,
        "backends": backends,
    }
    results["peak_estimate"] = peak_estimate(results, env["cpu"])
    write_outputs(results, Path(settings.output))
    return results


def dataset_summary(settings: BenchSettings, sentences: list[str], labels: np.ndarray) -> dict:
    return {
        "data": settings.data,
        "split": "validation",
        "sentences": len(sentences),
        "latency_sentences": settings.latency_samples,
        "positive_fraction": float(labels.mean()),
        "labels": labels.tolist(),
        "mean_characters": float(np.mean([len(s) for s in sentences])),
    }


def write_outputs(results: dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(output / "chart.png") as chart:
            write_chart(results, chart)
    except ImportError:
        results["notes"].append("chart.png not written: matplotlib is not installed (pip install matplotlib)")
    with atomic_open(output / "results.json") as handle:
        handle.write(json.dumps(results, indent=1) + "\n")
    with atomic_open(output / "report.md") as handle:
        handle.write(render_markdown(results))


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "cold-start":
        print(json.dumps(cold_start_child(json.loads(argv[1]))))
        return
    raise SystemExit("usage: python -m sst2dist.bench cold-start SPEC_JSON (internal; use `sst2dist bench`)")


if __name__ == "__main__":
    main(sys.argv[1:])
