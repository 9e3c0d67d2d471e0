"""Periodic schedules: their rows in ``<table>_schedule`` and the jobs of their ticks.

A tick becomes a job in one transaction that moves the schedule's ``last_tick_at`` forward
from the value the worker read (a compare-and-set: an UPDATE that names the old value) and
inserts the job; a worker that finds the value moved already lost the race and inserts
nothing. The unique index on the job table's ``(schedule, tick_at)`` refuses a second job
for a tick even so (migration 0008).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..models import Job, schedule_table
from .base import StoreBase


@dataclass(frozen=True)
class ScheduleRow:
    """A schedule as the database remembers it."""

    name: str
    expression: str
    timezone: str
    paused: bool
    last_tick_at: datetime | None
    last_job_id: int | None
    created_at: datetime
    updated_at: datetime


class Schedules(StoreBase):
    def __init__(self, engine: sa.Engine, table_name: str, queue: str) -> None:
        super().__init__(engine, table_name, queue)
        self.schedule_table = schedule_table(table_name)

    def schedule_rows(self) -> dict[str, ScheduleRow]:
        """Every schedule the database remembers, by name."""
        s = self.schedule_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(s).order_by(s.c.name)).all()
        return {r.name: _row(r) for r in rows}

    def add_schedule(
        self,
        name: str,
        expression: str,
        timezone: str,
        last_tick_at: datetime | None,
        now: datetime,
    ) -> None:
        """Remember a schedule first seen now; its ticks up to ``last_tick_at`` are passed
        over. Another worker adding it at the same moment is no error."""
        s = self.schedule_table
        row = {
            "name": name,
            "expression": expression,
            "timezone": timezone,
            "paused": False,
            "last_tick_at": last_tick_at,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(s.insert().values(row))
        except sa.exc.IntegrityError:
            pass  # added by another worker in the meantime

    def take_ticks(
        self,
        name: str,
        expression: str,
        timezone: str,
        seen: datetime | None,
        last: datetime,
        rows: Sequence[dict[str, Any]],
        now: datetime,
    ) -> list[int] | None:
        """Move the schedule's last tick from ``seen`` to ``last`` and insert ``rows`` (the
        jobs of the ticks in between, each with ``schedule`` and ``tick_at``), together.

        Returns the new jobs' ids, or ``None`` when the schedule is paused or another worker
        moved its last tick first (nothing is written then).
        """
        s = self.schedule_table
        with self.engine.connect() as conn:
            self.dialect.begin_claim(conn)  # SQLite: the write lock first; MySQL: READ COMMITTED
            try:
                moved = conn.execute(
                    s.update()
                    .where(
                        s.c.name == name,
                        s.c.paused.is_(sa.false()),
                        s.c.last_tick_at.is_(None) if seen is None else s.c.last_tick_at == seen,
                    )
                    .values(
                        last_tick_at=last, expression=expression, timezone=timezone, updated_at=now
                    )
                ).rowcount
                if moved != 1:
                    conn.rollback()
                    return None
                ids = [self._insert_one(conn, row) for row in rows]
                if ids:
                    conn.execute(s.update().where(s.c.name == name).values(last_job_id=ids[-1]))
                conn.commit()
                return ids
            except sa.exc.IntegrityError:
                conn.rollback()  # a job of one of these ticks exists: another worker's
                return None
            finally:
                if conn.in_transaction():
                    conn.rollback()
                self.dialect.end_claim(conn)

    def pause_schedule(self, name: str, paused: bool, now: datetime) -> bool:
        """Pause or resume a schedule; ``False`` when the database knows no such schedule."""
        s = self.schedule_table
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    s.update().where(s.c.name == name).values(paused=paused, updated_at=now)
                ).rowcount
                == 1
            )

    def forget_schedule(self, name: str) -> bool:
        """Delete a schedule's row (an orphan's; its jobs stay)."""
        s = self.schedule_table
        with self.engine.begin() as conn:
            return bool(conn.execute(s.delete().where(s.c.name == name)).rowcount == 1)

    def jobs_by_id(self, ids: Sequence[int]) -> dict[int, Job]:
        """The jobs of ``ids`` that exist, by id."""
        if not ids:
            return {}
        t = self.table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.id.in_(list(ids)))).all()
        return {r.id: Job.from_row(r) for r in rows}


def _row(r: Any) -> ScheduleRow:
    return ScheduleRow(
        name=r.name,
        expression=r.expression,
        timezone=r.timezone,
        paused=bool(r.paused),
        last_tick_at=r.last_tick_at,
        last_job_id=r.last_job_id,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )
