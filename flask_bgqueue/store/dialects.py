"""Every difference between the databases, one class per backend.

The other store modules ask the :class:`Dialect` of their engine (from :func:`dialect_for`)
and never test its name: how a claim's transaction starts, how a serial group is locked,
whether rows are locked with ``SKIP LOCKED``, how counts are added to an existing row, how
new jobs are awaited. The engine-level settings of SQLite (WAL, busy timeout) live here
too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..models import RUNNABLE_STATES, JobState
from .pooling import Listener, listen

#: How long SQLite waits for another connection's write lock, in seconds.
SQLITE_BUSY_TIMEOUT_SECONDS = 30


def lock_key(name: str) -> int:
    """A 64-bit signed key for ``name`` (PostgreSQL advisory locks take a ``bigint``)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lock_name(name: str) -> str:
    """A MySQL lock name for ``name``: at most 64 characters whatever the name's length."""
    return "bgq:" + hashlib.sha256(name.encode()).hexdigest()[:56]


class Dialect:
    """What a database without special support gets; the backends below override it."""

    #: A one-statement write runs in autocommit mode: one round trip, not two.
    autocommit_single_statement = False
    #: :meth:`Store.claim_delivered` claims plain delivered jobs in one statement.
    claims_delivered_in_one_statement = False
    #: Datetimes are bound as ISO text (SQLite), which the driver may write faster.
    binds_datetimes_as_text = False
    #: Several rows go in as one ``INSERT ... SELECT * FROM unnest(arrays)``: one array
    #: parameter per column, whatever the number of rows (PostgreSQL).
    inserts_from_arrays = False
    #: How a broker-less consumer learns of new jobs.
    wakeup = "polling"
    #: :meth:`estimate_rows` answers from the database's statistics.
    estimates_rows = False
    #: :meth:`estimate_rows` never says more than half the table (InnoDB's index dives).
    estimates_at_most_half = False

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def is_conflict(self, error: BaseException) -> bool:
        """Whether the driver's ``error`` says the database ended the transaction to break
        a deadlock (rolled back whole: it may run again). None without such errors."""
        return False

    def begin_claim(self, conn: sa.Connection) -> None:
        """Prepare the connection for a claim's transaction (before its first statement)."""

    def end_claim(self, conn: sa.Connection) -> None:
        """Release what the claim held beyond its transaction (after commit or rollback)."""

    def try_lock_group(self, conn: sa.Connection, name: str) -> bool:
        """Lock a serial group until the claim commits; never wait for it."""
        return True

    def lock_for_claim(self, select: sa.Select[Any]) -> sa.Select[Any]:
        """The claim's SELECT, locking the rows it reads and skipping locked ones."""
        return select.with_for_update(skip_locked=True)

    def claim_order(
        self, table: sa.Table, any_job: bool, states: Sequence[JobState]
    ) -> tuple[list[Any], list[Any]]:
        """Extra WHERE clauses and the ORDER BY of a claim: priority, then id."""
        return [], [table.c.priority, table.c.id]

    def save_many(
        self,
        conn: sa.Connection,
        statement: Any,
        table: sa.Table,
        params: list[dict[str, Any]],
        columns: Sequence[str],
    ) -> int:
        """Save several outcomes with one round trip (``executemany``); how many matched.

        psycopg sends an ``executemany`` as one pipeline, sqlite3 loops in C.
        """
        return conn.execute(statement, params).rowcount

    def ensure_statistics(self, table_name: str) -> bool:
        """Analyze the job table if it never was; only PostgreSQL needs it."""
        return False

    #: The INSERT construct with ``on_conflict_do_update`` (SQLite's, PostgreSQL's).
    _upserting_insert: Callable[[sa.Table], Any] = staticmethod(sqlite.insert)

    def adding_insert(self, table: sa.Table, added: Sequence[str]) -> Any:
        """An INSERT of rows that, where a row with the same primary key is there, adds
        their ``added`` columns to that row's instead (SQLite 3.24+ and PostgreSQL:
        ``ON CONFLICT DO UPDATE``)."""
        insert: Any = self._upserting_insert(table)
        return insert.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={c: table.c[c] + insert.excluded[c] for c in added},
        )

    def estimate_rows(self, conn: sa.Connection, select: sa.Select[Any]) -> int | None:
        """How many rows ``select`` would return, from the database's statistics (never
        by reading them); ``None`` where the database gives no such estimate (SQLite)."""
        return None

    def table_rows(self, conn: sa.Connection, table_name: str) -> int | None:
        """The database's estimate of the rows of a whole table (``None``: none kept)."""
        return None

    def max_statement_bytes(self) -> int | None:
        """The largest statement the server takes, where it has a small limit."""
        return None

    def listener(
        self, channel: str, interval: float, listen_engine: sa.Engine | None, pooled: bool
    ) -> Listener:
        """An object that waits for new jobs: here a plain timed wait."""
        return Listener(interval)

    def wakeup_mode(self, listen_engine: sa.Engine | None, pooled: bool) -> str:
        """How a broker-less consumer learns of new jobs, in words."""
        return self.wakeup


