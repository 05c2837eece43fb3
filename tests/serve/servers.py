"""Real `sst2dist serve` servers for the tests: `sst2dist serve` in a subprocess, or `create_app` on uvicorn in a
thread of the test process, each on a free loopback port; and the check of the one error shape."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from sst2dist.runtime import Classifier
from sst2dist.serve import ServeLimits, create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """What the tests need of a server: its URL, a client, and a wait for a path to answer 200."""

    url: str
    client: httpx.Client

    def alive(self) -> bool:
        return True

    def wait(self, path: str = "/ready", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), "the server stopped before answering"
            try:
                if self.client.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{path} never answered 200")


class Server(Running):
    """`sst2dist serve` in a subprocess on a free port."""

    def __init__(self, bundle: Path, *flags: str, env: dict[str, str] | None = None, headers: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "sst2dist.cli", "serve", str(bundle), "--port", str(self.port), *flags]
        self.process = subprocess.Popen(
            command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.client = httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"server exited early:\n{self.process.stdout.read()}")
        return True

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class InProcess(Running):
    """`create_app(classifier, limits)` on a real uvicorn, listening on a loopback socket, in a thread."""

    def __init__(self, classifier: Classifier, limits: ServeLimits):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        app = create_app(classifier, limits)
        self.service = app.state.service
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "error_type"}, body
    for word in words:
        assert word in body["error"], body
    return body


def wait_for_metric(server: Running, line: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while line not in server.client.get("/metrics").text:
        assert time.monotonic() < deadline, f"/metrics never showed {line!r}"
        time.sleep(0.01)
