"""Small helpers shared by the tests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from flask_bgqueue import BackgroundQueue
from flask_bgqueue.clock import utcnow


def make_due(bgq: BackgroundQueue, *job_ids: int) -> None:
    """Move jobs' ``available_at`` into the past, as if their time had come."""
    store = bgq._state().store
    t = store.table
    stmt = t.update().values(available_at=utcnow() - timedelta(seconds=1))
    if job_ids:
        stmt = stmt.where(t.c.id.in_(job_ids))
    with store.engine.begin() as conn:
        conn.execute(stmt)


def set_columns(bgq: BackgroundQueue, job_id: int, **values: Any) -> None:
    store = bgq._state().store
    with store.engine.begin() as conn:
        conn.execute(store.table.update().where(store.table.c.id == job_id).values(**values))


def all_jobs(bgq: BackgroundQueue) -> list[Any]:
    store = bgq._state().store
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(store.table).order_by(store.table.c.id)))
