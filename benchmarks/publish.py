"""Publishing throughput: bgq.publish / bgq.bulk() next to plain SQL INSERT loops.

    .venv/bin/python benchmarks/publish.py [--databases sqlite,postgresql,mysql] [--jobs 10000]

Per database, in one run, on the same engine and durability settings:

(a) ``publish``       N x ``bgq.publish("send_mail", {"n": i, "to": ...})``, each its own commit
(b) ``bulk``          the same inside ``with bgq.bulk()`` (BGQUEUE_BULK_SIZE rows per INSERT)
(c) ``plain_single``  raw DBAPI connection (``engine.raw_connection()``): one prepared
                      single-row INSERT + COMMIT per job
(d) ``plain_multi``   raw DBAPI connection: one INSERT of BGQUEUE_BULK_SIZE rows + COMMIT per
                      statement

(c') ``plain_single_autocommit`` (PostgreSQL only) the same INSERTs in autocommit mode, no
                      COMMIT: what the library sends for one job there (one round trip)

(a) and (c) (and (c')) alternate in ten slices of N/10 rows (each timed, then summed), as do (b) and
(d): commit times drift during a run (the disk's fsync, the server's checkpoints), and each
pair should meet the same conditions.

The plain loops write the same 13 columns with the same values and types into a table made
by the same migrations (``schema.upgrade(engine, <other name>)``: same columns and indexes),
and fetch the new ids exactly when the library does (RETURNING where SQLAlchemy uses it,
else ``cursor.lastrowid``). Prints one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, cast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlalchemy as sa
from common import (
    database,
    drop_tables,
    environment,
    log,
    new_table_name,
    paramstyle_marker,
    parse_args,
    sql_datetime,
)
from sqlalchemy.engine.default import DefaultDialect

from flask_bgqueue import schema

COLUMNS = (
    "queue",
    "priority",
    "callback_name",
    "parameters",
    "parameters_json",
    "state",
    "created_at",
    "updated_at",
    "available_at",
    "number_of_attempts",
    "serial_group",
    "identifier",
    "is_unique",
)
GOAL_PUBLISH = 0.70  # publish >= 70 % of plain single-row INSERT + COMMIT
GOAL_BULK = 0.50  # bulk >= 50 % of plain multi-row INSERT + COMMIT
WARMUP = 200  # rows written by each variant before its timed run (imports, caches, prepares)
ROUNDS = 10  # each pair of variants alternates in this many slices of the --jobs rows


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def parameters(i: int) -> dict[str, Any]:
    return {"n": i, "to": "user@example.com"}


def make_app(url: str, table: str, extra: dict[str, Any] | None = None) -> Any:
    os.environ["BENCH_DB_URL"] = url
    os.environ["BENCH_TABLE"] = table
    os.environ["BENCH_CONFIG"] = json.dumps(extra or {})
    import benchapp

    return benchapp.create_app()


# -- the library ------------------------------------------------------------------------


def run_publish(bgq: Any, start: int, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + n):
        bgq.publish("send_mail", parameters(i))
    return time.perf_counter() - t0


def run_bulk(bgq: Any, start: int, n: int) -> float:
    t0 = time.perf_counter()
    with bgq.bulk():
        for i in range(start, start + n):
            bgq.publish("send_mail", parameters(i))
    return time.perf_counter() - t0


# -- plain SQL --------------------------------------------------------------------------


class Plain:
    """Plain INSERT loops on a raw DBAPI connection of the queue's engine."""

    def __init__(self, engine: sa.Engine, table: str) -> None:
        self.engine = engine
        self.dialect = cast(DefaultDialect, engine.dialect)  # every dialect derives from it
        self.raw = engine.raw_connection()
        if self.dialect.name in ("mysql", "mariadb"):
            # What the library's store does for its own transactions (once here, per session).
            cur = self.raw.cursor()
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.close()
            self.raw.commit()
        m = paramstyle_marker(engine)
        self.columns = ", ".join(COLUMNS)
        self.row_marks = "(" + ", ".join([m] * len(COLUMNS)) + ")"
        self.table = table
        # SQLAlchemy fetches a single row's id with RETURNING unless the driver's lastrowid
        # serves (PostgreSQL: RETURNING; SQLite, MySQL: lastrowid), and uses RETURNING for
        # multi-row INSERTs where the dialect supports it: the same here.
        self.single_returning = not self.dialect.postfetch_lastrowid
        self.multi_returning = bool(self.dialect.insert_returning)
        self.single_sql = f"INSERT INTO {table} ({self.columns}) VALUES {self.row_marks}" + (
            " RETURNING id" if self.single_returning else ""
        )

    def row(self, i: int) -> tuple[Any, ...]:
        now = sql_datetime(self.engine, utcnow())
        params_json = json.dumps(parameters(i), separators=(",", ":"))
        return (
            "default",
            1,
            "send_mail",
            None,
            params_json,
            1,
            now,
            now,
            now,
            0,
            None,
            None,
            False,
        )

    def single(self, start: int, n: int, autocommit: bool = False) -> float:
        """``autocommit`` (PostgreSQL): no COMMIT, each INSERT commits by itself."""
        raw, sql = self.raw, self.single_sql
        ids = []
        driver = raw.driver_connection
        assert driver is not None
        if autocommit:
            driver.autocommit = True
        t0 = time.perf_counter()
        cur = raw.cursor()
        for i in range(start, start + n):
            cur.execute(sql, self.row(i))
            if self.single_returning:
                returned = cur.fetchone()
                assert returned is not None
                ids.append(returned[0])
            else:
                ids.append(cur.lastrowid)
            if not autocommit:
                raw.commit()
        cur.close()
        elapsed = time.perf_counter() - t0
        if autocommit:
            driver.autocommit = False
        assert len(ids) == n and all(ids)
        return elapsed

    def multi(self, start: int, n: int, chunk: int) -> float:
        raw = self.raw
        statements: dict[int, str] = {}
        written = 0
        t0 = time.perf_counter()
        cur = raw.cursor()
        for c0 in range(start, start + n, chunk):
            size = min(chunk, start + n - c0)
            sql = statements.get(size)
            if sql is None:  # prepared once per chunk size
                sql = statements[size] = (
                    f"INSERT INTO {self.table} ({self.columns}) VALUES "
                    + ", ".join([self.row_marks] * size)
                    + (" RETURNING id" if self.multi_returning else "")
                )
            flat: list[Any] = []
            for i in range(c0, c0 + size):
                flat.extend(self.row(i))
            cur.execute(sql, flat)
            if self.multi_returning:
                written += len(sorted(r[0] for r in cur.fetchall()))
            else:
                written += cur.rowcount
            raw.commit()
        cur.close()
        elapsed = time.perf_counter() - t0
        assert written == n, (written, n)
        return elapsed

    def close(self) -> None:
        self.raw.close()


