"""The only module that speaks SQL.

Every state change is one conditional UPDATE that names the state it expects, so a job is
claimed by one worker only and a late worker can never overwrite a newer state.
Dialect-specific SQL (SKIP LOCKED, advisory locks, ``BEGIN IMMEDIATE``) sits in
:meth:`Store._claim_transaction` and :meth:`Store._try_lock_group`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .models import DONE_STATES, PENDING_STATES, RUNNABLE_STATES, Job, JobState, job_table

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
)
#: The parameters of an outcome's UPDATE other than the job's id.
_OUTCOME_PARAMS = ("v_state", *(f"v_{c}" for c in OUTCOME_COLUMNS), "b_attempts")


class _ResultCursor:
    """The part of a DBAPI cursor :meth:`Store.insert` uses, on a SQLAlchemy connection."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.result: sa.CursorResult[Any] | None = None

    def execute(self, sql: str, params: tuple[Any, ...]) -> None:
        self.result = self.conn.exec_driver_sql(sql, params)

    def fetchone(self) -> Any:
        assert self.result is not None
        return self.result.fetchone()

    def fetchall(self) -> Any:
        assert self.result is not None
        return self.result.fetchall()

    @property
    def lastrowid(self) -> int:
        assert self.result is not None
        return self.result.lastrowid


@dataclass(frozen=True)
class Claim:
    """A job this worker moved to ``PROCESSING``; its guard for every later update."""

    job: Job
    previous_state: JobState


