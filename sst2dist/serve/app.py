"""The FastAPI app: the service state the endpoints share (classifier, batcher, metrics, ready and draining), the
routes, and the handlers that give every error one shape."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from sst2dist import __version__
from sst2dist.runtime import Classifier
from sst2dist.serve.auth import BearerAuth, document_bearer_auth
from sst2dist.serve.batcher import Job, MicroBatcher
from sst2dist.serve.body import JsonBody
from sst2dist.serve.limits import ServeLimits
from sst2dist.serve.metrics import Metrics, ObserveRequests
from sst2dist.serve.protocol import (
    CLASSIFY_RESPONSES,
    ERROR_RESPONSES,
    InferenceAnswer,
    InferenceRequest,
    PredictAnswer,
    PredictRequest,
    Query,
    ServeError,
    apply_function,
    error_response,
    json_response,
    present,
    request_models,
    validation_failure,
)

logger = logging.getLogger("sst2dist.serve")
CLASSIFY_PATHS = ("/predict", "/")
UNPARSABLE = (
    "the body could not be parsed: its JSON is nested too deeply or holds a number too long for Python "
    '(over 4300 digits); send a plain JSON object such as {"inputs": "some text"}'
)


class Service:
    """What the endpoints share: the classifier, the batcher, the metrics and the ready/draining state."""

    def __init__(self, classifier: Classifier, limits: ServeLimits):
        self.classifier, self.limits = classifier, limits
        self.metrics = Metrics(lambda: len(self.batcher.pending), lambda: len(self.batcher.running))
        self.batcher = MicroBatcher(classifier, limits, self.metrics.observe_batch)
        self.ready = False
        self.not_ready_reason = "the model is warming up: retry shortly"
        self.draining = False
        self.drain_deadline = math.inf
        self.in_flight = 0
        self.waiting: set[Job] = set()
        self.api_key_required = False

    async def warm_up(self) -> None:
        try:
            await self.batcher.run_in_worker(self.classifier.predict, ["warm-up prediction", "a second one"])
        except Exception as err:
            self.not_ready_reason = (
                f"the warm-up prediction failed ({type(err).__name__}): the server log says why; fix it and restart"
            )
            logger.exception("warm-up prediction failed; /ready stays 503")
            return
        if self.draining or not self.batcher.alive:  # a drain or a dead dispatcher has the last word
            return
        self.ready = True
        logger.info("model warmed up; ready")

    def stop_serving(self, reason: str) -> None:
        """From now on /ready and every prediction answer 503 with `reason`, one sentence (the dispatcher died)."""
        self.ready, self.not_ready_reason = False, reason

    def begin_drain(self) -> None:
        self.draining, self.ready = True, False
        self.not_ready_reason = "the server is shutting down: retry shortly"
        self.drain_deadline = time.monotonic() + self.limits.grace_period

    def drained(self) -> bool:
        return self.draining and (self.in_flight == 0 or time.monotonic() > self.drain_deadline)

    def cut_off(self) -> None:
        """The grace period is over: every request still waiting answers 503 now (a batch still running finishes
        on its thread, its answers unsent)."""
        error = ServeError(
            503,
            "unavailable",
            "the server is shutting down and its grace period ran out before this request was answered: retry it",
            {"Retry-After": "1"},
        )
        for job in list(self.waiting):
            if not job.future.done():
                job.future.set_exception(error)
        self.batcher.pending.clear()

    def check_admission(self) -> None:
        if not self.ready:
            raise ServeError(503, "unavailable", self.not_ready_reason, {"Retry-After": "1"})

    async def classify(self, query: Query, request: Request) -> tuple[list[list[dict]], dict[str, str]]:
        """Scores for every text of a query, and the timing headers of the batch that ran it."""
        self.check_admission()
        future = asyncio.get_running_loop().create_future()
        job = Job(query.texts, query.truncate, query.single, future, query.truncate_hint)
        self.batcher.submit(job)
        self.in_flight += 1
        self.metrics.in_flight.inc()
        self.waiting.add(job)
        try:
            await self.outcome(job, request)
        finally:
            self.waiting.discard(job)
            self.in_flight -= 1
            self.metrics.in_flight.dec()
        scores = apply_function(job.logits, query.function)
        answers = [present(row, self.classifier.labels, query.top_k) for row in scores]
        return answers, timing_headers(job)

    async def outcome(self, job: Job, request: Request) -> None:
        """Wait for the job's batch, or for the client to hang up: a job still queued then never runs."""
        gone = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.batcher.drop(job)
            raise
        finally:
            gone.cancel()
        if not job.future.done():
            queued = self.batcher.drop(job)
            job.future.cancel()
            logger.info("client closed the connection %s", "while queued: dropped" if queued else "while its batch ran")
            raise ServeError(499, "client_closed", "the client closed the connection before its answer was ready")
        try:
            job.future.result()
        except ServeError:
            raise
        except Exception as err:  # the engine's message stays in the server log (logged where it failed)
            raise ServeError(
                500, "backend", f"inference failed for this request ({type(err).__name__}): see the server log"
            ) from err

    def info(self) -> dict:
        manifest = self.classifier.manifest
        return {
            "version": __version__,
            "model": (manifest.get("source") or {}).get("model_dir") or self.classifier.bundle_dir.name,
            "bundle": str(self.classifier.bundle_dir),
            "variant": self.classifier.variant,
            "variant_choice": self.classifier.choice.as_dict(),
            "labels": self.classifier.labels,
            "max_length": self.classifier.max_length,
            "manifest": manifest_scalars(manifest),
            "limits": asdict(self.limits),
            "api_key_required": self.api_key_required,
        }


