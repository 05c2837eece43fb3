"""What this machine has: CPU model, flags, kind, clock and peak, peak memory, and package versions."""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ACCELERATION_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# The flags that decide which onnxruntime kernels run, so which bundle variant is fastest (variant_choice).
FINGERPRINT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
# Words of a model name that say nothing about the CPU line ("Common KVM processor", "Intel(R) Core(TM) CPU").
NAME_NOISE = {"cpu", "processor", "common", "kvm", "qemu", "virtual", "intel", "amd", "genuine"}
CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")  # what lscpu shows as "CPU max MHz"
SIBLINGS = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")


@cache
def cpuinfo_fields() -> dict[str, str]:
    """The first CPU's `key: value` lines of /proc/cpuinfo (empty where it does not exist, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() and fields:
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@cache
def cpu_flags() -> frozenset[str]:
    """Every flag of the first CPU (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    return frozenset(cpuinfo_fields().get("flags", "").split())


def acceleration_flags() -> list[str]:
    """The vector/matrix extensions that matter here, in a fixed order, for manifests and reports."""
    present = cpu_flags()
    return [flag for flag in ACCELERATION_FLAGS if flag in present]


def supports_bf16() -> bool:
    """AMX or AVX-512 BF16: bf16 matmuls run natively (elsewhere bf16 autocast is slower than fp32)."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions by distribution name (None where one is not installed), plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


# --- what kind of CPU, for result folders and reports ---------------------------------------------------------


def cpu_kind(fields: Mapping[str, str] | None = None, flags: frozenset[str] | None = None) -> str:
    """A short slug for results per CPU kind: vendor, line, widest ISA, e.g. amd-epyc-avx2, intel-xeon-amx."""
    fields = cpuinfo_fields() if fields is None else fields
    flags = cpu_flags() if flags is None else flags
    return "-".join(part for part in (*cpu_line(fields), isa_slug(flags)) if part)


def cpu_line(fields: Mapping[str, str]) -> tuple[str, str]:
    """('amd', 'epyc') from vendor_id and the first telling word of the model name."""
    name = re.sub(r"\((R|TM|tm|r)\)", " ", fields.get("model name", ""))
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", name)]
    vendor = VENDORS.get(fields.get("vendor_id", ""), words[0] if words else platform.machine().lower())
    line = next((w for w in words if w not in NAME_NOISE and w != vendor and len(w) > 1), "")
    return vendor, line


def isa_slug(flags: frozenset[str]) -> str:
    if flags & {"amx_bf16", "amx_int8"}:
        return "amx"
    if "avx512f" in flags:
        return "avx512" + ("-bf16" if "avx512_bf16" in flags else "-vnni" if "avx512_vnni" in flags else "")
    if "avx2" in flags:
        return "avx2" + ("-vnni" if "avx_vnni" in flags else "")
    return "avx" if "avx" in flags else ""


# --- peak operations per second, from the ISA and the clock ---------------------------------------------------


@dataclass(frozen=True)
class VectorPeak:
    precision: str  # fp32, int8 or bf16
    isa: str  # the instructions the peak assumes, e.g. "AVX2 FMA"
    ops_per_cycle: int  # per core: a multiply-add counts as 2


def vector_peaks(flags: frozenset[str] | None = None, fields: Mapping[str, str] | None = None) -> list[VectorPeak]:
    """Peak ops per cycle per core for each precision this CPU runs natively; a precision left out is unknown.

    Two FMA pipes per core are assumed. 512-bit instructions run at full width on Intel and on AMD Zen 5, but as
    two 256-bit halves on Zen 4 (family 25), so AVX-512 there peaks where AVX2 does."""
    flags = cpu_flags() if flags is None else flags
    wide = full_width_avx512(cpuinfo_fields() if fields is None else fields)
    peaks = []
    if "avx512f" in flags:
        units = "512-bit" if wide else "256-bit"
        peaks.append(VectorPeak("fp32", f"AVX-512 FMA, 2 x {units}", 64 if wide else 32))
    elif {"avx2", "fma"} <= flags:
        peaks.append(VectorPeak("fp32", "AVX2 FMA, 2 x 256-bit", 32))
    if "avx512_vnni" in flags:
        peaks.append(VectorPeak("int8", "AVX-512 VNNI", 256 if wide else 128))
    elif "avx_vnni" in flags:
        peaks.append(VectorPeak("int8", "AVX-VNNI", 128))
    if "amx_int8" in flags:
        peaks.append(VectorPeak("int8", "AMX int8", 2048))
    if "amx_bf16" in flags:
        peaks.append(VectorPeak("bf16", "AMX bf16", 1024))
    elif "avx512_bf16" in flags:
        peaks.append(VectorPeak("bf16", "AVX-512 BF16", 128 if wide else 64))
    return peaks


def full_width_avx512(fields: Mapping[str, str]) -> bool:
    vendor = fields.get("vendor_id")
    family = int(fields.get("cpu family", "0") or 0)
    return vendor == "GenuineIntel" or (vendor == "AuthenticAMD" and family >= 26)


def clock_mhz(fields: Mapping[str, str] | None = None) -> tuple[float, str] | None:
    """The highest clock a core reaches (cpufreq max, as lscpu reports it), else /proc/cpuinfo's `cpu MHz`."""
    try:
        return int(CPUFREQ_MAX.read_text()) / 1e3, "cpufreq max (lscpu CPU max MHz)"
    except (OSError, ValueError):
        pass
    fields = cpuinfo_fields() if fields is None else fields
    try:
        return float(fields["cpu MHz"]), "/proc/cpuinfo cpu MHz"
    except (KeyError, ValueError):
        return None


def peak_gops(precision: str, cores: int, peaks: list[VectorPeak] | None = None, clock: float | None = None) -> dict:
    """{"<precision> <isa>": peak G(FL)OP/s on `cores` cores} for every ISA that runs `precision`; {} if unknown."""
    peaks = vector_peaks() if peaks is None else peaks
    if clock is None:
        measured = clock_mhz()
        clock = measured[0] if measured else None
    if not clock:
        return {}
    return {f"{p.precision} {p.isa}": cores * clock / 1e3 * p.ops_per_cycle for p in peaks if p.precision == precision}


# --- cores and memory -------------------------------------------------------------------------------------------


def expand_cpu_list(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5] (the Linux cpulist format)."""
    cpus = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def threads_per_core() -> int | None:
    try:
        return len(expand_cpu_list(SIBLINGS.read_text().strip()))
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """Cores this process may run on (the affinity mask), not every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def too_many_threads(threads: int, flag: str = "--threads") -> str | None:
    """Why a thread count is refused (the one sentence bench and predict give), or None when the cores allow it."""
    cores = usable_cpus()
    if threads <= cores:
        return None
    return f"{flag} {threads} is more than the {cores} CPU(s) this process may use: ask for at most {cores}"


def cpu_info() -> dict:
    """The CPU fingerprint that reports print: model, kind, clock, cores, acceleration flags."""
    fields, flags = cpuinfo_fields(), cpu_flags()
    clock = clock_mhz(fields)
    return {
        "model": fields.get("model name", platform.processor()),
        "kind": cpu_kind(fields, flags),
        "mhz": float(fields["cpu MHz"]) if "cpu MHz" in fields else None,
        "peak_clock_mhz": clock[0] if clock else None,
        "peak_clock_source": clock[1] if clock else None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads_per_core": threads_per_core(),
        "flags": {flag: flag in flags for flag in ACCELERATION_FLAGS},
    }


def cpu_fingerprint(fields: Mapping[str, str] | None = None, flags: frozenset[str] | None = None) -> dict:
    """What a timing taken on this CPU holds for: the model name, the kind slug and the ISA flags that pick kernels."""
    fields = cpuinfo_fields() if fields is None else fields
    flags = cpu_flags() if flags is None else flags
    return {
        "model": fields.get("model name", platform.processor()),
        "kind": cpu_kind(fields, flags),
        "flags": [flag for flag in FINGERPRINT_FLAGS if flag in flags],
    }


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


BF16_GPU_CAPABILITY = (8, 0)  # Ampere and later: bf16 tensor cores; T4 (7.5) and V100 (7.0) only emulate bf16


def gpu_capability() -> tuple[int, int] | None:
    """The CUDA compute capability of this process's GPU, None without one."""
    import torch

    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None


def default_mixed_precision(gpu_capability: tuple[int, int] | None) -> str:
    """What `--mixed-precision auto` means here: on a GPU bf16 where it has bf16 tensor cores (compute capability
    8.0 and later), else fp16; on a CPU bf16 where it has bf16 instructions, else fp32 ("no")."""
    if gpu_capability is not None:
        return "bf16" if tuple(gpu_capability) >= BF16_GPU_CAPABILITY else "fp16"
    return "bf16" if supports_bf16() else "no"
