"""Reads for monitoring: due jobs per queue and the workers seen, cheap enough for a
Prometheus scrape or a dashboard refresh every few seconds (both use indexes: the due
index, and ``ix_<table>_last_attempt_at``)."""

from __future__ import annotations

from datetime import datetime, timedelta

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
        done = sa.func.sum(sa.case((t.c.state == JobState.PROCESSING, 0), else_=1))
        stmt = (
            sa.select(
                t.c.hostname,
                t.c.pid,
                t.c.queue,
                sa.func.max(t.c.last_attempt_at),
                sa.func.max(t.c.heartbeat_at),
                done,
            )
            .where(
                self.in_queue,
                sa.or_(t.c.state == JobState.PROCESSING, t.c.last_attempt_at >= since),
                t.c.last_attempt_at.is_not(None),
            )
            .group_by(t.c.hostname, t.c.pid, t.c.queue)
        )
        with self.engine.connect() as conn:
            return [(h, p, q, a, b, int(n or 0)) for h, p, q, a, b, n in conn.execute(stmt)]
