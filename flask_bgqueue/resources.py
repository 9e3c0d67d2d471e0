"""Resident memory of this process, for each job's ``memory`` column."""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Memory:
    rss: int  #: bytes resident now
    peak: int  #: bytes resident at the most, over the process's life


class _Statm:
    """``/proc/self/statm``, opened once per process and read with ``pread``.

    Read twice per job: opening the file each time costs more than the rest of the
    measurement. The file names the process that opened it, so a forked child opens its
    own.
    """

    def __init__(self) -> None:
        self.pid = -1
        self.fd: int | None = None

    def rss(self) -> int | None:
        pid = os.getpid()
        try:
            if self.pid != pid:
                if self.fd is not None:  # the parent's, inherited through fork
                    os.close(self.fd)
                    self.fd = None
                self.fd, self.pid = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC), pid
            assert self.fd is not None
            return int(os.pread(self.fd, 128, 0).split()[1]) * _PAGE
        except OSError:  # no /proc
            return None


_statm = _Statm()


def memory_usage() -> Memory:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    rss = _statm.rss()
    if rss is None:  # the peak is the best we know
        rss = peak
    return Memory(rss, max(peak, rss))
