"""A per-host lock so that cron never runs a command twice at once.

``flock`` on a file in ``BGQUEUE_LOCKS_DIR``: the kernel drops it when the holder exits,
even by ``kill -9``, so a crashed run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def host_lock(directory: str, name: str) -> Iterator[bool]:
    """Yield ``True`` holding the lock ``name``, or ``False`` when another process has it."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)
