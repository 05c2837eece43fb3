"""Bounded soak of `sst2dist serve` on loopback: does it hold for minutes at a steady high load?

Starts the real server on a bundle, measures its capacity (req/s with --clients closed-loop clients for
--capacity-seconds), then sends single SST-2 validation sentences at --load x that rate (open loop: requests
leave on schedule whether or not earlier ones answered, and latency counts from the scheduled moment, so a stall
shows in p99 instead of slowing the sender) for --duration seconds. Every --sample-every seconds it records the
server's RSS, open files and threads (/proc), the window's req/s, p50/p99, failures and requests not sent because
256 were already waiting. It holds when every request was sent and answered 200 and RSS grows at most
--max-rss-growth % from the first sample after --warmup seconds to the last one; otherwise the exit status
is 1. Writes soak.json and soak.md (CPU named) to --output.

    python bench/soak.py --bundle export/minilm --data ../shared/data/sst2             # 10 minutes at 80 %
    python bench/soak.py --bundle B --data tests/data/sst2 --duration 20 --warmup 5 \\
        --sample-every 5 --capacity-seconds 5 --output /tmp/soak                        # a 20-second smoke run

Run it on a quiet machine: another busy process lowers the measured capacity and raises p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from load_bench import free_port, post, start_server

from sst2dist.atomic import atomic_open
from sst2dist.data import load_sst2
from sst2dist.environment import cpu_info

RESULTS = Path(__file__).parent / "results"
MAX_CONNECTIONS = 256  # open loop: a new connection when every open one is waiting for its answer
IDLE_CLOSE_S = 4.0  # uvicorn closes a keep-alive connection idle for 5 s: drop ours before it does


@dataclass
class Sample:
    """One --sample-every window, and the server process at its end."""

    t_s: float
    rss_mb: float
    open_files: int
    threads: int
    requests: int
    failed: int  # not a 200, or the connection broke
    behind: int  # not sent: MAX_CONNECTIONS requests were already waiting (the server fell behind)
    req_per_s: float
    p50_ms: float | None  # None (null): no request completed in the window, so there is no latency to report
    p99_ms: float | None


def process_stats(pid: int) -> tuple[float, int, int]:
    """RSS (MB), open file descriptors and threads of `pid`, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    return round(rss_kb / 1024, 1), len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


async def capacity(port: int, bodies: list[bytes], clients: int, seconds: float) -> float:
    """Requests per second that `clients` closed-loop clients get answered (all must be 200)."""
    done, deadline = 0, time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            status, body, _ = await post(reader, writer, bodies[(offset + done) % len(bodies)])
            if status != 200:
                raise SystemExit(f"measuring capacity: HTTP {status} {body[:200]!r}")
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.perf_counter() - started)


