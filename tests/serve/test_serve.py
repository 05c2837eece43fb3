"""`sst2dist serve` against real uvicorn servers on loopback (no mocks): the CLI in a subprocess, and, where a
test needs a slow or failing model, `create_app` around a Classifier subclass on uvicorn in a thread of this
process. The subclasses still run the real onnxruntime session: `Gated` holds its runs until the test opens the
gate, `Faulty` feeds onnxruntime float32 ids for one text so that onnxruntime itself fails on it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from servers import InProcess, Server, assert_error, free_port, wait_for_metric

from sst2dist.runtime import VARIANT_FILES, Classifier, load_classifier, recorded_sha256, softmax
from sst2dist.serve import InferenceRequest, PredictRequest, ServeLimits, plan_chunks
from sst2dist.serve.app import manifest_scalars
from sst2dist.serve.protocol import NOT_BLANK, validation_failure
from sst2dist.variant_choice import LATENCY

FAULT = "__make_onnxruntime_fail__"
SENTENCES = [
    "a gripping, funny and thoroughly entertaining film",
    "a dull, lifeless mess",
    "it's not bad",
    "the acting is superb but the plot goes nowhere",
    "one of the year's best",
    "i fell asleep twice",
    "an unexpectedly moving portrait of grief",
    "too long by an hour",
]


class Gated(Classifier):
    """The real classifier, except that each onnxruntime run waits while the gate is closed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.runs = 0

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        assert self.gate.wait(60), "the test never opened the gate"
        self.runs += 1
        return super().run(encoded)


def float_ids(encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**encoded, "input_ids": encoded["input_ids"].astype(np.float32)}


class Faulty(Gated):
    """Gated, and a batch holding FAULT reaches onnxruntime with float32 ids, so that onnxruntime fails on it."""

    def encode(self, texts: list[str], truncate: bool = True) -> dict[str, np.ndarray]:
        encoded = super().encode(texts, truncate)
        return float_ids(encoded) if FAULT in texts else encoded


class Broken(Classifier):
    """onnxruntime fails on every batch, the warm-up prediction's included."""

    def encode(self, texts: list[str], truncate: bool = True) -> dict[str, np.ndarray]:
        return float_ids(super().encode(texts, truncate))


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir: Path) -> Path:
    return tiny_bundle_dir


# Dynamic int8 quantizes activations with one scale per batch, so an int8 score moves slightly with its batch
# mates; the fp32-exact "optimized" variant is what can promise equal scores alone or in a batch.
VARIANT = "optimized"


@pytest.fixture(scope="module")
def offline(bundle: Path) -> Classifier:
    return Classifier(bundle, variant=VARIANT)


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[Server]:
    flags = ["--variant", VARIANT, "--max-client-batch", "8", "--max-payload", "20000", "--max-wait-ms", "20"]
    running = Server(bundle, *flags)
    running.wait()
    yield running
    running.stop()


def scores_by_label(answer: list[dict]) -> dict[str, float]:
    return {item["label"]: item["score"] for item in answer}


def expected(offline: Classifier, texts: list[str], function: str = "softmax") -> np.ndarray:
    logits = offline.logits(texts)
    return {"softmax": softmax(logits), "sigmoid": 1 / (1 + np.exp(-logits)), "none": logits}[function]


def assert_matches(answer: list[dict], row: np.ndarray, labels: list[str]) -> None:
    got = scores_by_label(answer)
    for index, label in enumerate(labels):
        assert abs(got[label] - row[index]) < 1e-4, (got, row)


# --- the two dialects ---------------------------------------------------------------------------------


def test_predict_one_text_is_a_sorted_list_of_label_scores(server: Server, offline: Classifier) -> None:
    response = server.client.post("/predict", json={"inputs": SENTENCES[0]})
    assert response.status_code == 200
    answer = response.json()
    assert [set(item) for item in answer] == [{"label", "score"}] * len(offline.labels)
    assert sorted(item["label"] for item in answer) == sorted(offline.labels)
    assert [item["score"] for item in answer] == sorted((item["score"] for item in answer), reverse=True)
    assert_matches(answer, expected(offline, SENTENCES[:1])[0], offline.labels)
    for header in ("x-queue-time", "x-tokenization-time", "x-inference-time"):
        assert float(response.headers[header]) >= 0
    assert float(response.headers["x-inference-time"]) > 0


