"""The teacher-logits file format and what keys it, below everything that computes or resolves logits.

One `.npz` file: `logits` (rows × 2, fp16 or fp32; read back as fp32) and a JSON `meta` record whose `key` is a
`LogitsKey`: the teacher's weights sha256, the training data's sha256 and the max length.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sst2dist.atomic import atomic_path
from sst2dist.packaged import sha256_of

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TeacherError(ValueError):
    """The --teacher value cannot give logits for this training data; the message says what to do."""


@dataclass(frozen=True)
class LogitsKey:
    """What the logits depend on: the teacher's weights, the training sentences and labels, the max length."""

    teacher_sha256: str
    data_sha256: str
    max_length: int

    @property
    def filename(self) -> str:
        return f"{self.teacher_sha256[:16]}-{self.data_sha256[:16]}-len{self.max_length}.npz"


def data_fingerprint(sentences: Sequence[str], labels: Sequence[int]) -> str:
    digest = hashlib.sha256()
    for sentence, label in zip(sentences, labels, strict=True):
        digest.update(f"{label}\t{sentence}\n".encode())
    return digest.hexdigest()


def teacher_weights_sha256(model_dir: Path) -> str:
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return sha256_of(model_dir / name)
    raise TeacherError(f"--teacher {model_dir} has no {' or '.join(WEIGHT_FILES)}: point it at a trained model folder")


def load_logits(path: Path) -> tuple[np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            # Shipped and sharded logits are fp16 (half the bytes); everything downstream computes in fp32.
            return stored["logits"].astype(np.float32), json.loads(str(stored["meta"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:  # truncated: not a zip any more
        raise TeacherError(f"{path} is not a teacher-logits file ({err}); delete it to recompute") from err


def save_logits(path: Path, logits: np.ndarray, meta: dict, dtype: type = np.float32) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, logits=logits.astype(dtype), meta=np.array(json.dumps(meta, sort_keys=True)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, "the teacher logits") as temporary:
        temporary.write_bytes(buffer.getvalue())