class SQLite(Dialect):
    binds_datetimes_as_text = True

    def begin_claim(self, conn: sa.Connection) -> None:
        # Take the write lock up front: claims are serialized, never upgraded mid-way.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    def lock_for_claim(self, select: sa.Select[Any]) -> sa.Select[Any]:
        return select  # no row locks: BEGIN IMMEDIATE holds the database's write lock


class PostgreSQL(Dialect):
    wakeup = "LISTEN/NOTIFY"
    estimates_rows = True
    autocommit_single_statement = True
    claims_delivered_in_one_statement = True
    inserts_from_arrays = True
    _upserting_insert: Callable[[sa.Table], Any] = staticmethod(postgresql.insert)

    def is_conflict(self, error: BaseException) -> bool:
        # psycopg: deadlock_detected, or serialization_failure
        return getattr(error, "sqlstate", None) in ("40P01", "40001")

    def try_lock_group(self, conn: sa.Connection, name: str) -> bool:
        """A transaction advisory lock; keys hash the table name too, so two apps never
        collide."""
        return bool(
            conn.execute(
                sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key(name)}
            ).scalar()
        )

    def ensure_statistics(self, table_name: str) -> bool:
        """``ANALYZE`` the job table if it never was; return whether it ran.

        Until autovacuum first analyzes a new table (once it has seen enough changes, up
        to a minute later) the planner has no statistics and takes it for a few rows:
        every claim then reads and sorts all runnable jobs instead of walking the claim
        index. A burst of jobs on a fresh table is when that costs most, so workers
        analyze a table that never was when they start.
        """
        name = self.engine.dialect.identifier_preparer.quote(table_name)
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

    def estimate_rows(self, conn: sa.Connection, select: sa.Select[Any]) -> int | None:
        """The planner's row estimate (from ``ANALYZE``'s statistics, which autovacuum
        keeps fresh): ``EXPLAIN`` plans the query without running it."""
        plan: Any = _explain(conn, "EXPLAIN (FORMAT JSON) ", select).scalar()
        if isinstance(plan, str):
            plan = json.loads(plan)
        return int(plan[0]["Plan"]["Plan Rows"])

    def listener(
        self, channel: str, interval: float, listen_engine: sa.Engine | None, pooled: bool
    ) -> Listener:
        """``LISTEN`` on the channel a trigger NOTIFYs when jobs are inserted (migration 0005).

        On ``listen_engine`` when given (a direct connection while the queue's own go
        through a pooler). Through a pooler in transaction mode ``LISTEN`` lands on a server
        connection that is handed to other clients between statements: this client never
        hears a notification. So with ``pooled`` and no ``listen_engine`` there is no
        ``LISTEN`` at all, only polling; and every new ``LISTEN`` connection first sends
        itself a notification (on a channel of its own) and falls back to polling, with a
        warning, when it does not hear it.
        """
        if pooled and listen_engine is None:
            return Listener(interval)
        return listen(listen_engine or self.engine, self.engine, channel, interval)

    def wakeup_mode(self, listen_engine: sa.Engine | None, pooled: bool) -> str:
        if listen_engine is not None:
            url = listen_engine.url
            return f"LISTEN/NOTIFY on {url.host}:{url.port or 5432}/{url.database}"
        if pooled:
            return "polling (transaction pooling, no BGQUEUE_LISTEN_DATABASE_URI)"
        return self.wakeup