def test_predict_list_is_a_batch_not_a_pair(server: Server, offline: Classifier) -> None:
    answer = server.client.post("/predict", json={"inputs": SENTENCES[:2]}).json()
    assert len(answer) == 2
    rows = expected(offline, SENTENCES[:2])
    for item, row in zip(answer, rows, strict=True):
        assert_matches(item, row, offline.labels)
    tei_batch = server.client.post("/predict", json={"inputs": [[SENTENCES[0]], [SENTENCES[1]]]}).json()
    assert tei_batch == answer
    pair = server.client.post("/predict", json={"inputs": [[SENTENCES[0], SENTENCES[1]]]})
    assert_error(pair, 422, "inputs[0]", "pairs")


def test_predict_raw_scores_and_top_k(server: Server, offline: Classifier) -> None:
    raw = server.client.post("/predict", json={"inputs": SENTENCES[2], "raw_scores": True}).json()
    assert_matches(raw, expected(offline, SENTENCES[2:3], "none")[0], offline.labels)
    top = server.client.post("/predict", json={"inputs": SENTENCES[2], "top_k": 1}).json()
    best = int(np.argmax(expected(offline, SENTENCES[2:3])[0]))
    assert [item["label"] for item in top] == [offline.labels[best]]


def test_inference_api_dialect(server: Server, offline: Classifier) -> None:
    """Hugging Face Inference API text-classification: one text -> a list holding one list of label/score."""
    answer = server.client.post("/", json={"inputs": SENTENCES[3]}).json()
    assert isinstance(answer, list) and len(answer) == 1 and len(answer[0]) == len(offline.labels)
    assert_matches(answer[0], expected(offline, SENTENCES[3:4])[0], offline.labels)
    top = server.client.post("/", json={"inputs": SENTENCES[3], "parameters": {"top_k": 1}}).json()
    assert len(top) == 1 and len(top[0]) == 1 and top[0][0] == answer[0][0]
    for function in ("sigmoid", "none", "softmax"):
        body = {"inputs": SENTENCES[3:5], "parameters": {"function_to_apply": function}}
        batch = server.client.post("/", json=body).json()
        assert len(batch) == 2
        for item, row in zip(batch, expected(offline, SENTENCES[3:5], function), strict=True):
            assert_matches(item, row, offline.labels)
    bad = server.client.post("/", json={"inputs": "x", "parameters": {"function_to_apply": "relu"}})
    assert_error(bad, 422, "function_to_apply")
    long_text = "word " * (offline.max_length + 20)
    refused = server.client.post("/", json={"inputs": long_text, "parameters": {"truncation": False}})
    assert_error(refused, 422, "inputs has", "tokens")


# --- micro-batching -----------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_match_the_offline_classifier(server: Server, offline: Classifier) -> None:
    texts = [f"{sentence} ({i})" for i in range(6) for sentence in SENTENCES]
    rows = expected(offline, texts)

    def ask(text: str) -> httpx.Response:
        return server.client.post("/predict", json={"inputs": text})

    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(ask, texts))
    assert all(r.status_code == 200 for r in responses)
    for response, row in zip(responses, rows, strict=True):
        assert_matches(response.json(), row, offline.labels)
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1, "no two requests shared a batch"
    alone = server.client.post("/predict", json={"inputs": texts[0]})
    assert alone.headers["x-batch-size"] == "1"
    assert_matches(alone.json(), rows[0], offline.labels)


@pytest.fixture
def gated(bundle: Path) -> Gated:
    return Gated(bundle, variant=VARIANT, threads=1)


def start_gated(classifier: Gated, **limits: float) -> InProcess:
    running = InProcess(classifier, ServeLimits(**limits))
    running.wait()
    classifier.gate.clear()
    return running


