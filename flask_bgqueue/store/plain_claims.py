"""The broker-less claim's fast path: plain due jobs claimed in one statement.

A claim normally runs a transaction: ``SELECT ... FOR UPDATE SKIP LOCKED``, checks per job
(serial groups, unique twins, coalescing), ``UPDATE``, ``COMMIT``: three round trips or
more. Most jobs need no check: no serial group (so no coalescing either) and not unique.
On PostgreSQL, :meth:`PlainClaims.claim_plain` takes the first ``limit`` due jobs in claim
order (priority, then id) with ``SKIP LOCKED`` in a CTE and moves the plain ones among them
to ``PROCESSING`` in the same statement (autocommit: one round trip), saying whether it
passed over jobs that need the checks; the caller then claims those through
:meth:`.claims.Claims.claim`, which checks them as always. So the semantics are those of
the full claim; only the number of round trips changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..models import RUNNABLE_STATES, Job, JobState
from .base import Claim, StoreBase, state_in
from .driver import Prepared


class PlainClaims(StoreBase):
    def __init__(self, engine: sa.Engine, table_name: str, queue: str) -> None:
        super().__init__(engine, table_name, queue)
        self._plain_claims: dict[tuple[Any, ...], Prepared] = {}

    def claim_plain(
        self,
        *,
        now: datetime,
        limit: int,
        priorities: Sequence[int] | None,
        callbacks: Sequence[str],
        pid: int,
        hostname: str,
        states: Sequence[JobState] = RUNNABLE_STATES,
        queue: str | None = None,
    ) -> tuple[list[Claim], bool] | None:
        """Claim the plain jobs among the first ``limit`` due ones, in one statement.

        Returns the claims and whether jobs needing checks (serial group, unique) were
        among those first ``limit``, left for :meth:`~.claims.Claims.claim`; ``None``
        where the database has no such statement (use :meth:`~.claims.Claims.claim`).
        """
        if not self.dialect.claims_delivered_in_one_statement or not callbacks:
            return None
        key = (priorities is None, tuple(states), queue is not None)
        prepared = self._plain_claims.get(key)
        if prepared is None:
            variable = ["cp_now", "cp_limit", "cp_callbacks", "cp_pid", "cp_hostname"]
            variable += [] if priorities is None else ["cp_priorities"]
            variable += [] if queue is None else ["cp_queue"]
            prepared = self.driver.prepare(self._plain_statement(*key), variable)
            self._plain_claims[key] = prepared
        params: dict[str, Any] = {
            "cp_now": now,
            "cp_limit": limit,
            "cp_callbacks": list(callbacks),
            "cp_pid": pid,
            "cp_hostname": hostname,
        }
        if priorities is not None:
            params["cp_priorities"] = list(priorities)
        if queue is not None:
            params["cp_queue"] = queue
        rows = self.driver.execute_one(prepared, params)
        claims = [
            Claim(Job.from_mapping(m), JobState(m["bgq_previous_state"]))
            for m in rows
            if m["id"] is not None
        ]
        claims.sort(key=lambda c: (c.job.priority, c.job.id))  # the claim order
        return claims, any(not m["bgq_plain"] for m in rows)

    def _plain_statement(
        self, all_priorities: bool, states: tuple[JobState, ...], one_queue: bool
    ) -> Any:
        from sqlalchemy.dialects import postgresql

        t = self.table
        now = sa.bindparam("cp_now", type_=t.c.available_at.type)
        where = [
            state_in(t.c.state, states),
            self.in_queue,
            t.c.callback_name
            == sa.func.any(sa.bindparam("cp_callbacks", type_=postgresql.ARRAY(sa.String))),
            t.c.available_at <= now,
        ]
        if not all_priorities:
            where.append(
                t.c.priority
                == sa.func.any(sa.bindparam("cp_priorities", type_=postgresql.ARRAY(sa.Integer)))
            )
        if one_queue:
            where.append(t.c.queue == sa.bindparam("cp_queue"))
        extra, order = self.dialect.claim_order(t, True, states)
        plain = sa.and_(t.c.serial_group.is_(None), t.c.is_unique.is_(sa.false()))
        candidates = (
            sa.select(t.c.id, t.c.state.label("bgq_previous_state"), plain.label("bgq_plain"))
            .where(*where, *extra)
            .order_by(*order)
            .limit(sa.bindparam("cp_limit", type_=sa.Integer))
            .with_for_update(skip_locked=True)
            .cte("bgq_candidates")
        )
        claimed = (
            t.update()
            .where(t.c.id == candidates.c.id, candidates.c.bgq_plain)
            .values(
                state=JobState.PROCESSING,
                number_of_attempts=t.c.number_of_attempts + 1,
                last_attempt_at=now,
                heartbeat_at=now,
                updated_at=now,
                pid=sa.bindparam("cp_pid"),
                hostname=sa.bindparam("cp_hostname"),
            )
            .returning(*t.c)
            .cte("bgq_plain_claimed")
        )
        return sa.select(
            candidates.c.bgq_previous_state, candidates.c.bgq_plain, *claimed.c
        ).select_from(candidates.outerjoin(claimed, claimed.c.id == candidates.c.id))
