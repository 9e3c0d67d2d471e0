"""Recovery and housekeeping: lost workers' jobs, jobs no worker here can run, ids that
must go to the broker again, and finished jobs cleared away."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..models import DONE_STATES, FAILED_STATES, RESEND_STATES, RUNNABLE_STATES, Job, JobState
from .base import Claim, StoreBase


class Recovery(StoreBase):
    def reap_lost(
        self, now: datetime, lost_after: timedelta, max_attempts: int | None
    ) -> list[int]:
        """Jobs whose worker stopped beating go back to ``TEMPORARILY_FAILED``, due now.

        The lost attempt counts; past ``max_attempts`` the job fails for good instead.
        """
        t = self.table
        stale = sa.and_(
            t.c.state == JobState.PROCESSING, self.in_queue, t.c.heartbeat_at < now - lost_after
        )
        with self.engine.begin() as conn:
            lost = list(
                conn.execute(
                    sa.select(
                        t.c.id,
                        t.c.queue,
                        t.c.hostname,
                        t.c.pid,
                        t.c.number_of_attempts,
                        t.c.cancel_requested_at,
                    ).where(stale)
                )
            )
            reaped = []
            failed: Counter[str] = Counter()  # attempts per queue, for the throughput chart
            for job_id, queue, host, pid, attempts, cancel_asked in lost:
                lost_how = f"worker lost: pid {pid} on {host} stopped without saving the job"
                state, message = _lost_attempt(lost_how, attempts, max_attempts)
                if cancel_asked is not None:  # asked to stop: it does not run again
                    state, message = JobState.CANCELLED, f"{lost_how} (cancel was asked)"
                done = self._transition(
                    conn,
                    job_id,
                    (JobState.PROCESSING,),
                    extra=t.c.heartbeat_at < now - lost_after,
                    state=state,
                    available_at=now,
                    updated_at=now,
                    error_message=message,
                    **({"finished_at": now} if cancel_asked is not None else {}),
                )
                if done:
                    reaped.append(job_id)
                    if state in FAILED_STATES:  # a cancelled one is not a failed attempt
                        failed[queue] += 1
            self._tally(conn, {(queue, now): (0, n) for queue, n in failed.items()})
        return reaped

    def interrupt(self, claim: Claim, now: datetime, why: str, max_attempts: int | None) -> bool:
        """The attempt of ``claim`` was cut short by its own worker (a forced shutdown):
        due again at once, the attempt counted, as a lost worker's would be (but without
        waiting for the lost-worker delay). ``False`` when the job is no longer its."""
        state, message = _lost_attempt(
            f"interrupted: {why}", claim.job.number_of_attempts, max_attempts
        )
        with self.engine.begin() as conn:
            done = self._guarded(
                conn,
                claim,
                state=state,
                available_at=now,
                updated_at=now,
                heartbeat_at=None,
                error_message=message,
            )
            if done:
                self._tally(conn, {(claim.job.queue, now): (0, 1)})
            return done

    def time_out(
        self,
        job_id: int,
        attempts: int,
        state: JobState,
        values: dict[str, Any],
        now: datetime,
    ) -> JobState | None:
        """Attempt ``attempts`` of a running job is past its timeout and could not be
        interrupted: end it as ``state`` with ``values`` (the timed-out outcome), or
        ``CANCELLED`` when a cancel was asked for (it does not run again). Guarded by the
        attempt, like every change of a claimed job; the state written, or ``None`` when
        the job is no longer that attempt's."""
        t = self.table
        state = JobState(state)  # the watchdog process sends its number
        attempt = t.c.number_of_attempts == attempts
        ended = {"updated_at": now, "heartbeat_at": None}
        with self.engine.begin() as conn:
            if self._transition(
                conn,
                job_id,
                (JobState.PROCESSING,),
                extra=sa.and_(attempt, t.c.cancel_requested_at.is_(None)),
                state=state,
                **ended,
                **values,
            ):
                if state in FAILED_STATES:  # a failed attempt, on the throughput chart
                    queue = conn.execute(sa.select(t.c.queue).where(t.c.id == job_id)).scalar()
                    self._tally(conn, {(str(queue), now): (0, 1)})
                return state
            cancelled = {**values, "state": JobState.CANCELLED, "finished_at": now}
            cancelled.pop("available_at", None)
            if self._transition(
                conn,
                job_id,
                (JobState.PROCESSING,),
                extra=sa.and_(attempt, t.c.cancel_requested_at.is_not(None)),
                **ended,
                **cancelled,
            ):
                return JobState.CANCELLED
        return None

    def note_unknown_callbacks(self, now: datetime, known: Sequence[str], note: str) -> int:
        """Mark due jobs that no callback of this worker can run, without touching their state."""
        t = self.table
        stmt = (
            t.update()
            .where(
                t.c.state.in_(RUNNABLE_STATES),
                self.in_queue,
                t.c.available_at <= now,
                t.c.callback_name.not_in(list(known)),
                sa.or_(t.c.error_message.is_(None), t.c.error_message != note),
            )
            .values(error_message=note)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def mark_broker_failed(self, job_ids: Sequence[int], now: datetime, message: str) -> None:
        """The rows are saved but their ids did not reach the broker."""
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id.in_(list(job_ids)), t.c.state == JobState.READY)
                .values(state=JobState.BROKER_FAILED, error_message=message, updated_at=now)
            )

    def take_for_resending(self, now: datetime, lost_before: datetime) -> list[Job]:
        """Due jobs whose id must go to the broker again; they are set ``READY``.

        ``BACK_TO_BROKER``, ``TEMPORARILY_FAILED`` and ``WAITING`` jobs whose time has come,
        and ``READY`` ones untouched since ``lost_before`` (their message was lost).
        """
        t = self.table
        due = sa.and_(
            self.in_queue,
            t.c.available_at <= now,
            sa.or_(
                t.c.state.in_(RESEND_STATES),
                sa.and_(t.c.state == JobState.READY, t.c.updated_at < lost_before),
            ),
        )
        with self.engine.begin() as conn:
            jobs = [
                Job.from_row(r)
                for r in conn.execute(sa.select(t).where(due).order_by(t.c.priority, t.c.id))
            ]
            taken = []
            for job in jobs:
                extra = t.c.updated_at == job.updated_at  # nobody moved it meanwhile
                if self._transition(
                    conn, job.id, (job.state,), extra=extra, state=JobState.READY, updated_at=now
                ):
                    taken.append(job)
        return taken

    def clear_finished(self, before: datetime | None) -> int:
        t = self.table
        stmt = t.delete().where(t.c.state.in_(DONE_STATES), self.in_queue)
        if before is not None:
            stmt = stmt.where(t.c.finished_at < before)
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount


def _lost_attempt(message: str, attempts: int, max_attempts: int | None) -> tuple[JobState, str]:
    """An attempt that ended without an outcome counts: retried at once, or, past
    ``max_attempts``, failed for good."""
    if max_attempts is not None and attempts >= max_attempts:
        return JobState.PERMANENTLY_FAILED, f"gave up after {attempts} attempts: {message}"
    return JobState.TEMPORARILY_FAILED, message
