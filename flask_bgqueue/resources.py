"""Resident memory of this process, for each job's ``memory`` column.

``peak`` is the job's own: before each job :func:`reset_peak` lowers the kernel's
high-water mark (Linux, ``/proc/self/clear_refs``) to what is resident then, and
:func:`memory_usage` reads it back (``VmHWM``). Where that is not possible the peak is the
process's over its whole life (``getrusage``), which a large earlier job inflates.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Memory:
    rss: int  #: bytes resident now
    peak: int  #: bytes resident at the most since :func:`reset_peak` (or the process began)


class _Proc:
    """A ``/proc/self`` file opened once per process: reopening costs more than reading.

    The file names the process that opened it, so a forked child opens its own.
    """

    def __init__(self, name: str, flags: int) -> None:
        self.name, self.flags = name, flags
        self.pid = -1
        self.fd: int | None = None

    def descriptor(self) -> int | None:
        pid = os.getpid()
        if self.pid != pid:
            if self.fd is not None:  # the parent's, inherited through fork
                os.close(self.fd)
                self.fd = None
            self.pid = pid
            try:
                self.fd = os.open(f"/proc/self/{self.name}", self.flags | os.O_CLOEXEC)
            except OSError:  # no /proc, or not allowed
                self.fd = None
        return self.fd


_statm = _Proc("statm", os.O_RDONLY)
_status = _Proc("status", os.O_RDONLY)
_clear_refs = _Proc("clear_refs", os.O_WRONLY)


def reset_peak() -> bool:
    """Start measuring a new peak (before a job); ``False`` where the OS cannot."""
    fd = _clear_refs.descriptor()
    if fd is None:
        return False
    try:
        os.write(fd, b"5")  # 5: reset the peak resident set size to the current one
    except OSError:
        return False
    return True


def _rss() -> int | None:
    fd = _statm.descriptor()
    if fd is None:
        return None
    try:
        return int(os.pread(fd, 128, 0).split()[1]) * _PAGE
    except OSError:
        return None


def _status_figures() -> tuple[int, int] | None:
    """``VmHWM`` and ``VmRSS`` in bytes, from one read of ``/proc/self/status``."""
    fd = _status.descriptor()
    if fd is None:
        return None
    try:
        data = os.pread(fd, 4096, 0)
        return _kib(data, b"VmHWM:"), _kib(data, b"VmRSS:")
    except (OSError, ValueError):
        return None


def _kib(data: bytes, field: bytes) -> int:
    start = data.index(field) + len(field)
    return int(data[start : data.index(b"kB", start)]) * 1024


def memory_usage() -> Memory:
    figures = _status_figures()
    if figures is not None:
        peak, rss = figures
        return Memory(rss, max(peak, rss))
    # the process's lifetime peak is the best we know
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lifetime *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    now = _rss()
    return Memory(lifetime if now is None else now, max(lifetime, now or 0))


def resident() -> int | None:
    """Bytes resident now (``None`` without ``/proc``)."""
    return _rss()
