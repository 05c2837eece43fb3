"""The engines a bundle variant runs on. A variant is (engine, graph file, precision):

    fp32, optimized, int8, static-int8   onnxruntime on model.onnx / model_optimized.onnx / the int8 graphs
    openvino-f32, openvino-bf16          OpenVINO on model.onnx with the f32 or bf16 inference-precision hint
    openvino-int8                        OpenVINO on openvino_int8.xml + .bin (NNCF int8 IR), bf16 hint where the CPU
                                         has bf16 (the layers NNCF keeps in float run in bf16), else f32

OpenVINO reads the fp32 ONNX file itself for its float variants; only openvino-int8 adds files (written at export
where NNCF is installed). OpenVINO is optional (`pip install 'sst2dist[openvino]'`): where it is not installed, or
the CPU has no bf16 (AMX or AVX-512 BF16) for openvino-bf16, `unavailable_reason` says so and the variant is never
chosen. Both engines sit behind one small `Session` (input names, logits of one batch), which is all the runtime
`Classifier` needs.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np
import onnxruntime as ort

from sst2dist.environment import supports_bf16, usable_cpus

ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"
INSTALL_OPENVINO = "pip install 'sst2dist[openvino]'"
CACHE_ENV = "SST2DIST_OPENVINO_CACHE"  # where compiled OpenVINO blobs go; empty: no cache


@dataclass(frozen=True)
class VariantSpec:
    engine: str
    file: str
    precision: str
    weights: str | None = None  # an OpenVINO IR's weights file, read beside its .xml


VARIANTS = {
    "fp32": VariantSpec(ONNXRUNTIME, "model.onnx", "fp32"),
    "optimized": VariantSpec(ONNXRUNTIME, "model_optimized.onnx", "fp32"),
    "int8": VariantSpec(ONNXRUNTIME, "model_quantized.onnx", "int8"),
    "static-int8": VariantSpec(ONNXRUNTIME, "model_static_quantized.onnx", "int8"),
    "openvino-f32": VariantSpec(OPENVINO, "model.onnx", "f32"),
    "openvino-bf16": VariantSpec(OPENVINO, "model.onnx", "bf16"),
    "openvino-int8": VariantSpec(OPENVINO, "openvino_int8.xml", "int8", weights="openvino_int8.bin"),
}
OPENVINO_INT8 = "openvino-int8"
# The OpenVINO variants that compile model.onnx itself (openvino-int8 has its own files, written by NNCF).
OPENVINO_VARIANTS = tuple(n for n, spec in VARIANTS.items() if spec.engine == OPENVINO and spec.file == "model.onnx")


def variant_files(variant: str) -> list[str]:
    """The bundle files `variant` reads (its graph, and an IR's weights)."""
    spec = VARIANTS[variant]
    return [spec.file, *([spec.weights] if spec.weights else [])]


def engine_of(variant: str) -> str:
    return VARIANTS[variant].engine if variant in VARIANTS else ONNXRUNTIME


@cache
def openvino() -> ModuleType | None:
    """The openvino module, or None where it cannot be imported (not installed, or blocked).

    `import openvino` loads its converter, which sends usage telemetry to Google Analytics unless the user opted out
    (the send was seen here during an export). sst2dist never phones home: unless this process already loaded the
    telemetry package, it is made unimportable, and OpenVINO falls back to its own no-op stub."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov


def missing_engine(variant: str) -> str | None:
    """Why `variant`'s engine cannot be imported here, or None when it can."""
    if engine_of(variant) == OPENVINO and openvino() is None:
        return f"OpenVINO is not installed ({INSTALL_OPENVINO})"
    return None


def unavailable_reason(variant: str) -> str | None:
    """Why `variant` should not be chosen in this process (its engine is missing, or its precision does not run
    natively on this CPU), or None when it can run."""
    missing = missing_engine(variant)
    if missing:
        return missing
    if engine_of(variant) == OPENVINO and VARIANTS[variant].precision == "bf16" and not supports_bf16():
        return "this CPU has neither amx_bf16 nor avx512_bf16, so OpenVINO's bf16 hint would run f32"
    return None


class Session(Protocol):
    """One loaded variant: the graph's input names and the logits [batch, labels] of one encoded batch."""

    input_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """CPU settings: all graph optimizations, sequential execution, `threads` intra-op threads (None: the usable
    CPUs). Always explicit: onnxruntime's own default counts the machine's cores, not this process's."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = thread_count(threads)
    options.inter_op_num_threads = 1
    return options


def thread_count(threads: int | None) -> int:
    """`threads`, or the CPUs this process may use when None; a count below 1 is a ValueError."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads or usable_cpus()


class OrtSession:
    def __init__(self, model: bytes, threads: int | None):
        self.session = ort.InferenceSession(
            model, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], feeds)[0]


