"""Prometheus metrics: the registry of one app, and the ASGI middleware that counts and times every response."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    """Prometheus metrics in a registry of their own (several apps can live in one process)."""

    def __init__(self, queue_depth: Callable[[], int], batches_running: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sst2dist_requests", "HTTP requests by path and status.", ["path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "sst2dist_request_latency_seconds",
            "Time from request to response, by path.",
            ["path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sst2dist_batch_size",
            "Texts per batch run by onnxruntime.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "sst2dist_batch_inference_seconds",
            "onnxruntime time per batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry,
        )
        self.queue_depth = Gauge("sst2dist_queue_depth", "Requests waiting for a batch.", registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self.batches_running = Gauge(
            "sst2dist_batches_running", "Batches running now (at most --workers).", registry=self.registry
        )
        self.batches_running.set_function(batches_running)
        self.in_flight = Gauge(
            "sst2dist_in_flight_requests", "Prediction requests received and not yet answered.", registry=self.registry
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


CLIENT_CLOSED = 499
KNOWN_PATHS = {"/", "/predict", "/health", "/ready", "/metrics", "/info", "/docs", "/openapi.json"}


class ObserveRequests:
    """ASGI middleware: count every HTTP response by path and status and time it (lighter than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), None
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except BaseException:
            status = status or 500
            raise
        finally:
            # No answer at all: the client hung up before there was one to send (nginx's 499).
            self.metrics.requests.labels(path, str(status or CLIENT_CLOSED)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
