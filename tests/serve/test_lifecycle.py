"""The server's life off the happy path, on real uvicorn servers on loopback: a partial batch that times out (the
Python 3.10 TimeoutError), a dispatcher that dies, clients that hang up, a warm-up that ends during a drain, and a
shutdown bounded by --grace-period (a real `sst2dist serve` process and real signals)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import InProcess, Server, assert_error, wait_for_metric
from test_serve import SENTENCES, VARIANT, Gated, start_gated

from sst2dist.runtime import Classifier
from sst2dist.serve import ServeLimits


@pytest.fixture
def gated(tiny_bundle_dir: Path) -> Gated:
    return Gated(tiny_bundle_dir, variant=VARIANT, threads=1)


def test_a_partial_batch_that_times_out_keeps_the_dispatcher_alive(tiny_bundle_dir: Path) -> None:
    """--max-wait-ms > 0: a lone request waits for batch mates, in vain. On Python 3.10 that wait ends with
    asyncio.TimeoutError (not the builtin TimeoutError): the dispatcher must survive it and serve the next ones."""
    running = InProcess(Classifier(tiny_bundle_dir, variant=VARIANT, threads=1), ServeLimits(max_wait_ms=20))
    try:
        running.wait()
        with httpx.Client(base_url=running.url, timeout=10) as client:
            for text in SENTENCES[:3]:
                assert client.post("/predict", json={"inputs": text}).status_code == 200
        assert running.service.batcher.alive
    finally:
        running.stop()


def test_a_dead_dispatcher_turns_the_server_503_never_a_hang(gated: Gated) -> None:
    running = start_gated(gated, workers=1)
    batcher = running.service.batcher
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            in_batch = pool.submit(running.client.post, "/predict", json={"inputs": SENTENCES[0]})
            wait_for_metric(running, "sst2dist_batches_running 1.0")
            queued = pool.submit(running.client.post, "/predict", json={"inputs": SENTENCES[1]})
            wait_for_metric(running, "sst2dist_queue_depth 1.0")
            batcher.dispatcher.get_loop().call_soon_threadsafe(batcher.dispatcher.cancel)  # it dies
            body = assert_error(queued.result(timeout=10), 503, "dispatcher stopped", "restart")
            assert "retry shortly" not in body["error"]  # this server will not recover
            assert_error(running.client.get("/ready"), 503, "dispatcher stopped")
            assert_error(running.client.post("/predict", json={"inputs": "after"}), 503, "dispatcher stopped")
            gated.gate.set()
            assert in_batch.result(timeout=10).status_code == 200  # the batch that was running still answers
    finally:
        gated.gate.set()
        running.stop()


def raw_post(url: str, body: bytes, declared: int | None = None) -> socket.socket:
    """A POST /predict sent by hand on a socket of its own, so that the test decides when the client hangs up."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {declared or len(body)}\r\n\r\n".encode() + body)
    return sock


def test_clients_that_hang_up_are_dropped_from_the_queue_and_counted_499(gated: Gated) -> None:
    running = start_gated(gated, workers=1)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_batch = pool.submit(running.client.post, "/predict", json={"inputs": SENTENCES[0]})
            wait_for_metric(running, "sst2dist_batches_running 1.0")
            hung_up = [raw_post(running.url, json.dumps({"inputs": text}).encode()) for text in SENTENCES[1:5]]
            wait_for_metric(running, "sst2dist_queue_depth 4.0")
            for sock in hung_up:
                sock.close()
            wait_for_metric(running, "sst2dist_queue_depth 0.0")  # dropped, while the worker is still busy
            gated.gate.set()
            assert in_batch.result(timeout=10).status_code == 200
        text = running.client.get("/metrics").text
        assert 'sst2dist_requests_total{path="/predict",status="499"} 4.0' in text, text
        assert 'status="500"' not in text and 'sst2dist_requests_total{path="/predict",status="200"} 1.0' in text
        assert "sst2dist_batch_size_count 1.0" in text, "a dropped request ran"
        assert "sst2dist_in_flight_requests 0.0" in text
    finally:
        gated.gate.set()
        running.stop()


