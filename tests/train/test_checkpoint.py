"""Atomic checkpoints: a crash while saving leaves the last complete checkpoint usable; pruning comes after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sst2dist.train import checkpoint
from sst2dist.train.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint


@pytest.fixture
def accelerated() -> Iterator[tuple]:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    yield accelerator, model, optimizer
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def take_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_keeps_newest_and_leaves_no_temporary_folders(tmp_path: Path, accelerated: tuple) -> None:
    accelerator, model, optimizer = accelerated
    for step in (1, 2, 3):
        take_step(model, optimizer)
        save_checkpoint(accelerator, tmp_path, {"step": step}, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


def test_crash_while_saving_keeps_the_last_complete_checkpoint(
    tmp_path: Path, accelerated: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    accelerator, model, optimizer = accelerated
    take_step(model, optimizer)
    save_checkpoint(accelerator, tmp_path, {"step": 1}, keep=1)
    saved_weight = model.weight.detach().clone()

    take_step(model, optimizer)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(checkpoint, "replace_dir", crash)  # dies after save_state wrote its files
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, {"step": 2}, keep=1)
    monkeypatch.undo()

    assert (tmp_path / "checkpoints" / ".tmp-step-00000002" / "model.safetensors").is_file()
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-00000001"  # not pruned: the new one never completed
    assert not torch.equal(model.weight, saved_weight)
    assert load_checkpoint(accelerator, latest) == {"step": 1}
    assert torch.equal(model.weight, saved_weight)

    save_checkpoint(accelerator, tmp_path, {"step": 2}, keep=1)  # the next save cleans the leftover up
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002"]


def test_folders_without_trainer_state_are_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "step-00000009").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000009" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_a_truncated_checkpoint_is_skipped_for_the_one_before_it_saying_which(
    tmp_path: Path, accelerated: tuple, capsys: pytest.CaptureFixture
) -> None:
    accelerator, model, optimizer = accelerated
    for step in (1, 2):
        take_step(model, optimizer)
        save_checkpoint(accelerator, tmp_path, {"step": step}, keep=2)
    newest = checkpoint.checkpoint_dir(tmp_path, 2)
    weights = next(newest.glob("model*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a copy or disk that lost the end of the file
    assert latest_checkpoint(tmp_path) == checkpoint.checkpoint_dir(tmp_path, 1)
    said = capsys.readouterr().err
    assert str(newest) in said and weights.name in said and "100 bytes" in said
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path)) == {"step": 1}
