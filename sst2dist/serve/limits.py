"""How much the server admits and runs at once (`ServeLimits`: batching and admission limits, the worker count) and
how `sst2dist serve` runs (`ServeOptions`); each field is the flag of the same name. Standard library only, so the
command line reads it without importing FastAPI."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from sst2dist.config_fields import VARIANT_HELP, Options, nested, non_negative, option, positive
from sst2dist.environment import usable_cpus

API_KEY_ENV = "SST2DIST_API_KEY"


def api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV)


def finite(value: float) -> str | None:
    return None if math.isfinite(value) else "must be a finite number"


def tcp_port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port, 0 to 65535 (0: any free one)"


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's, in any case


def log_level(value: str) -> str | None:
    return None if value.lower() in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


def default_workers() -> int:
    """One batch worker per core: onnxruntime is where the time goes. The event loop (HTTP, JSON) needs about
    0.4 ms of CPU per request, a tenth of a core at full load on 2 cores, so it gets no core of its own."""
    return usable_cpus()


def default_threads(workers: int) -> int:
    """The cores shared out between the workers' onnxruntime runs."""
    return max(1, usable_cpus() // workers)


@dataclass(frozen=True)
class ServeLimits(Options):
    """Batching and admission limits, and the workers (batches running at once, each on its own thread: onnxruntime
    sessions run concurrently). `ServeLimits()` has one worker; `sst2dist serve` one per core."""

    max_batch_size: int = option(32, "Most texts merged into one batch.", checks=[positive])
    max_batch_tokens: int = option(8192, "Most padded tokens in one batch.", checks=[positive])
    max_wait_ms: float = option(
        0.0,
        "How long a free worker waits for a partial batch to fill (0: run what is queued at once).",
        checks=[non_negative, finite],
    )
    max_client_batch: int = option(64, "Most texts in one request (else 422).", checks=[positive])
    max_payload: int = option(1_000_000, "Largest request body in bytes (else 413).", checks=[positive])
    max_queue: int = option(256, "Most requests waiting (else 429 + Retry-After).", checks=[positive])
    grace_period: float = option(
        30.0,
        "Seconds to finish in-flight work on SIGTERM; then waiting requests answer 503 (a second signal: at once).",
        checks=[non_negative, finite],
    )
    workers: int = option(
        1,
        "Batches that run at once, one thread each (default: one per core).",
        checks=[positive],
        cli_default=default_workers,
    )


@dataclass(frozen=True)
class ServeOptions(Options):
    """`serve()`'s keyword arguments: where it listens, which variant runs on how many threads, the limits."""

    host: str = option("127.0.0.1", "Interface to bind (0.0.0.0: all).")
    port: int = option(8080, "TCP port.", checks=[tcp_port])
    variant: str | None = option(None, VARIANT_HELP)
    threads: int | None = option(
        None, "onnxruntime intra-op threads of each run (default: usable CPUs / workers).", checks=[positive]
    )
    limits: ServeLimits = nested(ServeLimits)
    log_level: str = option("info", f"uvicorn log level: {', '.join(LOG_LEVELS)}.", checks=[log_level])
    access_log: bool = option(False, "Log every request.", negatable=True, show_default=True)
    # repr=False and no `checks` (whose message would quote the value): the key is never printed.
    api_key: str | None = dataclasses.field(
        default=None,
        repr=False,
        metadata=option(
            None,
            f"Require Authorization: Bearer KEY on every route but /health. Prefer the {API_KEY_ENV} environment "
            "variable (used when this flag is absent): a flag shows in `ps`.",
            cli_default=api_key_from_env,
        ).metadata,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.api_key is not None and (problem := key_problem(self.api_key)):
            raise self.error(f"the API key (--api-key or {API_KEY_ENV}) {problem}")


def key_problem(key: str) -> str | None:
    """What makes `key` unusable in an Authorization header, without repeating the key."""
    if not key:
        return f"is empty: give a key, or leave --api-key and {API_KEY_ENV} unset to serve without one"
    if not key.isascii() or not key.isprintable() or " " in key:
        return "must be printable ASCII without spaces: it travels in an HTTP header"
    return None
