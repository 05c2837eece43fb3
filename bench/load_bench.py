"""Bounded load benchmark of `sst2dist serve` on loopback.

Starts the real server (a subprocess) on a bundle; N concurrent keep-alive clients (1, 4, 16, 64) each send
single SST-2 validation sentences to POST /predict until a request count or a time bound is reached; reports
req/s and p50/p90/p99 latency per level; then runs 16 clients against the same server started with
--max-batch-size 1 to show what micro-batching buys. Every answer is checked against the offline Classifier
(top label equal, score within --tolerance) and every request must get a 200: errors or mismatches make the
exit status 1. Also reports where a request's time goes (the server's queue/tokenization/inference timing
headers against the client's latency), where the CPU goes (CPU seconds per request of the server's event loop,
of its batch worker with the onnxruntime threads, and of the load generator, from /proc on Linux), and what
batching buys onnxruntime alone (ms per sentence at batch 1, 4, 16, 32 for sentences of similar length, and for
random ones padded to the longest or split by length as the server does), so a missed target can be traced to
HTTP or to the model. Writes bench/results/load_bench.json and load_bench.md.

    python bench/load_bench.py --bundle export/minilm --data ../shared/data/sst2          # the full run
    python bench/load_bench.py --bundle export/minilm --data ../shared/data/sst2 --quick  # a smoke run

The clients are a few lines of asyncio over raw HTTP/1.1 (one connection each) so that the load generator,
which shares the CPU with the server, costs as little as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sst2dist.data import load_sst2
from sst2dist.environment import usable_cpus
from sst2dist.runtime import Classifier, load_classifier
from sst2dist.serve import default_threads, default_workers, plan_chunks
from sst2dist.variant_choice import batch_dependent, workload_for

RESULTS = Path(__file__).parent / "results"


@dataclass
class Level:
    """One load level's outcome."""

    clients: int
    max_batch_size: int
    requests: int = 0
    errors: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    req_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_batch: float = 0.0
    # where a request's time goes (means, ms): waiting for its batch, the batch's tokenization and onnxruntime
    # time (shared by the batch), and the rest: HTTP, JSON, event loop and the client
    queue_ms: float = 0.0
    tokenize_ms: float = 0.0
    inference_ms: float = 0.0
    other_ms: float = 0.0
    # where the CPU goes (CPU ms per request): the server's event loop (its main thread), its batch worker and
    # onnxruntime's threads (every other thread), the load generator; and how busy all cores were (%)
    loop_cpu_ms: float = 0.0
    worker_cpu_ms: float = 0.0
    client_cpu_ms: float = 0.0
    cpu_busy_pct: float = 0.0
    max_score_diff: float = 0.0
    first_problems: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: str, port: int, log: Path, flags: list[str]) -> subprocess.Popen:
    """The real `sst2dist serve` on 127.0.0.1, its output to `log` (a pipe nobody reads would fill up and stall
    it over a long run); returns once /ready answers 200."""
    command = [sys.executable, "-m", "sst2dist.cli", "serve", bundle, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen([*command, *flags], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}: see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the server was not ready within 120 s: see {log}")


def batch_stats(port: int) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = float(re.search(r"^sst2dist_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^sst2dist_batch_size_count (\S+)$", text, re.M).group(1))
    return total, count


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of a process, from /proc (empty where there is no /proc)."""
    seconds = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def note_cpu(level: Level, pid: int, before: dict[int, float], after: dict[int, float], client_s: float) -> None:
    """Fill the level's CPU columns from two thread_cpu() samples and the load generator's CPU seconds."""
    used = {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}
    loop = used.pop(pid, 0.0)
    per_request = 1000 / max(level.requests, 1)
    level.loop_cpu_ms = round(loop * per_request, 3)
    level.worker_cpu_ms = round(sum(used.values()) * per_request, 3)
    level.client_cpu_ms = round(client_s * per_request, 3)
    busy = loop + sum(used.values()) + client_s
    level.cpu_busy_pct = round(100 * busy / (level.seconds * usable_cpus()), 1)


TIMING_HEADERS = (b"x-queue-time", b"x-tokenization-time", b"x-inference-time")


async def post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
) -> tuple[int, bytes, list[float]]:
    """(status, body, the server's queue/tokenization/inference milliseconds) of one POST /predict."""
    writer.write(
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    timings = [re.search(rb"\r\n" + name + rb": *([\d.]+)", head) for name in TIMING_HEADERS]
    return int(head[9:12]), await reader.readexactly(length), [float(t.group(1)) if t else 0.0 for t in timings]


async def load(port: int, sentences: list[str], clients: int, max_requests: int, max_seconds: float):
    """Latencies (s), per-request (index, status, body), and the wall time of one level."""
    bodies = [json.dumps({"inputs": s}).encode() for s in sentences]
    next_index, latencies, answers = 0, [], []
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while next_index < max_requests and time.perf_counter() < deadline:
            index, next_index = next_index, next_index + 1
            start = time.perf_counter()
            status, body, timings = await post(reader, writer, bodies[index % len(bodies)])
            latencies.append(time.perf_counter() - start)
            answers.append((index % len(bodies), status, body, timings))
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, answers, time.perf_counter() - start


def check(answers: list, reference: list[dict[str, float]], tolerance: float, level: Level) -> None:
    """Every answer a 200 whose scores for every label are within `tolerance` of the offline ones."""
    for index, status, body, _ in answers:
        problem = None
        if status != 200:
            level.errors += 1
            problem = f"HTTP {status}: {body[:200]!r}"
        else:
            served = {item["label"]: item["score"] for item in json.loads(body)}
            want = reference[index]
            diff = max(abs(served[label] - score) for label, score in want.items())
            level.max_score_diff = max(level.max_score_diff, diff)
            if diff > tolerance:
                level.mismatches += 1
                problem = f"sentence {index}: served {served}, offline {want}"
        if problem and len(level.first_problems) < 5:
            level.first_problems.append(problem)


def run_level(
    server: subprocess.Popen,
    port: int,
    sentences: list[str],
    reference: list[dict],
    clients: int,
    max_batch_size: int,
    args,
) -> Level:
    asyncio.run(load(port, sentences, clients, min(20, args.requests), 5))  # warm the connections and caches
    before, cpu_before, client_before = batch_stats(port), thread_cpu(server.pid), own_cpu()
    latencies, answers, seconds = asyncio.run(load(port, sentences, clients, args.requests, args.max_seconds))
    cpu_after, client_s, after = thread_cpu(server.pid), own_cpu() - client_before, batch_stats(port)
    level = Level(clients, max_batch_size, requests=len(latencies), seconds=round(seconds, 3))
    note_cpu(level, server.pid, cpu_before, cpu_after, client_s)
    check(answers, reference, args.tolerance, level)
    ms = np.array(latencies) * 1000
    level.req_per_s = round(len(latencies) / seconds, 1)
    level.p50_ms, level.p90_ms, level.p99_ms = (round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99))
    level.mean_batch = round((after[0] - before[0]) / max(after[1] - before[1], 1), 2)
    split = np.array([timings for *_, timings in answers]).mean(axis=0)
    level.queue_ms, level.tokenize_ms, level.inference_ms = (round(float(x), 2) for x in split)
    level.other_ms = round(float(ms.mean() - split.sum()), 2)
    level.max_score_diff = float(f"{level.max_score_diff:.3g}")
    print(
        f"clients {clients:>3}  batch<={max_batch_size:<3} {level.req_per_s:>8.1f} req/s  p50 {level.p50_ms:6.2f}  "
        f"p90 {level.p90_ms:6.2f}  p99 {level.p99_ms:6.2f} ms  mean batch {level.mean_batch:5.2f}  "
        f"max diff {level.max_score_diff:.1e}  errors {level.errors}  mismatches {level.mismatches}",
        flush=True,
    )
    return level


def bench_server(args, flags: list[str], client_levels: list[int], sentences, reference, max_batch_size: int):
    port = free_port()
    server = start_server(args.bundle, port, Path(tempfile.gettempdir()) / "sst2dist-load-bench-server.log", flags)
    try:
        return [run_level(server, port, sentences, reference, n, max_batch_size, args) for n in client_levels]
    finally:
        server.terminate()
        server.wait(60)


def batch_scaling(bundle: str, variant: str, threads: int, sentences: list[str], sizes=(1, 4, 16, 32)) -> list[dict]:
    """onnxruntime ms per sentence at each batch size, with the server's thread count: for sentences of similar
    length (what batching buys a CPU before any HTTP or padding is involved), and for random validation
    sentences run as one call padded to the longest ("padded") or split by length as the server does ("split")."""
    classifier = Classifier(bundle, variant=variant, threads=threads)
    counts = classifier.token_counts(sentences)
    middle = sorted(range(len(sentences)), key=counts.__getitem__)[len(sentences) // 2 - 16 :][:32]
    rng = random.Random(0)
    rows = []
    for size in sizes:
        encoded = classifier.encode([sentences[i] for i in middle[:size]])
        mixed = [rng.sample(range(len(sentences)), size) for _ in range(4)]
        padded = [classifier.encode([sentences[i] for i in batch]) for batch in mixed]
        split = [
            classifier.encode([sentences[batch[i]] for i in group])
            for batch in mixed
            for group in plan_chunks([counts[i] for i in batch], size, 8192)
        ]
        best = best_time(classifier, [encoded])
        rows.append(
            {
                "batch_size": size,
                "ms": round(best * 1000, 3),
                "ms_per_sentence": round(best * 1000 / size, 3),
                "mixed_padded_ms_per_sentence": round(best_time(classifier, padded) * 1000 / (4 * size), 3),
                "mixed_split_ms_per_sentence": round(best_time(classifier, split) * 1000 / (4 * size), 3),
            }
        )
    return rows


def best_time(classifier: Classifier, batches: list[dict], repeats: int = 5) -> float:
    """The best of `repeats` timings of running every encoded batch once (after one warm-up pass)."""
    timings = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for encoded in batches:
            classifier.run(encoded)
        timings.append(time.perf_counter() - start)
    return min(timings[1:])


def markdown(results: dict) -> str:
    rows = [
        "| clients | max batch | req/s | p50 ms | p90 ms | p99 ms | mean batch | requests | errors | mismatches "
        "| max score diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    split = [
        "| clients | max batch | mean latency ms | queue | tokenize (batch) | onnxruntime (batch) | HTTP + rest |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cpu = [
        "| clients | max batch | event loop | batch worker + onnxruntime threads | load generator | all cores busy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for level in results["levels"]:
        rows.append(
            f"| {level['clients']} | {level['max_batch_size']} | {level['req_per_s']:.1f} | {level['p50_ms']:.2f} | "
            f"{level['p90_ms']:.2f} | {level['p99_ms']:.2f} | {level['mean_batch']:.2f} | {level['requests']} | "
            f"{level['errors']} | {level['mismatches']} | {level['max_score_diff']:.1e} |"
        )
        total = level["queue_ms"] + level["tokenize_ms"] + level["inference_ms"] + level["other_ms"]
        split.append(
            f"| {level['clients']} | {level['max_batch_size']} | {total:.2f} | {level['queue_ms']:.2f} | "
            f"{level['tokenize_ms']:.2f} | {level['inference_ms']:.2f} | {level['other_ms']:.2f} |"
        )
        cpu.append(
            f"| {level['clients']} | {level['max_batch_size']} | {level['loop_cpu_ms']:.2f} | "
            f"{level['worker_cpu_ms']:.2f} | {level['client_cpu_ms']:.2f} | {level['cpu_busy_pct']:.0f}% |"
        )
    scaling = [
        "| batch size | similar length: ms per batch | ms per sentence | random: padded, ms per sentence "
        "| random: split by length, ms per sentence |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {row['batch_size']} | {row['ms']:.2f} | {row['ms_per_sentence']:.2f} | "
            f"{row['mixed_padded_ms_per_sentence']:.2f} | {row['mixed_split_ms_per_sentence']:.2f} |"
            for row in results["scaling"]
        ),
    ]
    summary = results["summary"]
    config = results["config"]
    return "\n".join(
        [
            "# Load benchmark: `sst2dist serve` on loopback",
            "",
            f"Bundle `{config['bundle']}` (variant {config['variant']}), {config['cpus']} CPUs "
            f"({config['processor']}), {config['workers']} batch worker(s) with {config['threads']} "
            f"onnxruntime thread(s) each{'' if config['concurrency_flags_given'] else ' (the defaults)'}, "
            f"max wait {config['max_wait_ms']} ms. Each client sends one SST-2 validation sentence per request "
            f"over a keep-alive connection; up to {config['requests']} requests or {config['max_seconds']} s "
            f"per level.{' Quick smoke run.' if config['quick'] else ''} Load average before/after: "
            f"{config['load_average_before']}/{config['load_average_after']}"
            f"{' (a busy machine: the numbers are noisy)' if config['load_average_before'] > 1 else ''}.",
            "",
            *rows,
            "",
            f"At 16 clients, micro-batching gives **{summary['speedup_16']:.2f}x** the throughput of "
            f"`--max-batch-size 1` (target >= 3x: {'met' if summary['speedup_target_met'] else 'NOT met'}); "
            f"p99 {summary['p99_16_ms']:.2f} ms (target <= 50 ms: "
            f"{'met' if summary['p99_target_met'] else 'NOT met'}). "
            f"Errors: {summary['errors']}; answers differing from the offline Classifier (each sentence run alone) "
            f"by more than {config['tolerance']:g}: {summary['mismatches']}.",
            "",
            "Where a request's time goes (means; the server's `x-queue-time`, `x-tokenization-time` and "
            "`x-inference-time` headers, the rest is HTTP, JSON, the event loop and the client):",
            "",
            *split,
            "",
            "Where the CPU goes (CPU ms per request, from /proc: the server's event loop thread, every other server "
            "thread, the load generator; then the share of all cores busy):",
            "",
            *cpu,
            "",
            f"What batching buys onnxruntime itself (offline, one run at a time with {config['threads']} thread(s) "
            "as each server run, best of 5; similar-length validation sentences, then 4 batches of random ones):",
            "",
            *scaling,
            "",
            f"Command: `{config['command']}`",
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="Bundle folder from `sst2dist export-onnx`.")
    parser.add_argument("--data", default="../shared/data/sst2", help="SST-2 folder or hub id (validation split).")
    parser.add_argument(
        "--variant",
        default=None,
        help="Bundle variant (default: the one `sst2dist serve` picks at its default micro-batching).",
    )
    parser.add_argument("--workers", type=int, default=None, help="The server's --workers (default: its own).")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads of each server run.")
    parser.add_argument("--clients", default="1,4,16,64", help="Comma-separated concurrent client counts.")
    parser.add_argument("--requests", type=int, default=2000, help="Requests per level (upper bound).")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="Time bound per level.")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="The server's --max-wait-ms.")
    parser.add_argument("--max-batch-size", type=int, default=32, help="The batching server's --max-batch-size.")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="Largest score difference from the offline Classifier. Default: 1e-4, or 1e-2 for a variant whose "
        "scores moved with their batch mates when the export measured it (dynamic int8 in older bundles).",
    )
    parser.add_argument("--output", default=str(RESULTS), help="Folder for load_bench.json and load_bench.md.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1, 4, 16 clients, 150 requests each.")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.max_seconds = "1,4,16", 150, 10.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sentences = list(load_sst2(args.data)["validation"]["sentence"])
    workers = default_workers() if args.workers is None else args.workers
    threads = default_threads(workers) if args.threads is None else args.threads
    # The variant `sst2dist serve` picks with these threads at its batch size; every server below then runs it by name.
    offline = load_classifier(args.bundle, args.variant, threads, workload_for(args.max_batch_size))
    if args.tolerance is None:
        args.tolerance = 1e-2 if batch_dependent(offline.manifest, offline.variant) else 1e-4
    probabilities = offline.predict_proba(sentences, batch_size=1)  # each sentence alone, as a lone request runs
    reference = [dict(zip(offline.labels, map(float, row), strict=True)) for row in probabilities]
    flags = ["--max-wait-ms", str(args.max_wait_ms), "--max-queue", "4096"]
    flags += ["--variant", offline.variant, "--workers", str(workers), "--threads", str(threads)]
    client_levels = [int(n) for n in args.clients.split(",")]

    load_before = os.getloadavg()[0]
    scaling = batch_scaling(args.bundle, offline.variant, threads, sentences)
    batched = bench_server(
        args,
        [*flags, "--max-batch-size", str(args.max_batch_size)],
        client_levels,
        sentences,
        reference,
        args.max_batch_size,
    )
    single = bench_server(args, [*flags, "--max-batch-size", "1"], [16], sentences, reference, 1)
    levels = batched + single
    at_16 = next(level for level in batched if level.clients == 16)
    speedup = at_16.req_per_s / single[0].req_per_s
    results = {
        "config": {
            "bundle": args.bundle,
            "variant": offline.variant,
            "workers": workers,
            "threads": threads,
            "concurrency_flags_given": args.threads is not None or args.workers is not None,
            "max_wait_ms": args.max_wait_ms,
            "requests": args.requests,
            "max_seconds": args.max_seconds,
            "tolerance": args.tolerance,
            "quick": args.quick,
            "cpus": usable_cpus(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "command": " ".join(["python", "bench/load_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        },
        "levels": [asdict(level) for level in levels],
        "scaling": scaling,
        "summary": {
            "speedup_16": round(speedup, 2),
            "speedup_target_met": speedup >= 3,
            "p99_16_ms": at_16.p99_ms,
            "p99_target_met": at_16.p99_ms <= 50,
            "errors": sum(level.errors for level in levels),
            "mismatches": sum(level.mismatches for level in levels),
        },
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "load_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "load_bench.md").write_text(markdown(results))
    print(markdown(results))
    for level in levels:
        for problem in level.first_problems:
            print(f"problem at {level.clients} clients: {problem}", file=sys.stderr)
    return 1 if results["summary"]["errors"] or results["summary"]["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