@pytest.mark.parametrize("max_wait_ms", [0, 300])
def test_the_dispatcher_survives_a_queue_emptied_while_it_waits(gated: Gated, max_wait_ms: int) -> None:
    """The only queued client hangs up while the dispatcher waits for a free worker (or for batch mates): the
    dispatcher finds an empty queue, and must go on serving."""
    running = start_gated(gated, workers=1, max_wait_ms=max_wait_ms)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_batch = pool.submit(running.client.post, "/predict", json={"inputs": SENTENCES[0]})
            wait_for_metric(running, "sst2dist_batches_running 1.0")
            hung_up = raw_post(running.url, json.dumps({"inputs": SENTENCES[1]}).encode())
            wait_for_metric(running, "sst2dist_queue_depth 1.0")
            hung_up.close()
            wait_for_metric(running, "sst2dist_queue_depth 0.0")
            gated.gate.set()
            assert in_batch.result(timeout=10).status_code == 200
        time.sleep(max_wait_ms / 1000 + 0.2)
        with httpx.Client(base_url=running.url, timeout=10) as client:
            assert client.post("/predict", json={"inputs": SENTENCES[2]}).status_code == 200
        assert running.service.batcher.alive
    finally:
        gated.gate.set()
        running.stop()


def test_a_client_that_hangs_up_mid_body_is_499_not_500(tiny_bundle_dir: Path) -> None:
    running = InProcess(Classifier(tiny_bundle_dir, variant=VARIANT, threads=1), ServeLimits())
    try:
        running.wait()
        raw_post(running.url, b'{"inputs": "half', declared=100).close()
        deadline = time.monotonic() + 10
        while 'status="499"' not in (text := running.client.get("/metrics").text):
            assert time.monotonic() < deadline, text
            time.sleep(0.02)
        assert 'sst2dist_requests_total{path="/predict",status="499"} 1.0' in text and 'status="500"' not in text
    finally:
        running.stop()


def test_a_warm_up_that_ends_during_a_drain_leaves_ready_503(tiny_bundle_dir: Path) -> None:
    classifier = Gated(tiny_bundle_dir, variant=VARIANT, threads=1)
    classifier.gate.clear()  # the warm-up prediction waits
    running = InProcess(classifier, ServeLimits())
    try:
        running.wait("/health")
        running.service.begin_drain()
        classifier.gate.set()
        deadline = time.monotonic() + 10
        while classifier.runs == 0:
            assert time.monotonic() < deadline, "the warm-up never ran"
            time.sleep(0.01)
        time.sleep(0.3)  # the warm-up's end reaches the event loop
        assert_error(running.client.get("/ready"), 503, "shutting down")
    finally:
        classifier.gate.set()
        running.stop()


class NaNForOne(Classifier):
    """The real classifier, except that the logits of a text holding "NaN" become NaN (as an overflowing reduced
    precision engine would give)."""

    poisoned_ids = -1

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        logits = super().run(encoded)
        logits[encoded["input_ids"].sum(axis=1) == self.poisoned_ids] = np.nan
        return logits


def test_non_finite_scores_are_a_500_not_nan_in_json(tiny_bundle_dir: Path) -> None:
    classifier = Classifier(tiny_bundle_dir, variant=VARIANT, threads=1)
    poisoned = "this one overflows"
    ids_sum = int(classifier.encode([poisoned])["input_ids"].sum())
    broken = NaNForOne(tiny_bundle_dir, variant=VARIANT, threads=1)
    broken.poisoned_ids = ids_sum
    running = InProcess(broken, ServeLimits())
    try:
        running.wait()
        assert_error(running.client.post("/predict", json={"inputs": poisoned}), 500, "non-finite")
        fine = running.client.post("/predict", json={"inputs": SENTENCES[0]})
        assert fine.status_code == 200 and "NaN" not in fine.text
    finally:
        running.stop()


# --- shutdown: a real process, real signals ---------------------------------------------------------------


def long_body(offline_max_length: int, count: int) -> dict:
    """One request whose single batch runs `count` texts of the model's full length, one onnxruntime call each."""
    return {"inputs": [f"{i} " + "word " * offline_max_length for i in range(count)]}


@pytest.fixture
def slow(tiny_bundle_dir: Path) -> Iterator[tuple[Server, dict]]:
    flags = ["--variant", VARIANT, "--workers", "1", "--max-batch-size", "1", "--max-client-batch", "1000"]
    running = Server(tiny_bundle_dir, *flags, "--max-payload", "5000000", "--grace-period", "0.5")
    running.wait()
    max_length = running.client.get("/info").json()["max_length"]
    yield running, long_body(max_length, 250)
    running.stop()


