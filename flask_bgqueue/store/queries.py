"""Reads for applications and operators, and the two operator actions (retry, discard).

The dashboard and the list/show/retry/stats/health commands read through these; filters
arrive as keyword arguments (see :meth:`flask_bgqueue.selection.JobFilter.as_kwargs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..models import (
    CANCELLABLE_STATES,
    DISCARDABLE_STATES,
    DONE_STATES,
    PENDING_STATES,
    RETRYABLE_STATES,
    RUNNABLE_STATES,
    Job,
    JobState,
)
from ..serialization import json_text
from .base import StoreBase


class Queries(StoreBase):
    def get(self, job_id: int) -> Job | None:
        t = self.table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == job_id, self.in_queue)).first()
        return Job.from_row(row) if row is not None else None

    def jobs(
        self, callback_name: str | None = None, states: Sequence[JobState] | None = None
    ) -> list[Job]:
        """Jobs of this queue in id order, optionally of one callback or some states."""
        t = self.table
        stmt = sa.select(t).where(self.in_queue).order_by(t.c.id)
        if callback_name is not None:
            stmt = stmt.where(t.c.callback_name == callback_name)
        if states is not None:
            stmt = stmt.where(t.c.state.in_(states))
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(stmt)]

    def make_due(self, now: datetime) -> int:
        """Bring every runnable job's time forward to ``now`` (for tests of applications)."""
        t = self.table
        stmt = (
            t.update()
            .where(t.c.state.in_(RUNNABLE_STATES), self.in_queue, t.c.available_at > now)
            .values(available_at=now)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def unfinished_identifiers(
        self, identifiers: Iterable[str] | None, exclude_processing: bool
    ) -> list[str]:
        t = self.table
        excluded = [*DONE_STATES, *([JobState.PROCESSING] if exclude_processing else [])]
        stmt = (
            sa.select(t.c.identifier)
            .distinct()
            .where(self.in_queue, t.c.state.not_in(excluded), t.c.identifier.is_not(None))
        )
        if identifiers is not None:
            wanted = list(identifiers)
            if not wanted:
                return []
            stmt = stmt.where(t.c.identifier.in_(wanted))
        with self.engine.connect() as conn:
            return sorted(conn.execute(stmt).scalars())

    def _inspect_where(
        self,
        states: Sequence[JobState] = (),
        callback_name: str | None = None,
        queue: str | None = None,
        serial_group: str | None = None,
        identifier: str | None = None,
        text: str | None = None,
    ) -> Any:
        t = self.table
        clauses = [self.in_queue]
        if states:
            clauses.append(t.c.state.in_(list(states)))
        for column, value in (
            (t.c.callback_name, callback_name),
            (t.c.queue, queue),
            (t.c.serial_group, serial_group),
            (t.c.identifier, identifier),
        ):
            if value is not None:
                clauses.append(column == value)
        if text:
            # JSON parameters hold "Café" as "Caf\u00e9" and 'say "hi"' as 'say \"hi\"':
            # the text is also looked for as JSON writes it (in both cases: the escapes'
            # hex digits are lowercase, so the lower- and upper-case forms cover É and é).
            in_json = {json_text(v) for v in (text, text.lower(), text.upper())} - {text}
            clauses.append(
                sa.or_(
                    t.c.error_message.icontains(text, autoescape=True),
                    t.c.parameters_json.icontains(text, autoescape=True),
                    *(t.c.parameters_json.icontains(v, autoescape=True) for v in sorted(in_json)),
                )
            )
        return sa.and_(*clauses)

    def find_jobs(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        after_id: int | None = None,
        lowest_id: int | None = None,
        highest_id: int | None = None,
        **where: Any,
    ) -> list[Job]:
        """One page of matching jobs, newest first: keyset paging on the primary key.

        ``before_id`` gives the page of older jobs, ``after_id`` the page of newer ones;
        ``lowest_id`` and ``highest_id`` bound the ids read (a text search's window).
        """
        t = self.table
        stmt = sa.select(t).where(self._inspect_where(**where)).limit(limit)
        if lowest_id is not None:
            stmt = stmt.where(t.c.id >= lowest_id)
        if highest_id is not None:
            stmt = stmt.where(t.c.id <= highest_id)
        if after_id is not None:
            stmt = stmt.where(t.c.id > after_id).order_by(t.c.id.asc())
        else:
            if before_id is not None:
                stmt = stmt.where(t.c.id < before_id)
            stmt = stmt.order_by(t.c.id.desc())
        with self.engine.connect() as conn:
            jobs = [Job.from_row(r) for r in conn.execute(stmt)]
        return jobs[::-1] if after_id is not None else jobs

    def has_job_beyond(
        self, *, below: int | None = None, above: int | None = None, **where: Any
    ) -> bool:
        """Whether a matching job has an id below ``below`` (or above ``above``)."""
        t = self.table
        stmt = sa.select(t.c.id).where(self._inspect_where(**where)).limit(1)
        if below is not None:
            stmt = stmt.where(t.c.id < below)
        if above is not None:
            stmt = stmt.where(t.c.id > above)
        with self.engine.connect() as conn:
            return conn.execute(stmt).first() is not None

    def newest_id(self) -> int | None:
        """The highest job id of this queue (a walk down the primary key)."""
        t = self.table
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(t.c.id)).where(self.in_queue)).scalar()

    def due_summary(self, now: datetime) -> tuple[int, datetime | None]:
        """How many unfinished jobs are due now, and since when the oldest one is."""
        t = self.table
        stmt = sa.select(sa.func.count(), sa.func.min(t.c.available_at)).where(
            t.c.state.in_(PENDING_STATES), self.in_queue, t.c.available_at <= now
        )
        with self.engine.connect() as conn:
            count, oldest = conn.execute(stmt).one()
        return int(count), oldest

    def last_worker_activity(self) -> datetime | None:
        """The latest claim or heartbeat of any job of this queue."""
        t = self.table
        with self.engine.connect() as conn:
            attempt = conn.execute(
                sa.select(sa.func.max(t.c.last_attempt_at)).where(self.in_queue)
            ).scalar()
            beat = conn.execute(
                sa.select(sa.func.max(t.c.heartbeat_at)).where(
                    self.in_queue, t.c.state == JobState.PROCESSING
                )
            ).scalar()
        seen = [x for x in (attempt, beat) if x is not None]
        return max(seen) if seen else None

    def retry_now(self, job_ids: Iterable[int], now: datetime) -> list[int]:
        """Make these jobs READY and due now, each from a state of ``RETRYABLE_STATES``.

        Returns the ids that changed; a job in any other state (or of another queue) is
        left alone.
        """
        return self._each_transition(
            job_ids,
            lambda conn, job_id: self._transition(
                conn,
                job_id,
                RETRYABLE_STATES,
                extra=self.in_queue,
                state=JobState.READY,
                available_at=now,
                updated_at=now,
            ),
        )

    def retryable_ids(self, *, max_id: int | None = None, **where: Any) -> list[int]:
        """Ids of matching jobs in a retryable state (up to ``max_id``), oldest first."""
        return self._ids_in(RETRYABLE_STATES, max_id, where)

    def cancellable_ids(self, *, max_id: int | None = None, **where: Any) -> list[int]:
        """Ids of matching jobs that :meth:`cancel` would cancel or ask to stop (up to
        ``max_id``), oldest first."""
        return self._ids_in((*CANCELLABLE_STATES, JobState.PROCESSING), max_id, where)

    def _ids_in(
        self, allowed: Sequence[JobState], max_id: int | None, where: dict[str, Any]
    ) -> list[int]:
        t = self.table
        states = [s for s in where.pop("states", ()) or allowed]
        states = [s for s in states if s in allowed]
        if not states:
            return []
        stmt = sa.select(t.c.id).where(self._inspect_where(states=states, **where)).order_by(t.c.id)
        if max_id is not None:
            stmt = stmt.where(t.c.id <= max_id)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def discard(self, job_ids: Iterable[int]) -> list[int]:
        """Delete these jobs if they are in ``DISCARDABLE_STATES``; return the deleted ids."""
        t = self.table
        deleted = []
        with self.engine.begin() as conn:
            for job_id in job_ids:
                stmt = t.delete().where(
                    t.c.id == job_id, t.c.state.in_(DISCARDABLE_STATES), self.in_queue
                )
                if conn.execute(stmt).rowcount == 1:
                    deleted.append(job_id)
        return deleted
