"""Write files so that a reader, or a crash, never sees half of one: a temporary file beside it, then a rename.

Standard library only: the serving path (predict) uses it without torch.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

try:
    import resource
except ImportError:  # not on Windows
    resource = None


class WriteError(OSError, ValueError):
    """An output could not be written (disk full, file too large, no permission); the message names what and
    where. Also a ValueError, so every command reports it in one sentence, as it does bad input."""


@contextmanager
def writing(what: str, path: str | Path, errors: tuple[type[BaseException], ...] = (OSError,)) -> Iterator[None]:
    """Turn a failure of the writes in the block into a WriteError naming `what` and `path`. Blocks that only
    serialize what is in memory pass `errors=(Exception,)`: torch and safetensors raise their own types."""
    try:
        yield
    except WriteError:
        raise
    except errors as err:
        failure = WriteError(
            f"could not write {what} {path} ({failure_reason(err, Path(path))}): free some disk space (or raise "
            "the file-size limit) and run again; what was there before is unchanged"
        )
        failure.errno = getattr(err, "errno", None) or errno.EIO
        raise failure from err


def failure_reason(err: BaseException, path: Path) -> str:
    """The OS's reason; for libraries that hide it (torch: "enforce fail ... unexpected pos"), the likely one
    read from this process's file-size limit and the free space left, else their own first line."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else None
    if limit is not None and limit != resource.RLIM_INFINITY:
        return f"File too large: the file-size limit is {limit} bytes"
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if shutil.disk_usage(folder).free < 1 << 20:
        return os.strerror(errno.ENOSPC)
    return str(err).strip().splitlines()[0][:200].replace(". ", "; ") if str(err).strip() else type(err).__name__


@contextmanager
def atomic_path(path: str | Path, what: str = "the file") -> Iterator[Path]:
    """A temporary path beside `path`, flushed to disk and renamed over it when the block succeeds, removed when it
    fails (a failed write raises a WriteError naming `what` and `path`)."""
    path = Path(path)
    with writing(what, path):
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        temporary = Path(name)
        try:
            yield temporary
            os.chmod(temporary, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
            synced(temporary)  # written by name (Parquet, savefig): its bytes on disk before the rename
            os.replace(temporary, path)
            synced(path.parent)  # and the rename itself
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


@contextmanager
def atomic_open(path: str | Path, what: str = "the file") -> Iterator[TextIO]:
    """A UTF-8 text file that replaces `path` only once the block has written all of it (atomic_path flushes it to
    disk once it is closed)."""
    with atomic_path(path, what) as temporary, temporary.open("w", encoding="utf-8", newline="\n") as handle:
        yield handle


def synced(path: Path) -> None:
    """Flush a file or a folder (the entries renamed into it) to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_json_atomic(path: str | Path, payload: Any, what: str = "the file") -> None:
    with atomic_open(path, what) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")


def replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder `new` to `target`. An older `target` is moved aside first and put back if the
    move fails, so `target` is always either the old folder or the new one, never a mix or nothing."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
