"""Locks between processes (of one machine, or of machines sharing a file system with flock, NFS included):
exclusive while a shared cache entry is built or removed, so a second process waits and then reuses it; shared
while processes add to it together (teacher shards)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(lock_file: Path, shared: bool = False) -> Iterator[None]:
    """Hold a lock on `lock_file` (created empty, and kept: removing it would let two processes lock two different
    files); it goes with the process if that dies."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)  # writable: NFS needs it for an exclusive lock
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