async def client_gone(request: Request) -> None:
    """Returns once the client has hung up (the body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def timing_headers(job: Job) -> dict[str, str]:
    """TEI's header names, in milliseconds; tokenization and inference are those of the whole batch."""
    return {
        "x-queue-time": f"{(job.started - job.enqueued) * 1000:.3f}",
        "x-tokenization-time": f"{job.tokenize_s * 1000:.3f}",
        "x-inference-time": f"{job.inference_s * 1000:.3f}",
        "x-batch-size": str(job.batch_size),
    }


def manifest_scalars(manifest: dict) -> dict:
    """The manifest's top-level scalars and, per variant, its scalars (hashes and CPU flags left out)."""

    def scalars(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if isinstance(v, str | int | float | bool) and "sha" not in k}

    variants = manifest.get("variants", {})
    kept = scalars(manifest)
    kept["variants"] = {name: scalars(entry) for name, entry in variants.items() if isinstance(entry, dict)}
    return kept


def create_app(classifier: Classifier, limits: ServeLimits | None = None, api_key: str | None = None) -> FastAPI:
    """The ASGI app around a loaded classifier; the worker, warm-up and metrics start with its lifespan. With
    `api_key`, every route but /health needs `Authorization: Bearer <api_key>` (`auth`)."""
    service = Service(classifier, limits or ServeLimits())
    service.api_key_required = api_key is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start(service.stop_serving)
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
    add_error_handlers(app)
    add_classify_routes(app, service)
    add_operations_routes(app, service)
    app.add_middleware(JsonBody, max_payload=service.limits.max_payload, paths=CLASSIFY_PATHS)
    if api_key is not None:  # outside JsonBody: no body is read for a caller without the key; 401s are counted
        app.add_middleware(BearerAuth, api_key=api_key)
        default_openapi = app.openapi
        app.openapi = lambda: document_bearer_auth(default_openapi())
    app.add_middleware(ObserveRequests, metrics=service.metrics)
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def on_serve_error(request: Request, err: ServeError) -> Response:
        return error_response(err.status, err.error_type, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException) -> Response:
        if err.status_code == 400 and err.__cause__ is not None:  # FastAPI's json.loads failed, not on the syntax
            return error_response(400, "bad_request", UNPARSABLE)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http")
        return error_response(err.status_code, kind, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, err: RequestValidationError) -> Response:
        failure = validation_failure(err.errors())
        return error_response(failure.status, failure.error_type, failure.message)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, err: Exception) -> Response:
        logger.exception("unexpected error")
        return error_response(500, "internal", f"internal error ({type(err).__name__}): see the server log")


def add_classify_routes(app: FastAPI, service: Service) -> None:
    async def admit() -> None:  # async: FastAPI would run a plain function on its thread pool
        service.check_admission()

    # Dependencies run before the body is validated: a server that is not ready answers 503 whatever was sent.
    admitted = [Depends(admit)]
    predict_model, inference_model = request_models(service.limits.max_client_batch)

    async def answer(query: Query, request: Request, nest_single: bool) -> Response:
        answers, headers = await service.classify(query, request)
        return json_response(answers[0] if query.single and not nest_single else answers, headers=headers)

    async def predict(body: PredictRequest, request: Request) -> Response:
        return await answer(body.query(), request, nest_single=False)

    async def inference_api(body: InferenceRequest, request: Request) -> Response:
        return await answer(body.query(), request, nest_single=True)

    # The body models carry this server's --max-client-batch (maxItems in the schema), so they are built here.
    predict.__annotations__["body"], inference_api.__annotations__["body"] = predict_model, inference_model
    app.post(
        "/predict",
        summary="Classify text (text-embeddings-inference style)",
        response_model=PredictAnswer,
        response_description="one string: a list of {label, score}, best first; a list: one such list per text",
        responses=CLASSIFY_RESPONSES,
        dependencies=admitted,
    )(predict)
    app.post(
        "/",
        summary="Classify text (Hugging Face Inference API text-classification)",
        response_model=InferenceAnswer,
        response_description="a list holding one list of {label, score} per text, best first",
        responses=CLASSIFY_RESPONSES,
        dependencies=admitted,
    )(inference_api)


def add_operations_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health", summary="Liveness: 200 while the process serves HTTP")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get(
        "/ready",
        summary="Readiness: 200 once warmed up; 503 before that and while draining",
        responses={503: ERROR_RESPONSES[503]},
    )
    async def ready() -> Response:
        service.check_admission()
        return json_response({"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", summary="Model, variant and why it was chosen, manifest summary and limits")
    async def info() -> Response:
        return json_response(service.info())
