"""Draining throughput: ``flask bgq process`` workers next to a plain SQL claim loop.

    .venv/bin/python benchmarks/drain.py [--databases sqlite,postgresql,mysql] [--jobs 10000]
                                         [--procs 1,2]

Per database and per number of processes, each run on a fresh table holding ``--jobs`` due
no-op jobs published in bulk beforehand (not timed):

``bgq_process``  that many real ``flask --app benchapp:create_app bgq process`` subprocesses
                 (``benchmarks/benchapp.py``). Timed from just before the processes start
                 until the last job's ``finished_at`` (what the workers wrote), so it includes
                 interpreter and app start-up but not process exit; ``until_exit`` also
                 counts the exit, ``after_first_claim`` starts at the first claim
                 (``min(last_attempt_at)``), i.e. leaves start-up out. Each worker gets its
                 own ``BGQUEUE_LOCKS_DIR``: ``flask bgq process`` holds a per-host lock, so
                 a second worker sharing the folder would exit at once (as on two hosts).
``plain_sql``    that many ``multiprocessing`` processes, each on a raw DBAPI connection of the
                 same engine, looping: claim ONE due job (PostgreSQL/MariaDB: ``SELECT ...
                 FOR UPDATE SKIP LOCKED LIMIT 1``; SQLite: ``BEGIN IMMEDIATE`` + ``SELECT ...
                 LIMIT 1``), ``UPDATE`` it to PROCESSING, COMMIT; ``UPDATE`` it to FINISHED,
                 COMMIT (on MySQL/MariaDB through the library's claim index, the
                 virtual ``bgq_claim_priority`` column of migration 0006, as the library
                 selects). Timed from process start to the last exit. On PostgreSQL the
                 table is analyzed before timing (the library's workers analyze a table
                 that never was themselves, within the timed run): without statistics the
                 planner sorts every runnable job for each claim.

Afterwards every job must be FINISHED (counted per state; anything else fails the run).
Prints one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlalchemy as sa
from common import (
    HERE,
    database,
    drop_tables,
    environment,
    log,
    new_table_name,
    paramstyle_marker,
    parse_args,
    sql_datetime,
)

TARGETS = {"postgresql": 5500, "sqlite": 4000, "mysql": 3000}  # jobs/s, see README.md
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
RUNNABLE = (1, 4, 6, 8)  # READY, TEMPORARILY_FAILED, WAITING, BROKER_FAILED
PROCESSING, FINISHED = 2, 3


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def bench_env(url: str, table: str, locks_dir: str) -> dict[str, str]:
    return {
        "BENCH_DB_URL": url,
        "BENCH_TABLE": table,
        "BENCH_LOCKS_DIR": locks_dir,
        "BENCH_CONFIG": os.environ.get("BENCH_CONFIG", "{}"),
    }


def make_app(url: str, table: str, locks_dir: str) -> Any:
    os.environ.update(bench_env(url, table, locks_dir))
    import benchapp

    return benchapp.create_app()


def prepare(
    url: str, table: str, n: int, tmp: str, table_sql: str = "", analyze: bool = False
) -> dict[str, Any]:
    """Create the table, publish ``n`` due no-op jobs in bulk, run ``table_sql`` (not timed).

    ``analyze``: PostgreSQL only, ``ANALYZE`` the table too (for the plain loop, which has
    nothing of its own to give the planner statistics; the library's workers analyze a
    never-analyzed table themselves, inside the timed run).
    """
    app = make_app(url, table, os.path.join(tmp, "setup"))
    with app.app_context():
        import benchapp

        state = app.extensions["bgqueue"]
        with benchapp.bgq.bulk():
            for _ in range(n):
                benchapp.bgq.publish("noop")
        info = {"claim_batch_size": state.settings.claim_batch_size}
        if table_sql:
            with state.engine.begin() as conn:
                for statement in table_sql.split(";"):
                    if statement.strip():
                        conn.exec_driver_sql(statement.replace("{table}", table))
        if analyze and state.engine.dialect.name == "postgresql":
            with state.engine.begin() as conn:
                conn.exec_driver_sql(f"ANALYZE {table}")
        state.engine.dispose()  # no pooled connection crosses a fork
    return info


def check_and_times(url: str, table: str, n: int) -> dict[str, Any]:
    """Every job FINISHED, and the first claim / last finish times the workers wrote."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            states: dict[int, int] = dict(
                conn.exec_driver_sql(f"SELECT state, COUNT(*) FROM {table} GROUP BY state").all()
            )
            first, last = conn.exec_driver_sql(
                f"SELECT MIN(last_attempt_at), MAX(finished_at) FROM {table}"
            ).one()
    finally:
        engine.dispose()
    if states != {FINISHED: n}:
        raise AssertionError(f"{table}: expected {n} FINISHED jobs, found {states} by state")
    if isinstance(first, str):  # SQLite hands back text for raw SQL
        first, last = datetime.fromisoformat(first), datetime.fromisoformat(last)
    return {"first_claim": first, "last_finished": last}


