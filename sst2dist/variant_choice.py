"""Which variant of a bundle runs by default on this CPU: timing the variants that passed the export gate,
recording those timings with a CPU fingerprint, and choosing by them.

    export-onnx: every gated variant (onnxruntime and OpenVINO alike) timed at batch 1 on a few dozen validation
                 sentences and in length-sorted batches of 32, after a warm-up pass, at 1 thread and at all cores
                 ──► manifest["variant_timings"], with cpu_fingerprint()
    Classifier / serve / predict without a variant:
        the manifest's timings when they were taken on this CPU (same model name and ISA flags), for the thread
        count nearest to the one asked for; else the gated variants re-timed here on a dozen built-in sentences

Two workloads, chosen for separately: LATENCY (batch 1: Classifier's default, serve at --max-batch-size 1) and
THROUGHPUT (sorted batches: predict, micro-batched serve). The fastest wins, with a preference: the exact variants
(optimized, fp32, openvino-f32: PyTorch's logits, whatever the batch) come first, then the batch-invariant lossy
ones (static int8, openvino-bf16, openvino-int8), then dynamic int8; a later tier replaces the choice only when it is
clearly faster (at most CLEARLY_FASTER of its time). `serve` and `predict` batch unrelated texts together, so for them
dynamic int8, whose activation scales are computed per batch, is left out unless nothing else passed the gate.
Variants whose engine is not installed here (OpenVINO is an extra), or whose precision this CPU lacks (bf16), are
never candidates.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from sst2dist.engines import engine_of, unavailable_reason
from sst2dist.environment import cpu_fingerprint, usable_cpus

# Most preferred first; within a tier the fastest, across tiers a later one only when clearly faster.
TIERS = (("optimized", "fp32", "openvino-f32"), ("static-int8", "openvino-bf16", "openvino-int8"), ("int8",))
BATCH_DEPENDENT = ("int8",)  # assumed batch-dependent only in bundles exported before invariance was measured
INVARIANCE_BATCHES = (1, 8, 32)  # batch sizes whose scores of the same sentence are compared at export
INVARIANCE_SENTENCES = 64
INVARIANCE_TOLERANCE = 1e-4  # the largest score change across batch sizes that still counts as batch-invariant
QUIET_CPU_SHARE = 0.8  # below this share of a CPU for a 1-thread timing, the machine was busy: timings not trusted
CLEARLY_FASTER = 0.9  # a less preferred variant must take at most 90 % of the time of the current choice
LATENCY, THROUGHPUT = "latency", "throughput"
WORKLOADS = (LATENCY, THROUGHPUT)
THROUGHPUT_BATCH = 32
TIMINGS_KEY = {LATENCY: "ms_per_sentence", THROUGHPUT: "batch_ms_per_sentence"}
EXPORT_SENTENCES, EXPORT_BATCH_SENTENCES, EXPORT_ROUNDS = 32, 64, 5
LOAD_ROUNDS = 3
# What a quick re-timing at load runs: no data set is at hand there. SST-2-like lengths, 4 to 40 words.
LOAD_SENTENCES = (
    "a gripping, funny film",
    "dull and lifeless",
    "the acting is superb but the plot goes nowhere",
    "one of the year's best",
    "an unexpectedly moving portrait of grief, told with restraint and a sharp eye for small details",
    "too long by an hour",
    "it's not bad, but you have seen this story told better a dozen times before",
    "a warm, generous comedy",
    "the director never decides whether this is a thriller, a romance or a satire, and the film suffers for it "
    "in almost every scene",
    "i fell asleep twice",
    "a triumph of style over substance",
    "smart, brisk and far more affecting than it has any right to be",
)
REASONS = {
    "explicit": "explicit variant (--variant)",
    "recorded": "recorded timing on matching CPU",
    "re-timed": "re-timed at load",
    "only-gated": "the only variant that passed the export gate",
}


class Runner(Protocol):
    """What timing and the invariance check need of a loaded variant (the runtime Classifier has all three)."""

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]: ...

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray: ...

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


@dataclass
class VariantChoice:
    """The variant a classifier runs, and why: `reason` is a key of REASONS, `detail` says it in words."""

    variant: str
    reason: str
    detail: str
    ms_per_sentence: dict[str, float] = field(default_factory=dict)
    threads: int | None = None
    cpu: dict | None = None
    workload: str = LATENCY
    engine: str = field(init=False)

    def __post_init__(self) -> None:
        self.engine = engine_of(self.variant)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"variant {self.variant}: {REASONS[self.reason]} (on {self.engine}; {self.detail})"


def workload_for(batch_size: int) -> str:
    """The workload a caller running batches of `batch_size` is chosen for: LATENCY at batch 1, else THROUGHPUT
    (Classifier.logits sorts texts by length past one batch). serve, predict, predict-ray and the benches all
    ask this one rule, so one bundle on one CPU runs the same variant for the same batch size everywhere."""
    return LATENCY if batch_size <= 1 else THROUGHPUT


def explicit(variant: str) -> VariantChoice:
    return VariantChoice(variant, "explicit", "asked for by name; no timing consulted")


def candidates(manifest: dict, batch_invariant: bool = False) -> list[str]:
    """The variants that passed the gate and can run here, most preferred first; with `batch_invariant`, those
    whose scores moved with the batch at export only if nothing else passed."""
    variants = manifest.get("variants", {})
    passed = [
        name
        for tier in TIERS
        for name in tier
        if variants.get(name, {}).get("passed") and unavailable_reason(name) is None
    ]
    if batch_invariant:
        return [name for name in passed if not batch_dependent(manifest, name)] or passed
    return passed


def batch_dependent(manifest: dict, name: str) -> bool:
    """Whether `name`'s scores moved with their batch mates when measured at export (`batch_invariance`); bundles
    exported before it was measured fall back to what the engine implies (dynamic int8)."""
    measured = manifest.get("variants", {}).get(name, {}).get("batch_invariance")
    if isinstance(measured, dict) and "invariant" in measured:
        return not measured["invariant"]
    return name in BATCH_DEPENDENT


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def batch_invariance(runner: Runner, texts: Sequence[str]) -> dict:
    """manifest["variants"][name]["batch_invariance"]: the largest change of any sentence's scores between batch 1
    and sorted batches of 8 and 32 (other batch mates, other padding), and whether it is within the tolerance. A
    lone sentence has no batch mates, so nothing is measured: no "invariant", and `batch_dependent` goes by engine."""
    texts = list(texts)[:INVARIANCE_SENTENCES]
    if len(texts) < 2:
        return {"batch_sizes": list(INVARIANCE_BATCHES), "sentences": len(texts), "max_score_diff": None,
                "note": "not measured: one sentence has no batch mates"}  # fmt: skip
    scores = {size: softmax(runner.logits(texts, size)) for size in INVARIANCE_BATCHES}
    alone = scores[INVARIANCE_BATCHES[0]]
    diff = max(float(np.abs(scores[size] - alone).max()) for size in INVARIANCE_BATCHES[1:])
    return {
        "batch_sizes": list(INVARIANCE_BATCHES),
        "sentences": len(texts),
        "max_score_diff": diff,
        "tolerance": INVARIANCE_TOLERANCE,
        "invariant": diff <= INVARIANCE_TOLERANCE,
    }


def pick(ms: Mapping[str, float]) -> str:
    """The fastest of the most preferred tier timed, replaced by a later tier's fastest only when clearly faster."""
    best = None
    for tier in TIERS:
        timed = [name for name in tier if name in ms]
        if not timed:
            continue
        fastest = min(timed, key=ms.__getitem__)
        if best is None or ms[fastest] <= CLEARLY_FASTER * ms[best]:
            best = fastest
    if best is None:
        raise ValueError("no variant was timed")
    return best


