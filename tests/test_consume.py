"""`flask bgq consume`: without a broker (polling, LISTEN/NOTIFY), and serial groups with four
consumers on RabbitMQ."""

from __future__ import annotations

import signal
import time
import uuid

import pika
import pytest

from flask_bgqueue import JobState
from flask_bgqueue.broker.amqp import work_queue
from tests.conftest import AMQP_URL, AppFactory, ProcEnv
from tests.helpers import (
    all_jobs,
    assert_groups_in_order_without_overlap,
    publish_serial_groups,
    stop,
)
from tests.test_workers import wait_for


@pytest.fixture
def polling(procs: ProcEnv) -> ProcEnv:
    procs.config = {
        "BGQUEUE_PRIORITIES": [10, 30],
        "BGQUEUE_POLL_INTERVAL_MS": 200,
        "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.3,
        "BGQUEUE_WORKER_LOST_AFTER_SECONDS": 2,
    }
    return procs


def test_without_a_broker_consume_exits_after_n_jobs_and_gives_back_the_rest(
    polling: ProcEnv,
) -> None:
    app = polling.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        ids = [bgq.publish("record", {"group": "g", "name": str(n)}) for n in range(5)]
        result = polling.run("bgq", "consume", "-j", "3")
        assert result.returncode == 0, result.stderr
        assert "consumed 3 job(s)" in result.stdout
        states = [bgq.get_job(i).state for i in ids]
        assert states == [JobState.FINISHED] * 3 + [JobState.READY] * 2
        assert all(bgq.get_job(i).number_of_attempts == 0 for i in ids[3:])


def test_without_a_broker_consume_p_takes_only_its_priorities(polling: ProcEnv) -> None:
    app = polling.app()
    with app.app_context():
        app.bgq.publish("record", {"group": "p10", "name": "a"}, priority=10)  # type: ignore[attr-defined]
        app.bgq.publish("record", {"group": "p30", "name": "b"}, priority=30)  # type: ignore[attr-defined]
    result = polling.run("bgq", "consume", "-p", "25-", "-j", "1")
    assert result.returncode == 0, result.stderr
    assert [r[0] for r in polling.records()] == ["p30"]


def test_without_a_broker_sigterm_finishes_the_current_job_then_exits_0(polling: ProcEnv) -> None:
    app = polling.app()
    (polling.dir / "term.hold").touch()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        job_id = bgq.publish("slow", {"name": "term", "seconds": 60})
        worker = polling.start("bgq", "consume")
        wait_for(lambda: bgq.get_job(job_id).state is JobState.PROCESSING, what="the claim")
        other = bgq.publish("noop")
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        (polling.dir / "term.hold").unlink()
        _out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert bgq.get_job(job_id).state is JobState.FINISHED
        assert bgq.get_job(other).state is JobState.READY


def test_without_a_broker_a_killed_consumer_s_job_is_recovered_by_another(polling: ProcEnv) -> None:
    app = polling.app()
    (polling.dir / "crash.hold").touch()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        job_id = bgq.publish("slow", {"name": "crash", "seconds": 60})
        victim = polling.start("bgq", "consume")
        wait_for(
            lambda: ["slow", "crash", "start", str(victim.pid)] in polling.records(),
            what="the start",
        )
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
        (polling.dir / "crash.hold").unlink()
        rescuer = polling.start("bgq", "consume", "-j", "1")
        _out, err = rescuer.communicate(timeout=60)
        assert rescuer.returncode == 0, err
        job = bgq.get_job(job_id)
    assert job.state is JobState.FINISHED and job.number_of_attempts == 2


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_on_postgresql_a_new_job_wakes_an_idle_consumer_at_once(polling: ProcEnv) -> None:
    polling.config["BGQUEUE_POLL_INTERVAL_MS"] = 60_000  # without NOTIFY it would sleep a minute
    app = polling.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        worker = polling.start("bgq", "consume", "-j", "2")
        first = bgq.publish("noop")
        wait_for(
            lambda: bgq.get_job(first).state is JobState.FINISHED, timeout=30, what="the first"
        )
        time.sleep(0.5)  # the consumer is now waiting
        started = time.monotonic()
        second = bgq.publish("noop")
        wait_for(
            lambda: bgq.get_job(second).state is JobState.FINISHED, timeout=10, what="the wake-up"
        )
        assert time.monotonic() - started < 5  # not the minute of the poll interval
        _out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err


