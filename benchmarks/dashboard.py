"""Dashboard and ``flask bgq stats`` times on a large table.

    PYTHONPATH=. .venv/bin/python benchmarks/dashboard.py [--databases sqlite,postgresql,mysql]
        [--jobs 100000] [--repeat 9]

``--jobs 1000000`` works too (rows are generated and inserted 5000 at a time, in one
transaction, with SQLAlchemy's multi-row INSERT: about a minute on PostgreSQL).

Bulk-inserts ``--jobs`` rows shaped like a busy queue's table (mostly FINISHED over the last
six hours, some failed with tracebacks, waiting serial groups, future and due READY jobs, a
few PROCESSING), then does what autovacuum would (PostgreSQL: ``VACUUM ANALYZE``, which
PostgreSQL 13+ autovacuum also runs on a table that only received inserts; elsewhere
``ANALYZE``), then times, in the same process, GET requests through Flask's test client (no
HTTP server: the time is the application's and the database's): the overview, filtered job
lists (by state and callback, page 50 of a state and of all jobs, a serial group), a text
search with and without a match, and a job page (with the serial-group "why" query); then
``flask bgq stats --json`` through Flask's CLI runner, and the overview's two heaviest reads
alone (``overview_counts``: the counts per state, queue and callback; ``throughput_chart``:
the per-minute outcomes of the last three hours). The chart's table
(``<table>_throughput``) gets the per-minute counts the workers would have written for
those jobs (8 pids on each of 3 hosts, two queues), and ``--history-days`` (7, as long as
the table keeps minutes) of such counts before them, and is analyzed like the job table
(workers fill it a few rows at a time, so autovacuum analyzes it as it grows; bulk-loaded
in one transaction and not analyzed, PostgreSQL read all of it: 36-49 ms instead of 4).
Prints one JSON document with the median and every sample in milliseconds; progress goes
to stderr. Goal: every median under 200 ms.

Run it against another checkout (e.g. the commit before a change) with
``PYTHONPATH=<checkout> .venv/bin/python benchmarks/dashboard.py``: the table, its indexes
and the code timed are then that checkout's.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlalchemy as sa
from common import database, drop_tables, environment, log, new_table_name
from flask import Flask

from flask_bgqueue import BackgroundQueue, JobState, schema
from flask_bgqueue.clock import utcnow
from flask_bgqueue.inspection import Inspector
from flask_bgqueue.models import job_table

GOAL_MS = 200
CALLBACKS = [f"task_{i}" for i in range(12)]
TRACEBACK = "Traceback (most recent call last):\n" + '  File "app/tasks.py", line 42\n' * 20


def make_rows(n: int, now: datetime, seed: int = 7) -> Iterator[dict[str, Any]]:
    """The rows, one at a time (a million of them need not sit in memory together)."""
    rnd = random.Random(seed)
    for i in range(n):
        r = rnd.random()
        created = now - timedelta(seconds=rnd.uniform(0, 6 * 3600))
        row: dict[str, Any] = {
            "queue": "default" if i % 5 else "default_mail",
            "priority": 1,
            "callback_name": CALLBACKS[i % len(CALLBACKS)],
            "parameters": None,
            "parameters_json": json.dumps({"customer": i % 9973, "note": f"order {i}"}),
            "created_at": created,
            "updated_at": created,
            "available_at": created,
            "number_of_attempts": 1,
            "serial_group": f"invoice-{i % 4000}" if i % 5 == 0 else None,
            "identifier": f"sync-{i}" if i % 3 == 0 else None,
            "is_unique": False,
            "last_attempt_at": created + timedelta(seconds=1),
            "pid": 1000 + i % 8,
            "hostname": f"worker-{i % 3}",
            "finished_at": None,
            "error_message": None,
            "traceback": None,
            "heartbeat_at": None,
        }
        if r < 0.86:
            row.update(state=JobState.FINISHED, finished_at=created + timedelta(seconds=2))
        elif r < 0.90:
            row.update(
                state=JobState.TEMPORARILY_FAILED,
                error_message=f"TimeoutError: upstream {i % 17} did not answer",
                traceback=TRACEBACK,
                available_at=now + timedelta(minutes=rnd.randint(1, 16)),
            )
        elif r < 0.91:
            row.update(
                state=JobState.PERMANENTLY_FAILED,
                error_message="PermanentError: customer deleted",
                traceback=TRACEBACK,
            )
        elif r < 0.93:
            row.update(state=JobState.WAITING, error_message="waiting for job 1")
        elif r < 0.94:
            row.update(state=JobState.REDUNDANT, finished_at=created)
        elif r < 0.9405:
            row.update(state=JobState.PROCESSING, heartbeat_at=now)
        else:  # READY: some due, some later
            later = rnd.random() < 0.5
            row.update(
                state=JobState.READY,
                number_of_attempts=0,
                last_attempt_at=None,
                pid=None,
                hostname=None,
                available_at=now + timedelta(hours=1) if later else created,
            )
        yield row


def counted(
    rows: Iterator[dict[str, Any]], tally: Counter[tuple[Any, ...]]
) -> Iterator[dict[str, Any]]:
    """The rows, each finished or failed one counted as its worker would have:
    ``(minute, queue, hostname, pid, "finished"|"failed")``."""
    for row in rows:
        if row["state"] == JobState.FINISHED:
            at, kind = row["finished_at"], "finished"
        elif row["state"] in (JobState.TEMPORARILY_FAILED, JobState.PERMANENTLY_FAILED):
            at, kind = row["last_attempt_at"], "failed"
        else:
            yield row
            continue
        minute = at.replace(second=0, microsecond=0)
        tally[minute, row["queue"], row["hostname"], row["pid"], kind] += 1
        yield row


def fill_throughput(
    conn: sa.Connection, table: str, tally: Counter[tuple[Any, ...]], now: datetime, days: int
) -> int:
    """The workers' per-minute counts of the jobs inserted (migration 0011), and
    ``days`` of history before them: the six hours' rows again, six hours earlier each
    time, as far back as ``<table>_throughput`` keeps minutes. Nothing on a checkout
    before that table."""
    try:
        from flask_bgqueue.models import throughput_table
    except ImportError:
        return 0
    oldest = now - timedelta(days=days)
    by_key: dict[tuple[Any, ...], dict[str, int]] = {}
    for back in range(days * 4 + 1):
        for (minute, queue, hostname, pid, kind), n in tally.items():
            at = minute - timedelta(hours=6 * back)
            if at >= oldest:
                counts = by_key.setdefault((at, queue, hostname, pid), {"finished": 0, "failed": 0})
                counts[kind] += n
    rows = [
        {"minute": at, "queue": q, "hostname": h, "pid": p, **counts}
        for (at, q, h, p), counts in by_key.items()
    ]
    tt = throughput_table(table)
    for start in range(0, len(rows), 5000):
        conn.execute(tt.insert(), rows[start : start + 5000])
    return len(rows)


def fill(url: str, table: str, n: int, history_days: int = 7) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        schema.upgrade(engine, table)
        t = job_table(table)
        now = utcnow()
        tally: Counter[tuple[Any, ...]] = Counter()
        rows = counted(make_rows(n, now), tally)
        started = time.perf_counter()
        with engine.begin() as conn:
            while chunk := list(itertools.islice(rows, 5000)):
                conn.execute(t.insert(), chunk)
            counts = fill_throughput(conn, table, tally, now, history_days)
        log(
            f"  inserted {n} rows and {counts} rows of per-minute counts in"
            f" {time.perf_counter() - started:.1f} s"
        )
        with engine.connect() as conn:
            analyzed = [table] + ([f"{table}_throughput"] if counts else [])
            if engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for name in analyzed:
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.text(f"VACUUM ANALYZE {name}"))
                elif engine.dialect.name in ("mysql", "mariadb"):
                    conn.execute(sa.text(f"ANALYZE TABLE {name}"))
            if engine.dialect.name == "sqlite":
                conn.execute(sa.text("ANALYZE"))
            conn.commit()
    finally:
        engine.dispose()


def make_app(url: str, table: str) -> Flask:
    app = Flask("bench_dashboard")
    app.config.update(
        SECRET_KEY="bench",
        BGQUEUE_DATABASE_URI=url,
        BGQUEUE_TABLE_NAME=table,
        BGQUEUE_DASHBOARD_URL_PREFIX="/bgq",
        BGQUEUE_DASHBOARD_AUTHORIZE=lambda: True,
    )
    bgq = BackgroundQueue()
    for name in CALLBACKS:
        bgq.callback(name)(lambda **kw: None)
    bgq.init_app(app)
    return app


def pages(app: Flask) -> dict[str, str]:
    """The URLs to time; the job page is of a waiting job of a serial group."""
    state = app.extensions["bgqueue"]
    store = state.store
    t = store.table
    with app.app_context(), store.engine.connect() as conn:
        waiting = conn.execute(
            sa.select(sa.func.max(t.c.id)).where(
                t.c.state == JobState.WAITING, t.c.serial_group.is_not(None)
            )
        ).scalar()
        middle = conn.execute(sa.select(sa.func.max(t.c.id))).scalar() // 2

        def page_50(*where: Any) -> int:
            """The ``before=`` of page 50 (of 50 jobs each): the 2450th newest match."""
            stmt = sa.select(t.c.id).where(*where).order_by(t.c.id.desc()).offset(2449)
            return int(conn.execute(stmt.limit(1)).scalar() or 1)

        failed_50 = page_50(
            t.c.state.in_([JobState.TEMPORARILY_FAILED, JobState.PERMANENTLY_FAILED])
        )
        all_50 = page_50()
    return {
        "overview": "/bgq/",
        "list_failed_of_a_callback": "/bgq/jobs?state=failed&callback=task_3",
        "list_failed_of_a_callback_page_2": (
            f"/bgq/jobs?state=failed&callback=task_3&before={middle}"
        ),
        "list_failed_page_50": f"/bgq/jobs?state=failed&before={failed_50}",
        "list_all_newest": "/bgq/jobs",
        "list_all_page_50": f"/bgq/jobs?before={all_50}",
        "list_serial_group": "/bgq/jobs?group=invoice-42",
        "list_text_search": "/bgq/jobs?q=upstream+13",
        "list_text_search_no_match": "/bgq/jobs?q=no+job+says+this",
        "job_page": f"/bgq/jobs/{waiting}",
    }


def time_pages(app: Flask, urls: dict[str, str], repeat: int) -> dict[str, Any]:
    client = app.test_client()
    result = {}
    for name, url in urls.items():
        response = client.get(url)  # warm-up: connections, templates, plans
        assert response.status_code == 200, (url, response.status_code)
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        result[name] = {
            "url": url,
            "median_ms": round(statistics.median(samples), 1),
            "samples_ms": [round(s, 1) for s in samples],
            "under_goal": statistics.median(samples) < GOAL_MS,
        }
        log(f"  {name}: {result[name]['median_ms']} ms")
    return result


def time_calls(app: Flask, repeat: int) -> dict[str, Any]:
    """``flask bgq stats --json``, and the overview's two heaviest reads alone."""

    runner = app.test_cli_runner()
    store = app.extensions["bgqueue"].store
    limit = getattr(app.extensions["bgqueue"].settings, "exact_count_limit", None)

    def stats_json() -> None:
        result = runner.invoke(args=["bgq", "stats", "--json"])
        assert result.exit_code == 0, result.output

    def counts() -> None:
        with app.app_context():
            if limit is not None:
                store.state_counts(limit)
            else:
                store.count_by_state_queue_callback()

    def chart() -> None:
        with app.app_context():
            Inspector()._throughput(utcnow(), 3)

    result: dict[str, Any] = {}
    for name, call in (
        ("stats_json", stats_json),
        ("overview_counts", counts),
        ("throughput_chart", chart),
    ):
        call()  # warm-up
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1000)
        result[name] = {
            "median_ms": round(statistics.median(samples), 1),
            "samples_ms": [round(s, 1) for s in samples],
            "under_goal": statistics.median(samples) < GOAL_MS,
        }
        log(f"  {name}: {result[name]['median_ms']} ms")
    if hasattr(store, "state_counts") and limit is not None:
        with app.app_context():
            result["estimated_states"] = sorted(s.name for s in store.state_counts(limit).estimated)
    return result


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default="sqlite,postgresql,mysql")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument(
        "--history-days",
        type=int,
        default=7,
        help="days of per-minute counts before the jobs' six hours (all the table keeps)",
    )
    args = parser.parse_args()
    report: dict[str, Any] = {"jobs": args.jobs, "goal_ms": GOAL_MS, "databases": {}}
    engines = {}
    for db in [d.strip() for d in args.databases.split(",") if d.strip()]:
        with database(db) as url:
            table = new_table_name("_dash")
            log(f"{db}: filling {table}")
            try:
                fill(url, table, args.jobs, args.history_days)
                app = make_app(url, table)
                report["databases"][db] = {
                    **time_pages(app, pages(app), args.repeat),
                    **time_calls(app, args.repeat),
                }
                engines[db] = sa.create_engine(url, poolclass=sa.NullPool)
                report.setdefault("environment", {}).update(environment({db: engines[db]}))
                app.extensions["bgqueue"].engine.dispose()
            finally:
                drop_tables(url, [table])
                for engine in engines.values():
                    engine.dispose()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
