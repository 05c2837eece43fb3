"""OpenVINO beside onnxruntime: its variants are gated, recorded and timed at export like the others, chosen by
measurement per workload, never chosen when they failed the gate, and a bundle that has them still loads and
serves where OpenVINO cannot be imported (a real subprocess whose import of openvino fails). Real tiny bundles;
only the manifest's timing numbers are made up where a test steers the choice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import import_blocker

from sst2dist.engines import OPENVINO_VARIANTS, engine_of, unavailable_reason
from sst2dist.environment import cpu_fingerprint, supports_bf16
from sst2dist.export.gate import ExportError, check_gate
from sst2dist.runtime import Classifier, load_classifier
from sst2dist.variant_choice import LATENCY, THROUGHPUT, recorded_choice

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install -e '.[openvino]' (make setup does)")

TEXTS = ["a gripping, funny film", "dull and lifeless", "the acting is superb but the plot goes nowhere"]
BLOCK_OPENVINO = import_blocker("openvino")


@pytest.fixture
def bundle(ov_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ov_bundle, tmp_path / "bundle"))


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def steer(bundle: Path, latency: dict[str, float], throughput: dict[str, float], failed: str | None = None) -> None:
    """Made-up timings recorded on this CPU (every thread count alike), and optionally a variant marked failed.
    Variants the timings leave out (openvino-int8) are recorded as slowest."""
    manifest = manifest_of(bundle)
    slowest = {name: 99.0 for name in manifest["variants"]}
    latency, throughput = {**slowest, **latency}, {**slowest, **throughput}
    timings = manifest["variant_timings"]
    timings["cpu"] = cpu_fingerprint()
    timings["machine"] = {"busy": False}  # recorded on a quiet machine
    timings["ms_per_sentence"] = {key: dict(latency) for key in timings["ms_per_sentence"]}
    timings["batch_ms_per_sentence"] = {key: dict(throughput) for key in timings["batch_ms_per_sentence"]}
    if failed:
        manifest["variants"][failed]["passed"] = False
    (bundle / "manifest.json").write_text(json.dumps(manifest))


# --- export: gated, recorded, timed ---


def test_openvino_f32_is_gated_exactly_and_recorded_with_timings(ov_bundle: Path) -> None:
    manifest = manifest_of(ov_bundle)
    entry = manifest["variants"]["openvino-f32"]
    assert (entry["engine"], entry["precision"], entry["file"]) == ("openvino", "f32", "model.onnx")
    assert entry["sha256"] == manifest["variants"]["fp32"]["sha256"]  # the same file: the bundle format is unchanged
    assert entry["passed"] is True and set(entry["verification"]["by_batch_size"]) == {"1", "8", "32"}
    assert entry["verification"]["max_abs_logit_diff"] <= 1e-4 and entry["verification"]["label_agreement"] == 1.0
    assert manifest["variants"]["fp32"]["engine"] == "onnxruntime"
    assert manifest["versions"]["openvino"]
    timings = manifest["variant_timings"]
    assert timings["cpu"] == cpu_fingerprint() and timings["throughput_batch_size"] == 32
    for key in ("ms_per_sentence", "batch_ms_per_sentence"):
        for by_variant in timings[key].values():
            assert set(by_variant) == set(manifest["variants"]) and all(ms > 0 for ms in by_variant.values())
    assert manifest["default_variant"] in manifest["variants"]


def test_openvino_bf16_is_gated_where_the_cpu_has_bf16(ov_bundle: Path) -> None:
    manifest = manifest_of(ov_bundle)
    if not supports_bf16():
        assert "openvino-bf16" not in manifest["variants"]
        assert "amx_bf16 nor avx512_bf16" in manifest["engines"]["openvino"]["skipped"]["openvino-bf16"]
        pytest.skip("this CPU has neither amx_bf16 nor avx512_bf16: openvino-bf16 is left out, as recorded")
    entry = manifest["variants"]["openvino-bf16"]
    assert (entry["engine"], entry["precision"], entry["passed"]) == ("openvino", "bf16", True)
    check = entry["verification"]
    assert {"max_abs_logit_diff", "label_agreement", "accuracy_drop_points"} <= set(check)
    assert check["max_abs_logit_diff"] > 0  # really bf16: the f32 variant is exact to ~1e-8 on this model
    assert "size_ratio_vs_fp32" not in entry  # the int8 size target does not apply to the fp32 file


def test_openvino_variants_agree_with_onnxruntime_and_say_their_engine(ov_bundle: Path) -> None:
    reference = Classifier(ov_bundle, variant="fp32").logits(TEXTS)
    for name, tolerance in (("openvino-f32", 1e-4), ("openvino-bf16", 0.05)):
        if name not in manifest_of(ov_bundle)["variants"]:
            continue
        classifier = Classifier(ov_bundle, variant=name, threads=1)
        assert classifier.choice.engine == "openvino" and "on openvino" in classifier.choice.line()
        np.testing.assert_allclose(classifier.logits(TEXTS, batch_size=1), reference, atol=tolerance)
        np.testing.assert_allclose(classifier.logits(TEXTS, batch_size=32), reference, atol=tolerance)


def test_one_openvino_classifier_answers_several_threads_at_once(ov_bundle: Path) -> None:
    """serve's workers share one Classifier: each thread gets its own infer request, and the same answers."""
    classifier = Classifier(ov_bundle, variant="openvino-f32", threads=1)
    expected = classifier.logits(TEXTS, batch_size=1)
    results, errors = {}, []

    def work(index: int) -> None:
        try:
            results[index] = [classifier.logits(TEXTS, batch_size=1) for _ in range(5)]
        except Exception as err:  # surfaced below: a thread's exception would vanish otherwise
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for runs in results.values():
        for logits in runs:
            np.testing.assert_allclose(logits, expected, atol=1e-6)


