"""Control over jobs in flight: cancellation, and what a running callback reports
(progress) or is told (a cancel was asked for)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..models import AGAIN_STATES, CANCELLABLE_STATES, JobState
from .base import Claim, StoreBase


class Control(StoreBase):
    def cancel(self, job_ids: Iterable[int], now: datetime, by: str) -> list[int]:
        """Cancel these jobs; the ids of those cancelled or asked to stop.

        A job in ``CANCELLABLE_STATES`` becomes ``CANCELLED`` at once (a broker message
        still in flight for it finds nothing to claim: claims take runnable states only).
        A ``PROCESSING`` one keeps running but has ``cancel_requested_at`` set: its
        worker's heartbeat reads it, the callback sees ``current_job().cancel_requested``
        and its attempt ends ``CANCELLED``. Jobs in other states (or asked before) are left
        alone.
        """
        t = self.table
        asked = {"cancel_requested_at": now, "cancelled_by": by[:255], "updated_at": now}

        def cancel(conn: sa.Connection, job_id: int) -> bool:
            return self._transition(
                conn,
                job_id,
                CANCELLABLE_STATES,
                extra=self.in_queue,
                state=JobState.CANCELLED,
                finished_at=now,
                error_message=f"cancelled by {by}",
                **asked,
            ) or self._transition(
                conn,
                job_id,
                (JobState.PROCESSING,),
                extra=sa.and_(self.in_queue, t.c.cancel_requested_at.is_(None)),
                **asked,
            )

        return self._each_transition(job_ids, cancel)

    def cancel_requested(self, job_ids: Sequence[int]) -> list[int]:
        """Of these running jobs, those someone asked to stop (read by the heartbeat)."""
        if not job_ids:
            return []
        t = self.table
        stmt = sa.select(t.c.id).where(
            t.c.id.in_(list(job_ids)),
            t.c.state == JobState.PROCESSING,
            t.c.cancel_requested_at.is_not(None),
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def cancel_requested_retries(self, job_ids: Sequence[int], now: datetime) -> list[int]:
        """Jobs whose attempt ended to run again although a cancel was asked for while it
        ran (after the worker's last heartbeat read): ``CANCELLED`` instead."""
        t = self.table
        with self.engine.begin() as conn:
            stmt = (
                t.update()
                .where(
                    t.c.id.in_(list(job_ids)),
                    t.c.state.in_(AGAIN_STATES),
                    t.c.cancel_requested_at.is_not(None),
                )
                .values(state=JobState.CANCELLED, finished_at=now, updated_at=now)
            )
            if conn.execute(stmt).rowcount == 0:
                return []
            done = sa.select(t.c.id).where(
                t.c.id.in_(list(job_ids)), t.c.state == JobState.CANCELLED
            )
            return list(conn.execute(done).scalars())

    def set_progress(self, claim: Claim, fraction: float, message: str | None) -> bool:
        """Record a running job's progress, if the job is still this attempt's."""
        values: dict[str, Any] = {"progress": fraction, "progress_message": message}
        with self.engine.begin() as conn:
            return self._guarded(conn, claim, **values)
