"""Broker mode against a real RabbitMQ, with real consumer processes."""

from __future__ import annotations

import gc
import itertools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from flask_bgqueue import JobState
from tests.conftest import AMQP_URL, ProcEnv
from tests.helpers import all_jobs, stop
from tests.test_workers import wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@pytest.fixture
def rabbit(procs: ProcEnv, amqp_queue: str) -> ProcEnv:
    procs.config = {
        "BGQUEUE_BROKER_URL": AMQP_URL,
        "BGQUEUE_QUEUE": amqp_queue,
        "BGQUEUE_PRIORITIES": [10, 30],
        "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.3,
        "BGQUEUE_WORKER_LOST_AFTER_SECONDS": 2,
    }
    return procs


def rabbit_queues(prefix: str) -> dict[str, str]:
    """Name → type of the RabbitMQ queues whose name starts with ``prefix``."""
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "type", "--formatter", "json", "-q"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {q["name"]: q["type"] for q in json.loads(out) if q["name"].startswith(prefix)}


@pytest.mark.parametrize("kind", ["classic", "quorum"])
def test_queue_arguments_reach_every_declared_queue(
    rabbit: ProcEnv, amqp_queue: str, kind: str
) -> None:
    rabbit.config["BGQUEUE_AMQP_QUEUE_ARGUMENTS"] = {"x-queue-type": kind}
    app = rabbit.app()
    with app.app_context():
        app.bgq.publish("noop")  # type: ignore[attr-defined]
        app.bgq.publish("noop", available_at=timedelta(seconds=5), priority=30)  # type: ignore[attr-defined]
    worker = rabbit.start("bgq", "consume", "-j", "1")  # declares the control queue too
    worker.communicate(timeout=60)
    queues = rabbit_queues(f"bgq.{amqp_queue}.")
    assert {
        f"bgq.{amqp_queue}.10",
        f"bgq.{amqp_queue}.30.delay.3200",
        f"bgq.{amqp_queue}.control",
    } <= set(queues)
    assert set(queues.values()) == {kind}


def test_a_consumer_finishes_the_urgent_backlog_first_and_exits_after_n_jobs(
    rabbit: ProcEnv,
) -> None:
    app = rabbit.app()
    with app.app_context():
        for n in range(6):
            for p in (30, 10):
                app.bgq.publish("record", {"group": f"p{p}", "name": str(n)}, priority=p)  # type: ignore[attr-defined]
    result = rabbit.run("bgq", "consume", "-j", "12")
    assert result.returncode == 0, result.stderr
    assert "consumed 12 job(s)" in result.stdout
    assert [r[0] for r in rabbit.records()] == ["p10"] * 6 + ["p30"] * 6


def test_a_consumer_restricted_by_p_hears_only_its_priorities(rabbit: ProcEnv) -> None:
    app = rabbit.app()
    with app.app_context():
        app.bgq.publish("record", {"group": "p10", "name": "a"}, priority=10)  # type: ignore[attr-defined]
        app.bgq.publish("record", {"group": "p30", "name": "b"}, priority=30)  # type: ignore[attr-defined]
    result = rabbit.run("bgq", "consume", "-p", "30", "-j", "1")
    assert result.returncode == 0, result.stderr
    assert [r[0] for r in rabbit.records()] == ["p30"]


def test_sigterm_finishes_the_current_job_then_exits_0(rabbit: ProcEnv) -> None:
    app = rabbit.app()
    (rabbit.dir / "term.hold").touch()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        job_id = bgq.publish("slow", {"name": "term", "seconds": 60})
        worker = rabbit.start("bgq", "consume")
        wait_for(
            lambda: ["slow", "term", "start", str(worker.pid)] in rabbit.records(), what="the start"
        )
        other = bgq.publish("noop")
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        (rabbit.dir / "term.hold").unlink()
        _out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert bgq.get_job(job_id).state is JobState.FINISHED
        assert bgq.get_job(other).state is JobState.READY  # not started after the signal