# --- the choice ---


def test_latency_and_throughput_are_chosen_separately(bundle: Path) -> None:
    steer(
        bundle,
        latency={"fp32": 1.0, "optimized": 1.1, "int8": 0.9, "openvino-f32": 2.0, "openvino-bf16": 1.5},
        throughput={"fp32": 1.0, "optimized": 1.1, "int8": 0.9, "openvino-f32": 0.4, "openvino-bf16": 0.5},
    )
    latency = load_classifier(bundle, workload=LATENCY)
    throughput = load_classifier(bundle, workload=THROUGHPUT)
    assert (latency.variant, latency.choice.engine) == ("fp32", "onnxruntime")
    assert (throughput.variant, throughput.choice.engine) == ("openvino-f32", "openvino")
    assert throughput.choice.reason == "recorded" and "sorted batches of 32" in throughput.choice.detail
    assert throughput.choice.as_dict()["engine"] == "openvino" and throughput.choice.workload == THROUGHPUT
    assert recorded_choice(manifest_of(bundle), 1, THROUGHPUT)["variant"] == "openvino-f32"
    assert recorded_choice(manifest_of(bundle), 1, LATENCY)["variant"] == "fp32"


def test_a_failed_openvino_variant_is_never_chosen(bundle: Path) -> None:
    fast_ov = {"fp32": 1.0, "optimized": 1.1, "int8": 0.9, "openvino-f32": 0.01, "openvino-bf16": 0.01}
    steer(bundle, fast_ov, fast_ov, failed="openvino-f32")
    if "openvino-bf16" in manifest_of(bundle)["variants"]:
        steer(bundle, fast_ov, fast_ov, failed="openvino-bf16")
    for workload in (LATENCY, THROUGHPUT):
        chosen = load_classifier(bundle, workload=workload)
        assert chosen.choice.engine == "onnxruntime" and chosen.variant == "fp32"
    with pytest.warns(UserWarning, match="failed the export verification gate"):
        Classifier(bundle, variant="openvino-f32")