class MySQL(Dialect):
    """MySQL and MariaDB."""

    estimates_rows = True
    # InnoDB caps an index range's estimate at half the table's rows.
    estimates_at_most_half = True

    def is_conflict(self, error: BaseException) -> bool:
        # ER_LOCK_DEADLOCK: "Deadlock found when trying to get lock"
        args: tuple[Any, ...] = getattr(error, "args", ())
        return bool(args) and args[0] == 1213

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self._save_many_statements: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._max_packet: int | None = None

    def adding_insert(self, table: sa.Table, added: Sequence[str]) -> Any:
        insert = mysql.insert(table)  # ON DUPLICATE KEY UPDATE
        return insert.on_duplicate_key_update({c: table.c[c] + insert.inserted[c] for c in added})

    def max_statement_bytes(self) -> int | None:
        """The server's ``max_allowed_packet`` (16 MiB by default on MariaDB), read once: a
        larger statement makes it close the connection ("server has gone away")."""
        if self._max_packet is None:
            with self.engine.connect() as conn:
                value = conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
            self._max_packet = int(value or 16 * 1024 * 1024)
        return self._max_packet

    def begin_claim(self, conn: sa.Connection) -> None:
        # Each statement must see what others committed before it (the serial-group
        # check reads after taking the group lock); InnoDB defaults to REPEATABLE
        # READ. This applies to the next transaction only. PostgreSQL's default,
        # READ COMMITTED, already does.
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        conn.info["bgq_locks"] = []

    def end_claim(self, conn: sa.Connection) -> None:
        locks = conn.info.pop("bgq_locks")
        for name in locks:  # session-level locks outlive the transaction on MySQL
            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
        if locks:
            conn.commit()

    def try_lock_group(self, conn: sa.Connection, name: str) -> bool:
        """A named lock, released after commit by :meth:`end_claim`."""
        lock = lock_name(name)
        if conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": lock}).scalar() == 1:
            conn.info["bgq_locks"].append(lock)
            return True
        return False

    def claim_order(
        self, table: sa.Table, any_job: bool, states: Sequence[JobState]
    ) -> tuple[list[Any], list[Any]]:
        if not (any_job and set(states) == set(RUNNABLE_STATES)):
            return super().claim_order(table, any_job, states)
        # The runnable jobs' index (migration 0006) yields them in claim order, so the
        # claim reads, and locks, only the rows it takes; not the whole backlog. (A claim
        # of some runnable states only, BROKER_FAILED in broker mode, reads those
        # through ix_<table>_due instead of walking every runnable job.)
        claim_priority: Any = sa.literal_column("bgq_claim_priority")
        return [claim_priority.is_not(None)], [claim_priority, table.c.id]

    def estimate_rows(self, conn: sa.Connection, select: sa.Select[Any]) -> int | None:
        """InnoDB's estimate of the rows the chosen index range holds (a few index dives),
        times the share its other conditions are expected to keep (``filtered``, MySQL;
        MariaDB's plain ``EXPLAIN`` has no such column)."""
        row = _explain(conn, "EXPLAIN ", select).mappings().first()
        if row is None or row.get("rows") is None:
            return None
        return round(int(row["rows"]) * float(row.get("filtered") or 100) / 100)

    def table_rows(self, conn: sa.Connection, table_name: str) -> int | None:
        """InnoDB's estimate of the table's rows (from its sampled statistics)."""
        stmt = sa.text(
            "SELECT table_rows FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name = :name"
        )
        rows = conn.execute(stmt, {"name": table_name}).scalar()
        return None if rows is None else int(rows)

    def save_many(
        self,
        conn: sa.Connection,
        statement: Any,
        table: sa.Table,
        params: list[dict[str, Any]],
        columns: Sequence[str],
    ) -> int:
        """One UPDATE with a ``CASE`` per column: the driver would send an UPDATE per row.

        A column whose value is the same in every outcome is bound once; the others get a
        CASE on the id. SQLAlchemy's pymysql dialect counts matched rows.
        """
        names = (*(f"v_{c}" for c in columns), "b_attempts")
        first = params[0]
        varying = tuple(n for n in names if any(p[n] != first[n] for p in params))
        stmt = self._save_many_statements.get((len(params), varying))
        if stmt is None:
            if len(self._save_many_statements) >= 256:
                self._save_many_statements.clear()
            stmt = _case_update(table, len(params), varying, columns)
            self._save_many_statements[(len(params), varying)] = stmt
        bound = {n: first[n] for n in names if n not in varying}
        for k, p in enumerate(params):
            bound[f"id_{k}"] = p["b_id"]
            bound.update((f"{n}_{k}", p[n]) for n in varying)
        return conn.execute(stmt, bound).rowcount


