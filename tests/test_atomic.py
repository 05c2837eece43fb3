from __future__ import annotations

import json
from pathlib import Path

import pytest

from sst2dist.atomic import atomic_open, write_json_atomic


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