# -- one database -----------------------------------------------------------------------


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return cast(int, conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one())


def bench_database(db: str, url: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    table = new_table_name()
    plain_table = table + "_plain"
    try:
        app = make_app(url, table)
        with app.app_context():
            import benchapp

            bgq = benchapp.bgq
            state = app.extensions["bgqueue"]
            bulk_size = state.settings.bulk_size
            state.store  # creates the job table (and turns on WAL for SQLite)  # noqa: B018
            engine = state.engine
            schema.upgrade(engine, plain_table)  # same migrations: same columns and indexes
            plain = Plain(engine, plain_table)
            try:
                log(f"[{db}] warm-up ({WARMUP} rows per variant)")
                run_publish(bgq, 0, WARMUP)
                run_bulk(bgq, 0, WARMUP)
                plain.single(0, WARMUP)
                plain.multi(0, WARMUP, bulk_size)
                before_job, before_plain = count(engine, table), count(engine, plain_table)

                # Interleaved in ROUNDS slices, so that both sides of a pair meet a table
                # of the same size and the same disk: commit (fsync) times drift over a run.
                t_publish = t_single = t_bulk = t_multi = 0.0
                slices = [(r * n // ROUNDS, (r + 1) * n // ROUNDS) for r in range(ROUNDS)]
                log(f"[{db}] (a) publish one by one / (c) plain single-row INSERT + COMMIT:")
                log(f"[{db}]     {n} each, alternating in {ROUNDS} slices")
                autocommit = db == "postgresql"
                t_autocommit = 0.0
                for lo, hi in slices:
                    t_publish += run_publish(bgq, lo, hi - lo)
                    t_single += plain.single(lo, hi - lo)
                    if autocommit:
                        t_autocommit += plain.single(lo, hi - lo, autocommit=True)
                log(f"[{db}]     {n / t_publish:.0f} jobs/s, plain {n / t_single:.0f} rows/s")
                if autocommit:
                    log(f"[{db}]     plain in autocommit mode {n / t_autocommit:.0f} rows/s")
                log(f"[{db}] (b) bulk (BGQUEUE_BULK_SIZE={bulk_size}) / (d) plain {bulk_size}-row")
                log(f"[{db}]     INSERT + COMMIT: {n} each, alternating in {ROUNDS} slices")
                for lo, hi in slices:
                    t_bulk += run_bulk(bgq, lo, hi - lo)
                    t_multi += plain.multi(lo, hi - lo, bulk_size)
                log(f"[{db}]     {n / t_bulk:.0f} jobs/s, plain {n / t_multi:.0f} rows/s")
            finally:
                plain.close()
            assert count(engine, table) == before_job + 2 * n
            assert count(engine, plain_table) == before_plain + (3 if autocommit else 2) * n
            env = environment({db: engine})
            engine.dispose()
    finally:
        drop_tables(url, [table, plain_table])

    r_publish = (n / t_publish) / (n / t_single)
    r_bulk = (n / t_bulk) / (n / t_multi)
    result: dict[str, Any] = {
        "bulk_size": bulk_size,
        "jobs_per_s": {
            "publish_one_by_one": round(n / t_publish),
            "plain_single_row": round(n / t_single),
            "publish_bulk": round(n / t_bulk),
            "plain_multi_row": round(n / t_multi),
        },
        "seconds": {
            "publish_one_by_one": round(t_publish, 3),
            "plain_single_row": round(t_single, 3),
            "publish_bulk": round(t_bulk, 3),
            "plain_multi_row": round(t_multi, 3),
        },
        "ratios": {
            "publish_to_plain_single": round(r_publish, 3),
            "bulk_to_plain_multi": round(r_bulk, 3),
        },
        **(
            {
                "postgresql_autocommit": {
                    "plain_single_row_autocommit_jobs_per_s": round(n / t_autocommit),
                    "publish_to_plain_single_autocommit": round(t_autocommit / t_publish, 3),
                }
            }
            if autocommit
            else {}
        ),
        "goals": {
            "publish_to_plain_single_min": GOAL_PUBLISH,
            "publish_to_plain_single_met": r_publish >= GOAL_PUBLISH,
            "bulk_to_plain_multi_min": GOAL_BULK,
            "bulk_to_plain_multi_met": r_bulk >= GOAL_BULK,
        },
    }
    return result, env


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    out: dict[str, Any] = {"benchmark": "publish", "jobs": args.jobs, "results": {}}
    env: dict[str, Any] = {}
    for db in args.databases:
        with database(db) as url:
            log(f"== {db}: {url.split('@')[-1]}")
            out["results"][db], e = bench_database(db, url, args.jobs)
            env.update(e)
    out["environment"] = env
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
