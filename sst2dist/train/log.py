"""What the training loop records between reads of the device: the loss and count sums kept on the device
(`Window`) and the log.jsonl lines and tracker values written from the main process (`RunLog`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst2dist.atomic import writing

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


LOSS_TERMS = ("loss", "loss_ce", "loss_kd", "loss_hidden", "loss_attention", "loss_sentence")  # forward_losses


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
