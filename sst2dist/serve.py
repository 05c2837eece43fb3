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
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from sst2dist import __version__
from sst2dist.predict import clean_text
from sst2dist.runtime import BundleError, Classifier, default_variant, read_manifest, softmax

logger = logging.getLogger("sst2dist.serve")

# Test-only hooks, read from the environment at app creation (documented in tests/test_serve.py):
# a batch holding this exact text is fed int64 ids as float32, so onnxruntime really fails on it;
FAULT_TEXT_ENV = "SST2DIST_TEST_FAULT_TEXT"
# the warm-up prediction sleeps this many seconds first, so that tests can see /ready answer 503;
WARMUP_DELAY_ENV = "SST2DIST_TEST_WARMUP_DELAY_S"
# every batch sleeps this many seconds on the worker first, so that tests can see requests pile up behind it.
BATCH_DELAY_ENV = "SST2DIST_TEST_BATCH_DELAY_S"

FUNCTIONS = ("softmax", "sigmoid", "none")
JSON = "application/json"


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


class ServeError(Exception):
    """An answer other than 200, always sent as {"error": message, "error_type": kind}."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message, self.headers = status, error_type, message, headers or {}


def invalid(message: str) -> ServeError:
    return ServeError(422, "validation", message)


def error_response(status: int, error_type: str, message: str, headers: dict | None = None) -> Response:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    return Response(body, status_code=status, media_type=JSON, headers=headers)


# --- requests -----------------------------------------------------------------------------------------


@dataclass
class Query:
    """One parsed request: the texts and how to present their scores."""

    texts: list[str]
    single: bool  # `inputs` was one string, not a list
    truncate: bool = True
    top_k: int | None = None
    function: str = "softmax"


def parse_inputs(inputs: object, max_client_batch: int) -> tuple[list[str], bool]:
    """`inputs` as texts. A list of one-string lists (TEI's batch form) is accepted; pairs are not."""
    if isinstance(inputs, str):
        return [check_text(inputs, "inputs")], True
    if not isinstance(inputs, list):
        raise invalid(f"inputs must be a string or a list of strings, got {json_type(inputs)}")
    if not inputs:
        raise invalid("inputs is an empty list: send at least one text")
    if len(inputs) > max_client_batch:
        raise invalid(
            f"inputs has {len(inputs)} texts, over this server's limit of {max_client_batch} per request "
            "(--max-client-batch): split it into smaller requests"
        )
    texts = []
    for index, item in enumerate(inputs):
        if isinstance(item, list) and len(item) == 1:
            item = item[0]
        elif isinstance(item, list):
            raise invalid(f"inputs[{index}] is a list of {len(item)}: sentence pairs are not supported")
        if not isinstance(item, str):
            raise invalid(f"inputs[{index}] must be a string, got {json_type(item)}")
        texts.append(check_text(item, f"inputs[{index}]"))
    return texts, False


def check_text(text: str, where: str) -> str:
    """The documented rule: empty or whitespace-only texts are rejected (422); lone surrogates become U+FFFD."""
    if not text.strip():
        raise invalid(f"{where} is empty or whitespace-only: send text to classify")
    return clean_text(text)


def parse_tei(payload: object, limits: ServeLimits) -> Query:
    """`POST /predict`: {"inputs": str | [str], "truncate": bool, "raw_scores": bool, "top_k": int}."""
    payload = require_object(payload, ("inputs", "truncate", "raw_scores", "top_k", "truncation_direction"))
    texts, single = parse_inputs(payload["inputs"], limits.max_client_batch)
    if payload.get("truncation_direction", "right") not in ("right", "Right"):
        raise invalid("truncation_direction must be 'right': this server only truncates on the right")
    raw = optional_bool(payload, "raw_scores", False)
    return Query(
        texts, single, optional_bool(payload, "truncate", True), optional_top_k(payload), "none" if raw else "softmax"
    )


def parse_hf(payload: object, limits: ServeLimits) -> Query:
    """`POST /`: {"inputs": str | [str], "parameters": {"top_k": int, "function_to_apply": str}}."""
    payload = require_object(payload, ("inputs", "parameters", "options"))
    texts, single = parse_inputs(payload["inputs"], limits.max_client_batch)
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid(f"parameters must be an object, got {json_type(parameters)}")
    unknown = set(parameters) - {"top_k", "function_to_apply", "truncation"}
    if unknown:
        raise invalid(f"parameters.{sorted(unknown)[0]} is not supported: use top_k, function_to_apply or truncation")
    function = parameters.get("function_to_apply") or "softmax"
    if function not in FUNCTIONS:
        raise invalid(f"parameters.function_to_apply must be one of {', '.join(FUNCTIONS)}, got {function!r}")
    top_k = optional_top_k(parameters, "parameters.top_k")
    truncate = optional_bool(parameters, "truncation", True, "parameters.truncation")
    return Query(texts, single, truncate=truncate, top_k=top_k, function=function)


def require_object(payload: object, known: Sequence[str]) -> dict:
    if not isinstance(payload, dict):
        raise invalid(f"the body must be a JSON object with an inputs field, got {json_type(payload)}")
    if "inputs" not in payload:
        raise invalid('inputs is missing: send {"inputs": "some text"}')
    unknown = set(payload) - set(known)
    if unknown:
        raise invalid(f"{sorted(unknown)[0]} is not a known field: known fields are {', '.join(known)}")
    return payload


def optional_bool(payload: dict, name: str, default: bool, where: str | None = None) -> bool:
    value = payload.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{where or name} must be true or false, got {json_type(value)}")
    return value


def optional_top_k(payload: dict, name: str = "top_k") -> int | None:
    value = payload.get(name.rsplit(".", 1)[-1])
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"{name} must be a positive integer, got {json.dumps(value)}")
    return value


