"""bench/soak.py's windows: one in which no request completed has no latency (null), never 0.0 ms, and the soak
does not hold."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

BENCH_SCRIPTS = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH_SCRIPTS))
    import soak

    yield soak
    sys.modules.pop("soak", None)


def test_a_window_without_a_completed_request_reports_no_latency_and_does_not_hold(soak) -> None:
    loop = soak.OpenLoop(port=1, bodies=[b"{}"])
    loop.behind = 3  # requests were due, none completed
    empty = soak.sample(loop, os.getpid(), 10.0, 5.0)
    assert (empty.requests, empty.p50_ms, empty.p99_ms) == (0, None, None)
    loop.latencies = [0.010, 0.020, 0.030]
    busy = soak.sample(loop, os.getpid(), 15.0, 5.0)
    assert busy.p50_ms == pytest.approx(20.0) and busy.p99_ms == pytest.approx(29.8)
    args = argparse.Namespace(warmup=0, max_rss_growth=100.0)
    summary = soak.verdict([busy, empty], args)
    assert summary["worst_p99_ms"] == pytest.approx(29.8)
    assert summary["windows_without_a_completed_request"] == 1 and summary["holds"] is False