def batches(texts: Sequence[str], batch_size: int) -> list[list[str]]:
    """`texts` in batches of `batch_size`; past batch 1 sorted by length first, as `Classifier.logits` runs them."""
    if batch_size == 1:
        return [[text] for text in texts]
    ordered = sorted(texts, key=len)
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def time_variants(
    runners: Mapping[str, Runner], texts: Sequence[str], rounds: int, batch_size: int = 1
) -> dict[str, float]:
    """Milliseconds per sentence for each variant, at `batch_size` (sorted batches past 1): the median over
    `rounds` passes over `texts`, after one warm-up pass. The variants take turns within each round, so a change
    in machine load hits all alike."""
    encoded = {name: [runner.encode(batch) for batch in batches(texts, batch_size)] for name, runner in runners.items()}
    for name, runner in runners.items():
        for inputs in encoded[name]:
            runner.run(inputs)
    passes: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            started = time.perf_counter()
            for inputs in encoded[name]:
                runner.run(inputs)
            passes[name].append((time.perf_counter() - started) * 1000 / len(texts))
    return {name: round(float(np.median(values)), 4) for name, values in passes.items()}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def record_timings(load: Callable[[str, int | None], Runner], names: Sequence[str], texts: Sequence[str]) -> dict:
    """manifest["variant_timings"]: the variants `names` timed on `texts` at 1 thread and at all usable CPUs
    (threads None: the runtime's default session), keyed by thread count: at batch 1 (ms_per_sentence) and in
    sorted batches of THROUGHPUT_BATCH (batch_ms_per_sentence); with the machine's load while they ran. A busy
    recording is measured once more; still busy, it is kept but flagged, and the choice re-times at load."""
    timings = timed_once(load, names, list(texts))
    if timings["machine"]["busy"]:
        timings = timed_once(load, names, list(texts))
    return timings


