"""What this CPU can do (from /proc/cpuinfo): flags that choose bf16 training, the int8 config, bench backends."""

from __future__ import annotations

from functools import cache
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


@cache
def cpu_flags() -> frozenset[str]:
    """Every flag of the first CPU (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def acceleration_flags() -> list[str]:
    """The vector/matrix extensions that matter here, in a fixed order, for manifests and reports."""
    present = cpu_flags()
    return [flag for flag in ACCELERATION_FLAGS if flag in present]


def supports_bf16() -> bool:
    """AMX or AVX-512 BF16: bf16 matmuls run natively (elsewhere bf16 autocast is slower than fp32)."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
