"""What a bench run is asked to do, checked before any work starts: the settings, option parsing, backend choice
and the output folder (for `sst2dist.bench.run` and `sst2dist.bench.menu`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sst2dist.bench.measure import ALL_BACKENDS, ORT_BACKENDS, TORCH_BACKENDS, BenchError
from sst2dist.config_fields import Options, non_negative, option, positive, positive_ints, split_commas
from sst2dist.data import DEFAULT_DATA
from sst2dist.data_options import DataColumns, label_column_option, labels_option, text_column_option
from sst2dist.environment import cpu_kind, supports_bf16, too_many_threads, usable_cpus

CPU_PLACEHOLDER = "{cpu}"
FULL_BATCH_SIZES = (1, 8, 32)
DEFAULT_BATCH_SIZES = (1, 32)


def parse_int_list(text: str, flag: str) -> list[int]:
    """'1,2' -> [1, 2]; a clear error for anything that is not a list of whole numbers."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise BenchError(f"{flag} takes comma-separated whole numbers like 1,8,32, got {text!r}") from err
    if not values:
        raise BenchError(f"{flag} is empty: give at least one number, e.g. {flag} 1")
    return sorted(set(values))


@dataclass
class BenchSettings(DataColumns, Options):
    """What `sst2dist bench` measures; each field is the flag of the same name (--menu builds a MenuSettings)."""

    error = BenchError

    bundle: str = option(help="Bundle folder written by `sst2dist export-onnx`.")
    model: str | None = option(None, "Trained model folder (the PyTorch baseline).")
    data: str = option(
        DEFAULT_DATA,
        "Dataset hub id or local folder with train and dev files (e.g. ../shared/data/sst2). Default: SST-2 from the "
        "hub.",
        show_default=False,
    )
    text_column: str = text_column_option()
    label_column: str = label_column_option()
    labels: str | None = labels_option()
    backends: Sequence[str] | None = option(
        None,
        f"Comma-separated subset of {', '.join(ALL_BACKENDS)}. Default: torch-fp32 and the bundle's variants that "
        "passed the export gate (--full: every backend this CPU and bundle support, failed variants too).",
        parse=split_commas,
    )
    threads: Sequence[int] | None = option(
        None,
        "Comma-separated thread counts to measure. Default: the usable CPUs (--full: 1 and the usable CPUs; "
        "--menu: the largest, default the usable CPUs).",
        parse=parse_int_list,
        checks=[positive_ints],
    )
    batch_sizes: Sequence[int] | None = option(
        None,
        "Comma-separated throughput batch sizes. Default: 1,32 (--full: 1,8,32; --menu: the largest, default 32).",
        parse=parse_int_list,
        checks=[positive_ints],
    )
    full: bool = option(
        False,
        "The full matrix where --backends/--threads/--batch-sizes are not given: every backend (torch-bf16 and "
        "variants that failed the gate too), at 1 thread and the usable CPUs, batch sizes 1,8,32.",
    )
    output: str | None = option(
        None,
        "Results folder; {cpu} becomes this CPU's kind, e.g. bench/results/{cpu}/minilm. "
        "Default: bench/results/<bundle folder name> (--menu: bench/results/menu).",
    )
    max_samples: int | None = option(
        None, "Validation sentences for accuracy and throughput (default: all 872).", checks=[positive]
    )
    latency_samples: int | None = option(None, "Sentences timed at batch 1 (default: all).", checks=[positive])
    warmup: int = option(20, "Untimed warm-up sentences per backend.", checks=[non_negative])
    progress: bool = option(True, "Progress bar on stderr.")
    notes: list[str] = field(default_factory=list)


# --- checks ---------------------------------------------------------------------------------------------------


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
    """Thread counts, batch sizes, sample counts and warm-up, for the bench and the menu: BenchSettings' checks, and
    no more threads than cores. Raises BenchError."""
    counts = {"threads": threads, "batch_sizes": batch_sizes, "max_samples": max_samples}
    for name, value in (counts | {"latency_samples": latency_samples, "warmup": warmup}).items():
        BenchSettings.check_value(name, value)
    if problem := too_many_threads(max(threads)):
        raise BenchError(problem)


def output_folder(output: str | None, default: Path) -> str:
    """--output with "{cpu}" replaced by this CPU's kind (e.g. bench/results/{cpu}/minilm); refuses a file."""
    folder = (output or str(default)).replace(CPU_PLACEHOLDER, cpu_kind())
    if Path(folder).exists() and not Path(folder).is_dir():
        raise BenchError(f"--output {folder} is a file: give a folder for the results")
    return folder


def bundle_backends(bundle: str) -> tuple[dict, set[str]]:
    """The bundle's manifest and the bundle backends whose variant file it holds and whose engine runs here (no
    OpenVINO variants where OpenVINO is not installed). Raises BundleError."""
    from sst2dist.engines import unavailable_reason
    from sst2dist.runtime import VARIANT_FILES, read_manifest

    manifest = read_manifest(bundle)  # BundleError (a ValueError) for a missing or foreign folder
    present = {
        name
        for name, variant in ORT_BACKENDS.items()
        if variant in manifest.get("variants", {})
        and (Path(bundle) / VARIANT_FILES[variant]).is_file()
        and unavailable_reason(variant) is None
    }
    return manifest, present


def check_settings(settings: BenchSettings) -> BenchSettings:
    """Validate everything before any work starts, and pick the default backends. Raises BenchError."""
    if settings.threads is None:
        settings.threads = sorted({1, usable_cpus()}) if settings.full else [usable_cpus()]
    if settings.batch_sizes is None:
        settings.batch_sizes = FULL_BATCH_SIZES if settings.full else DEFAULT_BATCH_SIZES
    check_counts(
        settings.threads, settings.batch_sizes, settings.max_samples, settings.latency_samples, settings.warmup
    )
    manifest, in_bundle = bundle_backends(settings.bundle)
    passed = {name for name in in_bundle if manifest["variants"][ORT_BACKENDS[name]].get("passed")}
    if settings.backends is None and not settings.full and in_bundle - passed:
        left_out = ", ".join(name for name in ALL_BACKENDS if name in in_bundle - passed)
        settings.notes.append(f"{left_out} failed the export gate: not benched (--full benches it too)")
    settings.backends = pick_backends(settings, in_bundle, in_bundle if settings.full else passed)
    for name in settings.backends:
        if name in ORT_BACKENDS and not manifest["variants"][ORT_BACKENDS[name]].get("passed"):
            settings.notes.append(f"{name} failed the export verification gate (see manifest.json); benched anyway")
    if any(name in TORCH_BACKENDS for name in settings.backends):
        check_torch_model(settings.model)
    settings.output = output_folder(settings.output, Path("bench") / "results" / Path(settings.bundle).resolve().name)
    settings.threads = sorted(set(settings.threads))
    settings.batch_sizes = sorted(set(settings.batch_sizes))
    return settings


def pick_backends(settings: BenchSettings, in_bundle: set[str], by_default: set[str]) -> list[str]:
    """--backends checked against the bundle's backends `in_bundle`; without it, `by_default` and the torch
    baselines (torch-bf16 with --full only)."""
    if settings.backends is None:
        chosen = [name for name in ALL_BACKENDS if name in by_default or name in TORCH_BACKENDS]
        if not settings.full:
            chosen.remove("torch-bf16")
        elif not supports_bf16():
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
