"""What a --resume must not change, by fingerprint: the processes and batch per process, the mixed precision
(`auto` as resolved on the machine), the rows read (not the path they came from), the model's and teachers'
weights, and the teacher's logits. Recorded in train_config.json when a run starts, compared when it resumes;
paths and logging options may change."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sst2dist.atomic import write_json_atomic
from sst2dist.train.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import numpy as np
    from accelerate import Accelerator

FINGERPRINT_KEY = "fingerprint"  # in train_config.json
# Each entry: the option a user changes to change it, and what it is.
WHAT = {
    "num_processes": ("--num-processes", "processes"),
    "mixed_precision": ("--mixed-precision", "mixed precision"),  # `auto` resolves by the machine
    "batch_size": ("--batch-size", "batch per process"),
    "data_sha256": ("--data", "rows read (sha256)"),
    "model": ("--model", "model weights"),
    "teacher_logits_sha256": ("--teacher", "teacher logits (sha256)"),
    "layer_teacher": ("--layer-teacher", "layer teacher weights"),
}


def splits_sha256(splits: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    """One sha256 over the (sentences, labels) of each split, in order: the rows a run reads, wherever they live."""
    from sst2dist.distill.logits import data_fingerprint

    return hashlib.sha256(" ".join(data_fingerprint(*split) for split in splits).encode()).hexdigest()


def array_sha256(values: np.ndarray) -> str:
    return hashlib.sha256(values.tobytes()).hexdigest()


def model_identity(source: str | None) -> str | None:
    """A local model folder's weights sha256 (its path may move), else the name itself (hub id, packaged:...)."""
    from sst2dist.distill.logits import WEIGHT_FILES, teacher_weights_sha256

    folder = Path(source).expanduser() if source else None
    if folder is None or not any((folder / name).is_file() for name in WEIGHT_FILES):
        return source
    return teacher_weights_sha256(folder)


def run_fingerprint(
    config: TrainConfig, accelerator: Accelerator, data_sha256: str, teacher_logits_sha256: str | None
) -> dict:
    states = config.layer_distillation or config.distill_sentence
    layer_source = (config.layer_teacher or config.teacher) if states else None
    return {
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "batch_size": config.batch_size,
        "data_sha256": data_sha256,
        "model": model_identity(config.model),
        "teacher_logits_sha256": teacher_logits_sha256,
        "layer_teacher": model_identity(layer_source),
    }


def keep_fingerprint(config: TrainConfig, accelerator: Accelerator, fingerprint: dict, resuming: bool) -> None:
    """A new run records its fingerprint in train_config.json; a resumed one must match the recorded one."""
    saved_file = Path(config.output_dir) / "train_config.json"
    if resuming:
        check_same_fingerprint(saved_file, fingerprint)
    elif accelerator.is_main_process:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
        write_json_atomic(saved_file, saved | {FINGERPRINT_KEY: fingerprint})
    accelerator.wait_for_everyone()


def check_same_fingerprint(saved_file: Path, fingerprint: dict) -> None:
    """Refuse a --resume whose fingerprint differs from the run's, naming the option and both values (a run
    recorded before fingerprints existed has none to compare)."""
    saved = json.loads(saved_file.read_text(encoding="utf-8")).get(FINGERPRINT_KEY)
    if not isinstance(saved, dict):
        return
    for name, (option, what) in WHAT.items():
        if saved.get(name) != fingerprint[name]:
            raise ConfigError(
                f"--resume with other {what} than the run ({option}: the run had {short(saved.get(name))}, this "
                f"launch has {short(fingerprint[name])}): resume with the run's original {option}"
            )


def short(value: object) -> str:
    text = str(value)
    return f"{text[:12]}…" if len(text) == 64 else text  # a sha256
