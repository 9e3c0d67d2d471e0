"""The outcomes a worker saved, counted per queue and minute on their way to the
throughput chart (``<table>_throughput``, migration 0011).

Counting is in memory, and the counts go to the database at most once a second
(:data:`FLUSH_EVERY_SECONDS`), after saving outcomes or before waiting for work (never
between a wake-up and the claim it is for), and when the worker stops: the chart then
reads a few rows per minute instead of every job that ended, for the price of one small
write a second per busy worker. The chart is a gauge, not a ledger: a worker killed
outright takes its last second's counts with it, and counts a database refused are tried
again with the next ones (for :data:`KEPT`), never the jobs' outcomes, which are saved
before they are counted.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

from .clock import utcnow
from .exceptions import one_line
from .store import Store

#: The least time between two writes of the counts while jobs run.
FLUSH_EVERY_SECONDS = 1.0
#: How long ``<table>_throughput`` keeps a minute (the chart shows 3 hours, ``stats`` 1).
KEPT = timedelta(days=7)
#: How often a worker deletes the minutes older than :data:`KEPT`.
PRUNE_EVERY = timedelta(hours=1)


class Tally:
    """Finished and failed attempts per queue and minute, not written yet."""

    def __init__(self, store: Store, worker: tuple[str, int], logger: Any) -> None:
        self.store, self.worker, self.logger = store, worker, logger
        self._counts: dict[tuple[str, datetime], list[int]] = {}
        self._lock = threading.Lock()
        self._flushed = time.monotonic()
        self._pruned: datetime | None = None
        self._failing = False

    def add(self, queue: str, at: datetime, finished: bool) -> None:
        """Count an attempt of a job of ``queue`` that ended at ``at``."""
        key = (queue, at.replace(second=0, microsecond=0))
        with self._lock:
            slot = self._counts.setdefault(key, [0, 0])
            slot[0 if finished else 1] += 1

    def pending(self) -> dict[tuple[str, datetime], tuple[int, int]]:
        """The counts not written yet, ``(finished, failed)`` per queue and minute."""
        with self._lock:
            return {key: (f, x) for key, (f, x) in self._counts.items()}

    def flush(self, *, force: bool = False) -> None:
        """Write the counts, unless the last write was less than
        :data:`FLUSH_EVERY_SECONDS` ago (``force``: now). Never raises: what the database
        refuses stays counted, for the next write."""
        with self._lock:
            due = force or time.monotonic() - self._flushed >= FLUSH_EVERY_SECONDS
            if not self._counts or not due:
                return
            counts, self._counts = self._counts, {}
            self._flushed = time.monotonic()
        try:
            self.store.add_throughput({k: (f, x) for k, (f, x) in counts.items()}, self.worker)
        except Exception as exc:  # the chart's counts only: the jobs' outcomes are saved
            self._keep(counts)
            if not self._failing:
                self._failing = True
                self.logger.warning(
                    "bgqueue: could not save the throughput chart's counts (%s); they are"
                    " kept and written with the next ones",
                    one_line(exc),
                )
            return
        self._failing = False
        self._prune()

    def _keep(self, counts: dict[tuple[str, datetime], list[int]]) -> None:
        """Put counts the database refused back, but none older than :data:`KEPT`."""
        oldest = utcnow() - KEPT
        with self._lock:
            for key, (finished, failed) in counts.items():
                if key[1] >= oldest:
                    slot = self._counts.setdefault(key, [0, 0])
                    slot[0] += finished
                    slot[1] += failed

    def _prune(self) -> None:
        now = utcnow()
        if self._pruned is not None and now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        try:
            self.store.prune_throughput(now - KEPT)
        except Exception as exc:  # the next hour's try
            self.logger.warning(
                "bgqueue: could not delete the throughput chart's old minutes (%s)",
                one_line(exc),
            )