# -- the library: real `flask bgq process` subprocesses ----------------------------------


def run_cli(url: str, table: str, n: int, procs: int, tmp: str) -> dict[str, Any]:
    base_env = dict(os.environ)
    base_env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, base_env.get("PYTHONPATH")) if p)
    cmd = [FLASK, "--app", "benchapp:create_app", "bgq", "process"]
    started_wall = utcnow()
    t0 = time.perf_counter()
    workers = []
    for i in range(procs):
        env = {**base_env, **bench_env(url, table, os.path.join(tmp, f"worker{i}"))}
        workers.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [w.communicate() for w in workers]
    until_exit = time.perf_counter() - t0
    processed = []
    for w, (out, err) in zip(workers, outputs, strict=True):
        if w.returncode != 0:
            raise RuntimeError(f"flask bgq process exited {w.returncode}: {err[-2000:]}")
        m = re.search(r"processed (\d+) job", out)
        if m is None and out.strip():
            raise RuntimeError(f"unexpected output of flask bgq process: {out!r} {err[-2000:]}")
        # `process` prints nothing when it found nothing due (e.g. another worker took
        # every job first); the sum below must still be right, so a lone worker that ran
        # nothing still fails the run
        processed.append(int(m.group(1)) if m else 0)
    if sum(processed) != n:
        raise AssertionError(f"workers report {processed} processed jobs, expected {n} in all")
    times = check_and_times(url, table, n)
    to_finished = (times["last_finished"] - started_wall).total_seconds()
    after_claim = (times["last_finished"] - times["first_claim"]).total_seconds()
    return {
        "jobs_per_s": round(n / to_finished),
        "seconds": round(to_finished, 3),
        "jobs_per_s_until_exit": round(n / until_exit),
        "seconds_until_exit": round(until_exit, 3),
        "jobs_per_s_after_first_claim": round(n / after_claim),
        "startup_seconds": round((times["first_claim"] - started_wall).total_seconds(), 3),
        "jobs_per_process": processed,
    }


# -- plain SQL claim-and-finish loop -----------------------------------------------------


def plain_worker(url: str, table: str, tmp: str, index: int, done: Any) -> None:
    app = make_app(url, table, os.path.join(tmp, f"plain{index}"))
    with app.app_context():
        engine = app.extensions["bgqueue"].engine  # the engine the library would use
    dialect = engine.dialect.name
    m = paramstyle_marker(engine)
    raw = engine.raw_connection()
    cur = raw.cursor()
    if dialect in ("mysql", "mariadb"):
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")  # as the store
        raw.commit()
    states = ", ".join(map(str, RUNNABLE))
    # MySQL/MariaDB: through the claim index of migration 0006, as the library does.
    claim_index = dialect in ("mysql", "mariadb")
    select = (
        f"SELECT id, callback_name, parameters, parameters_json, number_of_attempts"
        f" FROM {table} WHERE state IN ({states}) AND queue = {m} AND available_at <= {m}"
        + (
            " AND bgq_claim_priority IS NOT NULL ORDER BY bgq_claim_priority, id LIMIT 1"
            if claim_index
            else " ORDER BY priority, id LIMIT 1"
        )
    )
    if dialect != "sqlite":
        select += " FOR UPDATE SKIP LOCKED"
    claim = (
        f"UPDATE {table} SET state = {PROCESSING}, number_of_attempts = number_of_attempts + 1,"
        f" last_attempt_at = {m}, heartbeat_at = {m}, updated_at = {m}, pid = {m},"
        f" hostname = {m} WHERE id = {m}"
    )
    finish = (
        f"UPDATE {table} SET state = {FINISHED}, finished_at = {m}, updated_at = {m},"
        f" heartbeat_at = NULL WHERE id = {m} AND state = {PROCESSING}"
    )
    pid, host = os.getpid(), socket.gethostname()
    count = 0
    while True:
        now = sql_datetime(engine, utcnow())
        if dialect == "sqlite":
            cur.execute("BEGIN IMMEDIATE")
        cur.execute(select, ("default", now))
        row = cur.fetchone()
        if row is None:
            raw.commit()
            break
        cur.execute(claim, (now, now, now, pid, host, row[0]))
        raw.commit()
        now = sql_datetime(engine, utcnow())
        cur.execute(finish, (now, now, row[0]))
        raw.commit()
        count += 1
    cur.close()
    raw.close()
    engine.dispose()
    done.put(count)