def timed_once(load: Callable[[str, int | None], Runner], names: Sequence[str], texts: list[str]) -> dict:
    latency, throughput, machine = {}, {}, {}
    counts = {"1": 1} | ({str(usable_cpus()): None} if usable_cpus() > 1 else {})
    for key, threads in counts.items():
        runners = {name: load(name, threads) for name in names}
        started, cpu = time.perf_counter(), cpu_seconds()
        latency[key] = time_variants(runners, texts[:EXPORT_SENTENCES], EXPORT_ROUNDS)
        throughput[key] = time_variants(runners, texts[:EXPORT_BATCH_SENTENCES], EXPORT_ROUNDS, THROUGHPUT_BATCH)
        if threads == 1:  # one busy thread: the share of a CPU it got says how contended the machine was
            machine = machine_load((cpu_seconds() - cpu) / (time.perf_counter() - started))
    return {
        "cpu": cpu_fingerprint(),
        "batch_size": 1,
        "sentences": len(texts[:EXPORT_SENTENCES]),
        "throughput_batch_size": THROUGHPUT_BATCH,
        "throughput_sentences": len(texts[:EXPORT_BATCH_SENTENCES]),
        "rounds": EXPORT_ROUNDS,
        "statistic": "median over rounds of the mean ms per sentence, after one warm-up pass",
        "engines": {name: engine_of(name) for name in names},
        "ms_per_sentence": latency,
        "batch_ms_per_sentence": throughput,
        "machine": machine,
    }


def machine_load(cpu_share: float) -> dict:
    """The recording's quietness: the share of a CPU the 1-thread timings got, and the load averages after."""
    return {
        "cpu_share_1_thread": round(cpu_share, 3),
        "loadavg": [round(value, 2) for value in os.getloadavg()],
        "usable_cpus": usable_cpus(),
        "quiet_cpu_share": QUIET_CPU_SHARE,
        "busy": cpu_share < QUIET_CPU_SHARE,
    }


def same_cpu(recorded: dict | None, here: dict) -> bool:
    recorded = recorded or {}
    return recorded.get("model") == here["model"] and sorted(recorded.get("flags", [])) == sorted(here["flags"])


def describe_cpu(cpu: dict | None) -> str:
    if not cpu:
        return "an unknown CPU"
    return f"{cpu.get('model') or 'unnamed'} [{cpu.get('kind') or 'unknown kind'}: {', '.join(cpu.get('flags', []))}]"


def recorded_timings(
    manifest: dict, names: Sequence[str], threads: int, workload: str = LATENCY
) -> tuple[dict[str, float] | None, str]:
    """The manifest's timings of `names` for `workload` and the recorded thread count nearest `threads`, or None
    and why they do not apply here. Bundles timed before batches were timed answer THROUGHPUT by batch 1."""
    timings, here = manifest.get("variant_timings"), cpu_fingerprint()
    if not timings:
        return None, "the bundle has no recorded timings: it was exported before export-onnx timed its variants"
    if not same_cpu(timings.get("cpu"), here):
        return None, f"the bundle was timed on {describe_cpu(timings.get('cpu'))}, this is {describe_cpu(here)}"
    machine = timings.get("machine") or {}
    if machine.get("busy"):
        share = machine.get("cpu_share_1_thread", 0.0)
        return None, f"the bundle was timed on a busy machine (a 1-thread timing got {share:.0%} of a CPU)"
    batched = workload == THROUGHPUT and bool(timings.get(TIMINGS_KEY[THROUGHPUT]))
    by_threads = timings.get(TIMINGS_KEY[THROUGHPUT if batched else LATENCY]) or {}
    batch = batch_words(THROUGHPUT if batched else LATENCY, timings.get("throughput_batch_size", THROUGHPUT_BATCH))
    if not by_threads:
        return None, "the bundle's timings are empty"
    key = min(by_threads, key=lambda count: (abs(int(count) - threads), int(count)))
    missing = [name for name in names if name not in by_threads[key]]
    if missing:
        return None, f"the bundle's timings leave out {', '.join(missing)}"
    return {name: by_threads[key][name] for name in names}, f"{key} thread(s), {batch}"


