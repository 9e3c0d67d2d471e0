"""What every part of the store shares: the engine, the table, the queue, the dialect and
the one guarded state transition."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from ..exceptions import ConfigurationError
from ..models import Job, JobState, job_table, throughput_table
from .dialects import Dialect, dialect_for
from .driver import Driver


@dataclass(frozen=True)
class Claim:
    """A job this worker moved to ``PROCESSING``; its guard for every later update."""

    job: Job
    previous_state: JobState


def state_in(column: Any, states: Sequence[JobState]) -> Any:
    """``column IN (...)`` with the states written into the SQL as literals: PostgreSQL uses
    the partial index ix_<table>_claim only when it can see that the query's states fall
    inside the index's. Statements compiled once to text keep them too."""
    return column.in_([sa.literal_column(str(int(s))) for s in states])


#: Jobs an operator's action (retry, cancel) changes per transaction.
ACTION_BATCH = 500

#: Outcomes per queue and minute: how many attempts ``(finished, failed)``.
Tallied = Mapping[tuple[str, datetime], tuple[int, int]]
#: Where the store itself adds outcomes (a lost worker's attempt, an interrupted one).
NO_WORKER = ("", 0)

#: How many times :meth:`StoreBase.retrying` runs a transaction the database ended as a
#: deadlock's victim.
CONFLICT_ATTEMPTS = 4

T = TypeVar("T")


class StoreBase:
    """SQL for one application's job table, on the queue's own engine."""

    def __init__(self, engine: sa.Engine, table_name: str, queue: str) -> None:
        self.engine = engine
        self.dialect: Dialect = dialect_for(engine)
        #: The engine goes through a pooler in transaction mode (no LISTEN on it).
        self.transaction_pooling = False
        #: A direct connection for LISTEN only (``BGQUEUE_LISTEN_DATABASE_URI``).
        self.listen_engine: sa.Engine | None = None
        self.table = t = job_table(table_name)
        self.queue = queue
        # The instance's queue and its sub-queues ("<queue>_<name>"), matched exactly:
        # the prefix is escaped so "_" and "%" are not LIKE wildcards.
        self.in_queue = self.of_queue(t.c.queue)
        self.driver = Driver(engine, t, self.dialect)
        self.throughput_table = tt = throughput_table(table_name)
        self._add_throughput = self.dialect.adding_insert(tt, ("finished", "failed"))

    def of_queue(self, column: Any) -> Any:
        """``column`` names the instance's queue or one of its sub-queues."""
        return sa.or_(column == self.queue, column.startswith(f"{self.queue}_", autoescape=True))

    def configure_pooling(self, transaction_pooling: bool, listen_url: str | None) -> None:
        """Whether the engine goes through a pooler in transaction mode, and the direct URL
        consumers ``LISTEN`` on (``BGQUEUE_TRANSACTION_POOLING``,
        ``BGQUEUE_LISTEN_DATABASE_URI``)."""
        self.transaction_pooling = transaction_pooling
        if listen_url is None:
            return
        if self.engine.dialect.name != "postgresql":
            raise ConfigurationError(
                "BGQUEUE_LISTEN_DATABASE_URI is set but the job table is on"
                f" {self.engine.dialect.name}, which has no LISTEN: remove the setting.",
                "BGQUEUE_LISTEN_DATABASE_URI",
            )
        # One connection per consumer, held while it waits: nothing to pool.
        self.listen_engine = sa.create_engine(listen_url, poolclass=sa.NullPool)

    def is_database_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` came from the database or its driver (a lost connection, a
        refused statement), as opposed to a bug or a callback's error."""
        return isinstance(exc, (sa.exc.DBAPIError, self.engine.dialect.loaded_dbapi.Error))

    def is_conflict(self, exc: BaseException) -> bool:
        """Whether the database ended ``exc``'s transaction to break a deadlock (or a
        serialization conflict): rolled back whole, it may simply run again."""
        error = getattr(exc, "orig", exc)  # the driver's, under SQLAlchemy's wrapper
        return self.is_database_error(exc) and self.dialect.is_conflict(error)

    def retrying(self, transaction: Callable[[], T]) -> T:
        """Run ``transaction`` (a whole one, on a connection of its own), again when the
        database ends it as a deadlock's victim: InnoDB does under concurrent claims and
        outcomes, and nothing of it was written. Up to :data:`CONFLICT_ATTEMPTS` times,
        after a short random pause; any other error, or the last conflict, goes up."""
        attempt = 1
        while True:
            try:
                return transaction()
            except Exception as exc:  # through SQLAlchemy, or from the driver's fast path
                if attempt >= CONFLICT_ATTEMPTS or not self.is_conflict(exc):
                    raise
            time.sleep(random.uniform(0.005, 0.03) * attempt)
            attempt += 1

    def ping(self) -> None:
        """Raise the database's error unless it answers (after :meth:`forget_connections`)."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(1))

    def forget_connections(self) -> None:
        """Drop the pooled connections: after a server restart they are all dead."""
        self.engine.dispose()

    @property
    def channel(self) -> str:
        """PostgreSQL: the channel a trigger NOTIFYs when jobs are inserted (migration 0005)."""
        return f"bgq_{self.table.name}"

    def _insert_one(self, conn: sa.Connection, row: dict[str, Any]) -> int:
        """Insert one job inside a transaction of the caller's; its id."""
        key = conn.execute(self.table.insert().values(row)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def _tally(
        self, conn: sa.Connection, counts: Tallied, worker: tuple[str, int] = NO_WORKER
    ) -> None:
        """Add outcomes to ``<table>_throughput``, on the rows of ``worker`` (its hostname
        and pid), inside a transaction of the caller's."""
        by_minute: dict[tuple[str, datetime], list[int]] = {}
        for (queue, at), (finished, failed) in counts.items():
            slot = by_minute.setdefault((queue, at.replace(second=0, microsecond=0)), [0, 0])
            slot[0] += finished
            slot[1] += failed
        hostname, pid = worker
        rows = [
            {"queue": q, "minute": m, "hostname": hostname, "pid": pid, "finished": f, "failed": x}
            for (q, m), (f, x) in by_minute.items()
            if f or x
        ]
        if rows:
            conn.execute(self._add_throughput, rows)

    def _guarded(self, conn: sa.Connection, claim: Claim, **values: Any) -> bool:
        """Change a claimed job, if it is still this attempt's."""
        t = self.table
        return self._transition(
            conn,
            claim.job.id,
            (JobState.PROCESSING,),
            extra=t.c.number_of_attempts == claim.job.number_of_attempts,
            **values,
        )

    def _each_transition(
        self, job_ids: Iterable[int], change: Callable[[sa.Connection, int], bool]
    ) -> list[int]:
        """Apply ``change`` to each job (an operator's action on many jobs); the ids it
        changed. One transaction per :data:`ACTION_BATCH` jobs keeps locks short."""
        ids = list(job_ids)
        changed: list[int] = []
        for start in range(0, len(ids), ACTION_BATCH):
            with self.engine.begin() as conn:
                changed += [i for i in ids[start : start + ACTION_BATCH] if change(conn, i)]
        return changed

    def _transition(
        self,
        conn: sa.Connection,
        job_id: int,
        expected: Sequence[JobState],
        extra: Any = None,
        **values: Any,
    ) -> bool:
        """The one way a state changes: an UPDATE that names the state it expects."""
        t = self.table
        stmt = t.update().where(t.c.id == job_id, t.c.state.in_(expected))
        if extra is not None:
            stmt = stmt.where(extra)
        return conn.execute(stmt.values(**values)).rowcount == 1
