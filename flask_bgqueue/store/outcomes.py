"""After a claim: an attempt's outcome, heartbeats, and jobs given back unstarted.

Every write names the attempt it belongs to (``PROCESSING`` and its number of attempts), so
a worker whose job was taken from it (a lost worker reaped) can never overwrite a newer
state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..clock import utcnow
from ..models import DONE_STATES, Job, JobState
from .base import Claim, StoreBase

#: What an attempt's outcome writes (see :meth:`Store.save_outcome`).
OUTCOME_COLUMNS = (
    "updated_at",
    "heartbeat_at",
    "execution_time",
    "memory",
    "error_message",
    "traceback",
    "finished_at",
    "available_at",
    "number_of_attempts",
    "result",
)
#: The columns an outcome's UPDATE sets.
_SET_COLUMNS = ("state", *OUTCOME_COLUMNS)


class Outcomes(StoreBase):
    def __init__(self, engine: sa.Engine, table_name: str, queue: str) -> None:
        super().__init__(engine, table_name, queue)
        t = self.table
        self._save_outcome = (
            t.update()
            .where(
                t.c.id == sa.bindparam("b_id"),
                t.c.state == JobState.PROCESSING,
                t.c.number_of_attempts == sa.bindparam("b_attempts"),
            )
            .values({c: sa.bindparam(f"v_{c}") for c in _SET_COLUMNS})
        )

    def update_claimed(self, claim: Claim, **values: Any) -> bool:
        """Change a claimed job, if it is still this attempt's; else ``False``."""
        with self.engine.begin() as conn:
            return self._guarded(conn, claim, **values)

    def save_outcome(self, claim: Claim, state: JobState, **values: Any) -> bool:
        """Store an attempt's outcome, if the job is still this attempt's; else ``False``."""
        return self.save_outcomes([(claim, state, values)])[0]

    def save_outcomes(
        self,
        outcomes: Sequence[tuple[Claim, JobState, dict[str, Any]]],
        *,
        recurring_after: timedelta = timedelta(seconds=1),
        clones: list[tuple[int, dict[str, Any]]] | None = None,
    ) -> list[bool]:
        """Store several attempts' outcomes in one transaction; which ones were still ours.

        The hot path of every job. Several outcomes go to the server together: one
        ``executemany`` (psycopg sends it as one pipeline, sqlite3 loops in C) or, on
        MySQL/MariaDB, whose driver sends an UPDATE per row, one UPDATE with a ``CASE`` per
        column. When fewer rows match than were sent (a job was taken from this worker
        while it ran), that transaction is rolled back and the outcomes are saved one by
        one, to learn which were still ours. The columns an outcome does not name keep the
        values the claim saw.

        A ``recurring`` job that finished is copied in the same transaction (see
        :meth:`_clone_recurring`), to run ``recurring_after`` later; the copies' ids and rows
        are added to ``clones`` (a broker must hear of them).
        """
        if any(c.job.recurring and state is JobState.FINISHED for c, state, _ in outcomes):
            return self.retrying(lambda: self._save_recurring(outcomes, recurring_after, clones))
        params = [self._outcome_params(c, state, values) for c, state, values in outcomes]
        return self.retrying(lambda: self._save_params(params))

    def _save_params(self, params: list[dict[str, Any]]) -> list[bool]:
        """:meth:`save_outcomes`'s transaction, for outcomes already turned into parameters."""
        with self.engine.connect() as conn:
            if len(params) > 1:
                with conn.begin() as transaction:
                    matched = self.dialect.save_many(
                        conn, self._save_outcome, self.table, params, _SET_COLUMNS
                    )
                    if matched == len(params):
                        return [True] * len(params)
                    transaction.rollback()
            elif self.dialect.autocommit_single_statement:  # one statement: commits by itself
                conn.execution_options(isolation_level="AUTOCOMMIT")
                return [conn.execute(self._save_outcome, params[0]).rowcount == 1]
            with conn.begin():
                return [conn.execute(self._save_outcome, p).rowcount == 1 for p in params]

    def _save_recurring(
        self,
        outcomes: Sequence[tuple[Claim, JobState, dict[str, Any]]],
        after: timedelta,
        clones: list[tuple[int, dict[str, Any]]] | None,
    ) -> list[bool]:
        """Outcomes one by one, with the copies of finished recurring jobs, in one
        transaction: a recurring job never finishes without its copy."""
        saved, made = [], []
        with self.engine.begin() as conn:
            for claim, state, values in outcomes:
                ok = conn.execute(
                    self._save_outcome, self._outcome_params(claim, state, values)
                ).rowcount
                saved.append(ok == 1)
                if ok == 1 and claim.job.recurring and state is JobState.FINISHED:
                    clone = self._clone_recurring(
                        conn, claim.job, values.get("updated_at") or utcnow(), after
                    )
                    if clone is not None:
                        made.append(clone)
        if clones is not None:
            clones.extend(made)
        return saved

    def _clone_recurring(
        self, conn: sa.Connection, job: Job, now: datetime, after: timedelta
    ) -> tuple[int, dict[str, Any]] | None:
        """The original's RECURRING mode: publish a copy of a finished job to run ``after``
        from now, unless an unfinished job with its identifier exists."""
        t = self.table
        if job.identifier is not None:
            twin = conn.execute(
                sa.select(t.c.id)
                .where(
                    t.c.identifier == job.identifier,
                    t.c.id != job.id,
                    t.c.state.not_in(DONE_STATES),
                    self.in_queue,
                )
                .limit(1)
            ).first()
            if twin is not None:
                return None
        copied = (
            "queue", "priority", "callback_name", "parameters", "parameters_json",
            "serial_group", "identifier", "is_unique", "recurring", "coalesce_threshold",
        )  # fmt: skip
        row: dict[str, Any] = {c: getattr(job, c) for c in copied}
        row.update(
            state=JobState.READY,
            created_at=now,
            updated_at=now,
            available_at=now + after,
            number_of_attempts=0,
        )
        return self._insert_one(conn, row), row

    @staticmethod
    def _outcome_params(claim: Claim, state: JobState, values: dict[str, Any]) -> dict[str, Any]:
        job = claim.job
        params: dict[str, Any] = {f"v_{c}": None for c in OUTCOME_COLUMNS}
        params.update(v_available_at=job.available_at, v_number_of_attempts=job.number_of_attempts)
        params.update({f"v_{k}": v for k, v in values.items()})
        params.update(v_state=int(state), b_id=job.id, b_attempts=job.number_of_attempts)
        return params

    def release(self, claims: Sequence[Claim], now: datetime) -> None:
        """Give back claimed jobs that were not started (the worker is stopping)."""

        def give_back() -> None:
            with self.engine.begin() as conn:
                for claim in claims:
                    self._guarded(conn, claim, **self._unclaimed(claim.previous_state, now))

        self.retrying(give_back)

    def release_unknown_claims(
        self, pid: int, hostname: str, claimed_at: Sequence[datetime], now: datetime
    ) -> list[int]:
        """Give back jobs a claim of this worker took without the worker learning it.

        When the database goes away during a claim's commit, the claim may have committed
        or not; its jobs (``PROCESSING`` under this ``pid`` and ``hostname``, claimed at one
        of ``claimed_at``, which no other claim shares) never started. They become
        ``READY`` again, their attempt uncounted; returns their ids.
        """
        if not claimed_at:
            return []
        t = self.table
        mine = sa.and_(
            t.c.state == JobState.PROCESSING,
            self.in_queue,
            t.c.pid == pid,
            t.c.hostname == hostname,
            t.c.last_attempt_at.in_(list(claimed_at)),
        )
        with self.engine.begin() as conn:
            ids = list(conn.execute(sa.select(t.c.id).where(mine)).scalars())
            if ids:
                conn.execute(
                    t.update()
                    .where(mine, t.c.id.in_(ids))
                    .values(self._unclaimed(JobState.READY, now))
                )
        return ids

    def _unclaimed(self, state: JobState, now: datetime) -> dict[str, Any]:
        """What giving back a claimed job that never started writes: its attempt uncounted."""
        return {
            "state": state,
            "number_of_attempts": self.table.c.number_of_attempts - 1,
            "pid": None,
            "hostname": None,
            "heartbeat_at": None,
            "updated_at": now,
        }

    def heartbeat(self, claims: Sequence[Claim], now: datetime) -> None:
        """Keep the claimed jobs this worker's: only those still at its attempt, so a worker
        whose job was taken back and claimed again elsewhere (a host cut off, then back)
        never keeps the new attempt alive with its own beats."""
        t = self.table
        if not claims:
            return
        by_attempt: dict[int, list[int]] = {}
        for claim in claims:
            by_attempt.setdefault(claim.job.number_of_attempts, []).append(claim.job.id)
        ours = sa.or_(
            *(
                sa.and_(t.c.number_of_attempts == attempts, t.c.id.in_(ids))
                for attempts, ids in by_attempt.items()
            )
        )
        with self.engine.begin() as conn:
            conn.execute(
                t.update().where(ours, t.c.state == JobState.PROCESSING).values(heartbeat_at=now)
            )