def test_delayed_jobs_arrive_in_time_through_a_bounded_set_of_queues(
    rabbit: ProcEnv, amqp_queue: str
) -> None:
    app = rabbit.app()
    worker = rabbit.start("bgq", "consume")
    delays = [0.3 + 0.11 * n for n in range(25)]  # 25 distinct delays from 0.3 to 3 s
    try:
        with app.app_context():
            bgq = app.bgq  # type: ignore[attr-defined]
            ready = bgq.publish("noop")
            wait_for(lambda: bgq.get_job(ready).state is JobState.FINISHED, what="the consumer")
            published = {}
            for n, delay in enumerate(delays):
                published[str(n)] = time.time() + delay
                bgq.publish(
                    "record",
                    {"group": "d", "name": str(n)},
                    available_at=timedelta(seconds=delay),
                )
            wait_for(lambda: len(rabbit.records()) == len(delays), timeout=30, what="every job")
    finally:
        stop(worker)
    lateness = [float(start) - published[name] for _, name, start, _, _ in rabbit.records()]
    assert min(lateness) > -0.15  # never (noticeably) early
    assert max(lateness) < 1.0, " ".join(
        f"{x:.2f}" for x in lateness
    )  # within about a second of its time
    queues = rabbit_queues(f"bgq.{amqp_queue}.")
    assert len(queues) <= 2 + 24  # work + control + the fixed delay tiers, whatever the delays


def test_a_job_longer_than_the_heartbeat_keeps_the_connection(rabbit: ProcEnv) -> None:
    rabbit.config["BGQUEUE_BROKER_URL"] = AMQP_URL + "?heartbeat=1"
    app = rabbit.app()
    (rabbit.dir / "beat.hold").touch()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        slow_id = bgq.publish("slow", {"name": "beat", "seconds": 5})
        worker = rabbit.start("bgq", "consume", "-j", "2")
        wait_for(
            lambda: bgq.get_job(slow_id).state is JobState.FINISHED, timeout=30, what="the slow job"
        )
        bgq.publish("noop")
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0 and "consumed 2 job(s)" in out
    assert "lost RabbitMQ" not in err


def test_a_killed_consumer_s_job_is_recovered_by_another_consumer(rabbit: ProcEnv) -> None:
    app = rabbit.app()
    (rabbit.dir / "crash.hold").touch()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        job_id = bgq.publish("slow", {"name": "crash", "seconds": 60})
        victim = rabbit.start("bgq", "consume")
        wait_for(
            lambda: ["slow", "crash", "start", str(victim.pid)] in rabbit.records(),
            what="the start",
        )
        rescuer = rabbit.start("bgq", "consume")
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
        (rabbit.dir / "crash.hold").unlink()
        try:
            job = wait_for(
                lambda: (j := bgq.get_job(job_id)).state is JobState.FINISHED and j,
                timeout=30,
                what="the recovery",
            )
        finally:
            stop(rescuer)
    assert job.number_of_attempts == 2 and job.pid == rescuer.pid
    assert [r[2] for r in rabbit.records()] == ["start", "start", "end"]


def test_reload_consumers_makes_exactly_that_many_exit(rabbit: ProcEnv, amqp_queue: str) -> None:
    app = rabbit.app()
    workers = [rabbit.start("bgq", "consume") for _ in range(3)]
    try:
        time.sleep(3)  # all three subscribed
        result = rabbit.run("bgq", "reload-consumers", amqp_queue, "2")
        assert result.returncode == 0, result.stderr
        wait_for(
            lambda: sum(w.poll() is not None for w in workers) == 2, timeout=30, what="two exits"
        )
        time.sleep(1.5)
        running = [w for w in workers if w.poll() is None]
        assert len(running) == 1
        with app.app_context():
            bgq = app.bgq  # type: ignore[attr-defined]
            job_id = bgq.publish("noop")
            wait_for(
                lambda: bgq.get_job(job_id).state is JobState.FINISHED, what="the third at work"
            )
    finally:
        outputs = [stop(w) if w.poll() is None else w.communicate() for w in workers]
    assert sum("reload requested" in out for out, _ in outputs) == 2


