"""How much the server admits and runs at once: the batching and admission limits, and the worker and thread counts."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeLimits:
    """Batching and admission limits; each one is a `sst2dist serve` flag of the same name."""

    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_ms: float = 0.0  # how long a free worker waits for a partial batch to fill; 0: run it at once
    max_client_batch: int = 64
    max_payload: int = 1_000_000
    max_queue: int = 256
    grace_period: float = 30.0
    workers: int = 1  # batches running at once, each on its own thread (onnxruntime sessions run concurrently)

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_batch_tokens", "max_client_batch", "max_payload", "max_queue", "workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "grace_period"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")


def default_workers() -> int:
    """One batch worker per core: onnxruntime is where the time goes. The event loop (HTTP, JSON) needs about
    0.4 ms of CPU per request, a tenth of a core at full load on 2 cores, so it gets no core of its own."""
    return max(1, os.cpu_count() or 1)


def default_threads(workers: int) -> int:
    """The cores shared out between the workers' onnxruntime runs."""
    return max(1, (os.cpu_count() or 1) // workers)