def test_requests_arriving_during_a_batch_share_the_next_one(gated: Gated, offline: Classifier) -> None:
    """One worker, no wait for a batch to fill (the default): a lone request runs at once, and the requests that
    arrive while it runs make up the next batch together."""
    running = start_gated(gated, workers=1, max_wait_ms=0)
    texts = SENTENCES[:6]
    rows = expected(offline, [SENTENCES[7], *texts])
    try:
        with ThreadPoolExecutor(max_workers=7) as pool:
            first = pool.submit(running.client.post, "/predict", json={"inputs": SENTENCES[7]})
            wait_for_metric(running, "sst2dist_batches_running 1.0")
            later = [pool.submit(running.client.post, "/predict", json={"inputs": text}) for text in texts]
            wait_for_metric(running, "sst2dist_queue_depth 6.0")
            gated.gate.set()
            responses = [first.result(), *(future.result() for future in later)]
    finally:
        gated.gate.set()
        running.stop()
    assert responses[0].headers["x-batch-size"] == "1", "a free worker ran the lone request at once"
    assert [r.headers["x-batch-size"] for r in responses[1:]] == ["6"] * 6, "queued requests ran one by one"
    for response, row in zip(responses, rows, strict=True):
        assert_matches(response.json(), row, offline.labels)


def test_two_workers_run_two_batches_at_once(gated: Gated, offline: Classifier) -> None:
    running = start_gated(gated, workers=2)
    rows = expected(offline, SENTENCES[:2])
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(running.client.post, "/predict", json={"inputs": SENTENCES[0]})
            wait_for_metric(running, "sst2dist_batches_running 1.0")
            second = pool.submit(running.client.post, "/predict", json={"inputs": SENTENCES[1]})
            wait_for_metric(running, "sst2dist_batches_running 2.0")  # the second did not wait for the first
            gated.gate.set()
            responses = [first.result(), second.result()]
        for response, row in zip(responses, rows, strict=True):
            assert response.headers["x-batch-size"] == "1"
            assert_matches(response.json(), row, offline.labels)
        assert "sst2dist_batches_running 0.0" in running.client.get("/metrics").text
    finally:
        gated.gate.set()
        running.stop()


def test_ready_flips_after_the_warm_up(bundle: Path) -> None:
    classifier = Gated(bundle, threads=1)
    classifier.gate.clear()  # the warm-up prediction waits
    running = InProcess(classifier, ServeLimits())
    try:
        running.wait("/health")
        assert_error(running.client.get("/ready"), 503, "warming up")
        assert_error(running.client.post("/predict", json={"inputs": "too early"}), 503, "warming up")
        assert_error(running.client.post("/predict", json={"wrong": "body"}), 503, "warming up")
        assert running.client.get("/ready").headers["retry-after"] == "1"
        classifier.gate.set()
        running.wait("/ready")
        assert running.client.post("/predict", json={"inputs": "in time"}).status_code == 200
    finally:
        classifier.gate.set()
        running.stop()


def test_a_failed_warm_up_keeps_ready_503(bundle: Path) -> None:
    running = InProcess(Broken(bundle, variant=VARIANT), ServeLimits())
    try:
        running.wait("/health")
        deadline = time.monotonic() + 30
        while "warming up" in (ready := running.client.get("/ready")).text and time.monotonic() < deadline:
            time.sleep(0.02)
        body = assert_error(ready, 503, "the warm-up prediction failed", "InvalidArgument", "server log")
        assert "INVALID_ARGUMENT" not in body["error"], "the engine's own message stays in the server log"
        assert_error(running.client.post("/predict", json={"inputs": "x"}), 503, "warm-up prediction failed")
    finally:
        running.stop()


@pytest.mark.parametrize("seed", range(5))
def test_plan_chunks_covers_every_text_within_the_limits(seed: int) -> None:
    counts = list(np.random.default_rng(seed).integers(3, 120, size=40))
    groups = plan_chunks(counts, max_size=16, max_tokens=600)
    assert sorted(i for group in groups for i in group) == list(range(40))
    for group in groups:
        assert len(group) <= 16 and len(group) * max(counts[i] for i in group) <= 600
    assert len(groups) < 40  # it does batch
    assert plan_chunks([900], 16, 600) == [[0]]  # a text over the token budget still runs, alone


