"""Serve a bundle over HTTP: FastAPI on uvicorn, one onnxruntime session fed by a dynamic micro-batcher.

    sst2dist serve export/minilm --port 8080
    curl -s localhost:8080/predict -d '{"inputs": "a gripping, funny film"}'

Endpoints: `POST /predict` (text-embeddings-inference style), `POST /` (Hugging Face Inference API
text-classification dialect), `GET /health`, `/ready`, `/metrics` (Prometheus), `/info`, `/docs`.
Concurrent requests wait in a bounded queue (full: 429 at once) and are merged into batches bounded by
size and padded tokens; the batches run on worker threads (`--workers`, one per core by default), off the
event loop, sharing the session. A free worker takes its share of the queue at once: requests that arrive while
batches run make up the next ones.
Every error answers `{"error": "...", "error_type": "..."}`. Imports no torch, transformers or optimum.

Modules, in the order a request meets them: `auth` (the API key), `body` (size, UTF-8, JSON), `protocol` (request
models, answers, errors), `app` (routes and shared state), `batcher` (queue and worker threads), `metrics`
(Prometheus), `server` (uvicorn, draining shutdown); `limits` holds the flags' dataclasses. The names below load on
first use, so the command line reads `limits` without importing FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {  # public name -> the module that defines it
    "DrainingServer": "sst2dist.serve.server",
    "serve": "sst2dist.serve.server",
    "Service": "sst2dist.serve.app",
    "create_app": "sst2dist.serve.app",
    "MicroBatcher": "sst2dist.serve.batcher",
    "plan_chunks": "sst2dist.serve.batcher",
    "ServeLimits": "sst2dist.serve.limits",
    "ServeOptions": "sst2dist.serve.limits",
    "default_threads": "sst2dist.serve.limits",
    "default_workers": "sst2dist.serve.limits",
    "InferenceRequest": "sst2dist.serve.protocol",
    "PredictRequest": "sst2dist.serve.protocol",
    "ServeError": "sst2dist.serve.protocol",
    "load_classifier": "sst2dist.runtime",  # bench/load_bench.py imports it from here
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