def _consumers_of(queue: str) -> int:
    """How many consumers RabbitMQ counts on ``queue`` (0 while it does not exist)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:  # not declared yet
        return 0
    finally:
        if connection.is_open:
            connection.close()


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_four_rabbitmq_consumers_keep_serial_groups_in_order_without_overlap(
    procs: ProcEnv, amqp_queue: str
) -> None:
    procs.config = {
        "BGQUEUE_BROKER_URL": AMQP_URL,
        "BGQUEUE_QUEUE": amqp_queue,
        "BGQUEUE_PRIORITIES": [1, 2],
        "BGQUEUE_WAITING_JOB_EXPIRATION_MS": 100,
    }
    app = procs.app()
    groups = [f"g{n}" for n in range(8)]
    consumers = [procs.start("bgq", "consume") for _ in range(4)]
    try:
        # all four subscribed before the first job, so that none takes every job alone
        wait_for(
            lambda: _consumers_of(work_queue(amqp_queue, 1)) == 4,
            timeout=60,
            what="four consumers",
        )
        with app.app_context():
            bgq = app.bgq  # type: ignore[attr-defined]
            # in one INSERT: published one by one, a group's "c" could run before its
            # more urgent "d" exists (the order is decided among the jobs that exist)
            with bgq.bulk():
                publish_serial_groups(bgq, groups, pause=0.01)
            wait_for(
                lambda: all(r.state == JobState.FINISHED for r in all_jobs(bgq)),
                timeout=120,
                what="every job",
            )
    finally:
        for c in consumers:
            stop(c)
    records = procs.records()
    assert len({r[4] for r in records}) > 1
    assert_groups_in_order_without_overlap(records, groups)


def test_a_batch_of_delivered_ids_is_claimed_with_groups_twins_and_duplicates_checked(
    make_app: AppFactory,
) -> None:
    app = make_app(
        BGQUEUE_BROKER_URL=f"memory://{uuid.uuid4().hex}", BGQUEUE_WAITING_JOB_EXPIRATION_MS=50
    )
    ran: list[str] = []
    app.bgq.callback("work")(ran.append)  # type: ignore[attr-defined]
    state = app.extensions["bgqueue"]
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        plain = [bgq.publish("work", f"p{n}") for n in range(3)]
        first, second = (bgq.publish("work", f"g{n}", serial_group="g") for n in (1, 2))
        twin, duplicate = (bgq.publish("work", u, identifier="u", is_unique=True) for u in "uv")
        state.broker.publish(state.settings.queue, state.settings.priorities[0], plain[0])
        result = bgq.consume(max_jobs=6)  # the memory broker hands over up to 6 ids at once
        jobs = {i: bgq.get_job(i) for i in (*plain, first, second, twin, duplicate)}
    assert result.jobs == 6
    assert sorted(ran) == ["g1", "g2", "p0", "p1", "p2", "u"]
    assert ran.index("g1") < ran.index("g2")
    assert jobs[duplicate].state is JobState.REDUNDANT
    assert all(
        j.state is JobState.FINISHED and j.number_of_attempts == 1
        for i, j in jobs.items()
        if i != duplicate
    )


@pytest.mark.parametrize("broker", [None, "memory://queue-names"])
@pytest.mark.parametrize("name", ["mail", "default_mail"])
def test_consume_queue_means_the_same_with_and_without_a_broker(
    make_app: AppFactory, broker: str | None, name: str
) -> None:
    from flask_bgqueue import BackgroundQueue

    bgq = BackgroundQueue()
    ran: list[str] = []

    @bgq.callback
    def plain(n: int) -> None:
        ran.append(f"plain {n}")

    @bgq.callback(queue="mail")
    def mail(n: int) -> None:
        ran.append(f"mail {n}")

    app = make_app(bgq, BGQUEUE_BROKER_URL=broker, BGQUEUE_POLL_INTERVAL_MS=50)
    with app.app_context():
        for n in range(2):
            bgq.publish("plain", n)
            bgq.publish("mail", n)
        result = bgq.consume(name, max_jobs=2)
    assert result.jobs == 2
    assert ran == ["mail 0", "mail 1"]  # never a job of the main queue


def test_consume_warns_when_the_queue_is_none_this_app_publishes_to(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    app = make_app(BGQUEUE_POLL_INTERVAL_MS=50)
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("noop")(lambda: None)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with app.app_context():
        job_id = bgq.publish("noop")
        result = bgq.consume("typo", stop=stop)
        assert bgq.get_job(job_id).state is JobState.READY
    assert result.jobs == 0
    assert "queue 'typo' is none this app publishes to (default)" in caplog.text


def test_consume_says_who_it_is_in_one_line_without_a_password(
    polling: ProcEnv, amqp_queue: str
) -> None:
    polling.config.update(BGQUEUE_BROKER_URL=AMQP_URL, BGQUEUE_QUEUE=amqp_queue)
    app = polling.app()
    with app.app_context():
        app.bgq.publish("noop")  # type: ignore[attr-defined]
    result = polling.run("bgq", "consume", "-j", "1")
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("bgqueue consumer pid ")
    assert f"queue {amqp_queue}, priorities 10,30, broker, RabbitMQ amqp://bgqueue:***@" in first
    assert ":bgqueue@" not in result.stderr


@pytest.mark.parametrize("broker", [False, True])
def test_a_second_sigint_stops_at_once_and_the_job_is_due_again_at_once(
    polling: ProcEnv, amqp_queue: str, broker: bool
) -> None:
    from flask_bgqueue.clock import utcnow

    if broker:
        polling.config.update(BGQUEUE_BROKER_URL=AMQP_URL, BGQUEUE_QUEUE=amqp_queue)
    polling.config["BGQUEUE_WORKER_LOST_AFTER_SECONDS"] = 3600  # no reaper would help
    app = polling.app()
    (polling.dir / "cold.hold").touch()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        job_id = bgq.publish("slow", {"name": "cold", "seconds": 60})
        waiting = bgq.publish("noop", available_at=utcnow())
        worker = polling.start("bgq", "consume")
        wait_for(lambda: any(r[:3] == ["slow", "cold", "start"] for r in polling.records()))
        worker.send_signal(signal.SIGINT)  # warm: would wait for the job
        time.sleep(0.3)
        assert worker.poll() is None
        began = time.monotonic()
        worker.send_signal(signal.SIGINT)  # cold: now
        _out, err = worker.communicate(timeout=20)
        assert worker.returncode == 130, err
        assert time.monotonic() - began < 10  # the job holds for 60 s
        job = bgq.get_job(job_id)
        assert job.state is JobState.TEMPORARILY_FAILED
        assert job.error_message.startswith("interrupted: pid ")
        assert job.available_at <= utcnow() and job.number_of_attempts == 1
        assert bgq.get_job(waiting).state in (JobState.READY, JobState.FINISHED)
        (polling.dir / "cold.hold").unlink()
        polling.config.pop("BGQUEUE_BROKER_URL", None)
        result = polling.run("bgq", "process")  # due at once: no lost-worker wait
        assert result.returncode == 0, result.stderr
        assert bgq.get_job(job_id).state is JobState.FINISHED
    assert "cold 2 True" in (polling.dir / "attempts.txt").read_text().splitlines()