def json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


async def read_json(request: Request, max_payload: int) -> object:
    """The body as JSON: 413 past `max_payload` bytes (checked while streaming), 400 unless UTF-8 JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_payload:
        raise payload_too_large(int(declared), max_payload)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_payload:
            raise payload_too_large(len(body), max_payload)
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        message = f"the body is not valid UTF-8 (byte {err.start}): send UTF-8 JSON"
        raise ServeError(400, "bad_request", message) from None
    except json.JSONDecodeError as err:
        raise ServeError(400, "bad_request", f"the body is not valid JSON ({err}): send a JSON object") from None


def payload_too_large(size: int, limit: int) -> ServeError:
    return ServeError(
        413, "payload_too_large", f"the body has {size}+ bytes, over the limit of {limit} (--max-payload)"
    )


def present(scores: np.ndarray, labels: Sequence[str], top_k: int | None) -> list[dict]:
    """One text's scores as [{"label", "score"}], best first, the first `top_k` of them."""
    order = np.argsort(-scores, kind="stable")[: top_k or len(labels)]
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    if function == "softmax":
        return softmax(logits)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


# --- micro-batching -------------------------------------------------------------------------------------


@dataclass
class Job:
    """One request's texts on their way through the queue and a worker thread."""

    texts: list[str]
    truncate: bool
    single: bool  # for error messages: "inputs" or "inputs[i]"
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    tokenize_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 0
    logits: np.ndarray | None = None
    error: Exception | None = None

    @property
    def estimated_tokens(self) -> int:
        """A cheap guess (about 4 characters a token) used to pack requests; exact counts come in the worker."""
        return max(len(text) for text in self.texts) // 4 + 2

    def check_lengths(self, counts: Sequence[int], limit: int) -> None:
        """With truncate=false, a text over the model's limit fails its request with a 422."""
        for index, count in enumerate(counts):
            if not self.truncate and count > limit:
                where = "inputs" if self.single else f"inputs[{index}]"
                raise invalid(
                    f"{where} has {count} tokens, over the model's limit of {limit}: shorten it or send truncate=true"
                )


# What one onnxruntime call costs beyond its padded tokens, in tokens: splitting a batch into length groups
# pays off when it saves more padding than this per extra call. Measured on SST-2 validation batches of 4-16
# random sentences, one onnxruntime thread (the default per worker), static int8: 8-16 tokens gave the lowest
# time per sentence, about 8 % below 32 and 10 % below no split at all.
CALL_COST_TOKENS = 12


