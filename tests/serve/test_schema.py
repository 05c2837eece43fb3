"""The published OpenAPI schema and the server agree (issue 26): the request limit is in the schema and counted
before any text is checked, the enums hold what is accepted, TEI's nested batch is documented, and the answers name
fields the route takes. A real uvicorn on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import InProcess, assert_error
from test_serve import VARIANT

from sst2dist.runtime import Classifier
from sst2dist.serve import ServeLimits

LIMIT = 8


@pytest.fixture(scope="module")
def server(tiny_bundle_dir: Path) -> Iterator[InProcess]:
    running = InProcess(Classifier(tiny_bundle_dir, variant=VARIANT, threads=1), ServeLimits(max_client_batch=LIMIT))
    running.wait()
    yield running
    running.stop()


def inputs_schema(server: InProcess, model: str) -> list[dict]:
    components = server.client.get("/openapi.json").json()["components"]["schemas"]
    return components[model]["properties"]["inputs"]["anyOf"]


@pytest.mark.parametrize("model", ["PredictRequest", "InferenceRequest"])
def test_the_schema_states_the_servers_request_limit_and_teis_nested_batch(server: InProcess, model: str) -> None:
    text, batch = inputs_schema(server, model)
    assert text["type"] == "string"
    assert batch["type"] == "array" and batch["minItems"] == 1 and batch["maxItems"] == LIMIT
    nested = [item for item in batch["items"]["anyOf"] if item.get("type") == "array"]
    assert nested and nested[0]["minItems"] == nested[0]["maxItems"] == 1  # [["a"], ["b"]]
    path = "/predict" if model == "PredictRequest" else "/"
    tei = server.client.post(path, json={"inputs": [["a fine film"], ["a dull one"]]})
    assert tei.status_code == 200 and len(tei.json()) == 2


def test_the_text_count_is_checked_before_the_texts(server: InProcess) -> None:
    """Nine blank texts: the answer is about the count, so no text was looked at (a huge list costs nothing)."""
    for path in ("/predict", "/"):
        response = server.client.post(path, json={"inputs": [" "] * (LIMIT + 1)})
        body = assert_error(response, 422, f"{LIMIT + 1} texts", f"limit of {LIMIT}", "--max-client-batch")
        assert "whitespace" not in body["error"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/predict", {"inputs": "fine", "truncation_direction": ""}, "truncation_direction"),
        ("/", {"inputs": "fine", "parameters": {"function_to_apply": ""}}, "function_to_apply"),
    ],
)
def test_an_empty_string_outside_the_enum_is_refused(server: InProcess, path: str, body: dict, field: str) -> None:
    assert_error(server.client.post(path, json=body), 422, field)
    schema = json.dumps(server.client.get("/openapi.json").json()["components"]["schemas"])
    assert '""' not in schema


def test_the_token_limit_answer_names_the_routes_own_field(server: InProcess) -> None:
    long_text = "word " * 600
    refused = server.client.post("/", json={"inputs": long_text, "parameters": {"truncation": False}})
    body = assert_error(refused, 422, "tokens", '"parameters": {"truncation": true}')
    assert '"truncate"' not in body["error"]
    refused = server.client.post("/predict", json={"inputs": long_text, "truncate": False})
    assert_error(refused, 422, "tokens", '"truncate": true')


def test_info_names_the_model(server: InProcess, tiny_bundle_dir: Path) -> None:
    manifest = json.loads((tiny_bundle_dir / "manifest.json").read_text())
    assert server.client.get("/info").json()["model"] == manifest["source"]["model_dir"]


@pytest.mark.parametrize("path", ["/predict", "/"])
def test_the_schema_documents_the_timing_headers_of_a_200(server: InProcess, path: str) -> None:
    documented = server.client.get("/openapi.json").json()["paths"][path]["post"]["responses"]["200"]["headers"]
    answer = server.client.post(path, json={"inputs": "a fine film"})
    assert answer.status_code == 200 and documented
    for name in documented:
        assert float(answer.headers[name]) >= 0