# --- limits and bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"inputs": "unclosed', 400, ["not valid JSON"]),
        (b'{"inputs": "caf\xe9"}', 400, ["UTF-8"]),
        (b'{"text": "hello"}', 422, ["inputs"]),
        (b'{"inputs": 5}', 422, ["inputs", "a number"]),
        (b'{"inputs": ["fine", 3]}', 422, ["inputs[1]"]),
        (b'{"inputs": "fine", "truncate": "yes"}', 422, ["truncate"]),
        (b'{"inputs": "fine", "top_k": 0}', 422, ["top_k"]),
        (b'["just", "a", "list"]', 422, ["object"]),
        (b'{"inputs": []}', 422, ["empty list"]),
        (b'{"inputs": ["a", []]}', 422, ["inputs[1] is an empty list"]),
        (b'{"inputs": ""}', 422, ["empty or whitespace-only"]),
        (b'{"inputs": ["ok", " \\t\\n "]}', 422, ["inputs[1]", "whitespace-only"]),
        (b'{"inputs": "\\u001d\\u3000\\u0085"}', 422, ["whitespace-only"]),  # Python's whitespace, as the schema says
        (b'{"inputs": "fine", "top_k": 1.5}', 422, ["top_k must be a positive integer"]),
        (json.dumps({"inputs": ["x"] * 9}).encode(), 422, ["9 texts", "limit of 8", "--max-client-batch"]),
        (json.dumps({"inputs": "x" * 30000}).encode(), 413, ["20000", "--max-payload"]),
        (b"", 400, ["body is empty"]),
        (b"null", 422, ["JSON object", "got null"]),
        (b'{"inputs": "fine", "truncation_direction": "left"}', 422, ["truncation_direction", "right"]),
        (b'{"inputs": "fine", "options": {}}', 422, ["options is not a known field", "raw_scores"]),
        (b'{"inputs": "fine", "\\ud800": 1}', 422, ["\ufffd is not a known field"]),  # a lone surrogate: no 500
        (b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, ["could not be parsed", "nested"]),
        (b'{"inputs": "fine", "top_k": ' + b"9" * 5000 + b"}", 400, ["could not be parsed", "number"]),
    ],
)
def test_bad_requests_get_one_error_shape(server: Server, body: bytes, status: int, words: list[str]) -> None:
    response = server.client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert_error(response, status, *words)


def test_body_is_json_whatever_its_content_type(server: Server, offline: Classifier) -> None:
    """`curl -d` sends application/x-www-form-urlencoded; clients that send no Content-Type exist too."""
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}, {}):
        response = server.client.post("/", content=json.dumps({"inputs": SENTENCES[0]}).encode(), headers=headers)
        assert response.status_code == 200, (headers, response.text)
        assert_matches(response.json()[0], expected(offline, SENTENCES[:1])[0], offline.labels)


def test_inference_api_rejects_unknown_parameters(server: Server) -> None:
    body = {"inputs": "fine", "parameters": {"top_k": 1, "temperature": 2}}
    assert_error(server.client.post("/", json=body), 422, "parameters.temperature is not supported", "top_k")
    surrogate = b'{"inputs": "fine", "parameters": {"\\ud800": 1}}'
    assert_error(server.client.post("/", content=surrogate), 422, "parameters.\ufffd is not supported")
    bad = {"inputs": "fine", "parameters": {"top_k": "1"}, "options": {"wait_for_model": True}}
    assert_error(server.client.post("/", json=bad), 422, "parameters.top_k must be a positive integer")
    fine = {"inputs": "fine", "parameters": None, "options": {"wait_for_model": True}}
    assert server.client.post("/", json=fine).status_code == 200


def test_payload_limit_holds_without_content_length(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    assert_error(server.client.post("/predict", content=chunks()), 413, "--max-payload")


def test_lone_surrogates_become_replacement_characters(server: Server, offline: Classifier) -> None:
    response = server.client.post("/predict", content=b'{"inputs": ["\\ud800 lonely", "pair \\ud83d\\ude00"]}')
    assert response.status_code == 200, response.text
    rows = expected(offline, ["\ufffd lonely", "pair \U0001f600"])
    for item, row in zip(response.json(), rows, strict=True):
        assert_matches(item, row, offline.labels)


def test_text_over_the_token_limit(server: Server, offline: Classifier) -> None:
    long_text = "word " * (offline.max_length + 20)
    truncated = server.client.post("/predict", json={"inputs": long_text})
    assert truncated.status_code == 200
    assert_matches(truncated.json(), expected(offline, [long_text])[0], offline.labels)
    refused = server.client.post("/predict", json={"inputs": ["short", long_text], "truncate": False})
    assert_error(refused, 422, "inputs[1]", f"limit of {offline.max_length}", "truncate")


def test_onnxruntime_failure_fails_only_its_request(bundle: Path, offline: Classifier) -> None:
    """A batch that onnxruntime fails on is rerun request by request: only the request that broke it fails."""
    classifier = Faulty(bundle, variant=VARIANT, threads=1)
    running = start_gated(classifier, workers=1)
    texts = [FAULT, *SENTENCES[:5]]
    try:
        with ThreadPoolExecutor(max_workers=len(texts) + 1) as pool:
            blocker = pool.submit(running.client.post, "/predict", json={"inputs": SENTENCES[5]})
            wait_for_metric(running, "sst2dist_batches_running 1.0")
            futures = [pool.submit(running.client.post, "/predict", json={"inputs": text}) for text in texts]
            wait_for_metric(running, f"sst2dist_queue_depth {len(texts)}.0")  # they will make up one batch
            classifier.gate.set()
            responses = [future.result() for future in futures]
        assert blocker.result().status_code == 200
        failed = assert_error(responses[0], 500, "inference failed", "InvalidArgument", "server log")
        assert failed["error_type"] == "backend" and "INVALID_ARGUMENT" not in failed["error"]
        for response, row in zip(responses[1:], expected(offline, SENTENCES[:5]), strict=True):
            assert response.status_code == 200
            assert_matches(response.json(), row, offline.labels)
        assert running.client.get("/ready").status_code == 200
        assert running.client.post("/predict", json={"inputs": SENTENCES[0]}).status_code == 200
    finally:
        classifier.gate.set()
        running.stop()


def test_unknown_path_and_method_use_the_error_shape(server: Server) -> None:
    assert_error(server.client.get("/nope"), 404)
    assert_error(server.client.get("/predict"), 405)


# --- operations ---------------------------------------------------------------------------------------


def test_health_info_docs_and_metrics(server: Server, offline: Classifier) -> None:
    assert server.client.get("/health").json() == {"status": "ok"}
    assert server.client.get("/ready").json() == {"status": "ready"}
    info = server.client.get("/info").json()
    assert info["variant"] == offline.variant and info["labels"] == offline.labels
    assert info["variant_choice"]["reason"] == "explicit"  # --variant
    assert info["api_key_required"] is False
    assert info["limits"]["max_client_batch"] == 8 and info["limits"]["max_payload"] == 20000
    assert "variants" in info["manifest"]
    assert server.client.get("/docs").status_code == 200
    schema = server.client.get("/openapi.json").json()
    assert {"/predict", "/", "/health", "/ready", "/metrics", "/info"} <= set(schema["paths"])

    def count_200() -> float:
        for line in server.client.get("/metrics").text.splitlines():
            if line.startswith('sst2dist_requests_total{path="/predict",status="200"}'):
                return float(line.split()[-1])
        return 0.0

    before = count_200()
    server.client.post("/predict", json={"inputs": "counted"})
    assert count_200() == before + 1
    text = server.client.get("/metrics").text
    for name in (
        "sst2dist_request_latency_seconds_bucket",
        "sst2dist_batch_size_bucket",
        "sst2dist_queue_depth",
        "sst2dist_in_flight_requests",
        'status="422"',
    ):
        assert name in text


def test_openapi_schema_comes_from_the_request_models(server: Server) -> None:
    schema = server.client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, model in (("/predict", PredictRequest), ("/", InferenceRequest)):
        operation = schema["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model.__name__}"}
        assert set(components[model.__name__]["properties"]) == set(model.model_fields)
        for status in ("400", "413", "422", "429", "500", "503"):
            error = operation["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}
        assert "LabelScore" in json.dumps(operation["responses"]["200"])
    assert components["PredictRequest"]["additionalProperties"] is False
    assert components["PredictRequest"]["required"] == ["inputs"]
    function = components["InferenceParameters"]["properties"]["function_to_apply"]["anyOf"]  # null: the default
    assert function == [{"enum": ["softmax", "sigmoid", "none"], "type": "string"}, {"type": "null"}]
    text = components["PredictRequest"]["properties"]["inputs"]["anyOf"][0]
    assert text["minLength"] == 1 and text["pattern"] == NOT_BLANK  # what check_text refuses, in the schema
    assert "HTTPValidationError" not in components


@pytest.mark.parametrize(
    ("model", "body", "texts", "query"),
    [
        (PredictRequest, {"inputs": "one"}, ["one"], {"single": True, "function": "softmax", "truncate": True}),
        (PredictRequest, {"inputs": [["a"], ["b"]], "raw_scores": True}, ["a", "b"], {"function": "none"}),
        (PredictRequest, {"inputs": ["x\ud800"], "truncate": None, "top_k": 1}, ["x\ufffd"], {"top_k": 1}),
        (InferenceRequest, {"inputs": ["a"], "parameters": {"truncation": False}}, ["a"], {"truncate": False}),
        (InferenceRequest, {"inputs": "a", "parameters": {"function_to_apply": None}}, ["a"], {"function": "softmax"}),
        (InferenceRequest, {"inputs": "a", "parameters": None}, ["a"], {"function": "softmax", "top_k": None}),
        (PredictRequest, {"inputs": "a", "top_k": 2.0, "truncation_direction": None}, ["a"], {"top_k": 2}),
    ],
)
def test_request_models_give_one_query(model: type, body: dict, texts: list[str], query: dict) -> None:
    parsed = model.model_validate(body).query()
    assert parsed.texts == texts
    for name, value in query.items():
        assert getattr(parsed, name) == value


def test_validation_failures_name_every_bad_field() -> None:
    with pytest.raises(ValidationError) as caught:
        PredictRequest.model_validate({"inputs": ["fine", 3], "truncate": 1, "top_k": True})
    failure = validation_failure(caught.value.errors())
    assert failure.status == 422 and failure.error_type == "validation"
    assert failure.message.split("; ") == [
        "inputs[1] must be a string, got a number",
        "truncate must be true or false, got a number",
        "top_k must be a positive integer, got true",
    ]


def test_manifest_scalars_keep_scalars_and_drop_hashes() -> None:
    manifest = {
        "model": "m",
        "max_length": 512,
        "sha256": "ab",
        "cpu": {"avx": True},
        "variants": {
            "fp32": {"passed": True, "file_sha256": "cd", "verification": {"accuracy": 0.9}},
            "broken": "not a dict",
        },
    }
    assert manifest_scalars(manifest) == {"model": "m", "max_length": 512, "variants": {"fp32": {"passed": True}}}


# --- start-up, overload and shutdown, each on a server of its own -------------------------------------


def test_missing_or_corrupt_bundle_exits_before_binding(bundle: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for item in bundle.iterdir():
        if item.is_file():
            (corrupt / item.name).write_bytes(item.read_bytes())
    for onnx_file in corrupt.glob("*.onnx"):  # whichever variant serve picks
        onnx_file.write_bytes(b"not an onnx model")
    for folder, words in [(tmp_path / "missing", "does not exist"), (corrupt, "corrupt")]:
        port = free_port()
        result = subprocess.run(
            [sys.executable, "-m", "sst2dist.cli", "serve", str(folder), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert words in result.stderr
        assert "Uvicorn running" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--threads", "0"], "threads must be >= 1"),
        (["--grace-period", "inf"], "--grace-period must be a finite number"),
        (["--max-wait-ms", "inf"], "--max-wait-ms must be a finite number"),
        (["--port", "70000"], "--port must be a TCP port"),  # uvicorn listened on 70000 - 65536 = 4464
        (["--port", "-5"], "--port must be a TCP port"),
        (["--log-level", "loud"], "--log-level must be one of"),  # was a KeyError traceback once the model loaded
    ],
)
def test_bad_worker_flags_exit_before_binding(bundle: Path, flags: list[str], words: str) -> None:
    command = [sys.executable, "-m", "sst2dist.cli", "serve", str(bundle), "--port", str(free_port()), *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Uvicorn running" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def slow_server(bundle: Path, offline: Classifier) -> Iterator[Server]:
    """One text per onnxruntime call and a queue of one request, so that long requests pile up."""
    flags = ["--max-batch-size", "1", "--max-queue", "1", "--max-client-batch", "64", "--grace-period", "60"]
    running = Server(bundle, *flags)
    running.wait()
    yield running
    running.stop()


def long_texts(offline: Classifier, count: int = 64) -> list[str]:
    return [f"{i} " + "word " * offline.max_length for i in range(count)]


def test_serve_defaults_to_a_batch_invariant_variant_by_the_recorded_timings(bundle: Path, slow_server: Server) -> None:
    # No --variant: the bundle's int8 passed the gate, but serve picks among the batch-invariant variants, by the
    # timings export-onnx recorded on this CPU at the thread count each worker runs (1 of 2 cores).
    info = slow_server.client.get("/info").json()
    # slow_server runs --max-batch-size 1: one text per run, so serve chooses for latency, not micro-batches.
    expected = load_classifier(bundle, threads=info["variant_choice"]["threads"], workload=LATENCY)
    assert info["variant"] == expected.variant and info["variant"] in ("optimized", "fp32")
    assert info["variant_choice"]["reason"] == "recorded" and "ms" in info["variant_choice"]["detail"]
    assert set(info["variant_choice"]["ms_per_sentence"]) == {"optimized", "fp32"}


def test_full_queue_answers_429_at_once(slow_server: Server, offline: Classifier) -> None:
    slow_server.wait("/ready")
    body = {"inputs": long_texts(offline)}

    def ask(_: int) -> httpx.Response:
        return slow_server.client.post("/predict", json=body)

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(ask, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert_error(refused[0], 429, "--max-queue")
    assert refused[0].headers["retry-after"] == "1"
    assert all(len(r.json()) == 64 for r in responses if r.status_code == 200)


def test_sigterm_drains_in_flight_requests_then_exits_0(slow_server: Server, offline: Classifier) -> None:
    slow_server.wait("/ready")
    result: dict[str, httpx.Response] = {}
    with httpx.Client(base_url=slow_server.url, timeout=60) as other:
        in_flight = threading.Thread(
            target=lambda: result.update(r=other.post("/predict", json={"inputs": long_texts(offline)}))
        )
        in_flight.start()
        deadline = time.monotonic() + 10
        while "sst2dist_in_flight_requests 1.0" not in slow_server.client.get("/metrics").text:
            assert time.monotonic() < deadline, "the request never got in flight"
            time.sleep(0.01)
        slow_server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while (ready := slow_server.client.get("/ready")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert_error(ready, 503, "shutting down")
        assert_error(slow_server.client.post("/predict", json={"inputs": "late"}), 503, "shutting down")
        in_flight.join(60)
    assert result["r"].status_code == 200 and len(result["r"].json()) == 64
    assert slow_server.process.wait(30) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(slow_server.url + "/health", timeout=2)


# --- the base install ---------------------------------------------------------------------------------

NO_TORCH = """
import sys
for name in ("torch", "transformers", "optimum"):
    sys.modules[name] = None  # any import of these now raises ImportError
from click.testing import CliRunner
from sst2dist.cli import main
from sst2dist.runtime import load_classifier
from sst2dist.serve import create_app
from starlette.testclient import TestClient
with TestClient(create_app(load_classifier(sys.argv[1]))) as client:
    while client.get("/ready").status_code != 200:
        pass
    assert client.post("/predict", json={"inputs": "fine"}).status_code == 200
result = CliRunner().invoke(main, ["predict", sys.argv[1], "fine"])
assert result.exit_code == 0, result.output
print("served without torch")
"""


def test_serving_path_imports_no_torch(bundle: Path) -> None:
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "served without torch" in result.stdout


def test_a_flipped_byte_stops_serve_before_binding(bundle: Path, tmp_path: Path) -> None:
    """One flipped byte in the served variant or in tokenizer.json: serve names the file and the manifest's sha256
    and never starts (the full matrix of files is in tests/core/test_runtime.py)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in (VARIANT_FILES[VARIANT], "tokenizer.json"):
        copy = Path(shutil.copytree(bundle, tmp_path / name))
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        command = [sys.executable, "-m", "sst2dist.cli", "serve", str(copy), "--variant", VARIANT]
        result = subprocess.run(command + ["--port", str(free_port())], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, result.stderr
        assert f"{copy / name} is corrupt" in result.stderr and recorded_sha256(manifest, name) in result.stderr
        assert "Uvicorn running" not in result.stderr + result.stdout
