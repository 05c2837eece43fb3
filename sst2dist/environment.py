"""What this machine has: CPU flags (choosing bf16 training, the int8 config, bench backends) and package versions."""

from __future__ import annotations

import platform
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


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions by distribution name (None where one is not installed), plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions
