"""CPU helpers with faked /proc/cpuinfo fields and flags: the kind slug, the peak per ISA, the clock, cpu lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from sst2dist import environment
from sst2dist.environment import cpu_kind, expand_cpu_list, peak_gops, vector_peaks

AMD = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model name": "AMD EPYC 9R14 96-Core Processor"}
AMD_ZEN5 = {"vendor_id": "AuthenticAMD", "cpu family": "26", "model name": "AMD EPYC 9B45 128-Core Processor"}
XEON = {"vendor_id": "GenuineIntel", "cpu family": "6", "model name": "Intel(R) Xeon(R) Platinum 8488C"}
CORE = {"vendor_id": "GenuineIntel", "model name": "Intel(R) Core(TM) i7-12700"}
AVX2 = frozenset({"avx", "avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16"}
SAPPHIRE = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize(
    ("fields", "flags", "kind"),
    [
        (AMD, AVX2, "amd-epyc-avx2"),
        (AMD, ZEN4, "amd-epyc-avx512-bf16"),
        ({"vendor_id": "AuthenticAMD", "model name": "AMD EPYC"}, ZEN4, "amd-epyc-avx512-bf16"),
        (XEON, SAPPHIRE, "intel-xeon-amx"),
        (XEON, AVX2 | {"avx512f", "avx512_vnni"}, "intel-xeon-avx512-vnni"),
        ({"vendor_id": "GenuineIntel", "model name": "Common KVM processor"}, AVX2, "intel-avx2"),
        (CORE, AVX2 | {"avx_vnni"}, "intel-core-avx2-vnni"),
    ],
)  # fmt: skip
def test_cpu_kind_is_a_short_slug_of_vendor_line_and_widest_isa(fields: dict, flags: frozenset, kind: str) -> None:
    assert cpu_kind(fields, flags) == kind


def peaks_by_precision(flags: frozenset, fields: dict) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for peak in vector_peaks(flags, fields):
        found.setdefault(peak.precision, []).append((peak.isa, peak.ops_per_cycle))
    return found


def test_peak_follows_the_detected_isa() -> None:
    assert peaks_by_precision(AVX2, AMD) == {"fp32": [("AVX2 FMA, 2 x 256-bit", 32)]}  # no int8/bf16 peak known
    zen4 = peaks_by_precision(ZEN4, AMD)  # AVX-512 on 256-bit units: the fp32 peak of AVX2
    assert zen4["fp32"] == [("AVX-512 FMA, 2 x 256-bit", 32)]
    assert zen4["int8"] == [("AVX-512 VNNI", 128)] and zen4["bf16"] == [("AVX-512 BF16", 64)]
    assert peaks_by_precision(ZEN4, AMD_ZEN5)["fp32"] == [("AVX-512 FMA, 2 x 512-bit", 64)]
    xeon = peaks_by_precision(SAPPHIRE, XEON)
    assert xeon["fp32"] == [("AVX-512 FMA, 2 x 512-bit", 64)]
    assert xeon["int8"] == [("AVX-512 VNNI", 256), ("AMX int8", 2048)]
    assert xeon["bf16"] == [("AMX bf16", 1024)]
    assert vector_peaks(frozenset({"sse4_2"}), XEON) == []  # unknown, never another CPU's table


def test_peak_gops_is_cores_times_clock_times_ops() -> None:
    peaks = vector_peaks(AVX2, AMD)
    assert peak_gops("fp32", 2, peaks, clock=2600.0) == {"fp32 AVX2 FMA, 2 x 256-bit": pytest.approx(166.4)}
    assert peak_gops("int8", 2, peaks, clock=2600.0) == {}
    assert peak_gops("fp32", 2, peaks, clock=0) == {}


def test_clock_prefers_cpufreq_max_then_cpu_mhz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "CPUFREQ_MAX", tmp_path / "missing")
    assert environment.clock_mhz({"cpu MHz": "2596.1"}) == (2596.1, "/proc/cpuinfo cpu MHz")
    assert environment.clock_mhz({}) is None
    (tmp_path / "max").write_text("3700000\n")
    monkeypatch.setattr(environment, "CPUFREQ_MAX", tmp_path / "max")
    assert environment.clock_mhz({"cpu MHz": "2596.1"})[0] == 3700.0


def test_cpu_info_names_the_cpu_and_keeps_the_old_helpers() -> None:
    info = environment.cpu_info()
    assert info["kind"] == cpu_kind()
    assert set(info["flags"]) == set(environment.ACCELERATION_FLAGS)
    assert environment.acceleration_flags() == [flag for flag, present in info["flags"].items() if present]
    assert isinstance(environment.supports_bf16(), bool)
    assert environment.package_versions(("numpy",))["numpy"]
    assert environment.peak_rss_bytes() > 10_000_000


def test_cpu_fingerprint_is_the_model_kind_and_the_flags_that_pick_kernels() -> None:
    assert environment.cpu_fingerprint(AMD, AVX2 | {"sse4_2"}) == {
        "model": "AMD EPYC 9R14 96-Core Processor",
        "kind": "amd-epyc-avx2",
        "flags": ["avx2"],
    }
    xeon = environment.cpu_fingerprint(XEON, SAPPHIRE)
    assert xeon["kind"] == "intel-xeon-amx"
    assert xeon["flags"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    assert environment.cpu_fingerprint()["kind"] == cpu_kind()


def test_expand_cpu_list() -> None:
    assert expand_cpu_list("0-2,5") == [0, 1, 2, 5]
    assert expand_cpu_list("3") == [3]
