"""The fast path: SQL sent straight to the driver's cursor, when nothing watches the engine.

SQLAlchemy's execution path costs more than the round trip of a one-row INSERT, so the
store's hottest statements (publishing, the broker's delivered claim) go to the DBAPI
cursor of a pooled connection, in SQL written once. When the engine has cursor listeners
(query recording, tracing), they go through SQLAlchemy instead, so that those listeners see
them. :class:`Driver` is the only part of the store that touches DBAPI connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import False_

from ..models import JobState
from .dialects import Dialect
from .pooling import note_pooler_error

#: What this module uses of SQLAlchemy beyond its documented API, or reaches by name on
#: objects it does not create, by owner; tests/test_store_paths.py checks each one exists.
SQLALCHEMY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "sqlalchemy.types.TypeEngine": ("_cached_bind_processor",),
    "sqlalchemy.pool.base._ConnectionFairy": ("_close_special", "driver_connection", "invalidate"),
    "sqlalchemy.engine.default.DefaultDialect": (
        "postfetch_lastrowid",
        "insert_returning",
        "is_disconnect",
        "loaded_dbapi",
        "identifier_preparer",
        "paramstyle",
    ),
    "sqlalchemy.engine.events.ConnectionEvents": ("before_cursor_execute", "after_cursor_execute"),
    "sqlalchemy.exc.DBAPIError": ("instance",),
    "sqlalchemy.sql.compiler.SQLCompiler": ("construct_params",),
}


class _ResultCursor:
    """The part of a DBAPI cursor the store uses, on a SQLAlchemy connection."""

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
class Prepared:
    """A statement, its SQL in the driver's paramstyle, and its constant parameters."""

    statement: Any
    sql: str
    constants: dict[str, Any]


