"""Reads for monitoring: due jobs per queue and the workers seen, cheap enough for a
Prometheus scrape or a dashboard refresh every few seconds (both use indexes: the due
index, and ``ix_<table>_last_attempt_at``, which holds every column the workers need but the
state)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..models import PENDING_STATES, JobState
from .base import StoreBase

#: How far back a worker counts as "seen recently" (overview, ``stats``, metrics).
WORKERS_WINDOW = timedelta(minutes=15)


class Activity(StoreBase):
    def due_by_queue(self, now: datetime) -> list[tuple[str, int, datetime]]:
        """``(queue, due jobs, oldest available_at)`` of each queue with jobs due now."""
        t = self.table
        stmt = (
            sa.select(t.c.queue, sa.func.count(), sa.func.min(t.c.available_at))
            .where(t.c.state.in_(PENDING_STATES), self.in_queue, t.c.available_at <= now)
            .group_by(t.c.queue)
        )
        with self.engine.connect() as conn:
            return [(q, int(n), oldest) for q, n, oldest in conn.execute(stmt)]

    def worker_activity(
        self, since: datetime
    ) -> list[tuple[str | None, int | None, str, datetime, datetime | None, int]]:
        """``(hostname, pid, queue, last claim, last heartbeat, jobs done)`` per worker and
        queue, from the jobs PROCESSING now and those attempted since ``since``.

        "Jobs done" counts the rows whose last attempt was this worker's and has ended
        (a job tried again elsewhere later counts for the later worker only).
        """
        t = self.table
        worker = (t.c.hostname, t.c.pid, t.c.queue)
        # Index-only (migration 0010): the attempts in the window from
        # ix_<table>_last_attempt_at (last_attempt_at, queue, hostname, pid); the
        # PROCESSING jobs, few, through ix_<table>_due, add the workers whose job started
        # earlier, the heartbeats (a job has one only while it runs), and which of the
        # window's attempts have not ended.
        recent = (
            sa.select(*worker, sa.func.max(t.c.last_attempt_at), sa.func.count())
            .where(self.in_queue, t.c.last_attempt_at >= since)
            .group_by(*worker)
        )
        in_window = sa.case((t.c.last_attempt_at >= since, 1), else_=0)
        running = (
            sa.select(
                *worker,
                sa.func.max(t.c.last_attempt_at),
                sa.func.max(t.c.heartbeat_at),
                sa.func.sum(in_window),
            )
            .where(
                self.in_queue, t.c.state == JobState.PROCESSING, t.c.last_attempt_at.is_not(None)
            )
            .group_by(*worker)
        )
        found: dict[tuple[str | None, int | None, str], list[Any]] = {}
        with self.engine.connect() as conn:
            for h, p, q, attempt, beat, unended in conn.execute(running):
                found[(h, p, q)] = [attempt, beat, -int(unended or 0)]
            for h, p, q, attempt, n in conn.execute(recent):
                seen = found.setdefault((h, p, q), [attempt, None, 0])
                seen[0] = max(seen[0], attempt)
                seen[2] += int(n)
        return [(h, p, q, a, b, max(0, n)) for (h, p, q), (a, b, n) in found.items()]