def plan_chunks(token_counts: Sequence[int], max_size: int, max_tokens: int) -> list[list[int]]:
    """Group text indices into onnxruntime calls: sorted by length, then split where it saves padding.

    Each group holds at most `max_size` texts and `len(group) * longest <= max_tokens` padded tokens (a single
    text always fits); the split minimizes the sum over groups of CALL_COST_TOKENS + len(group) * longest
    (dynamic programming over the sorted lengths: at most max_size^2 steps per batch).
    """
    order = sorted(range(len(token_counts)), key=token_counts.__getitem__)
    lengths = [token_counts[i] for i in order]
    best = [0.0] + [math.inf] * len(order)  # best[j]: cheapest plan for the first j sorted texts
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end - 1, max(end - max_size, 0) - 1, -1):
            size, longest = end - start, lengths[end - 1]
            if size > 1 and size * longest > max_tokens:
                break
            cost = best[start] + CALL_COST_TOKENS + size * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


class MicroBatcher:
    """A bounded queue of jobs, drained into batches; up to `workers` batches run at once, one per worker thread.

    Several single-threaded onnxruntime runs side by side beat one run spread over the same cores: a
    MiniLM-sized model on one sentence keeps one core busy but spends much of a second one synchronizing
    (bench/results/load_bench.md)."""

    def __init__(self, classifier: Classifier, limits: ServeLimits, on_batch: Callable[[int, float], None]):
        self.classifier, self.limits, self.on_batch = classifier, limits, on_batch
        self.pending: deque[Job] = deque()
        self.executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="onnxruntime")
        self._free_workers = asyncio.Semaphore(limits.workers)
        self.running: set[asyncio.Task] = set()
        self.fault_text = os.environ.get(FAULT_TEXT_ENV)
        self.batch_delay_s = float(os.environ.get(BATCH_DELAY_ENV, "0"))
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=True)

    def submit(self, job: Job) -> None:
        if len(self.pending) >= self.limits.max_queue:
            raise ServeError(
                429,
                "overloaded",
                f"the queue is full ({self.limits.max_queue} requests, --max-queue): retry shortly",
                {"Retry-After": "1"},
            )
        self.pending.append(job)
        self._arrived.set()

    async def run_in_worker(self, function: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def _run_forever(self) -> None:
        while True:
            if not self.pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._free_workers.acquire()
            await self._wait_for_more()
            task = asyncio.create_task(self._run_batch(self._take_batch()))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run_batch(self, batch: list[Job]) -> None:
        try:
            await self.run_in_worker(self._execute, batch)
        except Exception as err:  # a bug, not an onnxruntime error (those stay inside _execute)
            logger.exception("the batch worker failed")
            for job in batch:
                job.error = job.error or err
        finally:
            self._free_workers.release()
        for job in batch:
            self._settle(job)

    async def _wait_for_more(self) -> None:
        """Give a not-yet-full batch until `max_wait_ms` after its oldest request arrived to fill up.

        The default wait is 0: on a CPU a batch costs about as much per text as single texts do (see
        bench/results/load_bench.md), so a free worker gains nothing by idling; under load, the requests that
        arrive while a batch runs are batched anyway."""
        if self.limits.max_wait_ms <= 0:
            return
        deadline = self.pending[0].enqueued + self.limits.max_wait_ms / 1000
        while sum(len(job.texts) for job in self.pending) < self.limits.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[Job]:
        """The oldest jobs, within the limits and within this worker's share of the queue: a worker that took
        everything would leave the next free one idle while it works through the whole queue alone."""
        share = math.ceil(sum(len(job.texts) for job in self.pending) / self.limits.workers)
        max_size = max(1, min(self.limits.max_batch_size, share))
        batch = [self.pending.popleft()]
        size, longest = len(batch[0].texts), batch[0].estimated_tokens
        while self.pending:
            job = self.pending[0]
            new_size, new_longest = size + len(job.texts), max(longest, job.estimated_tokens)
            if new_size > max_size or new_size * new_longest > self.limits.max_batch_tokens:
                break
            batch.append(self.pending.popleft())
            size, longest = new_size, new_longest
        return batch

    def _execute(self, batch: list[Job]) -> None:
        """Worker thread: run the batch; if onnxruntime fails on it, rerun each request alone to isolate it.

        Token counting happens here, once per batch, rather than per request on the event loop: tokenizers
        releases the GIL, and every release on the event loop's thread costs it a GIL hand-over."""
        if self.batch_delay_s:
            time.sleep(self.batch_delay_s)
        started = time.perf_counter()
        counts = self.classifier.token_counts([text for job in batch for text in job.texts])
        counted = time.perf_counter()
        limit, offset, admitted = self.classifier.max_length, 0, []
        for job in batch:
            job_counts, offset = counts[offset : offset + len(job.texts)], offset + len(job.texts)
            try:
                job.check_lengths(job_counts, limit)
            except ServeError as err:
                job.error = err
                continue
            admitted.append((job, [min(count, limit) for count in job_counts]))
        if admitted:
            self._run_jobs(admitted, started, counted - started)

    def _run_jobs(self, admitted: list[tuple[Job, list[int]]], started: float, counting_s: float) -> None:
        batch = [job for job, _ in admitted]
        texts = [text for job in batch for text in job.texts]
        counts = [count for _, job_counts in admitted for count in job_counts]
        try:
            logits, tokenize_s, inference_s = self._infer(texts, counts)
            tokenize_s += counting_s
        except Exception as err:
            if len(batch) > 1:
                for pair in admitted:
                    self._run_jobs([pair], started, counting_s)
                return
            logger.exception("inference failed on a batch of %d texts", len(texts))
            batch[0].error = err
            return
        self.on_batch(len(texts), inference_s)
        offset = 0
        for job in batch:
            job.logits = logits[offset : offset + len(job.texts)]
            offset += len(job.texts)
            job.started, job.tokenize_s, job.inference_s, job.batch_size = started, tokenize_s, inference_s, len(texts)

    def _infer(self, texts: list[str], counts: list[int]) -> tuple[np.ndarray, float, float]:
        tokenize_s = inference_s = 0.0
        logits = np.empty((len(texts), len(self.classifier.labels)), dtype=np.float32)
        for group in plan_chunks(counts, self.limits.max_batch_size, self.limits.max_batch_tokens):
            begin = time.perf_counter()
            chunk = [texts[i] for i in group]
            encoded = self.classifier.encode(chunk)
            if self.fault_text is not None and self.fault_text in chunk:
                encoded["input_ids"] = encoded["input_ids"].astype(np.float32)
            middle = time.perf_counter()
            logits[group] = self.classifier.run(encoded)
            tokenize_s, inference_s = tokenize_s + middle - begin, inference_s + time.perf_counter() - middle
        return logits, tokenize_s, inference_s

    @staticmethod
    def _settle(job: Job) -> None:
        if job.future.done():  # the client went away
            return
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job)


# --- the app -----------------------------------------------------------------------------------------


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


class Service:
    """What the endpoints share: the classifier, the batcher, the metrics and the ready/draining state."""

    def __init__(self, classifier: Classifier, limits: ServeLimits):
        self.classifier, self.limits = classifier, limits
        self.metrics = Metrics(lambda: len(self.batcher.pending), lambda: len(self.batcher.running))
        self.batcher = MicroBatcher(classifier, limits, self.metrics.observe_batch)
        self.ready = False
        self.not_ready_reason = "the model is warming up"
        self.draining = False
        self.drain_deadline = math.inf
        self.in_flight = 0

    async def warm_up(self) -> None:
        try:
            await asyncio.sleep(float(os.environ.get(WARMUP_DELAY_ENV, "0")))
            await self.batcher.run_in_worker(self.classifier.predict, ["warm-up prediction", "a second one"])
        except Exception as err:
            self.not_ready_reason = f"the warm-up prediction failed: {err}"
            logger.exception("warm-up prediction failed; /ready stays 503")
            return
        self.ready = True
        logger.info("model warmed up; ready")

    def begin_drain(self) -> None:
        self.draining, self.ready = True, False
        self.not_ready_reason = "the server is shutting down"
        self.drain_deadline = time.monotonic() + self.limits.grace_period

    def drained(self) -> bool:
        return self.draining and (self.in_flight == 0 or time.monotonic() > self.drain_deadline)

    def check_admission(self) -> None:
        if not self.ready:
            raise ServeError(503, "unavailable", f"{self.not_ready_reason}: retry shortly", {"Retry-After": "1"})

    async def classify(self, query: Query) -> tuple[list[list[dict]], dict[str, str]]:
        """Scores for every text of a query, and the timing headers of the batch that ran it."""
        self.check_admission()
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            job = Job(query.texts, query.truncate, query.single, asyncio.get_running_loop().create_future())
            self.batcher.submit(job)
            try:
                await job.future
            except ServeError:
                raise
            except Exception as err:
                raise ServeError(
                    500, "backend", f"inference failed for this request ({type(err).__name__}: {err})"
                ) from err
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
        scores = apply_function(job.logits, query.function)
        answers = [present(row, self.classifier.labels, query.top_k) for row in scores]
        return answers, timing_headers(job)

    def info(self) -> dict:
        manifest = self.classifier.manifest
        return {
            "version": __version__,
            "model": manifest.get("model_name") or manifest.get("source_model") or manifest.get("model"),
            "bundle": str(self.classifier.bundle_dir),
            "variant": self.classifier.variant,
            "labels": self.classifier.labels,
            "max_length": self.classifier.max_length,
            "manifest": summarize(manifest),
            "limits": asdict(self.limits),
        }