def run_plain(url: str, table: str, n: int, procs: int, tmp: str) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    t0 = time.perf_counter()
    workers = [
        ctx.Process(target=plain_worker, args=(url, table, tmp, i, done)) for i in range(procs)
    ]
    for w in workers:
        w.start()
    counts = [done.get(timeout=3600) for _ in workers]
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if any(w.exitcode != 0 for w in workers):
        raise RuntimeError(f"a plain worker failed: {[w.exitcode for w in workers]}")
    if sum(counts) != n:
        raise AssertionError(f"plain workers report {counts} jobs, expected {n} in all")
    check_and_times(url, table, n)
    return {
        "jobs_per_s": round(n / elapsed),
        "seconds": round(elapsed, 3),
        "jobs_per_process": counts,
    }


# -- one database -----------------------------------------------------------------------


def bench_database(
    db: str, url: str, n: int, procs_list: list[int], table_sql: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    result: dict[str, Any] = {"bgq_process": {}, "plain_sql": {}}
    env: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bgq-bench-drain-") as tmp:
        for procs in procs_list:
            for kind, runner in (("bgq_process", run_cli), ("plain_sql", run_plain)):
                table = new_table_name()
                try:
                    log(f"[{db}] {kind}, {procs} process(es): publishing {n} jobs in bulk")
                    info = prepare(url, table, n, tmp, table_sql, analyze=kind == "plain_sql")
                    result["claim_batch_size"] = info["claim_batch_size"]
                    log(f"[{db}] {kind}, {procs} process(es): draining")
                    figures = runner(url, table, n, procs, tmp)
                    log(f"[{db}]     {figures['jobs_per_s']} jobs/s")
                    result[kind][str(procs)] = figures
                    if not env:
                        engine = sa.create_engine(url, poolclass=sa.NullPool)
                        env = environment({db: engine})
                        engine.dispose()
                finally:
                    drop_tables(url, [table])
    target = TARGETS[db]
    result["target_jobs_per_s"] = target
    result["target_met"] = {
        f"bgq_process_{p}_procs": result["bgq_process"][str(p)]["jobs_per_s"] >= target
        for p in procs_list
    }
    return result, env


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument(
            "--procs", default="1,2", help="comma-separated worker counts (default 1,2)"
        )
        parser.add_argument(
            "--table-sql",
            default="",
            help="SQL run on every fresh table after the jobs are published, before timing"
            " ({table} = its name; ';' separates statements), e.g. to try an index",
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    procs_list = [int(p) for p in args.procs.split(",") if p.strip()]
    out: dict[str, Any] = {"benchmark": "drain", "jobs": args.jobs, "results": {}}
    if args.table_sql:
        out["table_sql"] = args.table_sql
    env: dict[str, Any] = {}
    for db in args.databases:
        with database(db) as url:
            log(f"== {db}: {url.split('@')[-1]}")
            out["results"][db], e = bench_database(db, url, args.jobs, procs_list, args.table_sql)
            env.update(e)
    out["environment"] = env
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