def post_in_thread(server: Server, body: dict, results: dict, key: str) -> threading.Thread:
    def post() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            results[key] = client.post("/predict", json=body)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_shutdown_ends_within_the_grace_period_plus_one_batch_and_answers_json_503(slow: tuple) -> None:
    server, body = slow
    started = time.monotonic()
    assert server.client.post("/predict", json=body).status_code == 200
    batch_s = time.monotonic() - started
    results: dict[str, httpx.Response] = {}
    threads = [post_in_thread(server, body, results, "running")]
    wait_for_metric(server, "sst2dist_batches_running 1.0")
    threads.append(post_in_thread(server, {"inputs": "queued"}, results, "queued"))
    wait_for_metric(server, "sst2dist_queue_depth 1.0")
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    answered_s = time.monotonic() - signalled
    for key in ("running", "queued"):
        assert_error(results[key], 503, "grace period ran out")
    assert answered_s < 0.5 + 1.5, f"the cut-off requests waited {answered_s:.1f}s"
    assert server.process.wait(30) == 0
    exit_s = time.monotonic() - signalled
    # One batch at most (it began before the signal); 1.5x and 2 s spare for a machine shared with other work.
    bound = 0.5 + 1.5 * batch_s + 2.0
    assert exit_s < bound, f"exit {exit_s:.1f}s after SIGTERM (grace 0.5s, one batch {batch_s:.1f}s)"


def server_running_a_long_batch(
    bundle: Path, grace_period: str
) -> tuple[Server, threading.Thread, dict[str, httpx.Response]]:
    """A server on one worker whose only batch (one request's, in `results["running"]`) runs for seconds."""
    flags = ["--variant", VARIANT, "--workers", "1", "--max-batch-size", "1", "--max-client-batch", "1000"]
    server = Server(bundle, *flags, "--max-payload", "5000000", "--grace-period", grace_period)
    try:
        server.wait()
        body = long_body(server.client.get("/info").json()["max_length"], 1000)  # a batch of several seconds
        results: dict[str, httpx.Response] = {}
        thread = post_in_thread(server, body, results, "running")
        wait_for_metric(server, "sst2dist_batches_running 1.0")
    except BaseException:
        server.stop()
        raise
    return server, thread, results


def test_a_second_signal_exits_at_once(tiny_bundle_dir: Path) -> None:
    server, thread, results = server_running_a_long_batch(tiny_bundle_dir, "60")
    try:
        server.process.send_signal(signal.SIGTERM)
        assert_error(server.client.get("/ready"), 503, "shutting down")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 128 + signal.SIGTERM
        assert time.monotonic() - signalled < 2.0
        thread.join(30)
        assert_error(results["running"], 503, "shutting down")
    finally:
        server.stop()


def test_a_body_still_uploading_at_shutdown_gets_json_503(tiny_bundle_dir: Path) -> None:
    server = Server(tiny_bundle_dir, "--variant", VARIANT, "--workers", "1", "--grace-period", "0.2")
    try:
        server.wait()
        stalled = raw_post(server.url, b'{"inputs": "half', declared=100)
        wait_for_metric(server, "sst2dist_in_flight_requests 0.0")  # it never got past its body
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        stalled.settimeout(10)
        answer = b""
        while chunk := stalled.recv(4096):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"content-type: application/json" in head.lower(), answer
        assert json.loads(body)["error_type"] == "unavailable"
        assert server.process.wait(30) == 0
    finally:
        server.stop()


def port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_a_second_signal_while_the_last_batch_ends_exits_at_once(tiny_bundle_dir: Path) -> None:
    """The drain is over and uvicorn has stopped, but the process still waits for the batch running on its worker
    thread: Ctrl-C again must exit at once with 130, not print a KeyboardInterrupt traceback and wait."""
    server, thread, results = server_running_a_long_batch(tiny_bundle_dir, "0.2")
    try:
        server.process.send_signal(signal.SIGINT)
        thread.join(30)
        assert_error(results["running"], 503, "grace period ran out")
        deadline = time.monotonic() + 10
        while not port_closed(server.url):
            assert time.monotonic() < deadline, "uvicorn never stopped listening"
            time.sleep(0.05)
        time.sleep(0.2)
        assert server.process.poll() is None, "the batch ended before the second signal: make it longer"
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(30) == 128 + signal.SIGINT
        assert time.monotonic() - signalled < 2.0
        assert "Traceback" not in server.process.stdout.read()
    finally:
        server.stop()