def timing_headers(job: Job) -> dict[str, str]:
    """TEI's header names, in milliseconds; tokenization and inference are those of the whole batch."""
    return {
        "x-queue-time": f"{(job.started - job.enqueued) * 1000:.3f}",
        "x-tokenization-time": f"{job.tokenize_s * 1000:.3f}",
        "x-inference-time": f"{job.inference_s * 1000:.3f}",
        "x-batch-size": str(job.batch_size),
    }


def summarize(manifest: dict) -> dict:
    """The manifest's top-level scalars and, per variant, its scalars (hashes and CPU flags left out)."""

    def scalars(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if isinstance(v, str | int | float | bool) and "sha" not in k}

    variants = manifest.get("variants", {})
    summary = scalars(manifest)
    summary["variants"] = {name: scalars(entry) for name, entry in variants.items() if isinstance(entry, dict)}
    return summary


KNOWN_PATHS = {"/", "/predict", "/health", "/ready", "/metrics", "/info", "/docs", "/openapi.json"}


class ObserveRequests:
    """ASGI middleware: count every HTTP response by path and status and time it (lighter than BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


LABEL_SCORES = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
        "required": ["label", "score"],
    },
}
INPUTS = {
    "oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
    "description": "One text, or a list of texts (a batch; unlike TEI, a two-string list is NOT a sentence pair).",
}
TEI_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "inputs": INPUTS,
        "truncate": {"type": "boolean", "default": True, "description": "false: 422 for a text over the limit"},
        "raw_scores": {"type": "boolean", "default": False, "description": "true: logits instead of softmax"},
        "top_k": {"type": "integer", "minimum": 1, "description": "keep the k best labels (default: all)"},
    },
    "example": {"inputs": "a gripping, funny film"},
}
HF_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "inputs": INPUTS,
        "parameters": {
            "type": "object",
            "properties": {
                "top_k": {"type": "integer", "minimum": 1},
                "function_to_apply": {"type": "string", "enum": list(FUNCTIONS), "default": "softmax"},
                "truncation": {"type": "boolean", "default": True},
            },
        },
    },
    "example": {"inputs": "a gripping, funny film", "parameters": {"top_k": 1}},
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
    "required": ["error", "error_type"],
}


def openapi_body(schema: dict, answer: dict, description: str) -> dict:
    errors = {
        str(code): {"description": text, "content": {JSON: {"schema": ERROR_SCHEMA}}}
        for code, text in [
            (400, "malformed JSON or a non-UTF-8 body"),
            (413, "body over --max-payload"),
            (422, "invalid inputs or parameters"),
            (429, "queue full; see Retry-After"),
            (500, "inference failed"),
            (503, "warming up or shutting down"),
        ]
    }
    return {
        "requestBody": {"required": True, "content": {JSON: {"schema": schema}}},
        "responses": {"200": {"description": description, "content": {JSON: {"schema": answer}}}, **errors},
    }


def json_response(content: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(content).encode(), status_code=status, media_type=JSON, headers=headers)


def create_app(classifier: Classifier, limits: ServeLimits | None = None) -> FastAPI:
    """The ASGI app around a loaded classifier; the worker, warm-up and metrics start with its lifespan."""
    service = Service(classifier, limits or ServeLimits())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        warm_up = asyncio.get_running_loop().create_task(service.warm_up())
        yield
        warm_up.cancel()
        await service.batcher.stop()

    app = FastAPI(
        title="sst2dist",
        version=__version__,
        description="SST-2 sentiment classification from an ONNX bundle, micro-batched on CPU.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(ServeError)
    async def on_serve_error(request: Request, err: ServeError) -> Response:
        return error_response(err.status, err.error_type, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http")
        return error_response(err.status_code, kind, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, err: RequestValidationError) -> Response:
        return error_response(422, "validation", str(err.errors()))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, err: Exception) -> Response:
        logger.exception("unexpected error")
        return error_response(500, "internal", f"internal error ({type(err).__name__}): see the server log")

    async def answer(request: Request, parse: Callable[[object, ServeLimits], Query], nest_single: bool):
        service.check_admission()
        query = parse(await read_json(request, service.limits.max_payload), service.limits)
        answers, headers = await service.classify(query)
        if query.single and not nest_single:
            return json_response(answers[0], headers=headers)
        return json_response(answers, headers=headers)

    @app.post(
        "/predict",
        summary="Classify text (text-embeddings-inference style)",
        openapi_extra=openapi_body(
            TEI_SCHEMA,
            {"oneOf": [LABEL_SCORES, {"type": "array", "items": LABEL_SCORES}]},
            "one string: a list of {label, score}, best first; a list: one such list per text",
        ),
    )
    async def predict(request: Request) -> Response:
        return await answer(request, parse_tei, nest_single=False)

    @app.post(
        "/",
        summary="Classify text (Hugging Face Inference API text-classification)",
        openapi_extra=openapi_body(
            HF_SCHEMA, {"type": "array", "items": LABEL_SCORES}, "a list holding one list of {label, score} per text"
        ),
    )
    async def inference_api(request: Request) -> Response:
        return await answer(request, parse_hf, nest_single=True)

    @app.get("/health", summary="Liveness: 200 while the process serves HTTP")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready", summary="Readiness: 200 once warmed up; 503 before that and while draining")
    async def ready() -> Response:
        service.check_admission()
        return json_response({"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", summary="Model, variant, manifest summary and limits")
    async def info() -> Response:
        return json_response(service.info())

    app.add_middleware(ObserveRequests, metrics=service.metrics)
    return app


# --- running it ---------------------------------------------------------------------------------------


def load_classifier(bundle_dir: str | Path, variant: str | None = None, threads: int | None = None) -> Classifier:
    """The bundle's classifier, or a BundleError saying what is wrong with it (before any port is bound)."""
    try:
        variant = variant or default_variant(read_manifest(bundle_dir), batch_invariant=True)
        return Classifier(bundle_dir, variant=variant, threads=threads)
    except BundleError:
        raise
    except ValueError as err:
        raise BundleError(str(err)) from err
    except Exception as err:  # onnxruntime raises its own classes for a corrupt model file
        raise BundleError(
            f"could not load {bundle_dir} ({type(err).__name__}: {str(err)[:300]}): the bundle looks corrupt; "
            "export it again with `sst2dist export-onnx`"
        ) from err


