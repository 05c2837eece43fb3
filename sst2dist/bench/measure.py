"""How the bench measures: the backends (bundle variants through onnxruntime, PyTorch eager), batch-1 latency and
batch throughput interleaved across backends, and cold start plus peak memory in a fresh process.

Only the standard library and numpy are imported at module level: ORT-only benches must run without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from sst2dist.environment import peak_rss_bytes

TORCH_BACKENDS = {"torch-fp32": "fp32", "torch-bf16": "bf16"}
ORT_BACKENDS = {"ort-fp32": "fp32", "ort-optimized": "optimized", "ort-int8": "int8", "ort-static-int8": "static-int8"}
# Bundle variants on OpenVINO (where installed): named like the variant, through the same Classifier.
ORT_BACKENDS |= {"openvino-f32": "openvino-f32", "openvino-bf16": "openvino-bf16", "openvino-int8": "openvino-int8"}
ALL_BACKENDS = (*TORCH_BACKENDS, *ORT_BACKENDS)
PRECISION = {
    "torch-fp32": "fp32",
    "torch-bf16": "bf16",
    "ort-fp32": "fp32",
    "ort-optimized": "fp32",
    "ort-int8": "int8",
    "ort-static-int8": "int8",
    "openvino-f32": "fp32",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
}
LATENCY_BLOCK = 32  # sentences per interleaving block at batch 1
THROUGHPUT_BLOCK = 64  # sentences (at least one batch) per interleaving block for throughput
FlopCounter = Callable[[int, int], float]


class BenchError(ValueError):
    """The bench settings are unusable; the message says what to fix."""


# --- backends -------------------------------------------------------------------------------------------------


class OrtBackend:
    """One bundle variant through the runtime's Classifier (the exact code path `serve` uses).

    The Classifier feeds only the inputs the ONNX graph declares (MPNet has no token_type_ids)."""

    def __init__(self, name: str, bundle: str, threads: int, variant: str | None = None):
        from sst2dist.engines import engine_of, variant_files
        from sst2dist.runtime import Classifier

        self.name = name
        variant = variant or ORT_BACKENDS[name]
        self.engine = engine_of(variant)
        self.classifier = Classifier(bundle, variant=variant, threads=threads)
        self.labels = self.classifier.labels
        self.files = [path for name in variant_files(variant) for path in onnx_files(Path(bundle) / name)]

    def threads_used(self) -> dict[str, int]:
        """The thread settings the engine reports for this session (not what was asked for)."""
        session = self.classifier.session
        if hasattr(session, "compiled"):  # OpenVINO: streams share INFERENCE_NUM_THREADS
            return {key: int(session.compiled.get_property(key)) for key in ("NUM_STREAMS", "INFERENCE_NUM_THREADS")}
        options = session.session.get_session_options()
        return {
            "intra_op_num_threads": options.intra_op_num_threads,
            "inter_op_num_threads": options.inter_op_num_threads,
        }

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.classifier.encode(texts)

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        return self.classifier.run(encoded)

    def set_threads(self, threads: int) -> None:
        """ORT fixes its thread pool per session: one backend object per thread count."""


class TorchBackend:
    """PyTorch eager, fp32 or bf16 autocast, with the transformers tokenizer: what a plain deployment runs."""

    def __init__(self, name: str, model: str, threads: int, max_length: int | None = None):
        import torch

        from sst2dist.modeling import load_classifier_model, load_tokenizer, resolve_model

        self.name = name
        self.engine = "pytorch"
        self.torch = torch
        self.tokenizer = load_tokenizer(model)
        # As saved, with its own id2label (modeling.load_model would rename the labels to SST-2's, by index), and
        # with a pruned folder's shapes (`sst2dist prune`), which a plain from_pretrained refuses.
        self.model = load_classifier_model(resolve_model(model)).eval()
        self.max_length = max_length or self.tokenizer.model_max_length
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.files = weight_files(Path(model))
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)

    def threads_used(self) -> dict[str, int]:
        return {
            "num_threads": self.torch.get_num_threads(),
            "num_interop_threads": self.torch.get_num_interop_threads(),
        }

    def encode(self, texts: list[str]):
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).data

    def run(self, encoded) -> np.ndarray:
        with self.torch.inference_mode(), self.autocast():
            logits = self.model(**encoded).logits
        return logits.float().numpy()

    def autocast(self):
        if self.name == "torch-bf16":
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return self.torch.autocast("cpu", enabled=False)


Backend = OrtBackend | TorchBackend


def open_backend(name: str, bundle: str, model: str | None, threads: int, max_length: int) -> Backend:
    if name in ORT_BACKENDS:
        return OrtBackend(name, bundle, threads)
    return TorchBackend(name, str(model), threads, max_length)


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors / pytorch_model.bin and their shards; not training_args.bin or optimizer states."""
    names = ("model.safetensors", "model-0", "pytorch_model.bin", "pytorch_model-0")
    return [p for p in sorted(folder.iterdir()) if p.name.startswith(names) and p.suffix in (".safetensors", ".bin")]


