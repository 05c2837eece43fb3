"""Running the app: `serve()` loads the bundle before binding the port, then runs uvicorn until a signal and a
drain."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from sst2dist.runtime import load_classifier
from sst2dist.serve.app import Service, create_app
from sst2dist.serve.limits import ServeOptions, default_threads

logger = logging.getLogger("sst2dist.serve")

# Python hands the GIL between threads every 5 ms by default: the event loop would wait that long for it after
# each onnxruntime call and the worker after each socket write. A short interval keeps both moving.
SWITCH_INTERVAL_S = 0.0005


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


def serve(bundle_dir: str | Path, options: ServeOptions | None = None, **fields: Any) -> None:
    """Load the bundle (failing before binding the port), then serve until SIGTERM/SIGINT and a drain. `options`
    may be given as ServeOptions fields instead (port=8081, limits=ServeLimits(max_queue=64), ...)."""
    options = replace(options, **fields) if options else ServeOptions(**fields)
    limits = options.limits
    # The batch workers are the parallelism: tokenizers' own thread pool would only compete with onnxruntime.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = default_threads(limits.workers) if options.threads is None else options.threads
    classifier = load_classifier(bundle_dir, options.variant, threads)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(classifier, limits)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        access_log=options.access_log,
        lifespan="on",
        timeout_graceful_shutdown=max(1, math.ceil(limits.grace_period)),
    )
    logger.info("serving %s on http://%s:%d, %s", bundle_dir, options.host, options.port, classifier.choice.line())
    DrainingServer(config, app.state.service).run()