# Python hands the GIL between threads every 5 ms by default: the event loop would wait that long for it after
# each onnxruntime call and the worker after each socket write. A short interval keeps both moving.
SWITCH_INTERVAL_S = 0.0005


def default_workers() -> int:
    """One batch worker per core: onnxruntime is where the time goes. The event loop (HTTP, JSON) needs about
    0.4 ms of CPU per request, a tenth of a core at full load on 2 cores, so it gets no core of its own."""
    return max(1, os.cpu_count() or 1)


def default_threads(workers: int) -> int:
    """The cores shared out between the workers' onnxruntime runs."""
    return max(1, (os.cpu_count() or 1) // workers)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains instead of stopping: /ready and new predictions answer
    503 at once, in-flight requests finish (up to the grace period), then the listener closes and the process
    exits 0 (uvicorn would re-raise the signal at exit instead). A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.service.draining:
            self.should_exit = self.force_exit = True
            return
        name = signal.Signals(sig).name
        logger.info("%s: draining for up to %.1fs", name, self.service.limits.grace_period)
        self.service.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if self.service.drained():
            self.should_exit = True
        return await super().on_tick(counter)


def serve(
    bundle_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    variant: str | None = None,
    threads: int | None = None,
    limits: ServeLimits | None = None,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Load the bundle (failing before binding the port), then serve until SIGTERM/SIGINT and a drain."""
    limits = limits or ServeLimits()
    # The batch workers are the parallelism: tokenizers' own thread pool would only compete with onnxruntime.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    classifier = load_classifier(bundle_dir, variant, default_threads(limits.workers) if threads is None else threads)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(classifier, limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=max(1, math.ceil(limits.grace_period)),
    )
    logger.info("serving %s (variant %s) on http://%s:%d", bundle_dir, classifier.variant, host, port)
    DrainingServer(config, app.state.service).run()
