"""What the training loop records between reads of the device: the loss and count sums kept on the device
(`Window`) and the log.jsonl lines and tracker values written from the main process (`RunLog`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst2dist.atomic import writing

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


# Accelerate's trackers and the package each needs (pip name).
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
    "comet_ml": "comet-ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
LOSS_TERMS = ("loss", "loss_ce", "loss_kd", "loss_hidden", "loss_attention", "loss_sentence")  # forward_losses


class TrackerError(ValueError):
    """A tracker asked for by --report-to is unknown, not installed, or could not start."""


def trackers(report_to: str) -> list[str]:
    """--report-to as tracker names: [] for none, ["all"] for every installed one, else a comma list."""
    names = list(dict.fromkeys(name.strip() for name in report_to.split(",")))
    if names in (["none"], ["all"]):
        return [] if names == ["none"] else names
    if {"none", "all"} & set(names):
        raise TrackerError(f"--report-to {report_to!r}: none and all stand alone, not in a list of trackers")
    unknown = [name for name in names if name not in TRACKER_PACKAGES]
    if unknown:
        raise TrackerError(
            f"--report-to {unknown[0]!r} is not a tracker: pass none, all, or a comma list of "
            f"{', '.join(TRACKER_PACKAGES)}"
        )
    return names


def installed_trackers(report_to: str, output_dir: str) -> list[str]:
    """The trackers to hand to Accelerate (which would silently skip an uninstalled one); MLflow writes to
    $MLFLOW_TRACKING_URI, by default to OUTPUT_DIR/mlruns."""
    from accelerate.tracking import get_available_trackers

    names, available = trackers(report_to), [str(getattr(t, "value", t)) for t in get_available_trackers()]
    if names == ["all"]:
        names = [name for name in TRACKER_PACKAGES if name in available]
    for name in names:
        if name not in available:
            package = TRACKER_PACKAGES[name]
            raise TrackerError(f"--report-to {name} needs the {package} package: pip install {package}")
    if "mlflow" in names and "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = (Path(output_dir) / "mlruns").resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database unless told
    return names


def start_trackers(accelerator: Accelerator, options: dict) -> None:
    """The run's options as the trackers' parameters, from the main process (Accelerate); a tracker that cannot
    start (a server unreachable, a store refused) stops the run before training, in one sentence."""
    try:
        accelerator.init_trackers("sst2dist", config={key: str(value) for key, value in options.items()})
    except Exception as err:  # each tracker raises its own types
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise TrackerError(f"--report-to: a tracker could not start ({err.__class__.__name__}: {first_line})") from err


class RunLog:
    """log.jsonl lines and Accelerate trackers, from the main process only."""

    def __init__(self, accelerator: Accelerator, output_dir: Path) -> None:
        self.accelerator = accelerator
        self.path = output_dir / "log.jsonl"

    def write(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"time": round(time.time(), 3), **record}
        with writing("the training log", self.path), self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and k not in ("step", "time")}
        self.accelerator.log(numbers, step=record.get("step"))


class Window:
    """Sums kept on the device between two reads, so a training step never waits for the host.

    The loss sums, the per-process sample/token counts, and the first step whose loss was not finite (0: none)
    are read only every --log-every steps and before anything is evaluated or written.
    """

    def __init__(self, device: Any, first_step: int) -> None:
        import torch

        self.losses = torch.zeros(len(LOSS_TERMS), device=device)
        self.first_bad_step = torch.zeros((), dtype=torch.long, device=device)
        self.counts = torch.zeros(3, dtype=torch.float64, device=device)  # since this launch: samples, tokens, padded
        self.batches, self.first_step, self.started = 0, first_step, time.perf_counter()

    def add(self, step: int, losses: torch.Tensor, mask: torch.Tensor) -> None:
        import torch

        bad = ~torch.isfinite(losses[0])
        self.first_bad_step = torch.where(bad & (self.first_bad_step == 0), step, self.first_bad_step)
        self.losses += losses
        self.counts += torch.stack([mask.new_tensor(len(mask)), mask.sum(), mask.new_tensor(mask.numel())])
        self.batches += 1

    def packed(self) -> torch.Tensor:
        import torch

        scalars = torch.stack([self.first_bad_step.double(), self.counts.new_tensor(self.batches)])
        return torch.cat([self.losses.double(), scalars[:1], self.counts, scalars[1:]])

    def restart(self, next_step: int) -> None:
        self.losses.zero_()
        self.batches, self.first_step, self.started = 0, next_step, time.perf_counter()
