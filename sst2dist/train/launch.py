"""Start `python -m sst2dist.train` in N processes on this machine through torchrun (gloo on a CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

from sst2dist.environment import usable_cpus
from sst2dist.train.config import ConfigError


def launch_processes(num_processes: int, argv: list[str]) -> int:
    """Run `python -m sst2dist.train ARGV` in N processes on this machine; return torchrun's exit status.

    `accelerate launch --cpu --num_processes N` starts a single process, so this goes through
    torch.distributed.run directly and tells Accelerate to stay on the CPU when there is no GPU.
    """
    import torch

    if num_processes < 1:
        raise ConfigError(f"--num-processes must be a positive integer, got {num_processes}")
    env = process_env(num_processes, torch.cuda.is_available())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}"]
    return subprocess.run([*command, "-m", "sst2dist.train", *argv], env=env).returncode


def process_env(num_processes: int, cuda: bool) -> dict[str, str]:
    """The processes' environment: without a GPU, on the CPU, sharing out the cores this process may use."""
    env = dict(os.environ)
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // num_processes)))
    return env
