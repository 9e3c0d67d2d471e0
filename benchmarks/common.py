"""Helpers shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa

HERE = os.path.dirname(os.path.abspath(__file__))

#: The benchmarks' own databases (made by ``scripts/services.sh start``), never the test
#: suite's: a benchmark next to a test run would otherwise share its database.
SERVER_URLS = {
    "postgresql": os.environ.get(
        "BGQUEUE_BENCH_POSTGRES_URL",
        "postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:5432/bgqueue_bench",
    ),
    "mysql": os.environ.get(
        "BGQUEUE_BENCH_MYSQL_URL", "mysql+pymysql://bgqueue:bgqueue@127.0.0.1:3306/bgqueue_bench"
    ),
}
AMQP_URL = os.environ.get("BGQUEUE_BENCH_AMQP_URL", "amqp://bgqueue:bgqueue@127.0.0.1:5672/%2F")
TEST_DATABASES = {"bgqueue_test"} | {
    sa.engine.make_url(os.environ[k]).database or ""
    for k in ("BGQUEUE_TEST_POSTGRES_URL", "BGQUEUE_TEST_MYSQL_URL")
    if os.environ.get(k)
}


def check_not_test_database(url: str) -> str:
    """``url``, unless it names the test suite's database (then exit saying what to do)."""
    name = sa.engine.make_url(url).database
    if name in TEST_DATABASES:
        raise SystemExit(
            f"benchmarks: {sa.engine.make_url(url).render_as_string(hide_password=True)} is"
            " the test suite's database; benchmark on a database of its own"
            " (BGQUEUE_BENCH_POSTGRES_URL / BGQUEUE_BENCH_MYSQL_URL, default bgqueue_bench,"
            " made by scripts/services.sh start)."
        )
    return url


DATABASES = ("sqlite", "postgresql", "mysql")


def log(*args: Any) -> None:
    """Progress goes to stderr; stdout is the JSON document only."""
    print(*args, file=sys.stderr, flush=True)


def parse_args(description: str, extra: Any = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--databases",
        default=",".join(DATABASES),
        help="comma-separated subset of sqlite,postgresql,mysql (default: all three)",
    )
    parser.add_argument("--jobs", type=int, default=10000, help="jobs per run (default 10000)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = sorted(set(args.databases) - set(DATABASES))
    if unknown:
        parser.error(f"unknown database(s) {unknown}; choose from {', '.join(DATABASES)}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    return args


def new_table_name(suffix: str = "") -> str:
    """A fresh ``bench_<random>`` table name (BGQUEUE_TABLE_NAME allows 40 characters)."""
    return f"bench_{uuid.uuid4().hex[:10]}{suffix}"


@contextmanager
def database(name: str) -> Iterator[str]:
    """The URL to benchmark on: a SQLite file in a temp dir, or the local server."""
    if name == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bgq-bench-sqlite-") as tmp:
            yield f"sqlite:///{os.path.join(tmp, 'jobs.db')}"
    else:
        yield check_not_test_database(SERVER_URLS[name])


def drop_tables(url: str, tables: list[str]) -> None:
    """Drop the job tables and what the library made with each: its version table, its
    schedule and throughput tables and, on PostgreSQL, its trigger's function."""
    from flask_bgqueue import schema
    from flask_bgqueue.models import owned_table_names

    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            quote = conn.dialect.identifier_preparer.quote
            for t in tables:
                for name in (*owned_table_names(t), schema.version_table(t)):
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(name)}")
                if conn.dialect.name == "postgresql":  # made by migration 0005
                    conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {quote(f'{t}_notify')}()")
    finally:
        engine.dispose()


def sql_datetime(engine: sa.Engine, value: datetime) -> Any:
    """A datetime as SQLAlchemy hands it to the driver (SQLite: its text format)."""
    if engine.dialect.name == "sqlite":
        return value.isoformat(sep=" ", timespec="microseconds")
    return value


def paramstyle_marker(engine: sa.Engine) -> str:
    return "?" if engine.dialect.paramstyle == "qmark" else "%s"


def environment(engine_by_db: dict[str, sa.Engine]) -> dict[str, Any]:
    """Versions and durability settings, so figures can be compared across machines."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "cpus": os.cpu_count(),
    }
    for db, engine in engine_by_db.items():
        with engine.connect() as conn:
            if db == "sqlite":
                import sqlite3

                info["sqlite"] = {
                    "version": sqlite3.sqlite_version,
                    "journal_mode": conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                    "synchronous": conn.exec_driver_sql("PRAGMA synchronous").scalar(),
                }
            elif db == "postgresql":
                info["postgresql"] = {
                    "version": conn.exec_driver_sql("SHOW server_version").scalar(),
                    "synchronous_commit": conn.exec_driver_sql("SHOW synchronous_commit").scalar(),
                    "fsync": conn.exec_driver_sql("SHOW fsync").scalar(),
                }
            elif db == "mysql":
                info["mysql"] = {
                    "version": conn.exec_driver_sql("SELECT VERSION()").scalar(),
                    "innodb_flush_log_at_trx_commit": conn.exec_driver_sql(
                        "SELECT @@innodb_flush_log_at_trx_commit"
                    ).scalar(),
                }
    return info
