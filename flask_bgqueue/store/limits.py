"""Concurrency and rate limits, decided inside a claim under a lock per callback and key.

The lock makes the count and the claim one decision across workers and hosts: the next
worker's claim takes the lock only after this one committed, and then counts the jobs this
one started. On PostgreSQL the lock is a transaction advisory lock, on MySQL/MariaDB a
named lock released after the commit, on SQLite the claim's write lock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..limits import Limits
from ..models import Job, JobState
from .base import StoreBase

#: The limit could not be decided now: another worker holds its lock (try again later).
BUSY = "busy"
_LOCK = "bgq-limit\x1f"
LimitKey = tuple[str, "str | None"]


class Limiting(StoreBase):
    def _try_lock_group(self, conn: sa.Connection, group: str) -> bool:
        raise NotImplementedError  # the claim's (store/claims.py)

    def _over_limit(
        self,
        conn: sa.Connection,
        job: Job,
        limits: Limits,
        now: datetime,
        taken: dict[LimitKey, int],
        locked: set[LimitKey],
    ) -> str | tuple[str, datetime] | None:
        """``None`` when ``job`` may start now (it is then counted in ``taken``), else
        :data:`BUSY` or why it must wait and until when."""
        key: LimitKey = (job.callback_name, job.concurrency_key)
        if key not in locked:
            if not self._try_lock_group(conn, f"{_LOCK}{key[0]}\x1f{key[1] or ''}"):
                return BUSY
            locked.add(key)
        t = self.table
        same = sa.and_(
            t.c.callback_name == job.callback_name,
            self.in_queue,
            t.c.concurrency_key.is_(None)
            if job.concurrency_key is None
            else t.c.concurrency_key == job.concurrency_key,
        )
        mine = taken.get(key, 0)
        per = "" if job.concurrency_key is None else f" for key {job.concurrency_key!r}"
        if limits.concurrency is not None:
            running = conn.execute(
                sa.select(sa.func.count()).where(same, t.c.state == JobState.PROCESSING)
            ).scalar_one()
            if running + mine >= limits.concurrency:
                return (
                    f"at its concurrency limit: {running + mine} of {limits.concurrency}"
                    f" running{per}",
                    now + timedelta(milliseconds=200),
                )
        if limits.rate is not None:
            window = timedelta(seconds=limits.rate.seconds)
            started, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(t.c.last_attempt_at)).where(
                    same, t.c.last_attempt_at > now - window
                )
            ).one()
            if started + mine >= limits.rate.count:
                until: Any = (oldest or now) + window  # when the oldest start leaves the window
                return (f"rate limited: {limits.rate} started{per}", max(until, now))
        taken[key] = mine + 1
        return None
