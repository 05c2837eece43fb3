"""`serve --api-key` / SST2DIST_API_KEY against a real `sst2dist serve` on loopback: every route but /health needs
`Authorization: Bearer <key>`, 401 + WWW-Authenticate otherwise; the key stays out of `ps`, the log and /info; the
real huggingface_hub InferenceClient works with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import Server, assert_error, free_port

from sst2dist.serve.auth import BearerAuth

KEY = "sk-test-4f1c9a7e2b"  # distinctive, so that finding it anywhere it should not be is certain
AUTH = {"Authorization": f"Bearer {KEY}"}
GUARDED = [("GET", "/ready"), ("GET", "/info"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json")]
GUARDED += [("POST", "/predict"), ("POST", "/"), ("GET", "/no-such-path")]


@pytest.fixture(scope="module")
def server(tiny_bundle_dir: Path) -> Iterator[Server]:
    """The key from the environment, as the docs advise; the access log on, to show it never holds the key."""
    running = Server(tiny_bundle_dir, "--access-log", env={"SST2DIST_API_KEY": KEY}, headers=AUTH)
    running.wait()
    yield running
    running.stop()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
    ids=["none", "wrong key", "no scheme", "basic"],
)
def test_every_route_but_health_needs_the_key(server: Server, headers: dict) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/health", headers=headers).json() == {"status": "ok"}
        for method, path in GUARDED:
            response = anonymous.request(method, path, headers=headers, json={"inputs": "a fine film"})
            body = assert_error(response, 401)
            assert body["error_type"] == "unauthorized" and KEY not in response.text
            assert response.headers["www-authenticate"] == "Bearer"


def test_the_right_key_passes_on_every_route(server: Server) -> None:
    for scheme in ("Bearer", "bearer"):  # the scheme is case-insensitive (RFC 7235)
        headers = {"Authorization": f"{scheme} {KEY}"}
        response = server.client.post("/predict", json={"inputs": "a fine film"}, headers=headers)
        assert response.status_code == 200, response.text
    for method, path in GUARDED[:-1]:
        assert server.client.request(method, path, json={"inputs": "a fine film"}).status_code == 200, path
    info = server.client.get("/info")
    assert info.json()["api_key_required"] is True and KEY not in info.text


def test_the_schema_declares_the_bearer_scheme(server: Server) -> None:
    schema = server.client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path == "/health":
                assert "security" not in operation and "401" not in operation["responses"]
            else:
                assert operation["security"] == [{"bearerAuth": []}] and "401" in operation["responses"], path


def test_huggingface_hub_inference_client_with_the_key(server: Server) -> None:
    """The real client in its own process: huggingface_hub refuses all HTTP while HF_HUB_OFFLINE is set (the test
    session sets it), and a URL as the model never reaches the hub."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from huggingface_hub import InferenceClient
        from huggingface_hub.errors import HfHubHTTPError

        good = InferenceClient(model={server.url!r}, token={KEY!r})
        answer = good.text_classification("a gripping, funny film", top_k=2)
        try:
            InferenceClient(model={server.url!r}, token="wrong-key").text_classification("a film")
        except HfHubHTTPError as err:
            status = err.response.status_code
        else:
            sys.exit("a wrong key was accepted")
        print(json.dumps({{"answer": [[a.label, a.score] for a in answer], "wrong_key": status}}))
        """
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("HF_HUB_OFFLINE")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.splitlines()[-1])
    assert got["wrong_key"] == 401
    expected = server.client.post("/", json={"inputs": "a gripping, funny film"}).json()[0]
    assert got["answer"] == [[item["label"], pytest.approx(item["score"], abs=1e-6)] for item in expected]


def test_the_key_stays_out_of_ps_and_the_log(tiny_bundle_dir: Path) -> None:
    running = Server(tiny_bundle_dir, "--access-log", env={"SST2DIST_API_KEY": KEY}, headers=AUTH)
    try:
        running.wait()
        cmdline = Path(f"/proc/{running.process.pid}/cmdline").read_bytes()
        assert KEY.encode() not in cmdline
        with httpx.Client(base_url=running.url) as client:
            client.get("/info", headers={"Authorization": "Bearer wrong-key"})
        assert running.client.post("/predict", json={"inputs": "logged?"}).status_code == 200
    finally:
        running.stop()
    log = running.process.stdout.read()
    assert "API key required" in log and '"POST /predict HTTP/1.1" 200' in log  # the access log ran
    assert KEY not in log and "wrong-key" not in log


@pytest.mark.parametrize(
    ("key", "words"),
    [("", "is empty"), ("two words", "printable ASCII without spaces"), ("clé", "printable ASCII")],
)
def test_an_unusable_key_exits_before_binding_without_echoing_it(tiny_bundle_dir: Path, key: str, words: str) -> None:
    for flags, env in ((["--api-key", key], {}), ([], {"SST2DIST_API_KEY": key})):
        command = [sys.executable, "-m", "sst2dist.cli", "serve", str(tiny_bundle_dir), "--port", str(free_port())]
        result = subprocess.run(command + flags, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and words in result.stderr, result.stderr
        assert "Uvicorn running" not in result.stderr + result.stdout
        if key:
            assert key not in result.stderr


def test_comparison_is_on_digests_of_the_whole_token() -> None:
    auth = BearerAuth(app=None, api_key=KEY)
    assert auth.problem(f"Bearer {KEY}".encode()) is None
    assert auth.problem(f"  bearer   {KEY}  ".encode()) is None
    wrong = [f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer ", "Bearer", f"Token {KEY}", f"Bearer \xff{KEY}"]
    for header in wrong:
        assert auth.problem(header.encode("latin-1")) is not None, header
