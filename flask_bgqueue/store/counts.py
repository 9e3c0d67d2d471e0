"""How many jobs are in each state, queue and callback, at a cost that stays bounded.

The overview and ``flask bgq stats`` ask on every refresh, so the answer must not read
the table. Every count reads ``ix_<table>_state_counts`` (state, queue, callback_name,
last_attempt_at; migration 0010) alone, an index-only read. A state with at most
``exact_limit`` jobs is counted exactly; a state with more (typically FINISHED on a busy
table) is *estimated* where the database keeps statistics: its total is the planner's row
estimate (PostgreSQL, MySQL/MariaDB), split between queues and callbacks in the
proportions of its newest :data:`SAMPLE` jobs. SQLite keeps none, so there every count is
exact, read from the same index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..models import JobState
from .base import StoreBase

#: How many of an estimated state's newest jobs give its split by queue and callback.
SAMPLE = 10_000


@dataclass(frozen=True)
class StateCounts:
    """``(state, queue, callback, n)`` rows, and the states whose ``n`` are estimates."""

    rows: list[tuple[JobState, str, str, int]]
    estimated: frozenset[JobState]


class Counts(StoreBase):
    def count_by_state_queue_callback(self) -> list[tuple[JobState, str, str, int]]:
        """How many jobs of this queue are in each (state, queue, callback), exactly.

        Reads every entry of ``ix_<table>_state_counts`` (not the rows); for metrics,
        whose gauges must add up, and wherever exact figures are worth the read.
        """
        with self.engine.connect() as conn:
            return self._exact(conn, None)

    def state_counts(self, exact_limit: int) -> StateCounts:
        """Exact counts of the states with at most ``exact_limit`` jobs, estimates of the
        others where the database can estimate (see the module's docstring)."""
        with self.engine.connect() as conn:
            if not self.dialect.estimates_rows:
                return StateCounts(self._exact(conn, None), frozenset())
            capped = self._capped(conn, exact_limit)
            big = [s for s, n in capped.items() if n > exact_limit]
            estimates = {s: self._estimate(conn, s) for s in big}
            estimated = {s: max(n, exact_limit + 1) for s, n in estimates.items() if n is not None}
            exact_states = [s for s in capped if s not in estimated]
            rows = self._exact(conn, exact_states)
            for state, total in estimated.items():
                rows += self._split(conn, state, total)
        return StateCounts(rows, frozenset(estimated))

    def _where(self, states: list[JobState] | None) -> Any:
        """This queue's jobs in ``states`` (``None``: any), and in states this version does
        not know (a newer version's), which are always counted exactly."""
        t = self.table
        if states is None:
            return self.in_queue
        known = sorted(int(s) for s in JobState)
        gaps = [v for v in range(known[0], known[-1]) if v not in known]
        unknown = sa.or_(t.c.state < known[0], t.c.state > known[-1], t.c.state.in_(gaps))
        return sa.and_(self.in_queue, sa.or_(t.c.state.in_(states), unknown))

    def _exact(
        self, conn: sa.Connection, states: list[JobState] | None
    ) -> list[tuple[JobState, str, str, int]]:
        t = self.table
        stmt = (
            sa.select(t.c.state, t.c.queue, t.c.callback_name, sa.func.count())
            .where(self._where(states))
            .group_by(t.c.state, t.c.queue, t.c.callback_name)
        )
        return [(JobState(s), q, c, int(n)) for s, q, c, n in conn.execute(stmt)]

    def _capped(self, conn: sa.Connection, exact_limit: int) -> dict[JobState, int]:
        """Each known state's count, read no further than ``exact_limit + 1`` jobs: one
        statement, one bounded index range per state."""
        t = self.table
        states = list(JobState)
        columns = []
        for state in states:
            ids = sa.select(t.c.id).where(t.c.state == state, self.in_queue)
            inner = ids.limit(exact_limit + 1).subquery()
            columns.append(sa.select(sa.func.count()).select_from(inner).scalar_subquery())
        counts = conn.execute(sa.select(*columns)).one()
        return {s: int(n) for s, n in zip(states, counts, strict=True) if n}

    def _estimate(self, conn: sa.Connection, state: JobState) -> int | None:
        t = self.table
        return self.dialect.estimate_rows(
            conn, sa.select(t.c.id).where(t.c.state == state, self.in_queue)
        )

    def _split(
        self, conn: sa.Connection, state: JobState, total: int
    ) -> list[tuple[JobState, str, str, int]]:
        """``total`` shared between queues and callbacks as among the newest jobs."""
        t = self.table
        newest = (
            sa.select(t.c.queue, t.c.callback_name)
            .where(t.c.state == state, self.in_queue)
            .order_by(t.c.id.desc())
            .limit(SAMPLE)
            .subquery()
        )
        stmt = sa.select(newest.c.queue, newest.c.callback_name, sa.func.count()).group_by(
            newest.c.queue, newest.c.callback_name
        )
        sample = [(q, c, int(n)) for q, c, n in conn.execute(stmt)]
        seen = sum(n for _, _, n in sample) or 1
        return [(state, q, c, max(1, round(n * total / seen))) for q, c, n in sample]