def test_a_failed_openvino_variant_never_stops_the_export_but_an_exact_onnxruntime_one_does() -> None:
    def manifest(failed: str) -> dict:
        variants = {name: {"passed": True, "failure": None} for name in ("fp32", "optimized", *OPENVINO_VARIANTS)}
        variants[failed] = {"passed": False, "failure": f"variant {failed}: too far"}
        return {"variants": variants}

    check_gate(manifest("openvino-f32"), keep_failed=False)  # kept, marked failed
    check_gate(manifest("openvino-bf16"), keep_failed=False)
    with pytest.raises(ExportError, match="variant optimized: too far"):
        check_gate(manifest("optimized"), keep_failed=True)


def test_engine_of_every_variant_and_bf16_availability() -> None:
    assert [engine_of(name) for name in ("fp32", "optimized", "int8", "static-int8")] == ["onnxruntime"] * 4
    assert [engine_of(name) for name in OPENVINO_VARIANTS] == ["openvino", "openvino"]
    assert unavailable_reason("openvino-f32") is None
    assert (unavailable_reason("openvino-bf16") is None) == supports_bf16()


# --- without OpenVINO ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_bundle_with_openvino_variants_loads_and_serves_without_openvino(bundle: Path, tmp_path: Path) -> None:
    """Where `import openvino` fails, the OpenVINO variants are no candidates (even when recorded as fastest), a
    request for one by name says how to install it, `export-onnx --openvino on` is refused, and `serve` runs."""
    fast_ov = {"fp32": 1.0, "optimized": 1.1, "int8": 0.9, "openvino-f32": 0.01, "openvino-bf16": 0.01}
    steer(bundle, fast_ov, fast_ov)
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_OPENVINO)
    env = {**os.environ, "PYTHONPATH": str(blocker), "OMP_NUM_THREADS": "1"}
    script = textwrap.dedent(
        f"""
        import sys
        from sst2dist.config_fields import OptionError
        from sst2dist.export.options import ExportOptions
        from sst2dist.runtime import BundleError, Classifier, load_classifier
        from sst2dist.variant_choice import THROUGHPUT
        for workload in ("latency", THROUGHPUT):
            chosen = load_classifier({str(bundle)!r}, workload=workload)
            assert chosen.choice.engine == "onnxruntime", chosen.choice.line()
        try:
            Classifier({str(bundle)!r}, variant="openvino-f32")
        except BundleError as err:
            print("refused:", err)
        try:
            ExportOptions(openvino="on")
        except OptionError as err:
            print("export:", err)
        assert "openvino" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: variant 'openvino-f32' cannot run here: OpenVINO is not installed" in result.stdout
    assert "pip install 'sst2dist[openvino]'" in result.stdout
    assert "export: --openvino needs OpenVINO installed" in result.stdout

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sst2dist.cli", "serve", str(bundle), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, server)
            info = client.get("/info").json()
            assert info["variant_choice"]["engine"] == "onnxruntime" and info["variant"] == "fp32"
            answer = client.post("/predict", json={"inputs": TEXTS[0]})
            assert answer.status_code == 200 and answer.json()[0]["label"] in ("negative", "positive")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def wait_ready(client: httpx.Client, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited early:\n{server.stdout.read()}")
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("/ready never answered 200")


PHONE_HOME_PROBE = """
import socket, sys
def getaddrinfo(host, *args, **kwargs):  # in this process and any it forks
    with open(sys.argv[2], "a") as log:
        log.write(f"{host}\\n")
    raise OSError("no network in this test")
socket.getaddrinfo = getaddrinfo
from sst2dist.engines import openvino
openvino().Core().compile_model(sys.argv[1], "CPU")
"""


def test_loading_openvino_sends_no_telemetry(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """`import openvino` reports usage to Google Analytics unless opted out (seen during an export); sst2dist makes
    it use OpenVINO's own no-op stub."""
    env = {**os.environ, "CI": "", "HF_HUB_OFFLINE": "1"}  # OpenVINO skips telemetry itself under CI=true
    lookups = tmp_path / "lookups.txt"
    probe = [sys.executable, "-c", PHONE_HOME_PROBE, str(tiny_bundle_dir / "model.onnx"), str(lookups)]
    result = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    time.sleep(3)  # a forked sender may outlive the probe
    assert not lookups.exists(), lookups.read_text()