class OpenVinoSession:
    """A graph (the fp32 ONNX, or the int8 IR) compiled by OpenVINO's CPU plugin with an inference-precision hint.

    Like an onnxruntime session, `threads` is what one call uses and several threads may call at once (serve's
    workers): OpenVINO runs one call per stream, so there is a stream per `threads` cores, and each calling thread
    keeps its own infer request (one request must not be shared between threads)."""

    def __init__(
        self,
        model: bytes,
        precision: str,
        threads: int | None,
        cache_key: str | None = None,
        weights: bytes | None = None,
    ):
        ov = openvino()
        if ov is None:
            raise RuntimeError(f"OpenVINO is not installed: {INSTALL_OPENVINO}")
        self.precision = precision
        config = {"INFERENCE_PRECISION_HINT": inference_precision(precision), **stream_config(threads)}
        cache_dir = compiled_cache_dir(cache_key, precision)
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        core = ov.Core()
        graph = core.read_model(model, weights) if weights is not None else core.read_model(model)
        self.compiled = core.compile_model(graph, "CPU", config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.logits_index = next(i for i, port in enumerate(self.compiled.outputs) if "logits" in port.get_names())
        self._local = threading.local()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer(feeds)
        return request.get_output_tensor(self.logits_index).data.copy()


def inference_precision(precision: str) -> str:
    """The hint for the layers an int8 IR keeps in float: bf16 where it runs natively, else f32 (never OpenVINO's
    own default, which is bf16 on AMX CPUs for any graph)."""
    if precision == "int8":
        return "bf16" if supports_bf16() else "f32"
    return precision


def stream_config(threads: int | None) -> dict[str, str]:
    """OpenVINO's threads are shared by its streams: `threads` per call, and as many concurrent calls as fit."""
    cores = usable_cpus()
    if threads is None or threads >= cores:
        return {"NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads or cores)}
    streams = max(1, cores // threads)
    return {"NUM_STREAMS": str(streams), "INFERENCE_NUM_THREADS": str(streams * threads)}


def compiled_cache_dir(cache_key: str | None, precision: str) -> Path | None:
    """Where OpenVINO keeps the compiled blob, keyed by the graph file's sha256 (a bundle re-exported at the same
    path never meets a stale blob); None without a key, with $SST2DIST_OPENVINO_CACHE empty, or when the folder
    cannot be created (a read-only home): compiling each time is only slower."""
    if cache_key is None:
        return None
    base = os.environ.get(CACHE_ENV)
    if base is None:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sst2dist" / "openvino")
    if not base:
        return None
    folder = Path(base) / f"{cache_key[:16]}-{precision}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder


def compiled_cache_key(entry: dict) -> str | None:
    """What OpenVINO's compiled blob is keyed by: the graph's sha256, and for an IR its weights' too (a re-exported
    IR can keep the same .xml with other weights)."""
    sha, weights = entry.get("sha256"), (entry.get("weights") or {}).get("sha256")
    if sha is None or weights is None:
        return sha
    return hashlib.sha256(f"{sha}:{weights}".encode()).hexdigest()


def open_session(
    model: bytes, variant: str, threads: int | None, cache_key: str | None = None, weights: bytes | None = None
) -> Session:
    """Load `variant`'s graph from `model`, the bytes already read and verified (never the path again: the file may
    have been replaced since), on its engine; `weights`: an OpenVINO IR's .bin bytes, verified the same way.
    `cache_key` (`compiled_cache_key`) lets OpenVINO reuse a compiled blob from an earlier start."""
    thread_count(threads)
    spec = VARIANTS[variant]
    if spec.engine == OPENVINO:
        return OpenVinoSession(model, spec.precision, threads, cache_key, weights)
    return OrtSession(model, threads)