def timing_summary(ms: Mapping[str, float], chosen: str) -> str:
    """The timings, fastest first, and why the choice is not the fastest when it is not."""
    text = ", ".join(f"{name} {value:.3f} ms" for name, value in sorted(ms.items(), key=lambda item: item[1]))
    fastest = min(ms, key=ms.__getitem__)
    if fastest != chosen:
        text += f"; {fastest} is not over {100 * (1 - CLEARLY_FASTER):.0f}% faster, and {chosen} comes first"
    return text


def batch_words(workload: str, size: int) -> str:
    return "batch 1" if workload == LATENCY else f"sorted batches of {size}"


def choice_from_manifest(
    manifest: dict, names: Sequence[str], threads: int, here: dict, workload: str = LATENCY
) -> tuple[VariantChoice | None, str]:
    """The choice the manifest alone settles (one gated variant, or timings recorded on this CPU), or None and why
    the variants must be timed here instead."""
    if len(names) == 1:
        only = VariantChoice(names[0], "only-gated", "nothing to time", threads=threads, cpu=here, workload=workload)
        return only, ""
    ms, why = recorded_timings(manifest, names, threads, workload)
    if ms is None:
        return None, why
    chosen = pick(ms)
    detail = f"timed at export on this CPU ({here['kind']}, {why}): {timing_summary(ms, chosen)}"
    return VariantChoice(chosen, "recorded", detail, ms, threads, here, workload), why


def recorded_choice(manifest: dict, threads: int, workload: str = LATENCY) -> dict:
    """What `Classifier` would run by default here for `workload`, from the manifest alone (nothing loaded): the
    bench's report of which variant serves on this CPU and why."""
    names = candidates(manifest, batch_invariant=True)
    if not names:
        return {"variant": None, "reason": "none", "detail": "no variant passed the export gate and runs here"}
    settled, why = choice_from_manifest(manifest, names, threads, cpu_fingerprint(), workload)
    if settled is None:
        return {"variant": None, "reason": "re-timed", "detail": f"chosen by timing at load: {why}"}
    return {"variant": settled.variant, "engine": settled.engine, "reason": settled.reason, "detail": settled.detail}


def choose_variant(
    manifest: dict,
    threads: int | None,
    *,
    batch_invariant: bool,
    load: Callable[[str], Runner],
    workload: str = LATENCY,
) -> tuple[VariantChoice, dict[str, Runner]]:
    """The default variant on this CPU for `workload` and why, and the variants loaded to re-time them (empty
    when none were).

    `load(name)` loads a variant with the thread count the caller will run; re-timing happens only when the
    manifest's timings do not apply to this CPU. The bundle must have a gated variant (see `candidates`)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    names = candidates(manifest, batch_invariant)
    if not names:
        raise ValueError("no variant in this bundle passed the export verification gate and runs here")
    threads = threads or usable_cpus()
    here = cpu_fingerprint()
    settled, why = choice_from_manifest(manifest, names, threads, here, workload)
    if settled is not None:
        return settled, {}
    runners = {name: load(name) for name in names}
    size = 1 if workload == LATENCY else len(LOAD_SENTENCES)
    ms = time_variants(runners, LOAD_SENTENCES, LOAD_ROUNDS, size)
    chosen = pick(ms)
    batch = batch_words(workload, size)
    detail = f"{why}; timed now ({here['kind']}, {threads} thread(s), {batch}): {timing_summary(ms, chosen)}"
    return VariantChoice(chosen, "re-timed", detail, ms, threads, here, workload), runners
