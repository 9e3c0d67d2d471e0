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


def memory_usage() -> Memory:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * _PAGE
    except OSError:  # no /proc: the peak is the best we know
        rss = peak
    return Memory(rss, max(peak, rss))