def onnx_files(path: Path) -> list[Path]:
    """The ONNX file plus its external-data file, when the exporter split the weights out."""
    extra = [p for p in (path.with_name(path.name + "_data"), path.with_suffix(".onnx.data")) if p.is_file()]
    return [path, *extra]


# --- timing ---------------------------------------------------------------------------------------------------


def rotations(names: list[str]) -> Iterator[list[str]]:
    """The backend order for block 0, 1, 2, ...: rotated by one each block so none always runs first."""
    block = 0
    while True:
        shift = block % len(names)
        yield names[shift:] + names[:shift]
        block += 1


def chunks(items: Sequence, size: int) -> list:
    return [items[i : i + size] for i in range(0, len(items), size)]


def warm_up(backends: Mapping[str, Backend], sentences: list[str], count: int, batch_sizes: Sequence[int]) -> None:
    """Untimed calls on sentences spread from shortest to longest, so kernels built per input shape
    (oneDNN primitives for bf16, for instance) exist for the usual lengths before timing starts."""
    by_length = sorted(sentences, key=len)
    count = min(count, len(by_length))
    spread = [by_length[int(i)] for i in np.linspace(0, len(by_length) - 1, count)] if count else []
    for backend in backends.values():
        for sentence in spread:
            backend.run(backend.encode([sentence]))
        for batch_size in batch_sizes if count else ():
            backend.run(backend.encode(sentences[:batch_size]))


def measure_latency(
    backends: Mapping[str, Backend], sentences: list[str], tick: Callable[[int], None]
) -> dict[str, dict[str, list[float]]]:
    """Batch-1 latency in ms per sentence: tokenize, model, total. The first call of each block is not timed,
    so the previous backend's still-spinning thread pool is never charged to this one."""
    times = {name: {"tokenize": [], "model": [], "total": []} for name in backends}
    for block, order in zip(chunks(sentences, LATENCY_BLOCK), rotations(list(backends)), strict=False):
        for name in order:
            backend = backends[name]
            backend.run(backend.encode(block[:1]))
            for sentence in block:
                start = time.perf_counter()
                encoded = backend.encode([sentence])
                encoded_at = time.perf_counter()
                backend.run(encoded)
                done = time.perf_counter()
                times[name]["tokenize"].append((encoded_at - start) * 1e3)
                times[name]["model"].append((done - encoded_at) * 1e3)
                times[name]["total"].append((done - start) * 1e3)
            tick(len(block))
    return times


def length_order(sentences: Sequence[str]) -> np.ndarray:
    """Indices that sort the sentences by length (characters: a tokenizer-free proxy for tokens), stably."""
    return np.argsort([len(s) for s in sentences], kind="stable")