# pika leaves the sockets of a connection the broker dropped to the garbage collector.
outage_sockets = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def collect_outage_sockets() -> Iterator[None]:
    """Collect those sockets while the filter above applies, not in a later test."""
    yield
    gc.collect()


@pytest.mark.exclusive
@outage_sockets
def test_with_rabbitmq_stopped_publish_succeeds_and_process_runs_the_job(
    collect_outage_sockets: None, rabbit: ProcEnv
) -> None:
    app = rabbit.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        bgq.publish("noop")  # connects the producer before the outage
        subprocess.run(
            [str(ROOT / "scripts/services.sh"), "stop", "rabbitmq"],
            check=True,
            timeout=120,
            capture_output=True,
        )
        try:
            job_id = bgq.publish("record", {"group": "outage", "name": "x"})
            assert app.extensions["bgqueue"].broker.flush(60)  # the publisher's verdict
            job = bgq.get_job(job_id)
            assert job.state is JobState.BROKER_FAILED and job.error_message.startswith("broker:")
        finally:
            subprocess.run(
                [str(ROOT / "scripts/services.sh"), "start", "rabbitmq"],
                check=True,
                timeout=300,
                capture_output=True,
            )
        result = rabbit.run("bgq", "process")
        assert result.returncode == 0, result.stderr
        assert bgq.get_job(job_id).state is JobState.FINISHED
    assert [r[:2] for r in rabbit.records()] == [["outage", "x"]]


@pytest.mark.exclusive
@outage_sockets
def test_a_rabbitmq_restart_loses_nothing_and_runs_nothing_twice(
    collect_outage_sockets: None, rabbit: ProcEnv
) -> None:
    app = rabbit.app()
    consumers = [rabbit.start("bgq", "consume") for _ in range(2)]
    counter = itertools.count()
    publishing = threading.Event()

    def publish_for_a_while() -> None:
        with app.app_context():
            while not publishing.is_set():
                app.bgq.publish("record", {"group": "r", "name": str(next(counter))})  # type: ignore[attr-defined]
                time.sleep(0.05)

    publisher = threading.Thread(target=publish_for_a_while)
    publisher.start()
    try:
        time.sleep(1)
        subprocess.run(
            [str(ROOT / "scripts/services.sh"), "restart", "rabbitmq"],
            check=True,
            timeout=300,
            capture_output=True,
        )
        time.sleep(2)
    finally:
        publishing.set()
        publisher.join()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        assert (
            rabbit.run("bgq", "process").returncode == 0
        )  # runs what the outage left BROKER_FAILED
        try:
            try:
                wait_for(
                    lambda: all(r.state == JobState.FINISHED for r in all_jobs(bgq)),
                    timeout=60,
                    what="every job finished",
                )
            except AssertionError:
                left = [
                    (r.id, r.state, r.error_message)
                    for r in all_jobs(bgq)
                    if r.state != JobState.FINISHED
                ]
                raise AssertionError(f"not finished: {left}") from None
        finally:
            for c in consumers:
                _out, err = stop(c)
                assert c.returncode == 0, err
        total = len(all_jobs(bgq))
    names = [r[1] for r in rabbit.records()]
    assert total > 20 and sorted(names, key=int) == [str(n) for n in range(total)]


def test_one_consumer_runs_a_backlog_of_one_priority_in_id_order(rabbit: ProcEnv) -> None:
    """While jobs are quick the prefetch grows; no message may fall behind later ones."""
    app = rabbit.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        with bgq.bulk():  # ids in the order of the names, sent once their rows are committed
            for n in range(300):
                bgq.publish("record", {"group": "o", "name": str(n)})
    result = rabbit.run("bgq", "consume", "-j", "300")
    assert result.returncode == 0, result.stderr
    ran = [int(name) for _, name, *_ in rabbit.records()]
    late = [i - n for i, n in enumerate(ran) if i > n]  # places behind its turn
    assert ran == list(range(300)), f"{len(late)} ran late, up to {max(late, default=0)} places"
