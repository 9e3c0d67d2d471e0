"""Outcomes per minute for the throughput chart: ``<table>_throughput`` (migration 0011).

Workers add what they saved (see :class:`flask_bgqueue.tally.Tally`), each on rows of its
own; the chart sums a queue's rows of its window, a few hundred rows whatever the number
of jobs.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from .base import StoreBase, Tallied


class Throughput(StoreBase):
    def add_throughput(self, counts: Tallied, worker: tuple[str, int]) -> None:
        """Add outcomes per queue and minute ``(finished, failed)`` to the rows of
        ``worker`` (its hostname and pid)."""
        with self.engine.begin() as conn:
            self._tally(conn, counts, worker)

    def outcomes_per_minute(self, since: datetime) -> list[tuple[str, datetime, int]]:
        """``(kind, minute, n)``: attempts finished and failed in each minute since
        ``since``, from ``<table>_throughput`` (a failed attempt counts when its outcome
        is saved, or when its lost worker is reaped; a job that failed, then finished,
        counts in both minutes)."""
        tt = self.throughput_table
        stmt = (
            sa.select(tt.c.minute, sa.func.sum(tt.c.finished), sa.func.sum(tt.c.failed))
            .where(tt.c.minute >= since, self.of_queue(tt.c.queue))
            .group_by(tt.c.minute)
        )
        found: list[tuple[str, datetime, int]] = []
        with self.engine.connect() as conn:
            for minute, finished, failed in conn.execute(stmt):
                at = minute.replace(tzinfo=None)
                both = (("finished", finished), ("failed", failed))
                found += [(kind, at, int(n)) for kind, n in both if n]
        return found

    def prune_throughput(self, before: datetime) -> int:
        """Delete the minutes before ``before`` (of every queue); how many rows went."""
        tt = self.throughput_table
        with self.engine.begin() as conn:
            return conn.execute(tt.delete().where(tt.c.minute < before)).rowcount
