"""What a training run carries between `setup`, `fit` and `finish`: `TrainState`, the counters every checkpoint
saves (its trainer_state.json), and `Run`, the prepared objects and this launch's bookkeeping."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst2dist.train.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

    from sst2dist.train.log import RunLog


@dataclass
class TrainState:
    """Everything, besides what Accelerate saves, needed to continue exactly where a checkpoint left off."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_accuracy: float = -1.0
    best_step: int = 0
    evals_without_improvement: int = 0
    samples: int = 0  # over all processes, up to the checkpoint
    tokens: int = 0
    padded_tokens: int = 0
    train_seconds: float = 0.0

    @classmethod
    def from_checkpoint(cls, saved: dict, path: Path) -> TrainState:
        unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"{path} holds an unknown trainer state ({', '.join(unknown)}): it is not ours")
        return cls(**saved)


@dataclass
class Teachers:
    """What runs beside the student for state distillation (the teacher's logits and sentence vectors ride in the
    batches): the layer teacher of --distill-hidden/--distill-attention (`distill.intermediate.LayerTeacher`) and
    the learned student -> teacher projection of --distill-sentence (None when the widths agree)."""

    layer_teacher: Any = None
    sentence_projection: Any = None


@dataclass
class Run:
    """What `setup` builds and `fit` drives."""

    config: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    sampler: Any
    eval_loader: DataLoader
    metric: Any
    log: RunLog
    total_steps: int
    steps_per_epoch: int
    resume_from: Path | None
    teacher_meta: dict | None
    counts_at_start: tuple[int, int, int] = (0, 0, 0)  # samples, tokens, padded tokens of the checkpoint
    progress: Any = None
    final_accuracy: float | None = None
    eval_samples: int = 0
    last_eval_step: int = -1
    last_save_step: int = -1
    teachers: Teachers | None = None  # what runs beside the student for state distillation
    time_budget_plan: dict | None = None  # --time-budget: the decision, as recorded in train_config.json

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)
