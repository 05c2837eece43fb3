"""Fault injection from outside: start a real command in its own process group, SIGKILL the whole group at a
chosen moment, or run it under a file-size limit. The production code has no hooks for any of it.

A moment is "when `ready()` first holds, plus `delay` seconds": `ready` looks at the files the command writes
(a checkpoint's temporary folder appearing, log.jsonl reaching a step), so the kills land where they matter
while the delays, drawn from a seeded `random.Random`, make the exact instant vary.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# One thread each: the suite shares a 2-core machine; single-threaded kernels also keep results bit-exact.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "ORT_NUM_THREADS": "1",
}
POLL_SECONDS = 0.002


@dataclass(frozen=True)
class Moment:
    """Kill when `ready()` first holds (checked every 2 ms), `delay` seconds later."""

    name: str
    ready: Callable[[], bool]
    delay: float


def start(command: Sequence[object], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """`command` in a new session (its own process group), output to `log` (a pipe could fill and stall it)."""
    sink = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        list(map(str, command)),
        cwd=REPO_ROOT,
        env=env or ENV,
        stdout=sink,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL every process of the group (torchrun and its workers alike) and reap the leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_at(process: subprocess.Popen, moment: Moment, timeout: float = 300) -> bool:
    """Wait for `moment` and kill the group then; False when the command ended on its own before it came."""
    deadline = time.monotonic() + timeout
    while not moment.ready():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            kill_group(process)
            raise TimeoutError(f"{moment.name} never came within {timeout} s")
        time.sleep(POLL_SECONDS)
    time.sleep(moment.delay)  # the command may finish meanwhile: the moment still came while it ran
    kill_group(process)
    return True


def run(command: Sequence[object], env: dict[str, str] | None = None, timeout: float = 600) -> None:
    """Run to the end; fail with the command's output when it does not exit 0."""
    result = subprocess.run(
        list(map(str, command)), cwd=REPO_ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def run_limited(
    command: Sequence[object], max_file_bytes: int, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run under RLIMIT_FSIZE: a write past `max_file_bytes` fails with EFBIG, as on a full disk (SIGXFSZ is
    ignored, so the write fails instead of the signal killing the process)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run(
        list(map(str, command)),
        cwd=REPO_ROOT,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


def appears(folder: Path, pattern: str) -> Callable[[], bool]:
    """True once something matching `pattern` exists in `folder`."""
    return lambda: folder.is_dir() and any(folder.glob(pattern))


def appears_new(folder: Path, pattern: str) -> Callable[[], bool]:
    """True once something matching `pattern` exists in `folder` that did not when this was called (what an
    earlier kill left behind does not count)."""
    earlier = set(folder.glob(pattern)) if folder.is_dir() else set()
    return lambda: folder.is_dir() and any(p not in earlier for p in folder.glob(pattern))


def after(seconds: float) -> Callable[[], bool]:
    """True `seconds` after this call (a kill at a plain random time)."""
    due = time.monotonic() + seconds
    return lambda: time.monotonic() >= due


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and folders left under `folder` (hidden names, `.tmp` suffixes, `.tmp-` folders)."""
    return sorted(
        p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp") or ".tmp-" in p.name
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path: to prove a folder was left exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
