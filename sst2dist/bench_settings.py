"""What a bench run is asked to do, checked before any work starts: the settings, option parsing, backend choice
and the output folder (for `sst2dist.bench` and `sst2dist.menu`)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sst2dist.data import DEFAULT_DATA
from sst2dist.environment import cpu_kind, supports_bf16
from sst2dist.measure import ALL_BACKENDS, ORT_BACKENDS, TORCH_BACKENDS, BenchError

CPU_PLACEHOLDER = "{cpu}"


@dataclass
class BenchSettings:
    bundle: str
    model: str | None = None
    data: str = DEFAULT_DATA
    backends: Sequence[str] | None = None  # None: every backend this machine and bundle support
    threads: Sequence[int] | None = None  # None: 1 and every core
    batch_sizes: Sequence[int] = (1, 8, 32)
    output: str | None = None  # None: bench/results/<bundle folder name>; "{cpu}" becomes environment.cpu_kind()
    max_samples: int | None = None  # validation sentences for accuracy and throughput (None: all 872)
    latency_samples: int | None = None  # sentences timed one by one at batch 1 (None: as many as max_samples)
    warmup: int = 20
    progress: bool = True
    notes: list[str] = field(default_factory=list)


# --- settings -------------------------------------------------------------------------------------------------


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


def check_counts(
    threads: Sequence[int],
    batch_sizes: Sequence[int],
    max_samples: int | None,
    latency_samples: int | None,
    warmup: int,
) -> None:
    """Thread counts, batch sizes, sample counts and warm-up, for the bench and the menu. Raises BenchError."""
    cores = os.cpu_count() or 1
    for value, option in ((threads, "--threads"), (batch_sizes, "--batch-sizes")):
        if not value or any(not isinstance(n, int) or n < 1 for n in value):
            raise BenchError(f"{option} must be whole numbers >= 1, got {list(value)}")
    if max(threads) > cores:
        raise BenchError(f"--threads {max(threads)} is more than this machine's {cores} CPU cores")
    for value, option in ((max_samples, "--max-samples"), (latency_samples, "--latency-samples")):
        if value is not None and value < 1:
            raise BenchError(f"{option} must be >= 1, got {value}")
    if warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {warmup}")


def output_folder(output: str | None, default: Path) -> str:
    """--output with "{cpu}" replaced by this CPU's kind (e.g. bench/results/{cpu}/minilm); refuses a file."""
    folder = (output or str(default)).replace(CPU_PLACEHOLDER, cpu_kind())
    if Path(folder).exists() and not Path(folder).is_dir():
        raise BenchError(f"--output {folder} is a file: give a folder for the results")
    return folder


def bundle_backends(bundle: str) -> tuple[dict, set[str]]:
    """The bundle's manifest and the ORT backends whose variant file it holds. Raises BundleError."""
    from sst2dist.runtime import VARIANT_FILES, read_manifest

    manifest = read_manifest(bundle)  # BundleError (a ValueError) for a missing or foreign folder
    present = {
        name
        for name, variant in ORT_BACKENDS.items()
        if variant in manifest.get("variants", {}) and (Path(bundle) / VARIANT_FILES[variant]).is_file()
    }
    return manifest, present


def check_settings(settings: BenchSettings) -> BenchSettings:
    """Validate everything before any work starts, and pick the default backends. Raises BenchError."""
    if settings.threads is None:
        settings.threads = sorted({1, os.cpu_count() or 1})
    check_counts(
        settings.threads, settings.batch_sizes, settings.max_samples, settings.latency_samples, settings.warmup
    )
    manifest, in_bundle = bundle_backends(settings.bundle)
    settings.backends = pick_backends(settings, in_bundle)
    for name in settings.backends:
        if name in ORT_BACKENDS and not manifest["variants"][ORT_BACKENDS[name]].get("passed"):
            settings.notes.append(f"{name} failed the export verification gate (see manifest.json); benched anyway")
    if any(name in TORCH_BACKENDS for name in settings.backends):
        check_torch_model(settings.model)
    settings.output = output_folder(settings.output, Path("bench") / "results" / Path(settings.bundle).resolve().name)
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
