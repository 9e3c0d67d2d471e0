"""Versioned migrations of the job table, applied with Alembic under a database lock.

The revisions live in ``versions/`` and read the table name from the migration context
(``op.get_context().opts["bgqueue_table"]``), so one set of migrations serves any
``BGQUEUE_TABLE_NAME``. Their version is kept in a table of their own,
``<table>_alembic_version``, so they never mix with the application's Alembic history.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..exceptions import SchemaError, SchemaLockTimeout
from ..models import owned_table_names
from ..store.dialects import lock_key

#: The newest revision in ``versions/`` (a test checks it against Alembic's view), so that a
#: process whose table is up to date never needs to import Alembic.
HEAD_REVISION = "0011"


def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).parent))


def head_revision() -> str:
    """The newest revision this version of Flask-BgQueue knows."""
    return HEAD_REVISION


def version_table(table_name: str) -> str:
    return f"{table_name}_alembic_version"


def current_revision(connection: sa.Connection, table_name: str) -> str | None:
    """The revision the database is at, ``None`` for a database without the table."""
    table = sa.table(version_table(table_name), sa.column("version_num"))
    if not sa.inspect(connection).has_table(table.name):
        return None
    return connection.execute(sa.select(table.c.version_num)).scalar()


def upgrade(engine: sa.Engine, table_name: str, revision: str = "head") -> bool:
    """Bring the table to ``revision``; return whether anything was run.

    Safe when several processes start at once: the first takes a lock, the others wait
    for it and then find nothing left to do.
    """
    with engine.connect() as connection:
        if revision == "head" and current_revision(connection, table_name) == head_revision():
            connection.rollback()
            return False
        connection.rollback()
        with _schema_lock(connection, table_name):
            start = current_revision(connection, table_name)
            target = head_revision() if revision == "head" else revision
            if start == target:
                return False
            if start is None:
                _refuse_leftovers(connection, table_name)

            from alembic.migration import MigrationContext
            from alembic.operations import Operations

            scripts = _scripts()

            def steps(rev, context):  # type: ignore[no-untyped-def]
                return scripts._upgrade_revs(target, rev)

            context = MigrationContext.configure(
                connection,
                opts={
                    "version_table": version_table(table_name),
                    "fn": steps,
                    "bgqueue_table": table_name,
                    "transaction_per_migration": False,
                },
            )
            with Operations.context(context):
                context.run_migrations()
        return True


def _refuse_leftovers(connection: sa.Connection, table_name: str) -> None:
    """Without a version table the migrations start from nothing and would fail half-way on
    a table they create that is already there (left from an earlier install, or one of
    them dropped by hand): say which, and how to start afresh, before touching anything."""
    inspector = sa.inspect(connection)
    found = [t for t in owned_table_names(table_name) if inspector.has_table(t)]
    if found:
        raise SchemaError(
            f"the job table {table_name!r} has no version table"
            f" ({version_table(table_name)!r}), yet {', '.join(map(repr, found))} exist"
            f"{'s' if len(found) == 1 else ''}: left from an earlier install, or part of"
            " one dropped by hand. The schema cannot be created over it. Drop"
            f" {' and '.join(found)} to start afresh (their jobs, schedules and chart counts"
            " are lost),"
            " or restore the version table."
        )


@contextmanager
def _schema_lock(connection: sa.Connection, table_name: str) -> Iterator[None]:
    """Hold a database-wide lock for the table's migrations, then commit them.

    PostgreSQL: a transaction-level advisory lock, and the DDL commits with it.
    MySQL/MariaDB: a named lock (``GET_LOCK``); DDL commits by itself there.
    SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock for the whole upgrade.
    """
    dialect = connection.dialect.name
    name = f"bgqueue-schema-{table_name}"
    if dialect == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})
        yield
        connection.commit()
    elif dialect in ("mysql", "mariadb"):
        got = connection.execute(sa.text("SELECT GET_LOCK(:n, 300)"), {"n": name}).scalar()
        if got != 1:
            raise SchemaLockTimeout(
                f"waited 300 s for the schema lock {name!r}: another process is upgrading the"
                " job table (or died holding the lock in a session still open); try again."
            )
        try:
            yield
            connection.commit()
        finally:
            connection.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
            connection.commit()
    elif dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield
        connection.commit()
    else:
        yield
        connection.commit()
