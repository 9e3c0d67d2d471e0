"""The throughput chart's counts: kept per queue, minute and worker as jobs end
(``<table>_throughput``, migration 0011), read without the jobs."""

from __future__ import annotations

import logging
import os
import re
import socket
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flask_bgqueue import BackgroundQueue, JobState, schema
from flask_bgqueue.clock import utcnow
from flask_bgqueue.inspection import Inspector
from flask_bgqueue.models import job_table, throughput_table
from flask_bgqueue.tally import KEPT, Tally
from tests.conftest import AMQP_URL, AppFactory, ProcEnv
from tests.helpers import stop_consumers
from tests.test_workers import wait_for


def _app(make_app: AppFactory) -> Any:
    app = make_app()
    bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]

    @bgq.callback
    def work(n: int) -> None:
        if n < 0:
            raise ValueError(f"cannot work on {n}")

    @bgq.callback(queue="mail")  # the sub-queue "default_mail"
    def send(n: int) -> None:
        pass

    return app


def _rows(store: Any) -> list[tuple[Any, ...]]:
    tt = store.throughput_table
    with store.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(tt.c.queue, tt.c.hostname, tt.c.pid, tt.c.finished, tt.c.failed)
            )
        ]


def test_the_chart_counts_the_attempts_a_worker_saved_and_reads_only_their_table(
    make_app: AppFactory,
) -> None:
    app = _app(make_app)
    bgq = app.bgq
    with app.app_context():
        store = app.extensions["bgqueue"].store
        for n in (1, 2, 3, 4, 5, -1, -2):
            bgq.publish("work", n)
        bgq.publish("send", 6)  # a sub-queue's job counts with its queue
        started = utcnow()
        bgq.process()
        sent: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
            sent.append(statement)

        sa.event.listen(store.engine, "before_cursor_execute", record)
        try:
            counts = store.outcomes_per_minute(started - timedelta(minutes=5))
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        rows = _rows(store)
    assert sum(n for kind, _, n in counts if kind == "finished") == 6
    assert sum(n for kind, _, n in counts if kind == "failed") == 2
    assert all(minute >= started.replace(second=0, microsecond=0) for _, minute, _ in counts)
    # this worker's own rows: no other worker ever waits for them
    assert {(host, pid) for _, host, pid, _, _ in rows} == {(socket.gethostname(), os.getpid())}
    assert sum(r[3] for r in rows if r[0] == "default_mail") == 1
    read = {
        name
        for statement in sent
        for name in re.findall(r"FROM\s+[`\"]?(\w+)", statement, flags=re.IGNORECASE)
    }
    assert read == {store.throughput_table.name}, sent


