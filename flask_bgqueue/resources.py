"""Resident memory of this process, for each job's ``memory`` column.

``peak`` is the job's own: before each job :func:`start_job` lowers the kernel's
high-water mark (Linux, ``/proc/self/clear_refs``) to what is resident then, and
:func:`job_memory` reads it back. The mark comes from ``getrusage`` (one system call) when
that figure is known to be this job's, else from ``/proc/self/status`` (``VmHWM``, a
dearer read). Where the mark cannot be reset the peak is the process's over its whole life
(``getrusage``), which a large earlier job inflates.
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


@dataclass(frozen=True)
class Mark:
    """Where a job's memory stood when it started (see :func:`start_job`)."""

    reset: bool  #: the kernel's mark was lowered to what was resident
    lifetime: int  #: ``getrusage``'s peak right after that, in bytes
    before: int | None  #: bytes resident then (``None`` without ``/proc``)


def start_job() -> Mark:
    """Start measuring a job's memory: lower the peak mark, note what is resident."""
    reset = reset_peak()
    lifetime = _lifetime_peak()
    return Mark(reset, lifetime, _rss())


def job_memory(mark: Mark) -> Memory:
    """What is resident now and the job's peak since :func:`start_job` gave ``mark``.

    ``getrusage``'s peak is the larger of this process's mark and the marks its ended
    threads left behind (never lowered). So it is this job's own peak when it rose during
    the job, or when at the start it was no higher than what was resident (the job's peak
    cannot be lower than that); otherwise ``/proc/self/status`` tells.
    """
    lifetime = _lifetime_peak()
    now = _rss()
    if (
        mark.reset
        and now is not None
        and mark.before is not None
        and (lifetime > mark.lifetime or mark.lifetime <= mark.before)
    ):
        return Memory(now, max(lifetime, now))
    return memory_usage()


def _lifetime_peak() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


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
    lifetime = _lifetime_peak()  # the process's lifetime peak is the best we know
    now = _rss()
    return Memory(lifetime if now is None else now, max(lifetime, now or 0))


def resident() -> int | None:
    """Bytes resident now (``None`` without ``/proc``)."""
    return _rss()
