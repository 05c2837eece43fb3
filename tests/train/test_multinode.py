"""Multi-node, rehearsed on loopback: two `accelerate launch --num_machines 2` launchers on 127.0.0.1 act as two
machines (gloo, one process each), running the command of docs/distributed.md.

Both "nodes" share one --output-dir, as nodes on a shared filesystem do: Accelerate saves the model and optimizer
from the main process but every process's RNG state into the same checkpoint folder, and on --resume every process
loads the checkpoint from that path (docs/distributed.md says why per-node local folders do not resume).

The loop writes files from the main process only, so to compare the weights each rank really holds, the workers
run with a test-only `sitecustomize` (written below into the test's folder, put on PYTHONPATH): after every
`Accelerator.save_state` each rank dumps its own weights, and it notes which checkpoint each rank loaded. The same
hook freezes machine 1 inside a checkpoint on request, so the kill-and-resume test kills it at a known point
instead of racing a run that takes about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Seconds one launch of both nodes may take; CI finishes each in well under a minute. Raise it on a busy machine.
LAUNCH_TIMEOUT = float(os.environ.get("SST2DIST_MULTINODE_TIMEOUT", "180"))

RANK_DUMP_HOOK = '''
"""Test-only (tests/train/test_multinode.py): each rank dumps its weights after every save_state, and notes load_state.

