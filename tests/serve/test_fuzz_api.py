"""The HTTP API fuzzed by a tool nobody here wrote: schemathesis reads the OpenAPI schema of a real `sst2dist serve`
(API key on) on loopback and sends it a few hundred generated requests, valid and invalid: no 5xx, every status,
content type, header and body as the schema documents, invalid requests refused, valid ones accepted, requests
without the key answered 401. The schema itself must pass the OpenAPI 3.1 meta-schema.

A failure prints schemathesis's report with a curl line per problem and the run's seed: rerun it with
`schemathesis run URL/openapi.json -H 'Authorization: Bearer KEY' --checks all --seed SEED`."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from servers import Server

KEY = "fuzz-key-0d3a"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES_PER_OPERATION = 50  # 6 operations: about 300 generated cases, about 20 s on 2 busy cores


@pytest.fixture(scope="module")
def server(tiny_bundle_dir: Path) -> Iterator[Server]:
    running = Server(tiny_bundle_dir, "--workers", "1", env={"SST2DIST_API_KEY": KEY}, headers=AUTH)
    running.wait()
    yield running
    running.stop()


def test_the_schema_passes_the_openapi_meta_schema(server: Server) -> None:
    schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH).validate()
    broken = server.client.get("/openapi.json").json()
    broken["paths"]["/info"]["get"]["responses"] = "not an object"
    with pytest.raises(Exception, match="not an object|is not of type"):  # the check above can fail
        schemathesis.openapi.from_dict(broken).validate()


def test_schemathesis_finds_nothing(server: Server, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json"]
    command += ["--header", f"Authorization: Bearer {KEY}", "--checks", "all", "--workers", "1"]
    command += ["--max-examples", str(EXAMPLES_PER_OPERATION), "--request-timeout", "30", "--max-failures", "5"]
    # In tmp_path: hypothesis keeps its example database in the working folder.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "6 selected / 6 total" in report and "No issues found" in report, report
    counts = re.search(r"(\d+) generated, (\d+) passed", report)
    assert counts and counts[1] == counts[2] and int(counts[1]) >= 100, report  # 0 failures, every case run
    server.alive()
