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

Modules, in the order a request meets them: `body` (size, UTF-8, JSON), `protocol` (request models, answers,
errors), `app` (routes and shared state), `batcher` (queue and worker threads), `metrics` (Prometheus),
`server` (uvicorn, draining shutdown); `limits` holds the flags' dataclass.
"""

from sst2dist.runtime import load_classifier
from sst2dist.serve.app import Service, create_app
from sst2dist.serve.batcher import MicroBatcher, plan_chunks
from sst2dist.serve.limits import ServeLimits, default_threads, default_workers
from sst2dist.serve.protocol import InferenceRequest, PredictRequest, ServeError
from sst2dist.serve.server import DrainingServer, serve

__all__ = [
    "DrainingServer",
    "InferenceRequest",
    "MicroBatcher",
    "PredictRequest",
    "ServeError",
    "ServeLimits",
    "Service",
    "create_app",
    "default_threads",
    "default_workers",
    "load_classifier",  # from sst2dist.runtime; bench/load_bench.py imports it from here
    "plan_chunks",
    "serve",
]