def measure_throughput(
    backends: Mapping[str, Backend],
    sentences: list[str],
    batch_size: int,
    flops: Mapping[str, FlopCounter],
    tick: Callable[[int], None],
    sort: bool = False,
) -> dict[str, dict]:
    """Sentences/s over every sentence, batches padded to their longest member: in input order, or sorted by
    length first (neighbours of similar length pad little). Logits come back in input order either way."""
    order = length_order(sentences) if sort else np.arange(len(sentences))
    batches = chunks([sentences[i] for i in order], batch_size)
    raw = {
        name: {"seconds": 0.0, "tokenize_seconds": 0.0, "model_seconds": 0.0, "padded_tokens": 0, "flops": 0.0}
        for name in backends
    }
    logits: dict[str, list[np.ndarray]] = {name: [] for name in backends}
    for block, names in zip(
        chunks(batches, max(1, THROUGHPUT_BLOCK // batch_size)), rotations(list(backends)), strict=False
    ):
        for name in names:
            for batch in block:
                logits[name].append(time_batch(backends[name], batch, raw[name], flops[name]))
            tick(sum(len(batch) for batch in block))
    for name, figures in raw.items():
        figures["sentences"] = len(sentences)
        stacked = np.concatenate(logits[name])
        figures["logits"] = np.empty_like(stacked)
        figures["logits"][order] = stacked  # back to input order
    return raw


def time_batch(backend: Backend, batch: list[str], figures: dict, flops: FlopCounter) -> np.ndarray:
    """Run one batch and add its seconds, padded tokens and FLOPs to `figures`."""
    start = time.perf_counter()
    encoded = backend.encode(batch)
    encoded_at = time.perf_counter()
    logits = backend.run(encoded)
    done = time.perf_counter()
    rows, length = np.asarray(encoded["attention_mask"]).shape
    figures["tokenize_seconds"] += encoded_at - start
    figures["model_seconds"] += done - encoded_at
    figures["seconds"] += done - start
    figures["padded_tokens"] += rows * length
    figures["flops"] += flops(rows, length)
    return logits


def latency_percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """Mean, p50, p90 and p99 of per-sentence latencies."""
    values = np.asarray(values_ms)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def flops_counter(config: dict) -> FlopCounter:
    """Matmul FLOPs of a BERT-style encoder for a [rows, length] batch: 2 x weights x tokens, plus attention scores.

    Embedding lookups, layer norms and softmax are left out (they are not matmuls). A pruned model's config
    (`sst2dist prune`) has fewer heads (`pruned_heads`) and a narrower FFN (`intermediate_sizes`) per layer."""
    hidden = config.get("hidden_size", 0)
    layers = config.get("num_hidden_layers", 0)
    heads, pruned = config.get("num_attention_heads", 1), config.get("pruned_heads") or {}
    attention_widths = [(heads - len(pruned.get(str(i), ()))) * (hidden // heads) for i in range(layers)]
    inners = config.get("intermediate_sizes") or [config.get("intermediate_size", 4 * hidden)] * layers
    pairs = zip(attention_widths, inners, strict=True)
    weights = sum(4 * hidden * width + 2 * hidden * inner for width, inner in pairs)

    def flops(rows: int, length: int) -> float:
        dense = 2 * weights * rows * length
        attention = 2 * 2 * rows * length * length * sum(attention_widths)  # QK^T and attention x V
        return float(dense + attention + 2 * rows * hidden * hidden)  # + pooler

    return flops


# --- cold start in a fresh process ----------------------------------------------------------------------------


def cold_start(spec: dict) -> dict:
    """Import + load + first prediction, and the peak RSS after one largest batch, in a fresh Python process.

    `spec`: backend, bundle, model, threads, max_length, first (a sentence), batch (the longest sentences)."""
    command = [sys.executable, "-m", "sst2dist.bench", "cold-start", json.dumps(spec)]
    started = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True, timeout=900)
    process_seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise BenchError(f"the cold-start process for {spec['backend']} failed:\n{child.stderr[-2000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["process_seconds"] = process_seconds
    return result


def cold_start_child(spec: dict) -> dict:
    started = time.perf_counter()
    if spec["backend"] in TORCH_BACKENDS:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    else:
        import sst2dist.runtime  # noqa: F401  (onnxruntime + tokenizers)
    imported = time.perf_counter()
    backend = open_backend(spec["backend"], spec["bundle"], spec["model"], spec["threads"], spec["max_length"])
    loaded = time.perf_counter()
    backend.run(backend.encode([spec["first"]]))
    predicted = time.perf_counter()
    backend.run(backend.encode(spec["batch"]))
    return {
        "import_seconds": imported - started,
        "load_seconds": loaded - imported,
        "first_prediction_seconds": predicted - loaded,
        "total_seconds": predicted - started,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": spec["threads"],
        "rss_batch_size": len(spec["batch"]),
    }