class Driver:
    """Straight-to-the-driver SQL for one table, or SQLAlchemy when the engine is watched."""

    def __init__(self, engine: sa.Engine, table: sa.Table, dialect: Dialect) -> None:
        self.engine = engine
        self.table = table
        self._autocommit_single = dialect.autocommit_single_statement
        self._from_arrays = dialect.inserts_from_arrays
        self._insert_cache: dict[tuple[Any, ...], str] = {}
        #: Columns an INSERT leaves out when every row has this value, what the database
        #: stores then anyway: NULL in a nullable column without a server default, false
        #: in a boolean whose server default is false. Most jobs set none of them.
        self._left_out: dict[str, Any] = {}
        for c in table.columns:
            if c.nullable and c.server_default is None:
                self._left_out[c.name] = None
            elif isinstance(getattr(c.server_default, "arg", None), False_):
                self._left_out[c.name] = False
        #: The column names a prepared statement's rows have, learnt at its first run
        #: (the driver builds its ``description`` anew at each: dear for 36 columns).
        self._row_names: dict[str, tuple[str, ...]] = {}
        processors: dict[str, Any] = {
            c.name: c.type._cached_bind_processor(engine.dialect) for c in table.columns
        }
        if dialect.binds_datetimes_as_text:
            for c in table.columns:
                if isinstance(c.type, sa.DateTime):
                    processors[c.name] = _fast_text_datetime(processors[c.name])
        self._bind_processors = processors

    def instrumented(self) -> bool:
        """Whether the engine has cursor listeners (query recording, tracing)."""
        dispatch = self.engine.dispatch
        return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)

    def transaction(self, single_statement: bool = False) -> AbstractContextManager[Any]:
        """A DBAPI-like cursor, committed on success: the driver's own, or one on a
        SQLAlchemy connection when the engine has cursor listeners.

        ``single_statement``: the caller sends one statement only (see
        :meth:`_raw_transaction`).
        """
        dispatch = self.engine.dispatch  # instrumented(), inline: this is every publish
        if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
            return self._sqlalchemy_transaction()
        return self._raw_transaction(single_statement)

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
        autocommit = single_statement and self._autocommit_single
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
            note_pooler_error(exc)
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

    def insert(
        self, rows: Sequence[dict[str, Any]], returning: bool
    ) -> tuple[str, tuple[Any, ...]]:
        """An ``INSERT`` of ``rows`` in the driver's own SQL and parameters.

        The SQL is written once per number of rows and columns; each value goes through its
        column type's bind processor, as SQLAlchemy would send it.
        """
        columns = self._written(rows)
        if self._from_arrays and len(rows) > 1:
            return self._insert_from_arrays(rows, columns, returning)
        key = (len(rows), columns, returning)
        sql = self._insert_cache.get(key)
        if sql is None:
            quote = self.engine.dialect.identifier_preparer.quote
            mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
            one = "(" + ", ".join(mark for _ in columns) + ")"
            sql = (
                f"INSERT INTO {quote(self.table.name)} ({', '.join(quote(c) for c in columns)})"
                f" VALUES {', '.join(one for _ in rows)}{' RETURNING id' if returning else ''}"
            )
            self._insert_cache[key] = sql
        processors = [(c, self._bind_processors[c]) for c in columns]
        params = []
        for row in rows:
            for column, process in processors:
                value = row[column]
                params.append(value if process is None or value is None else process(value))
        return sql, tuple(params)

    def _written(self, rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
        """The columns of ``rows`` an INSERT must name: all but those every row leaves at
        what the database stores anyway."""
        left_out = self._left_out
        return tuple(
            column
            for column, value in rows[0].items()
            if column not in left_out
            or value is not left_out[column]
            or any(row[column] is not value for row in rows)
        )

    def _insert_from_arrays(
        self, rows: Sequence[dict[str, Any]], columns: tuple[str, ...], returning: bool
    ) -> tuple[str, tuple[Any, ...]]:
        """``INSERT ... SELECT ... FROM unnest(%s::type[], ...)``: one array per column.

        The same SQL (and so one server-side prepared statement) for any number of rows, and
        a handful of parameters instead of one per value: the server parses and plans it
        once. ``unnest`` yields the arrays' elements in order, so the ids come in row order.
        A column with one value in every row (the state, the callback, the times of a bulk
        …) is sent once, as a scalar: building an array is most of the cost on this side.
        """
        params: list[Any] = []
        varying: list[bool] = []
        for column in columns:
            process = self._bind_processors[column]
            values = [row[column] for row in rows]
            if process is not None:
                values = [v if v is None else process(v) for v in values]
            same = values.count(values[0]) == len(values)
            varying.append(not same)
            params.append(values[0] if same else values)
        if not any(varying):  # one array is needed for the number of rows
            varying[0] = True
            params[0] = [params[0]] * len(rows)
        key = ("arrays", columns, returning, tuple(varying))
        sql = self._insert_cache.get(key)
        if sql is None:
            dialect = self.engine.dialect
            quote = dialect.identifier_preparer.quote
            types = [self.table.c[c].type.compile(dialect=dialect) for c in columns]
            kinds = list(zip(types, varying, strict=True))
            picks = [f"u.a{i}" if v else f"%b::{t}" for i, (t, v) in enumerate(kinds)]
            arrays = [f"%b::{t}[]" for t, v in kinds if v]
            names = [f"a{i}" for i, (_, v) in enumerate(kinds) if v]
            sql = (
                f"INSERT INTO {quote(self.table.name)} ({', '.join(quote(c) for c in columns)})"
                f" SELECT {', '.join(picks)}"
                f" FROM unnest({', '.join(arrays)}) AS u({', '.join(names)})"
                f"{' RETURNING id' if returning else ''}"
            )
            self._insert_cache[key] = sql
        # The scalars come first in the SQL (in the select list), then the arrays.
        pairs = list(zip(params, varying, strict=True))
        return sql, tuple([p for p, v in pairs if not v] + [p for p, v in pairs if v])

    def prepare(self, statement: Any, variable: Sequence[str]) -> Prepared:
        """Compile ``statement`` once; ``variable`` names the parameters each call gives."""
        compiled = statement.compile(dialect=self.engine.dialect)
        values = compiled.construct_params(dict.fromkeys(variable))
        constants = {
            k: int(v) if isinstance(v, JobState) else v
            for k, v in values.items()
            if k not in variable
        }
        return Prepared(statement, str(compiled), constants)

    def execute_one(
        self, prepared: Prepared, params: dict[str, Any]
    ) -> Sequence[Mapping[Any, Any]]:
        """Run one prepared statement in autocommit mode; its rows as mappings.

        One statement commits by itself, without a COMMIT round trip. Straight to the
        driver in the SQL compiled once, or through SQLAlchemy when cursor listeners must
        see it.
        """
        if self.instrumented():
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                return [r._mapping for r in conn.execute(prepared.statement, params)]
        with self._raw_transaction(single_statement=True) as cursor:
            cursor.execute(prepared.sql, {**prepared.constants, **params})
            names = self._row_names.get(prepared.sql)
            if names is None:
                names = tuple(d.name for d in cursor.description)
                self._row_names[prepared.sql] = names
            return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def _fast_text_datetime(process: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
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