SST2DIST_TEST_HANG=R:N: rank R hangs when it enters its N-th save_state (a machine frozen mid-checkpoint).
"""
import os

if os.environ.get("SST2DIST_TEST_RANK_DUMPS") and "RANK" in os.environ:
    import time
    from pathlib import Path

    import accelerate

    _save_state, _load_state = accelerate.Accelerator.save_state, accelerate.Accelerator.load_state
    _saves = []
    _pid_file = Path(os.environ["SST2DIST_TEST_RANK_DUMPS"]) / f"rank{os.environ['RANK']}" / "pid"
    _pid_file.parent.mkdir(parents=True, exist_ok=True)
    _pid_file.write_text(str(os.getpid()))  # torchrun starts workers in their own session: the test kills by pid

    def _rank_dir(accelerator):
        folder = Path(os.environ["SST2DIST_TEST_RANK_DUMPS"]) / f"rank{accelerator.process_index}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def save_state(self, output_dir=None, **kwargs):
        from safetensors.torch import save_file

        _saves.append(output_dir)
        if os.environ.get("SST2DIST_TEST_HANG") == f"{self.process_index}:{len(_saves)}":
            (_rank_dir(self) / "hanging").write_text(str(output_dir))
            time.sleep(3600)
        result = _save_state(self, output_dir, **kwargs)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.unwrap_model(self._models[0]).state_dict().items()}
        save_file(weights, _rank_dir(self) / (Path(output_dir).name.removeprefix(".tmp-") + ".safetensors"))
        return result

    def load_state(self, input_dir=None, **kwargs):
        with (_rank_dir(self) / "loaded.txt").open("a") as handle:
            handle.write(Path(input_dir).name + "\\n")
        return _load_state(self, input_dir, **kwargs)

    accelerate.Accelerator.save_state, accelerate.Accelerator.load_state = save_state, load_state
'''


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_command(machine_rank: int, port: int, train_options: list[str]) -> list[str]:
    """The documented multi-machine command, with node 0's address = 127.0.0.1 and one process per node."""
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2"]
    launch += ["--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    return [*launch, "-m", "sst2dist.train", *train_options]


class Nodes:
    """Both launchers of one launch, each in its own process group (a "machine" that can be killed whole)."""

    def __init__(self, tmp_path: Path, name: str, train_options: list[str], **extra_env: str) -> None:
        hook = tmp_path / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(RANK_DUMP_HOOK)
        self.dumps = tmp_path / f"dumps-{name}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env |= {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env |= {"SST2DIST_TEST_RANK_DUMPS": str(self.dumps), **extra_env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
        self.options = train_options
        port = free_port()
        self.logs = [tmp_path / f"{name}-node{rank}.log" for rank in (0, 1)]
        self.procs: list[subprocess.Popen] = []
        for rank, log in enumerate(self.logs):
            with log.open("w") as handle:
                command = node_command(rank, port, train_options)
                self.procs.append(
                    subprocess.Popen(
                        command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )

    def tails(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in self.logs)

    def wait(self, timeout: float = LAUNCH_TIMEOUT, ranks: tuple[int, ...] = (0, 1)) -> list[int | None]:
        deadline = time.monotonic() + timeout
        for rank in ranks:
            try:
                self.procs[rank].wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"node {rank} still running after {timeout:.0f} s; killed\n{self.tails()}")
        return [proc.returncode for proc in self.procs]

    def kill(self, ranks: tuple[int, ...] = (0, 1)) -> None:
        """SIGKILL all of a node at once: launcher (with its torchrun agent) and worker.

        torchrun starts each worker in a session of its own, so killing the launcher's process group alone
        would leave the worker running as an orphan.
        """
        import psutil

        for rank in ranks:
            processes = []
            if self.procs[rank].poll() is None:  # not reaped yet, so its pid is still the launcher's
                with suppress(psutil.NoSuchProcess):
                    launcher = psutil.Process(self.procs[rank].pid)
                    processes = [launcher, *launcher.children(recursive=True)]
            pid_file = self.dumps / f"rank{rank}" / "pid"  # the worker, even if its launcher is gone already
            with suppress(psutil.NoSuchProcess, ValueError, FileNotFoundError):
                worker = psutil.Process(int(pid_file.read_text()))
                if worker.cmdline()[-len(self.options) :] == self.options:
                    processes.append(worker)
            for process in processes:
                with suppress(psutil.NoSuchProcess):
                    process.kill()
            psutil.wait_procs([p for p in processes if p.pid != self.procs[rank].pid], timeout=30)
            with suppress(subprocess.TimeoutExpired):
                self.procs[rank].wait(timeout=30)

    def rank_weights(self, step: int) -> list[dict]:
        from safetensors.torch import load_file

        return [load_file(self.dumps / f"rank{rank}" / f"step-{step:08d}.safetensors") for rank in (0, 1)]

    def loaded(self, rank: int) -> list[str]:
        path = self.dumps / f"rank{rank}" / "loaded.txt"
        return path.read_text().split() if path.exists() else []


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def train_options(sst2_dir: Path, model: Path, output_dir: Path, *extra: object) -> list[str]:
    options = ["--data", sst2_dir, "--model", model, "--output-dir", output_dir, "--mixed-precision", "no"]
    options += ["--max-train-samples", 64, "--max-eval-samples", 40, "--batch-size", 8, "--eval-batch-size", 16]
    return [str(o) for o in [*options, *extra]]  # 64 rows, 8 per process, 2 processes: 4 steps an epoch


def checkpoint_weights(output_dir: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(output_dir / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def complete_checkpoints(output_dir: Path) -> list[Path]:
    found = (output_dir / "checkpoints").glob("step-*/trainer_state.json")
    return sorted(path.parent for path in found)


@pytest.mark.slow
def test_two_nodes_on_loopback_train_identical_weights_and_share_one_eval(
    sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"  # one folder both nodes see: a shared filesystem
    nodes = Nodes(tmp_path, "run", train_options(sst2_dir, tiny_model_dir, out, "--max-steps", 4, "--save-every", 2))
    try:
        codes = nodes.wait()
    finally:
        nodes.kill()
    assert codes == [0, 0], nodes.tails()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 4
    assert metrics["train_samples_seen"] == 64  # each of the 64 rows once: the 2 nodes split every epoch
    assert metrics["eval_samples"] == 40  # one evaluation over both nodes; the padding repeats are dropped

    # Every rank holds the same weights at every checkpoint, and the main's checkpoint holds them too.
    for step in (2, 4):
        rank0, rank1 = nodes.rank_weights(step)
        assert same(rank0, rank1), f"the ranks' weights differ at step {step}"
        assert same(rank0, checkpoint_weights(out, step))
    assert not same(*[checkpoint_weights(out, step) for step in (2, 4)])  # it did train

    # Each validation row counted once: one process evaluating the final weights alone gets the same accuracy.
    final = tmp_path / "final-model"
    shutil.copytree(tiny_model_dir, final)
    shutil.copy(out / "checkpoints" / "step-00000004" / "model.safetensors", final / "model.safetensors")
    alone = evaluate_alone(train_options(sst2_dir, final, tmp_path / "alone", "--eval-only"))
    assert alone["eval_samples"] == 40 and alone["num_processes"] == 1
    assert alone["eval_accuracy"] == metrics["final_accuracy"]


def evaluate_alone(options: list[str]) -> dict:
    from accelerate.state import AcceleratorState, GradientState

    from sst2dist.train.loop import main

    try:
        assert main(options) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    output_dir = Path(options[options.index("--output-dir") + 1])
    return json.loads((output_dir / "eval_metrics.json").read_text())


@pytest.mark.slow
def test_killing_one_node_then_resume_restarts_both_from_the_last_checkpoint(
    sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    options = train_options(sst2_dir, tiny_model_dir, out, "--max-steps", 12, "--save-every", 2, "--eval-every", 0)
    # Machine 1 freezes as it enters its 2nd checkpoint (step 4), so step 2 is the last complete one; then it dies.
    first = Nodes(tmp_path, "first", options, SST2DIST_TEST_HANG="1:2")
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (first.dumps / "rank1" / "hanging").exists():
            if time.monotonic() > deadline or any(proc.poll() is not None for proc in first.procs):
                first.kill()
                pytest.fail(f"machine 1 never reached its 2nd checkpoint\n{first.tails()}")
            time.sleep(0.1)
        assert [p.name for p in complete_checkpoints(out)] == ["step-00000002"]
        first.kill(ranks=(1,))  # machine 1 dies: launcher, torchrun agent and worker
        node0 = first.wait(ranks=(0,))[0]  # machine 0 notices by itself that its peer is gone, and stops
    finally:
        first.kill()
    assert first.procs[1].returncode == -signal.SIGKILL
    assert node0 not in (0, None), first.tails()
    assert not (out / "metrics.json").exists()
    last = complete_checkpoints(out)[-1]
    assert last.name == "step-00000002"  # the step-4 checkpoint was never completed ...
    half = out / "checkpoints" / ".tmp-step-00000004"
    if not half.is_dir():  # machine 0's failed save removed its temporary folder; a SIGKILL mid-write would not
        shutil.copytree(last, half)
        (half / "trainer_state.json").unlink()
    # ... and a half-written one beside it: resume must ignore it
    restart_weights = checkpoint_weights(out, 2)

    again = Nodes(tmp_path, "resume", [*options, "--resume"])
    try:
        codes = again.wait()
    finally:
        again.kill()
    assert codes == [0, 0], again.tails()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(last) and metrics["steps"] == 12 and metrics["num_processes"] == 2
    assert again.loaded(0) == again.loaded(1) == [last.name]  # both machines restored the same checkpoint
    rank0, rank1 = again.rank_weights(12)
    assert same(rank0, rank1), "the ranks' final weights differ after the resume"
    assert same(rank0, checkpoint_weights(out, 12))
    assert not same(rank0, restart_weights)  # it trained after the restart