def test_counts_add_up_per_minute_and_come_back_naive_on_every_database(
    make_app: AppFactory,
) -> None:
    app = make_app()
    hour = (utcnow() - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    with app.app_context():
        store = app.extensions["bgqueue"].store
        store.add_throughput(
            {
                ("default", hour - timedelta(microseconds=1)): (1, 0),
                ("default", hour): (2, 0),
                ("default", hour + timedelta(seconds=59, microseconds=999_999)): (1, 0),
                ("default", hour + timedelta(minutes=2, seconds=5)): (0, 1),
                ("default_mail", hour + timedelta(seconds=3)): (1, 0),
                ("other", hour): (5, 5),  # another queue of the same table
                ("default", hour - timedelta(hours=2)): (7, 0),  # before the window
            },
            ("host-a", 11),
        )
        # a second write of the same worker adds to its rows; another worker's are its own
        store.add_throughput({("default", hour): (1, 1)}, ("host-a", 11))
        store.add_throughput({("default", hour): (3, 0)}, ("host-b", 11))
        counts = store.outcomes_per_minute(hour - timedelta(minutes=30))
        rows = _rows(store)
    assert sorted(counts) == [
        ("failed", hour, 1),
        ("failed", hour + timedelta(minutes=2), 1),
        ("finished", hour - timedelta(minutes=1), 1),
        ("finished", hour, 2 + 1 + 1 + 1 + 3),
    ]
    assert all(minute.tzinfo is None for _, minute, _ in counts)
    assert ("default", "host-a", 11, 4, 1) in rows
    assert ("default", "host-b", 11, 3, 0) in rows


def test_a_lost_worker_s_attempt_counts_as_failed(make_app: AppFactory) -> None:
    app = _app(make_app)
    with app.app_context():
        store = app.extensions["bgqueue"].store
        job_id = app.bgq.publish("work", 1)
        now = utcnow()
        with store.engine.begin() as conn:
            conn.execute(
                store.table.update()
                .where(store.table.c.id == job_id)
                .values(
                    state=JobState.PROCESSING,
                    number_of_attempts=1,
                    heartbeat_at=now - timedelta(minutes=5),
                    pid=1,
                    hostname="gone",
                )
            )
        assert store.reap_lost(now, timedelta(seconds=60), None) == [job_id]
        counts = store.outcomes_per_minute(now - timedelta(minutes=1))
        rows = _rows(store)
    assert counts == [("failed", now.replace(second=0, microsecond=0), 1)]
    assert rows == [("default", "", 0, 0, 1)]  # the store's own row, not the lost worker's


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_counts_the_database_refused_are_kept_for_the_next_write(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    with app.app_context():
        store = app.extensions["bgqueue"].store
        tally = Tally(store, ("host-a", 7), logging.getLogger("test.tally"))
        now = utcnow()
        tally.add("default", now, finished=True)
        tally.add("default", now, finished=False)
        tally.flush()  # less than a second after the tally began: not yet
        assert tally.pending() == {("default", now.replace(second=0, microsecond=0)): (1, 1)}
        assert _rows(store) == []
        store.throughput_table.drop(store.engine)  # the database refuses the write
        with caplog.at_level(logging.WARNING, "test.tally"):
            tally.flush(force=True)
            tally.add("default", now, finished=True)
            tally.flush(force=True)
        assert caplog.text.count("could not save the throughput chart's counts") == 1
        assert tally.pending() == {("default", now.replace(second=0, microsecond=0)): (2, 1)}
        store.throughput_table.create(store.engine)
        tally.flush(force=True)
        assert tally.pending() == {}
        assert _rows(store) == [("default", "host-a", 7, 2, 1)]


def test_a_worker_deletes_minutes_older_than_kept(make_app: AppFactory) -> None:
    app = make_app()
    with app.app_context():
        store = app.extensions["bgqueue"].store
        now = utcnow()
        store.add_throughput(
            {("default", now - KEPT - timedelta(minutes=5)): (4, 0)}, ("host-a", 1)
        )
        store.add_throughput({("default", now - KEPT + timedelta(hours=1)): (3, 0)}, ("host-a", 1))
        tally = Tally(store, ("host-a", 2), logging.getLogger("test.tally"))
        tally.add("default", now, finished=True)
        tally.flush(force=True)
        rows = _rows(store)
    assert sorted(rows) == [("default", "host-a", 1, 3, 0), ("default", "host-a", 2, 1, 0)]


def test_stats_shows_the_kept_week_and_refuses_more_than_it_keeps(make_app: AppFactory) -> None:
    app = make_app()
    with app.app_context():
        store = app.extensions["bgqueue"].store
        now = utcnow()
        oldest = now - KEPT + timedelta(minutes=2)  # still kept: shown in a week's stats
        store.add_throughput({("default", oldest): (5, 1)}, ("host-a", 1))
        week = Inspector(app.bgq).stats(hours=KEPT / timedelta(hours=1), now=now)  # type: ignore[attr-defined]
        for hours in (KEPT / timedelta(hours=1) + 1, 0, -3, float("nan")):
            with pytest.raises(ValueError, match=r"kept for 168 hours; ask for more than 0"):
                Inspector(app.bgq).stats(hours=hours, now=now)  # type: ignore[attr-defined]
    assert len(week.throughput) == 7 * 24 * 60
    assert week.throughput[0].start <= oldest.replace(second=0, microsecond=0)
    assert sum(m.finished for m in week.throughput) == 5
    assert sum(m.failed for m in week.throughput) == 1


def test_the_migration_fills_in_the_last_day_from_the_jobs(
    db_url: str, table_name: str, drop_tables: None
) -> None:
    """Upgrading a table of 0010 counts its FINISHED jobs by ``finished_at`` and its
    failed ones by ``last_attempt_at``, per queue and minute, for the last day."""
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    try:
        schema.upgrade(engine, table_name, revision="0010")
        minute = (utcnow() - timedelta(hours=2)).replace(second=0, microsecond=0)
        jobs = [  # (queue, state, finished_at, last_attempt_at)
            ("default", JobState.FINISHED, minute, minute),
            ("default", JobState.FINISHED, minute + timedelta(seconds=59.9), minute),
            ("default", JobState.FINISHED, minute + timedelta(seconds=60), minute),
            ("mail", JobState.FINISHED, minute + timedelta(seconds=1), minute),
            ("default", JobState.CANCELLED, minute, minute),  # ended, not finished
            ("default", JobState.PERMANENTLY_FAILED, None, minute + timedelta(seconds=7)),
            ("default", JobState.TEMPORARILY_FAILED, None, minute + timedelta(seconds=9)),
            ("default", JobState.FINISHED, minute - timedelta(days=2), minute),  # too old
        ]
        tt = throughput_table(table_name)
        with engine.begin() as conn:
            assert not sa.inspect(conn).has_table(tt.name)  # 0010 is before it
            conn.execute(
                job_table(table_name).insert(),
                [
                    {
                        "queue": queue,
                        "priority": 1,
                        "callback_name": "work",
                        "state": state,
                        "created_at": minute,
                        "updated_at": minute,
                        "available_at": minute,
                        "finished_at": finished,
                        "last_attempt_at": attempt,
                        "number_of_attempts": 1,
                        "is_unique": False,
                    }
                    for queue, state, finished, attempt in jobs
                ],
            )
        schema.upgrade(engine, table_name)
        with engine.connect() as conn:
            rows = sorted(
                (q, m.replace(tzinfo=None), host, pid, f, x)
                for m, q, host, pid, f, x in conn.execute(sa.select(tt))
            )
    finally:
        engine.dispose()
    assert rows == [
        ("default", minute, "", 0, 2, 2),
        ("default", minute + timedelta(minutes=1), "", 0, 1, 0),
        ("mail", minute, "", 0, 1, 0),
    ]


def _count_with_running_consumers(procs: ProcEnv, number: int) -> tuple[list[Any], set[Any]]:
    """Start ``number`` real consumers, publish 20 jobs, and wait until the chart shows
    them finished while the consumers still run; the consumers (stopped) and the workers
    whose rows held the counts while they ran."""
    app = procs.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        store = app.extensions["bgqueue"].store
        started = utcnow() - timedelta(minutes=1)
        consumers = [procs.start("bgq", "consume") for _ in range(number)]
        try:
            for _ in range(20):
                bgq.publish("noop")

            def finished() -> int:
                counts = store.outcomes_per_minute(started)
                return sum(n for kind, _, n in counts if kind == "finished")

            wait_for(lambda: finished() == 20, what="20 finished on the chart")
            assert [c.poll() for c in consumers] == [None] * number  # still running
            workers = {(host, pid) for _, host, pid, _, _ in _rows(store)}
        finally:
            stop_consumers(consumers)
        assert finished() == 20
    return consumers, workers


def test_running_consumers_count_on_rows_of_their_own_without_stopping(procs: ProcEnv) -> None:
    """Two real consumers: their counts reach the table while they wait for more work
    (not only when they stop), each on its own rows."""
    procs.config = {"BGQUEUE_POLL_INTERVAL_MS": 200, "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.3}
    consumers, workers = _count_with_running_consumers(procs, 2)
    assert workers <= {(socket.gethostname(), c.pid) for c in consumers}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_rabbitmq_consumers_count_while_they_wait_for_messages(
    procs: ProcEnv, amqp_queue: str
) -> None:
    """Consumers fed by RabbitMQ write their counts when no message came for a while, as
    table-fed ones do before they wait."""
    procs.config = {
        "BGQUEUE_BROKER_URL": AMQP_URL,
        "BGQUEUE_QUEUE": amqp_queue,
        "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.3,
    }
    [consumer], workers = _count_with_running_consumers(procs, 1)
    assert workers == {(socket.gethostname(), consumer.pid)}


def test_an_interrupted_or_timed_out_attempt_counts_as_failed(make_app: AppFactory) -> None:
    """The attempts the store ends itself (a forced shutdown's, the watchdog's time
    limit) count in the transaction that ends them."""
    app = _app(make_app)
    with app.app_context():
        store = app.extensions["bgqueue"].store
        first, second = app.bgq.publish("work", 1), app.bgq.publish("work", 2)
        now = utcnow()
        claims = store.claim(
            now=now,
            limit=2,
            priorities=None,
            callbacks=["work"],
            pid=1,
            hostname="here",
            waiting_expiration=timedelta(seconds=1),
        )
        assert sorted(c.job.id for c in claims) == [first, second]
        assert store.interrupt(claims[0], now, "forced shutdown", None)
        ended = store.time_out(
            claims[1].job.id,
            claims[1].job.number_of_attempts,
            JobState.TEMPORARILY_FAILED,
            {"error_message": "timed out", "available_at": now},
            now,
        )
        assert ended is JobState.TEMPORARILY_FAILED
        counts = store.outcomes_per_minute(now - timedelta(minutes=1))
    assert counts == [("failed", now.replace(second=0, microsecond=0), 2)]
