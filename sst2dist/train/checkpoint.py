"""Atomic training checkpoints: write into a temporary folder, rename when complete, prune only after.

Accelerate's own `save_total_limit` deletes old checkpoints before the new one is written, so a crash while
saving can leave none. Here a checkpoint folder `checkpoints/step-00000500/` only exists once it is complete
(its `trainer_state.json` is written last, then the folder is renamed into place), and older ones are
removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import Accelerator

from sst2dist.atomic import WriteError, replace_dir, write_json_atomic, writing

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
SIZES_FILE = "file_sizes.json"  # every file's size when written: a truncated copy is not resumed from
PREFIX = "step-"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS_DIR / f"{PREFIX}{step:08d}"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; temporary and half-written folders are ignored."""
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def truncated_file(checkpoint: Path) -> str | None:
    """What in `checkpoint` is not the size it was written at (None: intact, or saved before sizes were kept)."""
    sizes_file = checkpoint / SIZES_FILE
    if not sizes_file.is_file():
        return None
    for name, size in json.loads(sizes_file.read_text(encoding="utf-8")).items():
        actual = (checkpoint / name).stat().st_size if (checkpoint / name).is_file() else None
        if actual != size:
            return f"{name} is {'missing' if actual is None else f'{actual:,} bytes'}, {size:,} were written"
    return None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint whose files are whole; a truncated newer one is skipped, saying so."""
    for checkpoint in reversed(complete_checkpoints(output_dir)):
        damage = truncated_file(checkpoint)
        if damage is None:
            return checkpoint
        print(f"skipping checkpoint {checkpoint}: {damage}; trying the one before it", file=sys.stderr)
    return None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int) -> Path:
    """Save model, optimizer, scheduler and RNG states (every process) plus `state`; keep the newest `keep`."""
    final = checkpoint_dir(output_dir, state["step"])
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
    accelerator.wait_for_everyone()
    try:
        with writing("the checkpoint", final, errors=(Exception,)):  # save_state only serializes what is in memory
            accelerator.save_state(str(tmp))  # each process writes its own RNG state into tmp
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
                write_json_atomic(tmp / SIZES_FILE, sizes)
                write_json_atomic(tmp / STATE_FILE, state)  # written last: marks the checkpoint complete
                replace_dir(tmp, final)
    except WriteError:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half checkpoint behind
        raise
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    if keep < 1:
        return
    for old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    """Restore everything `save_checkpoint` saved; return the trainer state (step, epoch, best accuracy ...)."""
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