class Store:
    """SQL for one application's job table, on the queue's own engine."""

    def __init__(self, engine: sa.Engine, table_name: str, queue: str) -> None:
        self.dialect = engine.dialect.name
        self.engine = engine
        self.table = t = job_table(table_name)
        self.queue = queue
        # The instance's queue and its sub-queues ("<queue>_<name>"), matched exactly:
        # the prefix is escaped so "_" and "%" are not LIKE wildcards.
        self.in_queue = sa.or_(
            t.c.queue == queue, t.c.queue.startswith(f"{queue}_", autoescape=True)
        )
        self._raw_insert_cache: dict[tuple[Any, ...], str] = {}
        self._claim_cache: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        # A one-row INSERT reads its id with RETURNING where the driver's lastrowid does not
        # give it (PostgreSQL), as SQLAlchemy does.
        self._single_returning = not getattr(engine.dialect, "postfetch_lastrowid", True)
        self._bind_processors = {
            c.name: _fast_sqlite_datetime(c.type._cached_bind_processor(engine.dialect))
            if isinstance(c.type, sa.DateTime) and engine.dialect.name == "sqlite"
            else c.type._cached_bind_processor(engine.dialect)
            for c in t.columns
        }
        self._save_outcome = (
            t.update()
            .where(
                t.c.id == sa.bindparam("b_id"),
                t.c.state == JobState.PROCESSING,
                t.c.number_of_attempts == sa.bindparam("b_attempts"),
            )
            .values({c: sa.bindparam(f"v_{c}") for c in ("state", *OUTCOME_COLUMNS)})
        )
        self._group_lock_prefix = f"bgq:{table_name}:"
        # (statement, SQL, constant parameters), built by claim_delivered() on first use
        self._claim_delivered: tuple[Any, str, dict[str, Any]] | None = None
        self._save_many_statements: dict[tuple[int, tuple[str, ...]], Any] = {}

    # -- publishing ---------------------------------------------------------------------

    def insert(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Write rows in one transaction, one multi-row INSERT; return their ids in order.

        The INSERT goes straight to the driver's cursor, in SQL written once per number of
        rows: SQLAlchemy's execution path costs more than the round trip of a one-row
        INSERT. When the engine has cursor listeners (query recording, tracing), the rows go
        through SQLAlchemy instead, so that those listeners see the INSERT.
        """
        many_returning = len(rows) > 1 and bool(self.engine.dialect.insert_returning)
        if self._instrumented():
            transaction = self._sqlalchemy_transaction()
        else:
            # One row, or several with RETURNING, is one statement: on PostgreSQL it then
            # commits by itself, without a COMMIT round trip of its own.
            single = len(rows) == 1 or many_returning
            transaction = self._raw_transaction(single_statement=single)
        with transaction as cursor:
            if many_returning:
                # Autoincrement ids are handed out in VALUES order, so the sorted ids line
                # up with the rows whatever order RETURNING lists them in.
                cursor.execute(*self._raw_insert(rows, returning=True))
                return sorted(int(r[0]) for r in cursor.fetchall())
            ids = []
            for row in rows:  # one row, or several without RETURNING (MySQL 8): one by one
                cursor.execute(*self._raw_insert((row,), returning=self._single_returning))
                ids.append(
                    int(cursor.fetchone()[0] if self._single_returning else cursor.lastrowid)
                )
            return ids

    def _instrumented(self) -> bool:
        """Whether the engine has cursor listeners (query recording, tracing)."""
        dispatch = self.engine.dispatch
        return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)

    @contextmanager
    def _sqlalchemy_transaction(self) -> Iterator[_ResultCursor]:
        with self.engine.begin() as conn:
            yield _ResultCursor(conn)

    @contextmanager
    def _raw_transaction(self, single_statement: bool = False) -> Iterator[Any]:
        """A DBAPI cursor on a pooled connection, committed on success.

        ``single_statement``: the caller sends one statement only, which on PostgreSQL
        then runs in autocommit mode (a client-side switch in psycopg): one round trip
        instead of two, the same durability. Driver errors come out as SQLAlchemy's
        (``sa.exc.OperationalError`` ...), and a connection the server dropped is thrown
        away rather than put back in the pool.
        """
        dialect = self.engine.dialect
        raw: Any = self.engine.raw_connection()
        autocommit = single_statement and self.dialect == "postgresql"
        cursor = None
        try:
            if autocommit:
                raw.driver_connection.autocommit = True
            cursor = raw.cursor()
            yield cursor
            cursor.close()
            if autocommit:
                raw.driver_connection.autocommit = False  # as the pool hands it out
            else:
                raw.commit()
            # Committed: the pool need not send a ROLLBACK on return (one round trip less on
            # MySQL, whose driver sends it even with no transaction open).
            close = getattr(raw, "_close_special", None)
            if close is not None:
                close(transaction_reset=True)
                raw = None
        except dialect.loaded_dbapi.Error as exc:
            invalidated = dialect.is_disconnect(exc, raw, cursor)
            if invalidated:
                raw.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                None,
                None,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=invalidated,
                dialect=dialect,
            ) from exc
        finally:
            if raw is not None:
                driver = raw.driver_connection
                if autocommit and driver is not None and driver.autocommit:  # it failed
                    try:
                        driver.autocommit = False
                    except dialect.loaded_dbapi.Error:
                        raw.invalidate()
                raw.close()  # back to the pool, which rolls back anything left uncommitted

    def _raw_insert(
        self, rows: Sequence[dict[str, Any]], returning: bool
    ) -> tuple[str, tuple[Any, ...]]:
        """An ``INSERT`` of ``rows`` in the driver's own SQL and parameters.

        The SQL is written once per number of rows and columns; each value goes through its
        column type's bind processor, as SQLAlchemy would send it.
        """
        columns = tuple(rows[0])
        key = (len(rows), columns, returning)
        sql = self._raw_insert_cache.get(key)
        if sql is None:
            quote = self.engine.dialect.identifier_preparer.quote
            mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
            one = "(" + ", ".join(mark for _ in columns) + ")"
            sql = (
                f"INSERT INTO {quote(self.table.name)} ({', '.join(quote(c) for c in columns)})"
                f" VALUES {', '.join(one for _ in rows)}{' RETURNING id' if returning else ''}"
            )
            self._raw_insert_cache[key] = sql
        processors = [(c, self._bind_processors[c]) for c in columns]
        params = []
        for row in rows:
            for column, process in processors:
                value = row[column]
                params.append(value if process is None or value is None else process(value))
        return sql, tuple(params)

    # -- reading ------------------------------------------------------------------------

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

    def next_available_at(
        self, priorities: Sequence[int] | None, callbacks: Iterable[str]
    ) -> datetime | None:
        """When the soonest runnable job of these priorities and callbacks becomes due."""
        t = self.table
        stmt = sa.select(sa.func.min(t.c.available_at)).where(self._runnable(priorities, callbacks))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    # -- claiming -----------------------------------------------------------------------

    def ensure_statistics(self) -> bool:
        """PostgreSQL: ``ANALYZE`` the job table if it never was; return whether it ran.

        Until autovacuum first analyzes a new table (once it has seen enough changes, up
        to a minute later) the planner has no statistics and takes it for a few rows:
        every claim then reads and sorts all runnable jobs instead of walking the claim
        index. A burst of jobs on a fresh table is when that costs most, so workers
        analyze a table that never was when they start. Other databases: nothing.
        """
        if self.dialect != "postgresql":
            return False
        name = self.engine.dialect.identifier_preparer.quote(self.table.name)
        never = sa.text(
            "SELECT last_analyze IS NULL AND last_autoanalyze IS NULL"
            " FROM pg_stat_user_tables WHERE relid = to_regclass(:name)"
        )
        with self.engine.connect() as conn:
            if not conn.execute(never, {"name": name}).scalar():
                return False
            # Without ownership PostgreSQL skips it with a warning: never an error here.
            conn.exec_driver_sql(f"ANALYZE {name}")
            conn.commit()
        return True

    def claim(
        self,
        *,
        now: datetime,
        limit: int,
        priorities: Sequence[int] | None,
        callbacks: Sequence[str],
        pid: int,
        hostname: str,
        waiting_expiration: timedelta,
        job_ids: Sequence[int] | None = None,
        states: Sequence[JobState] = RUNNABLE_STATES,
    ) -> list[Claim]:
        """Move up to ``limit`` due jobs to ``PROCESSING`` for this worker.

        Unique duplicates become ``REDUNDANT`` and jobs blocked by their serial group
        ``WAITING`` on the way; a group never has two jobs claimed at once. ``job_ids``
        restricts the claim to those jobs (a broker delivered them), ``states`` to the
        states a job may be claimed from.
        """
        if not callbacks:
            return []
        select, update = self._claim_statements(priorities is None, job_ids is None, states)
        params: dict[str, Any] = {
            "bgq_callbacks": list(callbacks),
            "bgq_now": now,
            "bgq_limit": limit,
        }
        if priorities is not None:
            params["bgq_priorities"] = list(priorities)
        if job_ids is not None:
            params["bgq_job_ids"] = list(job_ids)
        with self._claim_transaction() as conn:
            candidates = [Job.from_row(r) for r in conn.execute(select, params)]
            chosen: list[Job] = []
            groups_seen: set[str] = set()
            for job in candidates:
                if job.is_unique and self._has_older_twin(conn, job):
                    self._set_redundant(conn, job, now)
                    continue
                if job.serial_group is not None:
                    if job.serial_group in groups_seen:
                        continue  # the one before it in this batch runs first
                    groups_seen.add(job.serial_group)
                    if not self._try_lock_group(conn, job.serial_group):
                        continue  # another worker is deciding this group right now
                    blocker = self._group_blocker(conn, job)
                    if blocker is not None:
                        self._set_waiting(
                            conn, job, now + waiting_expiration, f"waiting for job {blocker}"
                        )
                        continue
                chosen.append(job)
            if not chosen:
                return []
            conn.execute(
                update,
                {
                    "bgq_ids": [j.id for j in chosen],
                    "bgq_now": now,
                    "bgq_pid": pid,
                    "bgq_hostname": hostname,
                },
            )
        return [
            Claim(
                job.evolve(**_claimed(job.number_of_attempts, now, pid, hostname)),
                job.state,
            )
            for job in chosen
        ]

    def _claim_statements(
        self, all_priorities: bool, any_job: bool, states: Sequence[JobState]
    ) -> tuple[Any, Any]:
        """The claim's SELECT and UPDATE, built once per shape (values are bound later)."""
        key = (all_priorities, any_job, tuple(states))
        cached = self._claim_cache.get(key)
        if cached is not None:
            return cached
        t = self.table
        literal_states = _literal_states(states)
        where = [
            t.c.state.in_(literal_states),
            self.in_queue,
            t.c.callback_name.in_(sa.bindparam("bgq_callbacks", expanding=True)),
            t.c.available_at <= sa.bindparam("bgq_now"),
        ]
        if not all_priorities:
            where.append(t.c.priority.in_(sa.bindparam("bgq_priorities", expanding=True)))
        if not any_job:
            where.append(t.c.id.in_(sa.bindparam("bgq_job_ids", expanding=True)))
        order: list[Any] = [t.c.priority, t.c.id]
        if self.dialect in ("mysql", "mariadb") and any_job and set(states) == set(RUNNABLE_STATES):
            # The runnable jobs' index (migration 0006) yields them in claim order, so the
            # claim reads, and locks, only the rows it takes; not the whole backlog. (A claim
            # of some runnable states only, BROKER_FAILED in broker mode, reads those
            # through ix_<table>_due instead of walking every runnable job.)
            claim_priority: Any = sa.literal_column("bgq_claim_priority")
            where.append(claim_priority.is_not(None))
            order = [claim_priority, t.c.id]
        select = (
            sa.select(t)
            .where(*where)
            .order_by(*order)
            .limit(sa.bindparam("bgq_limit", type_=sa.Integer, literal_execute=True))
        )
        if self.dialect != "sqlite":
            select = select.with_for_update(skip_locked=True)
        update = (
            # By id only: the SELECT locked these rows (SQLite: the transaction holds the
            # write lock), so their state cannot have changed; a state condition here would
            # let the planner scan the runnable jobs' index instead of the primary key.
            t.update()
            .where(t.c.id.in_(sa.bindparam("bgq_ids", expanding=True)))
            .values(
                _claimed(
                    t.c.number_of_attempts,
                    sa.bindparam("bgq_now"),
                    sa.bindparam("bgq_pid"),
                    sa.bindparam("bgq_hostname"),
                )
            )
        )
        self._claim_cache[key] = (select, update)
        return select, update

    def claim_delivered(
        self,
        *,
        now: datetime,
        job_ids: Sequence[int],
        callbacks: Sequence[str],
        pid: int,
        hostname: str,
        states: Sequence[JobState],
    ) -> list[Claim] | None:
        """PostgreSQL: claim delivered jobs that need no check, in one statement.

        The broker's hot path: the jobs of ``job_ids`` that are due, in ``states``, of a
        known callback, without a serial group and not unique, move to ``PROCESSING`` in
        one ``UPDATE ... RETURNING`` (its ``SELECT ... FOR UPDATE SKIP LOCKED`` in a CTE,
        so the previous state comes back too), a statement built once. The others are
        left as they are for :meth:`claim`, which checks groups and twins. ``None`` on the
        other databases: use :meth:`claim`.
        """
        if self.dialect != "postgresql":
            return None
        if self._claim_delivered is None:
            self._claim_delivered = self._build_claim_delivered()
        statement, sql, constants = self._claim_delivered
        params = {
            "cd_ids": list(job_ids),
            "cd_states": [int(s) for s in states],
            "cd_callbacks": list(callbacks),
            "cd_now": now,
            "cd_pid": pid,
            "cd_hostname": hostname,
        }
        # One statement: it commits by itself (autocommit), without a COMMIT round trip.
        rows: list[Any]
        if self._instrumented():  # cursor listeners must see it: through SQLAlchemy
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                rows = [r._mapping for r in conn.execute(statement, params)]
        else:  # straight to the driver, in SQL compiled once
            with self._raw_transaction(single_statement=True) as cursor:
                cursor.execute(sql, {**constants, **params})
                names = [d.name for d in cursor.description]
                rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        return [Claim(Job.from_mapping(m), JobState(m["bgq_previous_state"])) for m in rows]

    def _build_claim_delivered(self) -> tuple[Any, str, dict[str, Any]]:
        """The statement, its SQL for psycopg, and the values of its constant parameters."""
        statement = self._claim_delivered_statement()
        compiled = statement.compile(dialect=self.engine.dialect)
        placeholders = dict.fromkeys(("cd_ids", "cd_states", "cd_callbacks", "cd_now"))
        values = compiled.construct_params({**placeholders, "cd_pid": 0, "cd_hostname": ""})
        constants = {
            k: int(v) if isinstance(v, JobState) else v
            for k, v in values.items()
            if not k.startswith("cd_")
        }
        return statement, str(compiled), constants

    def _claim_delivered_statement(self) -> Any:
        from sqlalchemy.dialects import postgresql

        t = self.table
        now = sa.bindparam("cd_now", type_=t.c.available_at.type)
        old = (
            sa.select(t.c.id, t.c.state.label("bgq_previous_state"))
            .where(
                t.c.id
                == sa.func.any(sa.bindparam("cd_ids", type_=postgresql.ARRAY(sa.BigInteger))),
                t.c.state
                == sa.func.any(sa.bindparam("cd_states", type_=postgresql.ARRAY(sa.SmallInteger))),
                t.c.callback_name
                == sa.func.any(sa.bindparam("cd_callbacks", type_=postgresql.ARRAY(sa.String))),
                self.in_queue,
                t.c.available_at <= now,
                t.c.serial_group.is_(None),
                t.c.is_unique.is_(sa.false()),
            )
            .with_for_update(skip_locked=True)
            .cte("bgq_claimable")
        )
        return (
            t.update()
            .where(t.c.id == old.c.id)
            .values(
                _claimed(
                    t.c.number_of_attempts,
                    now,
                    sa.bindparam("cd_pid"),
                    sa.bindparam("cd_hostname"),
                )
            )
            .returning(*t.c, old.c.bgq_previous_state)
        )

    def _runnable(
        self,
        priorities: Sequence[int] | None,
        callbacks: Iterable[str],
        states: Sequence[JobState] = RUNNABLE_STATES,
    ) -> Any:
        t = self.table
        literal_states = _literal_states(states)
        clause = sa.and_(
            t.c.state.in_(literal_states), self.in_queue, t.c.callback_name.in_(list(callbacks))
        )
        if priorities is not None:
            clause = sa.and_(clause, t.c.priority.in_(list(priorities)))
        return clause

    def _has_older_twin(self, conn: sa.Connection, job: Job) -> bool:
        t = self.table
        stmt = (
            sa.select(t.c.id)
            .where(t.c.identifier == job.identifier, t.c.id < job.id, self.in_queue)
            .limit(1)
        )
        return conn.execute(stmt).first() is not None

    def _group_blocker(self, conn: sa.Connection, job: Job) -> int | None:
        """The job that must finish before ``job`` may run, if any."""
        t = self.table
        earlier = sa.or_(
            t.c.priority < job.priority, sa.and_(t.c.priority == job.priority, t.c.id < job.id)
        )
        stmt = (
            sa.select(t.c.id)
            .where(
                t.c.serial_group == job.serial_group,
                self.in_queue,
                t.c.id != job.id,
                sa.or_(
                    t.c.state == JobState.PROCESSING,
                    sa.and_(t.c.state.in_(PENDING_STATES), earlier),
                ),
            )
            .order_by(t.c.priority, t.c.id)
            .limit(1)
        )
        return conn.execute(stmt).scalar()

    def _set_redundant(self, conn: sa.Connection, job: Job, now: datetime) -> None:
        self._transition(
            conn,
            job.id,
            (job.state,),
            state=JobState.REDUNDANT,
            finished_at=now,
            updated_at=now,
            error_message=f"duplicate of an older job with identifier {job.identifier!r}",
        )

    def _set_waiting(self, conn: sa.Connection, job: Job, until: datetime, why: str) -> None:
        self._transition(
            conn,
            job.id,
            (job.state,),
            state=JobState.WAITING,
            available_at=until,
            updated_at=until,
            error_message=why,
        )

    @contextmanager
    def _claim_transaction(self) -> Iterator[sa.Connection]:
        """A write transaction that also releases the MySQL group locks it took."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                # Take the write lock up front: claims are serialized, never upgraded mid-way.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif self.dialect in ("mysql", "mariadb"):
                # Each statement must see what others committed before it (the serial-group
                # check reads after taking the group lock); InnoDB defaults to REPEATABLE
                # READ. This applies to the next transaction only. PostgreSQL's default,
                # READ COMMITTED, already does.
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            conn.info["bgq_locks"] = []
            try:
                yield conn
                conn.commit()
            finally:
                if conn.in_transaction():
                    conn.rollback()
                locks = conn.info.pop("bgq_locks")
                for name in locks:  # session-level locks outlive the transaction on MySQL
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                if locks:
                    conn.commit()

    def _try_lock_group(self, conn: sa.Connection, group: str) -> bool:
        """Lock a serial group until the claim commits; never wait for it.

        PostgreSQL: a transaction advisory lock. MySQL/MariaDB: a named lock (released
        after commit by :meth:`_claim_transaction`). SQLite: ``BEGIN IMMEDIATE`` already
        serializes claims. Keys hash the table name too, so two apps never collide.
        """
        digest = hashlib.sha256((self._group_lock_prefix + group).encode()).digest()
        if self.dialect == "postgresql":
            key = int.from_bytes(digest[:8], "big", signed=True)
            return bool(
                conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar()
            )
        if self.dialect in ("mysql", "mariadb"):
            name = "bgq:" + digest.hex()[:56]
            if conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1:
                conn.info["bgq_locks"].append(name)
                return True
            return False
        return True

    # -- after a claim ------------------------------------------------------------------

    def update_claimed(self, claim: Claim, **values: Any) -> bool:
        """Change a claimed job, if it is still this attempt's; else ``False``."""
        with self.engine.begin() as conn:
            return self._guarded(conn, claim, **values)

    def save_outcome(self, claim: Claim, state: JobState, **values: Any) -> bool:
        """Store an attempt's outcome, if the job is still this attempt's; else ``False``."""
        return self.save_outcomes([(claim, state, values)])[0]

    def save_outcomes(
        self, outcomes: Sequence[tuple[Claim, JobState, dict[str, Any]]]
    ) -> list[bool]:
        """Store several attempts' outcomes in one transaction; which ones were still ours.

        The hot path of every job. Several outcomes go to the server together: one
        ``executemany`` (psycopg sends it as one pipeline, sqlite3 loops in C) or, on
        MySQL/MariaDB, whose driver sends an UPDATE per row, one UPDATE with a ``CASE`` per
        column. When fewer rows match than were sent (a job was taken from this worker
        while it ran), that transaction is rolled back and the outcomes are saved one by
        one, to learn which were still ours. The columns an outcome does not name keep the
        values the claim saw.
        """
        params = [self._outcome_params(c, state, values) for c, state, values in outcomes]
        with self.engine.connect() as conn:
            if len(params) > 1:
                with conn.begin() as transaction:
                    if self._save_many(conn, params) == len(params):
                        return [True] * len(params)
                    transaction.rollback()
            elif self.dialect == "postgresql":  # one statement: it commits by itself
                conn.execution_options(isolation_level="AUTOCOMMIT")
                return [conn.execute(self._save_outcome, params[0]).rowcount == 1]
            with conn.begin():
                return [conn.execute(self._save_outcome, p).rowcount == 1 for p in params]

    @staticmethod
    def _outcome_params(claim: Claim, state: JobState, values: dict[str, Any]) -> dict[str, Any]:
        job = claim.job
        params: dict[str, Any] = {f"v_{c}": None for c in OUTCOME_COLUMNS}
        params.update(v_available_at=job.available_at, v_number_of_attempts=job.number_of_attempts)
        params.update({f"v_{k}": v for k, v in values.items()})
        params.update(v_state=int(state), b_id=job.id, b_attempts=job.number_of_attempts)
        return params

    def _save_many(self, conn: sa.Connection, params: list[dict[str, Any]]) -> int:
        """Save several outcomes with one round trip; how many rows matched."""
        if self.dialect not in ("mysql", "mariadb"):
            return conn.execute(self._save_outcome, params).rowcount
        # A column whose value is the same in every outcome is bound once; the others
        # get a CASE on the id. SQLAlchemy's pymysql dialect counts matched rows.
        first = params[0]
        varying = tuple(n for n in _OUTCOME_PARAMS if any(p[n] != first[n] for p in params))
        stmt = self._save_many_statements.get((len(params), varying))
        if stmt is None:
            if len(self._save_many_statements) >= 256:
                self._save_many_statements.clear()
            stmt = self._build_save_many(len(params), varying)
            self._save_many_statements[(len(params), varying)] = stmt
        bound = {n: first[n] for n in _OUTCOME_PARAMS if n not in varying}
        for k, p in enumerate(params):
            bound[f"id_{k}"] = p["b_id"]
            bound.update((f"{n}_{k}", p[n]) for n in varying)
        return conn.execute(stmt, bound).rowcount

    def _build_save_many(self, n: int, varying: tuple[str, ...]) -> Any:
        t = self.table

        def value(name: str, column: sa.Column[Any]) -> Any:
            if name not in varying:
                return sa.bindparam(name, type_=column.type)
            return sa.case(
                *(
                    (
                        t.c.id == sa.bindparam(f"id_{k}"),
                        sa.bindparam(f"{name}_{k}", type_=column.type),
                    )
                    for k in range(n)
                ),
            )

        return (
            t.update()
            .where(
                t.c.id.in_([sa.bindparam(f"id_{k}") for k in range(n)]),
                t.c.state == JobState.PROCESSING,
                t.c.number_of_attempts == value("b_attempts", t.c.number_of_attempts),
            )
            .values({c: value(f"v_{c}", t.c[c]) for c in ("state", *OUTCOME_COLUMNS)})
        )

    def release(self, claims: Sequence[Claim], now: datetime) -> None:
        """Give back claimed jobs that were not started (the worker is stopping)."""
        t = self.table
        with self.engine.begin() as conn:
            for claim in claims:
                self._guarded(
                    conn,
                    claim,
                    state=claim.previous_state,
                    number_of_attempts=t.c.number_of_attempts - 1,
                    pid=None,
                    hostname=None,
                    heartbeat_at=None,
                    updated_at=now,
                )

    def heartbeat(self, claims: Sequence[Claim], now: datetime) -> None:
        t = self.table
        if not claims:
            return
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id.in_([c.job.id for c in claims]), t.c.state == JobState.PROCESSING)
                .values(heartbeat_at=now)
            )

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
                    sa.select(t.c.id, t.c.hostname, t.c.pid, t.c.number_of_attempts).where(stale)
                )
            )
            reaped = []
            for job_id, host, pid, attempts in lost:
                message = f"worker lost: pid {pid} on {host} stopped without saving the job"
                state = JobState.TEMPORARILY_FAILED
                if max_attempts is not None and attempts >= max_attempts:
                    state = JobState.PERMANENTLY_FAILED
                    message = f"gave up after {attempts} attempts: {message}"
                done = self._transition(
                    conn,
                    job_id,
                    (JobState.PROCESSING,),
                    extra=t.c.heartbeat_at < now - lost_after,
                    state=state,
                    available_at=now,
                    updated_at=now,
                    error_message=message,
                )
                if done:
                    reaped.append(job_id)
        return reaped

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

    # -- broker mode --------------------------------------------------------------------

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
        resend = (JobState.BACK_TO_BROKER, JobState.TEMPORARILY_FAILED, JobState.WAITING)
        due = sa.and_(
            self.in_queue,
            t.c.available_at <= now,
            sa.or_(
                t.c.state.in_(resend),
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

    @property
    def channel(self) -> str:
        """PostgreSQL: the channel a trigger NOTIFYs when jobs are inserted (migration 0005)."""
        return f"bgq_{self.table.name}"

    def clear_finished(self, before: datetime | None) -> int:
        t = self.table
        stmt = t.delete().where(t.c.state.in_(DONE_STATES), self.in_queue)
        if before is not None:
            stmt = stmt.where(t.c.finished_at < before)
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    # -- helpers ------------------------------------------------------------------------

    def _guarded(self, conn: sa.Connection, claim: Claim, **values: Any) -> bool:
        t = self.table
        return self._transition(
            conn,
            claim.job.id,
            (JobState.PROCESSING,),
            extra=t.c.number_of_attempts == claim.job.number_of_attempts,
            **values,
        )

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

    # -- inspection: dashboard and list/show/retry/stats/health commands ---
    #
    # Read-only queries for people, plus the two operator actions (retry, discard). Filters
    # arrive as keyword arguments (see flask_bgqueue.selection.JobFilter.as_kwargs).

    #: States from which an operator may send a job to run now.
    RETRYABLE_STATES = (
        JobState.TEMPORARILY_FAILED,
        JobState.PERMANENTLY_FAILED,
        JobState.WAITING,
        JobState.BROKER_FAILED,
    )
    #: States in which an operator may delete a job (never PROCESSING).
    DISCARDABLE_STATES = (
        JobState.FINISHED,
        JobState.REDUNDANT,
        JobState.PERMANENTLY_FAILED,
        JobState.TEMPORARILY_FAILED,
    )

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
            clauses.append(
                sa.or_(
                    t.c.error_message.icontains(text, autoescape=True),
                    t.c.parameters_json.icontains(text, autoescape=True),
                )
            )
        return sa.and_(*clauses)

    def find_jobs(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        after_id: int | None = None,
        **where: Any,
    ) -> list[Job]:
        """One page of matching jobs, newest first: keyset paging on the primary key.

        ``before_id`` gives the page of older jobs, ``after_id`` the page of newer ones.
        """
        t = self.table
        stmt = sa.select(t).where(self._inspect_where(**where)).limit(limit)
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

    def count_by_state_queue_callback(self) -> list[tuple[JobState, str, str, int]]:
        """How many jobs of this queue are in each (state, queue, callback)."""
        t = self.table
        stmt = (
            sa.select(t.c.state, t.c.queue, t.c.callback_name, sa.func.count())
            .where(self.in_queue)
            .group_by(t.c.state, t.c.queue, t.c.callback_name)
        )
        with self.engine.connect() as conn:
            return [(JobState(s), q, c, int(n)) for s, q, c, n in conn.execute(stmt)]

    def due_summary(self, now: datetime) -> tuple[int, datetime | None]:
        """How many unfinished jobs are due now, and since when the oldest one is."""
        t = self.table
        stmt = sa.select(sa.func.count(), sa.func.min(t.c.available_at)).where(
            t.c.state.in_(PENDING_STATES), self.in_queue, t.c.available_at <= now
        )
        with self.engine.connect() as conn:
            count, oldest = conn.execute(stmt).one()
        return int(count), oldest

    def _minute(self, column: Any) -> Any:
        """The column truncated to its minute (dialect-specific, hence here)."""
        if self.dialect == "postgresql":
            return sa.func.date_trunc("minute", column)
        if self.dialect in ("mysql", "mariadb"):
            return sa.func.date_format(column, "%Y-%m-%d %H:%i:00")
        return sa.func.strftime("%Y-%m-%d %H:%M:00", column)

    def outcomes_per_minute(self, since: datetime) -> list[tuple[str, datetime, int]]:
        """``(kind, minute, n)``: jobs finished, and attempts now failed, since ``since``.

        A failure is counted at the start of its attempt (``last_attempt_at``); a job that
        failed and later finished counts as finished only (there is no history table).
        """
        t = self.table
        finished = self._minute(t.c.finished_at)
        failed = self._minute(t.c.last_attempt_at)
        queries = (
            (
                "finished",
                sa.select(finished, sa.func.count())
                .where(t.c.finished_at >= since, t.c.state == JobState.FINISHED, self.in_queue)
                .group_by(finished),
            ),
            (
                "failed",
                sa.select(failed, sa.func.count())
                .where(
                    t.c.last_attempt_at >= since,
                    t.c.state.in_([JobState.TEMPORARILY_FAILED, JobState.PERMANENTLY_FAILED]),
                    self.in_queue,
                )
                .group_by(failed),
            ),
        )
        result = []
        with self.engine.connect() as conn:
            for kind, stmt in queries:
                for minute, n in conn.execute(stmt):
                    if isinstance(minute, str):
                        minute = datetime.fromisoformat(minute)
                    result.append((kind, minute.replace(tzinfo=None), int(n)))
        return result

    def workers_seen(self, since: datetime) -> list[tuple[str | None, int | None, datetime, Any]]:
        """``(hostname, pid, last attempt, last heartbeat)`` of workers active since ``since``.

        Derived from the jobs: those PROCESSING now and those attempted since ``since``.
        """
        t = self.table
        stmt = (
            sa.select(
                t.c.hostname,
                t.c.pid,
                sa.func.max(t.c.last_attempt_at),
                sa.func.max(t.c.heartbeat_at),
            )
            .where(
                self.in_queue,
                sa.or_(t.c.state == JobState.PROCESSING, t.c.last_attempt_at >= since),
                t.c.last_attempt_at.is_not(None),
            )
            .group_by(t.c.hostname, t.c.pid)
        )
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(stmt)]  # type: ignore[misc]

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

    def older_twin(self, job: Job) -> int | None:
        """The oldest job with this job's identifier and a lower id (unique duplicates)."""
        t = self.table
        stmt = sa.select(sa.func.min(t.c.id)).where(
            t.c.identifier == job.identifier, t.c.id < job.id, self.in_queue
        )
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def group_blocker(self, job: Job) -> int | None:
        """The job of its serial group that ``job`` waits for, as a claim would see it."""
        with self.engine.connect() as conn:
            return self._group_blocker(conn, job)

    def retry_now(self, job_ids: Iterable[int], now: datetime) -> list[int]:
        """Make these jobs READY and due now, each from a state of ``RETRYABLE_STATES``.

        Returns the ids that changed; a job in any other state (or of another queue) is
        left alone. One transaction per 500 jobs keeps locks short.
        """
        ids = list(job_ids)
        changed: list[int] = []
        for start in range(0, len(ids), 500):
            with self.engine.begin() as conn:
                for job_id in ids[start : start + 500]:
                    if self._transition(
                        conn,
                        job_id,
                        self.RETRYABLE_STATES,
                        extra=self.in_queue,
                        state=JobState.READY,
                        available_at=now,
                        updated_at=now,
                    ):
                        changed.append(job_id)
        return changed

    def retryable_ids(self, *, max_id: int | None = None, **where: Any) -> list[int]:
        """Ids of matching jobs in a retryable state (up to ``max_id``), oldest first."""
        t = self.table
        states = [s for s in where.pop("states", ()) or self.RETRYABLE_STATES]
        states = [s for s in states if s in self.RETRYABLE_STATES]
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
                    t.c.id == job_id, t.c.state.in_(self.DISCARDABLE_STATES), self.in_queue
                )
                if conn.execute(stmt).rowcount == 1:
                    deleted.append(job_id)
        return deleted