def _case_update(t: sa.Table, n: int, varying: tuple[str, ...], columns: Sequence[str]) -> Any:
    """The outcome UPDATE of ``n`` jobs, a ``CASE`` on the id for each varying value."""

    def value(name: str, column: sa.Column[Any]) -> Any:
        if name not in varying:
            return sa.bindparam(name, type_=column.type)
        return sa.case(
            *(
                (t.c.id == sa.bindparam(f"id_{k}"), sa.bindparam(f"{name}_{k}", type_=column.type))
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
        .values({c: value(f"v_{c}", t.c[c]) for c in columns})
    )


def _explain(conn: sa.Connection, prefix: str, select: sa.Select[Any]) -> sa.CursorResult[Any]:
    """``prefix`` + ``select`` sent as the driver's SQL with its bound parameters."""
    compiled = select.compile(dialect=conn.dialect)
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = tuple(params[name] for name in compiled.positiontup)
    return conn.exec_driver_sql(prefix + str(compiled), params)


def dialect_for(engine: sa.Engine) -> Dialect:
    """The :class:`Dialect` of the engine's database."""
    name = engine.dialect.name
    if name == "postgresql":
        return PostgreSQL(engine)
    if name in ("mysql", "mariadb"):
        return MySQL(engine)
    if name == "sqlite":
        return SQLite(engine)
    return Dialect(engine)


# -- engine settings ------------------------------------------------------------------------


def engine_options(
    url: sa.URL, options: Mapping[str, Any], network_timeout: float | None = None
) -> dict[str, Any]:
    """``create_engine`` options for the queue's private engine: SQLite waits for another
    process's write lock, and an in-memory database keeps its one connection; a server
    that does not answer a connection attempt within ``network_timeout`` seconds fails it
    (libpq's and the MySQL drivers' ``connect_timeout``), unless the options say otherwise."""
    options = dict(options)
    backend = url.get_backend_name()
    if network_timeout is not None and backend in _CONNECT_TIMEOUT_BACKENDS:
        connect_args = options.setdefault("connect_args", {})
        connect_args.setdefault("connect_timeout", max(2, math.ceil(network_timeout)))
    if backend == "sqlite":
        options.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_SECONDS)
        if url.database in (None, "", ":memory:"):
            options.setdefault("poolclass", sa.StaticPool)
    return options


def shareable_url(engine: sa.Engine) -> str | None:
    """The URL another process opens the same database with (password included), or
    ``None`` for an in-memory SQLite database, which no other process can reach."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return None
    return url.render_as_string(hide_password=False)


def prepare_engine(engine: sa.Engine, network_timeout: float | None = None) -> None:
    """Settings the queue needs on its engine, private or shared with the application (a
    bind).

    SQLite: wait for another process's write instead of failing at once with "database is
    locked". Set on checkout, not connect: the bind's pool may already hold connections.

    A server over TCP: a network that goes silent (a partition, a host gone, a firewall
    dropping packets) fails a connection's call within about ``network_timeout`` seconds
    instead of the kernel's ~15 minutes, so a worker notices, says so and rides it out.
    Each new connection's socket gets keepalives and ``TCP_USER_TIMEOUT`` (Linux): a
    request the server never acknowledges, or a server that stops answering keepalive
    probes while a query runs, ends the connection. A slow query on a healthy network is
    not cut (the server's kernel answers the probes).
    """
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine.pool, "checkout", _sqlite_busy_timeout)
    bound_network_waits(engine, network_timeout)


def bound_network_waits(engine: sa.Engine, network_timeout: float | None) -> None:
    """Fail a call on a silent network within about ``network_timeout`` seconds (see
    :func:`prepare_engine`); ``None`` leaves the kernel's defaults."""
    if network_timeout is not None and engine.dialect.name != "sqlite":
        sa.event.listen(engine.pool, "connect", functools.partial(_bound_waits, network_timeout))


#: The backends whose drivers take ``connect_timeout`` (seconds) as a connect argument.
_CONNECT_TIMEOUT_BACKENDS = ("postgresql", "mysql", "mariadb")


def _bound_waits(seconds: float, dbapi_connection: Any, *_: Any) -> None:
    """Keepalives and ``TCP_USER_TIMEOUT`` on a new connection's TCP socket (see
    :func:`prepare_engine`); nothing for a Unix socket or a driver that hides its socket."""
    fd = _socket_fd(dbapi_connection)
    if fd is None:
        return
    sock = socket.socket(fileno=os.dup(fd))  # the options are the shared socket's
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        idle = max(1, math.ceil(seconds / 3))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", idle),
            ("TCP_KEEPCNT", 3),
            ("TCP_USER_TIMEOUT", math.ceil(seconds * 1000)),
        ):
            if hasattr(socket, name):  # Linux has them all; other systems some
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    finally:
        sock.close()


def _socket_fd(dbapi_connection: Any) -> int | None:
    """The file descriptor of a DBAPI connection's socket: psycopg and psycopg2 say it
    (``fileno()``), PyMySQL keeps its socket in ``_sock``."""
    fileno = getattr(dbapi_connection, "fileno", None)
    if callable(fileno):
        try:
            return int(fileno())
        except Exception:
            return None
    sock = getattr(dbapi_connection, "_sock", None)
    return sock.fileno() if isinstance(sock, socket.socket) else None


def _sqlite_busy_timeout(dbapi_connection: Any, *_: Any) -> None:
    dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")


def enable_wal(engine: sa.Engine, logger: logging.Logger) -> None:
    """SQLite on a file: switch to WAL mode (persistent per file), so readers never block
    the writer. Other databases, and in-memory SQLite: nothing."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    except sa.exc.OperationalError as exc:  # another connection is writing right now
        logger.info("bgqueue: SQLite WAL mode not set (%s); rollback journal kept", exc)