class OpenLoop:
    """Requests sent on a fixed schedule over a pool of keep-alive connections; latency from the schedule."""

    def __init__(self, port: int, bodies: list[bytes]) -> None:
        self.port, self.bodies = port, bodies
        self.idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []  # (last used, ...)
        self.open = 0
        self.latencies: list[float] = []
        self.failed = self.behind = 0
        self.problems: list[str] = []

    def reusable(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used idle connection, closing those idle too long to trust."""
        while self.idle:
            used, reader, writer = self.idle.pop()
            if time.perf_counter() - used < IDLE_CLOSE_S:
                return reader, writer
            writer.close()
            self.open -= 1
        return None

    async def one(self, index: int, due: float) -> None:
        connection = self.reusable()
        if connection is None:
            if self.open >= MAX_CONNECTIONS:
                self.behind += 1
                return
            self.open += 1
            connection = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            status, body, _ = await post(*connection, self.bodies[index % len(self.bodies)])
        except (OSError, asyncio.IncompleteReadError) as err:
            self.open -= 1
            self.fail(f"connection failed: {err!r}")
            return
        self.latencies.append(time.perf_counter() - due)
        self.idle.append((time.perf_counter(), *connection))
        if status != 200:
            self.fail(f"HTTP {status}: {body[:200]!r}")

    def fail(self, problem: str) -> None:
        self.failed += 1
        if len(self.problems) < 5:
            self.problems.append(problem)

    def take_window(self) -> tuple[list[float], int, int]:
        window = self.latencies, self.failed, self.behind
        self.latencies, self.failed, self.behind = [], 0, 0
        return window


async def soak(
    args: argparse.Namespace, port: int, pid: int, bodies: list[bytes], rate: float
) -> tuple[list[Sample], list[str]]:
    """The samples, and the first problems seen (at most 5)."""
    loop, samples, pending = OpenLoop(port, bodies), [], set()
    started = time.perf_counter()
    next_sample, index = started + args.sample_every, 0
    while (now := time.perf_counter()) < started + args.duration:
        due = started + index / rate
        if due > now:
            await asyncio.sleep(min(due, next_sample) - now)
        if time.perf_counter() >= next_sample:
            samples.append(sample(loop, pid, time.perf_counter() - started, args.sample_every))
            next_sample += args.sample_every
            continue
        task = asyncio.create_task(loop.one(index, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        index += 1
    await asyncio.gather(*pending)
    if time.perf_counter() - (next_sample - args.sample_every) > args.sample_every / 2:  # a last, partial window
        samples.append(sample(loop, pid, time.perf_counter() - started, args.sample_every))
    return samples, loop.problems


def sample(loop: OpenLoop, pid: int, t: float, window: float) -> Sample:
    latencies, failed, behind = loop.take_window()
    rss, files, threads = process_stats(pid)
    p50, p99 = window_percentiles(latencies)
    rate = round(len(latencies) / window, 1)
    row = Sample(round(t, 1), rss, files, threads, len(latencies), failed, behind, rate, p50, p99)
    print(
        f"{row.t_s:7.1f} s  RSS {rss:7.1f} MB  files {files:4d}  threads {threads:3d}  {row.req_per_s:7.1f} req/s  "
        f"p50 {ms_text(p50)}  p99 {ms_text(p99)} ms  failed {failed}  behind {behind}",
        flush=True,
    )
    return row


def window_percentiles(latencies: list[float]) -> tuple[float | None, float | None]:
    """p50 and p99 in ms of a window's completed requests; (None, None) when none completed (not 0.0: a stalled
    server must not look fast)."""
    if not latencies:
        return None, None
    ms = np.array(latencies) * 1000
    return round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 99)), 2)


def ms_text(value: float | None) -> str:
    return f"{value:7.2f}" if value is not None else "      -"


def verdict(samples: list[Sample], args: argparse.Namespace) -> dict:
    after_warmup = [s for s in samples if s.t_s >= args.warmup] or samples[-1:]
    base, last = after_warmup[0], samples[-1]
    growth = 100 * (last.rss_mb - base.rss_mb) / base.rss_mb
    failed, behind = sum(s.failed for s in samples), sum(s.behind for s in samples)
    stalled = sum(s.requests == 0 for s in samples)
    p99s = [s.p99_ms for s in samples if s.p99_ms is not None]
    return {
        "requests": sum(s.requests for s in samples),
        "failed": failed,
        "behind": behind,
        "rss_after_warmup_mb": base.rss_mb,
        "rss_last_mb": last.rss_mb,
        "rss_growth_pct": round(growth, 2),
        "open_files_first_last": [samples[0].open_files, last.open_files],
        "worst_p99_ms": max(p99s) if p99s else None,
        "windows_without_a_completed_request": stalled,
        "holds": failed == 0 and behind == 0 and stalled == 0 and growth <= args.max_rss_growth,
    }


def markdown(results: dict) -> str:
    config, summary, cpu = results["config"], results["summary"], results["cpu"]
    flags = ", ".join(flag for flag, on in cpu["flags"].items() if on) or "none of note"
    lines = [
        "# Soak: `sst2dist serve` on loopback",
        "",
        f"CPU: {cpu['model']} ({cpu['kind']}; {cpu['usable_cpus']} usable CPUs; flags: {flags}).",
        f"Bundle `{config['bundle']}`; capacity {config['capacity_req_per_s']} req/s ({config['clients']} closed-loop "
        f"clients, {config['capacity_seconds']} s); soak at {config['load']:.0%} of it = {config['rate_req_per_s']} "
        f"req/s for {config['duration_s']} s, open loop; a sample every {config['sample_every_s']} s.",
        "",
        f"**{'Holds' if summary['holds'] else 'Does not hold'}**: {summary['failed']} of {summary['requests']} "
        f"requests failed, {summary['behind']} not sent ({MAX_CONNECTIONS} already waiting); "
        f"RSS {summary['rss_after_warmup_mb']} MB after {config['warmup_s']} s of warm-up -> "
        f"{summary['rss_last_mb']} MB at the end ({summary['rss_growth_pct']:+.2f} %, limit "
        f"+{config['max_rss_growth_pct']} %); open files {summary['open_files_first_last'][0]} -> "
        f"{summary['open_files_first_last'][1]}; worst window p99 {summary['worst_p99_ms']} ms; "
        f"{summary['windows_without_a_completed_request']} window(s) without a completed request.",
        "",
        "| t (s) | RSS (MB) | open files | threads | req/s | p50 (ms) | p99 (ms) | failed | not sent |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s['t_s']} | {s['rss_mb']} | {s['open_files']} | {s['threads']} | {s['req_per_s']} | "
        f"{ms_text(s['p50_ms']).strip()} | {ms_text(s['p99_ms']).strip()} | {s['failed']} | {s['behind']} |"
        for s in results["samples"]
    ]
    if results["problems"]:
        lines += ["", "First problems: " + "; ".join(results["problems"])]
    lines += ["", f"Command: `{config['command']}`; load average {config['load_average_before']} before.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle folder written by sst2dist export-onnx")
    parser.add_argument("--data", default="../shared/data/sst2", help="SST-2 folder whose dev sentences are sent")
    parser.add_argument("--duration", type=float, default=600, help="seconds of soak (default: 10 minutes)")
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity to send")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the RSS baseline sample")
    parser.add_argument("--capacity-seconds", type=float, default=20, help="seconds spent measuring capacity")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients that measure capacity")
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="most RSS growth (%%) after warm-up")
    parser.add_argument("--output", default=str(RESULTS / "{cpu}"), help="folder for soak.json and soak.md")
    parser.add_argument("serve_flags", nargs="*", help="extra `sst2dist serve` flags, after --")
    args = parser.parse_args(argv)
    for name in ("duration", "load", "sample_every", "capacity_seconds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.sample_every > args.duration:
        parser.error(f"--sample-every {args.sample_every} is longer than --duration {args.duration}: lower it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cpu = cpu_info()
    output = Path(args.output.replace("{cpu}", cpu["kind"]))
    output.mkdir(parents=True, exist_ok=True)
    bodies = [json.dumps({"inputs": s}).encode() for s in load_sst2(args.data)["validation"]["sentence"]]
    load_before, port = os.getloadavg()[0], free_port()
    server = start_server(args.bundle, port, output / "soak-server.log", args.serve_flags)
    try:
        measured = asyncio.run(capacity(port, bodies, args.clients, args.capacity_seconds))
        rate = args.load * measured
        print(f"capacity {measured:.1f} req/s; soaking at {rate:.1f} req/s for {args.duration:.0f} s", flush=True)
        samples, problems = asyncio.run(soak(args, port, server.pid, bodies, rate))
    finally:
        server.terminate()
        server.wait(60)
    config = {
        "bundle": args.bundle,
        "capacity_req_per_s": round(measured, 1),
        "clients": args.clients,
        "capacity_seconds": args.capacity_seconds,
        "load": args.load,
        "rate_req_per_s": round(rate, 1),
        "duration_s": args.duration,
        "sample_every_s": args.sample_every,
        "warmup_s": args.warmup,
        "max_rss_growth_pct": args.max_rss_growth,
        "serve_flags": args.serve_flags,
        "load_average_before": round(load_before, 2),
        "command": " ".join(["python", "bench/soak.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    summary = verdict(samples, args)
    results = {"cpu": cpu, "config": config, "samples": [asdict(s) for s in samples], "summary": summary}
    results["problems"] = problems
    with atomic_open(output / "soak.json", "the soak report") as handle:
        handle.write(json.dumps(results, indent=1) + "\n")
    with atomic_open(output / "soak.md", "the soak report") as handle:
        handle.write(markdown(results))
    if summary["holds"]:
        (output / "soak-server.log").unlink(missing_ok=True)  # kept when it does not hold
    print(f"{'holds' if summary['holds'] else 'DOES NOT HOLD'}: {output / 'soak.md'}")
    return 0 if summary["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