def _claimed(attempts: Any, now: Any, pid: Any, hostname: Any) -> dict[str, Any]:
    """The columns a claim sets, for both claim statements (SQL expressions) and for the
    claimed job's snapshot (values)."""
    return {
        "state": JobState.PROCESSING,
        "number_of_attempts": attempts + 1,
        "last_attempt_at": now,
        "heartbeat_at": now,
        "updated_at": now,
        "pid": pid,
        "hostname": hostname,
    }


def _fast_sqlite_datetime(process: Any) -> Any:
    """SQLite's datetime bind processor, or the same text from ``isoformat`` (4x faster).

    Used only when both give the same text for sample values, so stored times compare
    exactly as SQLAlchemy's own do.
    """

    def fast(value: datetime) -> str:
        return value.isoformat(" ", "microseconds")

    samples = (datetime(2026, 1, 2, 3, 4, 5, 6), datetime(2026, 12, 31), datetime(1999, 9, 9, 9, 9))
    if process is not None and all(process(v) == fast(v) for v in samples):
        return fast
    return process


def _literal_states(states: Sequence[JobState]) -> Any:
    """States rendered as literals: PostgreSQL uses the partial index ix_<table>_claim only
    when it can see that the query's states fall inside the index's."""
    return sa.bindparam(
        "bgq_states", [int(s) for s in states], expanding=True, literal_execute=True
    )
