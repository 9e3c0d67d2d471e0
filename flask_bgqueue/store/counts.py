"""How many jobs are in each state, queue and callback, at a cost that stays bounded.

The overview and ``flask bgq stats`` ask on every refresh, so the answer must not read
the table. Every count reads ``ix_<table>_due`` (state, available_at, queue, priority,
callback_name, ...; migration 0010) alone, an index-only read. A state with at most
``exact_limit`` jobs is counted exactly; a state with more (typically FINISHED on a busy
table) is *estimated* where the database keeps statistics: its total is the planner's row
estimate (PostgreSQL, MySQL/MariaDB), scaled to this queue and split between queues and
callbacks in the proportions of its jobs among the newest :data:`SAMPLE` ids (rows read
along the primary key). SQLite keeps none, so there every count is exact, read from the
same index.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ..models import JobState
from .base import StoreBase

#: How many of the newest ids give an estimated state's split by queue and callback.
SAMPLE = 10_000


@dataclass(frozen=True)
class StateCounts:
    """``(state, queue, callback, n)`` rows, and the states whose ``n`` are estimates."""

    rows: list[tuple[JobState, str, str, int]]
    estimated: frozenset[JobState]


class Counts(StoreBase):
    def count_by_state_queue_callback(self) -> list[tuple[JobState, str, str, int]]:
        """How many jobs of this queue are in each (state, queue, callback), exactly.

        Reads every entry of ``ix_<table>_due`` (not the rows); for metrics,
        whose gauges must add up, and wherever exact figures are worth the read.
        """
        with self.engine.connect() as conn:
            return self._exact(conn, ())

    def state_counts(self, exact_limit: int) -> StateCounts:
        """Exact counts of the states with at most ``exact_limit`` jobs, estimates of the
        others where the database can estimate (see the module's docstring)."""
        with self.engine.connect() as conn:
            if not self.dialect.estimates_rows:
                return StateCounts(self._exact(conn, ()), frozenset())
            # The planner's figures say which states may be over the limit (a stale one
            # costs time, never exactness: a state it misses is counted to the end).
            guesses = {s: self._estimate(conn, s) for s in JobState}
            likely = [s for s, n in guesses.items() if n is None or 2 * n > exact_limit]
            estimated = {
                s: n for s in self._over(conn, exact_limit, likely) if (n := guesses[s]) is not None
            }
            rows = self._exact(conn, sorted(estimated))
            if estimated and self.dialect.estimates_at_most_half:
                estimated = self._share_the_rest(conn, estimated, rows)
            for state, total in estimated.items():
                rows += self._split(conn, state, total, exact_limit + 1)
        return StateCounts(rows, frozenset(estimated))

    def _over(
        self, conn: sa.Connection, exact_limit: int, states: list[JobState]
    ) -> list[JobState]:
        """Those of ``states`` with more than ``exact_limit`` jobs: whether each has a job
        past the first ``exact_limit`` of its index range (one statement; no state is
        read further than that, and only from the index)."""
        if not states:
            return []
        t = self.table
        probes = [
            sa.select(t.c.state)
            .where(t.c.state == state, self.in_queue)
            .limit(1)
            .offset(exact_limit)
            .scalar_subquery()
            for state in states
        ]
        found = conn.execute(sa.select(*probes)).one()
        return [s for s, past in zip(states, found, strict=True) if past is not None]

    def _exact(
        self, conn: sa.Connection, excluded: Sequence[JobState]
    ) -> list[tuple[JobState, str, str, int]]:
        """Exact counts of every state but ``excluded`` (sorted), newer versions' states
        included: one index range between each two excluded states, so each part stays an
        index-only read (an ``OR`` of ranges would make PostgreSQL visit the rows)."""
        t = self.table
        key = (t.c.state, t.c.queue, t.c.callback_name)
        bounds: list[int | None] = [None, *(int(s) for s in excluded), None]
        parts = []
        for low, high in itertools.pairwise(bounds):
            where = [self.in_queue]
            if low is not None:
                where.append(t.c.state > low)
            if high is not None:
                where.append(t.c.state < high)
            parts.append(sa.select(*key, sa.func.count()).where(*where).group_by(*key))
        stmt = parts[0] if len(parts) == 1 else sa.union_all(*parts)
        return [(JobState(s), q, c, int(n)) for s, q, c, n in conn.execute(stmt)]

    def _estimate(self, conn: sa.Connection, state: JobState) -> int | None:
        """The planner's rows for ``state`` in the whole table: its statistics of a
        single value are good (PostgreSQL's most common values, MariaDB's index dives),
        those of the queue's ``LIKE`` are rough; :meth:`_split` scales it to this queue."""
        t = self.table
        return self.dialect.estimate_rows(conn, sa.select(t.c.id).where(t.c.state == state))

    def _share_the_rest(
        self,
        conn: sa.Connection,
        estimated: dict[JobState, int],
        exact: list[tuple[JobState, str, str, int]],
    ) -> dict[JobState, int]:
        """MySQL/MariaDB: the table's estimated rows less those counted exactly, shared
        between the estimated states as the planner's figures are (which InnoDB caps at
        half the table, so a state holding most of it would be underestimated)."""
        rest = (self.dialect.table_rows(conn, self.table.name) or 0) - sum(n for *_, n in exact)
        weight = sum(estimated.values()) or 1
        return {s: max(n, round(rest * n / weight)) for s, n in estimated.items()}

    def _split(
        self, conn: sa.Connection, state: JobState, table_total: int, at_least: int
    ) -> list[tuple[JobState, str, str, int]]:
        """``table_total`` (the planner's, for the whole table) scaled to this queue, never
        below ``at_least`` (what :meth:`_over` saw), and shared between its queues and
        callbacks as among the jobs of the newest :data:`SAMPLE` ids (a primary-key
        range)."""
        t = self.table
        key = (t.c.queue, t.c.callback_name)
        top = conn.execute(sa.select(sa.func.max(t.c.id))).scalar() or 0
        newest = sa.select(*key, sa.func.count()).where(t.c.id > top - SAMPLE, t.c.state == state)
        sample = [(q, c, int(n)) for q, c, n in conn.execute(newest.group_by(*key))]
        # this queue and its sub-queues, as self.in_queue matches them in SQL
        ours = [
            (q, c, n) for q, c, n in sample if q == self.queue or q.startswith(f"{self.queue}_")
        ]
        mine = sum(n for _, _, n in ours)
        if mine:
            total = max(at_least, round(table_total * mine / sum(n for _, _, n in sample)))
        else:  # none of the newest: the first of its index range, and the least it holds
            first = (
                sa.select(*key).where(t.c.state == state, self.in_queue).limit(SAMPLE).subquery()
            )
            stmt = sa.select(first.c.queue, first.c.callback_name, sa.func.count()).group_by(
                first.c.queue, first.c.callback_name
            )
            ours = [(q, c, int(n)) for q, c, n in conn.execute(stmt)]
            mine, total = sum(n for _, _, n in ours) or 1, at_least
        return [(state, q, c, max(1, round(n * total / mine))) for q, c, n in ours]
