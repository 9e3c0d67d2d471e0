"""Periodic schedules on each database: one job per tick, catch-up, pause, orphans, the CLI."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_bgqueue import BackgroundQueue, ConfigurationError, JobState
from flask_bgqueue.periodic import enqueue_due, overview
from flask_bgqueue.store import Store
from tests.conftest import AppFactory

T = datetime(2030, 1, 1, 12, 0)


def periodic_app(make_app: AppFactory, catch_up: str = "one", **config: Any) -> Flask:
    bgq = BackgroundQueue()
    ran: list[Any] = []

    @bgq.periodic("*/5 * * * *", parameters={"full": False}, catch_up=catch_up)
    @bgq.callback("refresh")
    def refresh(full: bool) -> None:
        ran.append(full)

    app = make_app(bgq, **config)
    app.ran = ran  # type: ignore[attr-defined]
    return app


def scheduled_jobs(app: Flask) -> Sequence[sa.Row[Any]]:
    store: Store = app.extensions["bgqueue"].store
    t = store.table
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(t).where(t.c.schedule.is_not(None)).order_by(t.c.tick_at)
        ).all()


def test_a_tick_becomes_one_job_and_looking_again_adds_none(make_app: AppFactory) -> None:
    app = periodic_app(make_app)
    with app.app_context():
        runtime = app.extensions["bgqueue"]
        assert enqueue_due(runtime, T + timedelta(minutes=1)) == []  # first seen: next tick
        assert enqueue_due(runtime, T + timedelta(minutes=4)) == []
        [job_id] = enqueue_due(runtime, T + timedelta(minutes=5, seconds=2))
        assert enqueue_due(runtime, T + timedelta(minutes=6)) == []
        job = app.bgq.get_job(job_id)  # type: ignore[attr-defined]
        assert (job.schedule, job.tick_at, job.callback_name) == (
            "refresh",
            T + timedelta(minutes=5),
            "refresh",
        )
        app.bgq.process()  # type: ignore[attr-defined]
        assert app.bgq.get_job(job_id).state is JobState.FINISHED  # type: ignore[attr-defined]
    assert app.ran == [False]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("catch_up", "jobs"), [("one", 1), ("all", 10), ("none", 0)])
def test_after_workers_were_down_catch_up_decides(
    make_app: AppFactory, catch_up: str, jobs: int
) -> None:
    app = periodic_app(make_app, catch_up)
    with app.app_context():
        runtime = app.extensions["bgqueue"]
        enqueue_due(runtime, T)
        # ten ticks (12:05 … 12:50) pass with no worker; one comes back at 12:53
        assert len(enqueue_due(runtime, T + timedelta(minutes=53))) == jobs
        [row] = runtime.store.schedule_rows().values()
        assert row.last_tick_at == T + timedelta(minutes=50)  # none of them comes back later
        assert enqueue_due(runtime, T + timedelta(minutes=54)) == []


def test_two_workers_taking_the_same_ticks_make_them_once(make_app: AppFactory) -> None:
    app = periodic_app(make_app, "all")
    with app.app_context():
        runtime = app.extensions["bgqueue"]
        enqueue_due(runtime, T)
    made: list[list[int]] = []
    start = threading.Barrier(4)

    def worker() -> None:
        with app.app_context():
            start.wait()
            made.append(enqueue_due(runtime, T + timedelta(minutes=31)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(len(m) for m in made) == [0, 0, 0, 6]
    with app.app_context():
        assert [r.tick_at for r in scheduled_jobs(app)] == [
            T + timedelta(minutes=m) for m in range(5, 35, 5)
        ]


def test_the_database_refuses_a_second_job_for_a_tick(make_app: AppFactory) -> None:
    app = periodic_app(make_app)
    with app.app_context():
        runtime = app.extensions["bgqueue"]
        enqueue_due(runtime, T)
        [job_id] = enqueue_due(runtime, T + timedelta(minutes=5))
        store = runtime.store
        row = {
            c.name: v
            for c, v in zip(store.table.c, scheduled_jobs(app)[0], strict=True)
            if c.name != "id"
        }
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(store.table.insert().values(row))
        assert [r.id for r in scheduled_jobs(app)] == [job_id]


def test_a_paused_schedule_makes_no_jobs_until_resumed(make_app: AppFactory) -> None:
    app = periodic_app(make_app)
    with app.app_context():
        runtime = app.extensions["bgqueue"]
        enqueue_due(runtime, T)
        app.bgq.pause_schedule("refresh")  # type: ignore[attr-defined]
        assert enqueue_due(runtime, T + timedelta(minutes=20)) == []
        assert overview(runtime, T)[0].status == "paused"
        app.bgq.resume_schedule("refresh")  # type: ignore[attr-defined]
        assert len(enqueue_due(runtime, T + timedelta(minutes=21))) == 1  # catch_up="one"
        with pytest.raises(Exception, match="no schedule named 'nope'; known: refresh"):
            app.bgq.pause_schedule("nope")  # type: ignore[attr-defined]


def test_a_schedule_removed_from_the_code_is_orphaned_not_an_error(
    make_app: AppFactory,
) -> None:
    old = periodic_app(make_app)
    with old.app_context():
        enqueue_due(old.extensions["bgqueue"], T)
    new = make_app(BackgroundQueue())  # the same table, without the schedule
    new.bgq.callback("refresh")(lambda full: None)  # type: ignore[attr-defined]
    with new.app_context():
        runtime = new.extensions["bgqueue"]
        assert enqueue_due(runtime, T + timedelta(hours=1)) == []
        [view] = overview(runtime, T)
        assert (view.name, view.status, view.expression) == ("refresh", "orphaned", "*/5 * * * *")
        result = new.test_cli_runner().invoke(args=["bgq", "schedules"])
        assert result.exit_code == 0, result.output
        assert "orphaned" in result.output and "Orphaned: no schedule" in result.output
        result = new.test_cli_runner().invoke(args=["bgq", "schedules", "--forget", "refresh"])
        assert result.exit_code == 0, result.output
        assert overview(runtime, T) == []


def test_flask_bgq_schedules_lists_and_pauses(make_app: AppFactory) -> None:
    app = periodic_app(make_app)
    runner = app.test_cli_runner()
    with app.app_context():
        runtime = app.extensions["bgqueue"]
        enqueue_due(runtime, T)
        enqueue_due(runtime, T + timedelta(minutes=5))
        app.bgq.process()  # type: ignore[attr-defined]
    result = runner.invoke(args=["bgq", "schedules", "--json"])
    assert result.exit_code == 0, result.output
    [shown] = json.loads(result.output)
    assert shown["name"] == "refresh" and shown["expression"] == "*/5 * * * *"
    assert shown["timezone"] == "UTC" and shown["last_job_state"] == "FINISHED"
    assert shown["last_tick_at"] == "2030-01-01 12:05:00"
    assert shown["next_tick_at"] is not None
    result = runner.invoke(args=["bgq", "schedules", "--pause", "refresh"])
    assert result.exit_code == 0 and "paused" in result.output
    assert "Paused: its ticks pass" in result.output
    result = runner.invoke(args=["bgq", "schedules", "--resume", "nope"])
    assert result.exit_code == 1 and "no schedule named 'nope'" in result.output


def test_a_schedule_from_config_runs_a_callback(make_app: AppFactory) -> None:
    bgq = BackgroundQueue()
    seen: list[int] = []
    bgq.callback("count")(seen.append)
    app = make_app(
        bgq, BGQUEUE_SCHEDULE={"every-minute": {"cron": "* * * * *", "callback": "count",
                                                "parameters": 7, "timezone": "Europe/Prague"}}
    )  # fmt: skip
    with app.app_context():
        runtime = app.extensions["bgqueue"]
        enqueue_due(runtime, T)
        [job_id] = enqueue_due(runtime, T + timedelta(minutes=1))
        assert app.bgq.get_job(job_id).schedule == "every-minute"  # type: ignore[attr-defined]
        bgq.process()
    assert seen == [7]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": "* * *"}, "is not a cron expression"),
        ({"x": {"cron": "* * * * *", "every": 1}}, "unknown: \\['every'\\]"),
        ({"x": {"callback": "y"}}, "needs 'cron'"),
        ({"x": {"cron": "* * * * *", "timezone": "Nowhere"}}, "unknown time zone"),
        (["* * * * *"], "must map schedule names"),
    ],
)
def test_bad_schedule_config_names_the_key(make_app: AppFactory, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        make_app(BGQUEUE_SCHEDULE=value)
    assert info.value.key == "BGQUEUE_SCHEDULE"


def test_periodic_must_sit_above_a_callback() -> None:
    bgq = BackgroundQueue()
    with pytest.raises(ConfigurationError, match="put it above @bgq.callback"):

        @bgq.callback("f")
        @bgq.periodic("* * * * *")
        def f() -> None: ...

    with pytest.raises(ConfigurationError, match="unknown time zone"):
        bgq.periodic("* * * * *", timezone="Nowhere")(bgq.callback("g")(lambda: None))


def test_with_a_broker_tick_jobs_and_recurring_copies_are_sent_to_it(
    make_app: AppFactory,
) -> None:
    import uuid

    from flask_bgqueue.broker.memory import MemoryBroker

    url = f"memory://{uuid.uuid4().hex}"
    app = periodic_app(make_app, BGQUEUE_BROKER_URL=url, BGQUEUE_WAITING_JOB_EXPIRATION_MS=0)
    app.bgq.callback("again")(lambda: None)  # type: ignore[attr-defined]
    broker = MemoryBroker.named(url)
    with app.app_context():
        runtime = app.extensions["bgqueue"]
        enqueue_due(runtime, T)
        [tick_job] = enqueue_due(runtime, T + timedelta(minutes=5))
        copied = app.bgq.publish("again", recurring=True)  # type: ignore[attr-defined]
        assert broker.pending("default", 1) == [tick_job, copied]
        stop = threading.Event()
        app.bgq.consume(max_jobs=2, stop=stop)  # type: ignore[attr-defined]
        [copy] = [j for j in range(copied + 1, copied + 3) if app.bgq.get_job(j)]  # type: ignore[attr-defined]
        assert copy in broker.pending("default", 1)
