"""Two multi-process runs on one teacher cache at the same time: each checks that all its processes see the
cache (`teacher.require_shared_folder`) without reading the other run's probe."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

PROBE_SCRIPT = """
import sys
from pathlib import Path
from accelerate import Accelerator
from sst2dist.distill.logits import TeacherError
from sst2dist.distill.teacher import require_shared_folder

accelerator = Accelerator(cpu=True)
refused = 0
for _ in range(int(sys.argv[2])):
    try:
        require_shared_folder(Path(sys.argv[1]), accelerator)
    except TeacherError:
        refused += 1
print(f"refused {refused}", flush=True)
accelerator.end_training()  # destroys the process group: left to interpreter exit, gloo can abort (SIGABRT)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_concurrent_runs_on_one_cache_do_not_read_each_others_shared_folder_probe(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}"]
            + [str(script), str(tmp_path / "cache"), "40"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    counts = [line for output in outputs for line in output.splitlines() if line.startswith("refused")]
    assert counts == ["refused 0"] * 4, outputs
    assert not list((tmp_path / "cache").iterdir())  # every probe was removed
