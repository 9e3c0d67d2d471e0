"""Concurrency and rate limits, across real worker processes, on every database."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_bgqueue import BackgroundQueue, ConfigurationError, JobState
from flask_bgqueue.limits import parse_rate
from tests.conftest import AMQP_URL, AppFactory, ProcEnv
from tests.test_workers import wait_for


@pytest.fixture
def four(procs: ProcEnv) -> ProcEnv:
    procs.config = {"BGQUEUE_POLL_INTERVAL_MS": 50, "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.5}
    return procs


class Sampler(threading.Thread):
    """Counts the PROCESSING jobs of a callback every 10 ms (per concurrency key)."""

    def __init__(self, app: Flask, callback: str) -> None:
        super().__init__(daemon=True)
        with app.app_context():
            store = app.bgq._state().store  # type: ignore[attr-defined]
        self.engine = sa.create_engine(store.engine.url, poolclass=sa.NullPool)
        t = store.table
        self.query = (
            sa.select(t.c.concurrency_key, sa.func.count())
            .where(t.c.callback_name == callback, t.c.state == JobState.PROCESSING)
            .group_by(t.c.concurrency_key)
        )
        self.most: Counter[Any] = Counter()
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.done.is_set():
                for key, n in conn.execute(self.query):
                    self.most[key] = max(self.most[key], n)
                self.samples += 1
                conn.rollback()  # a fresh snapshot each time
                time.sleep(0.01)
        self.engine.dispose()


def jobs_of(app: Flask) -> list[Any]:
    with app.app_context():
        return app.bgq._state().store.jobs()  # type: ignore[attr-defined,no-any-return]


def drain(procs: ProcEnv, app: Flask, sampler: Sampler | None = None) -> list[Any]:
    workers = [procs.start("bgq", "consume") for _ in range(4)]
    if sampler is not None:
        sampler.start()
    try:
        wait_for(
            lambda: all(j.state is JobState.FINISHED for j in jobs_of(app)),
            timeout=120,
            what="every job finished",
        )
        return jobs_of(app)
    finally:
        if sampler is not None:
            sampler.done.set()
            sampler.join(timeout=10)
        for worker in workers:
            worker.terminate()
            worker.communicate(timeout=60)


def test_four_consumers_never_run_more_than_the_concurrency_limit(four: ProcEnv) -> None:
    app = four.app()
    with app.app_context():
        for n in range(20):
            app.bgq.publish("limited", {"name": f"l{n}"})  # type: ignore[attr-defined]
        for _ in range(5):
            app.bgq.publish("noop")  # type: ignore[attr-defined]
    sampler = Sampler(app, "limited")
    jobs = drain(four, app, sampler)
    assert sampler.samples > 50
    assert sampler.most[None] == 2  # reached, never passed
    limited = [j for j in jobs if j.callback_name == "limited"]
    free = [j for j in jobs if j.callback_name == "noop"]
    assert len(limited) == 20 and all(j.number_of_attempts == 1 for j in limited)
    # The other callback is not held up: its jobs finished long before the limited ones.
    assert max(j.finished_at for j in free) < max(j.finished_at for j in limited) - timedelta(
        seconds=1
    )


def test_a_concurrency_key_limits_each_key_apart(four: ProcEnv) -> None:
    app = four.app()
    with app.app_context():
        for n in range(12):
            app.bgq.publish(  # type: ignore[attr-defined]
                "limited_per_key", {"name": f"k{n}"}, concurrency_key=f"tenant-{n % 2}"
            )
    sampler = Sampler(app, "limited_per_key")
    drain(four, app, sampler)
    assert sampler.most == Counter({"tenant-0": 1, "tenant-1": 1})


def test_no_second_holds_more_starts_than_the_rate(four: ProcEnv) -> None:
    app = four.app()
    with app.app_context():
        for n in range(15):
            app.bgq.publish("rated", {"name": f"r{n}"})  # type: ignore[attr-defined]
    jobs = drain(four, app)
    starts = sorted(j.last_attempt_at for j in jobs)
    for i, first in enumerate(starts):
        within = [t for t in starts[i:] if t - first < timedelta(seconds=1)]
        assert len(within) <= 5, (first, within)
    assert starts[-1] - starts[0] >= timedelta(seconds=2)  # 15 starts at 5/s: > 2 s
    assert all(j.number_of_attempts == 1 for j in jobs)  # waiting is not an attempt


def test_a_job_over_the_rate_waits_and_says_why(make_app: AppFactory) -> None:
    bgq = BackgroundQueue()
    bgq.callback("slowly", rate="2/m")(lambda: None)
    app = make_app(bgq)
    with app.app_context():
        ids: list[int] = []
        for _ in range(3):
            job_id = bgq.publish("slowly")
            assert job_id is not None
            ids.append(job_id)
        bgq.process()
        jobs = [bgq.get_job(i) for i in ids]
        states = [j.state if j is not None else None for j in jobs]
        assert states == [JobState.FINISHED, JobState.FINISHED, JobState.WAITING]
        shown = app.test_cli_runner().invoke(args=["bgq", "show", str(ids[2])])
    assert "rate limited: 2 per 60 s started" in shown.output
    assert "Held back by its callback's limit" in shown.output
    with app.app_context():
        job = bgq.get_job(ids[2])
        assert job is not None
        assert job.number_of_attempts == 0  # waiting, not failed


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"concurrency": 0}, "concurrency must be an integer of at least 1"),
        ({"concurrency": "2"}, "concurrency must be an integer of at least 1"),
        ({"rate": "ten a second"}, "is not of the form N/s"),
        ({"rate": "0/s"}, "is not of the form N/s"),
    ],
)
def test_a_bad_limit_fails_at_registration(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        BackgroundQueue().callback("x", **options)(lambda: None)


def test_rates_read_as_documented() -> None:
    assert [(r.count, r.seconds) for r in map(parse_rate, ["10/s", "100/m", "3/h", "5/10s"])] == [
        (10, 1),
        (100, 60),
        (3, 3600),
        (5, 10),
    ]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_rabbitmq_consumers_keep_the_concurrency_limit_too(four: ProcEnv, amqp_queue: str) -> None:
    four.config.update(BGQUEUE_BROKER_URL=AMQP_URL, BGQUEUE_QUEUE=amqp_queue)
    app = four.app()
    with app.app_context():
        for n in range(12):
            app.bgq.publish("limited", {"name": f"l{n}"})  # type: ignore[attr-defined]
    sampler = Sampler(app, "limited")
    jobs = drain(four, app, sampler)
    assert sampler.most[None] == 2
    assert all(j.number_of_attempts == 1 for j in jobs)
