from __future__ import annotations

import json
from pathlib import Path

import pytest

from sst2dist import atomic
from sst2dist.atomic import atomic_open, replace_dir, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_complete_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    write_json_atomic(target, {"accuracy": 0.9})
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def make_folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "weights").write_text(text)
    return path


def test_replace_dir_swaps_in_the_new_folder(tmp_path: Path) -> None:
    old = make_folder(tmp_path / "model", "old")
    replace_dir(make_folder(tmp_path / ".tmp-model", "new"), old)
    assert (old / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_replace_dir_puts_the_old_folder_back_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_folder(tmp_path / "model", "old")
    new = make_folder(tmp_path / ".tmp-model", "new")
    real_replace = atomic.os.replace

    def fail_on_new(source: Path, target: Path) -> None:
        if Path(source) == new:
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", fail_on_new)
    with pytest.raises(OSError, match="disk full"):
        replace_dir(new, old)
    assert (old / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-model", "model"]


def test_a_file_written_by_path_is_synced_before_the_rename_and_its_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parquet writers, savefig and the like write by name: the file's bytes and then the rename must reach the
    disk, so a crash never leaves an empty file under the final name."""
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync_and_note(fd: int) -> None:  # the real fsync, with the name of what it flushed
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_and_note)
    target = tmp_path / "out.parquet"
    with atomic.atomic_path(target) as temporary:
        temporary.write_bytes(b"PAR1")
        temporary_name = str(temporary)
    assert synced == [temporary_name, str(tmp_path)]
    assert target.read_bytes() == b"PAR1"
