"""Running the app: `serve()` loads the bundle before binding the port, then runs uvicorn until a signal and a
drain."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from sst2dist.runtime import Classifier, limit_tokenizer_threads, load_classifier
from sst2dist.serve.app import Service, create_app
from sst2dist.serve.limits import ServeOptions, default_threads
from sst2dist.variant_choice import workload_for

logger = logging.getLogger("sst2dist.serve")

# Python hands the GIL between threads every 5 ms by default: the event loop would wait that long for it after
# each onnxruntime call and the worker after each socket write. A short interval keeps both moving.
SWITCH_INTERVAL_S = 0.0005
LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# After the drain, how long uvicorn may take to write the last answers (the 503s of requests cut off included).
SHUTDOWN_WRITE_S = 1.0


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains instead of stopping: /ready and new predictions answer
    503 at once, in-flight requests finish up to the grace period, then every request still waiting answers 503,
    the listener closes and the process exits 0 once a batch still running ends (uvicorn would re-raise the signal
    at exit instead). A second signal answers the waiting requests 503 and exits at once, with 128 + its number."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service
        self.forced_by: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags; on_tick, on the event loop, acts on them.
        name = signal.Signals(sig).name
        if self.service.draining:
            logger.warning("%s again: answering the waiting requests 503 and exiting now", name)
            self.forced_by = sig
            return
        logger.info("%s: draining for up to %.1fs", name, self.service.limits.grace_period)
        self.service.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if self.forced_by is not None or self.service.drained():
            self.service.cut_off()
            self.should_exit = True
            self.force_exit = self.forced_by is not None
        return await super().on_tick(counter)


def exit_now(code: int) -> None:
    """Exit without waiting for a batch still running on a worker thread (the interpreter would join it)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def load_for_serving(bundle_dir: str | Path, options: ServeOptions) -> Classifier:
    """The Classifier the workers share, chosen for their batch size, on `options.threads` threads per run."""
    # The batch workers are the parallelism: tokenizers' own thread pool would only compete with onnxruntime.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workers = options.limits.workers
    threads = default_threads(workers) if options.threads is None else options.threads
    # One tokenizer pool serves every worker (where TOKENIZERS_PARALLELISM is on): size it for all of them before
    # the Classifier would size it for one run.
    limit_tokenizer_threads(workers * threads)
    return load_classifier(bundle_dir, options.variant, threads, workload_for(options.limits.max_batch_size))


def serve(bundle_dir: str | Path, options: ServeOptions | None = None, **fields: Any) -> None:
    """Load the bundle (failing before binding the port), then serve until SIGTERM/SIGINT and a drain. `options`
    may be given as ServeOptions fields instead (port=8081, limits=ServeLimits(max_queue=64), ...)."""
    options = replace(options, **fields) if options else ServeOptions(**fields)
    limits = options.limits
    classifier = load_for_serving(bundle_dir, options)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(classifier, limits, options.api_key)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        access_log=options.access_log,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_WRITE_S,  # the drain itself is DrainingServer's
    )
    logger.info("serving %s on http://%s:%d, %s", bundle_dir, options.host, options.port, classifier.choice.line())
    if options.api_key is not None:
        logger.info("API key required on every route but /health")
    elif options.host not in LOOPBACK:
        logger.warning("no API key and listening on %s: anyone who can reach the port can use it", options.host)
    server = DrainingServer(config, app.state.service)
    server.run()
    if server.forced_by is not None:
        exit_now(128 + server.forced_by)
    wait_for_running_batches(app.state.service.batcher.executor)


def wait_for_running_batches(executor: ThreadPoolExecutor) -> None:
    """After the drain, a batch may still run on a worker thread: wait for it here, where a second signal exits at
    once (uvicorn has put the previous handlers back; SIGINT would raise KeyboardInterrupt in the interpreter's
    own wait at exit)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return executor.shutdown(wait=True)
    previous = {sig: signal.signal(sig, lambda number, frame: exit_now(128 + number)) for sig in EXIT_SIGNALS}
    try:
        executor.shutdown(wait=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
