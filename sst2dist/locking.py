"""An exclusive lock between processes of one machine (and of machines sharing a file system that supports
flock), held while a shared cache entry is built, so a second process waits and then reuses it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` itself (it must exist): no lock file is left behind, and the lock goes
    with the process if it dies."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
