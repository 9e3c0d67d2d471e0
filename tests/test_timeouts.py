"""Timeouts: a callback past its limit is interrupted and fails as a temporary error; one
that cannot be interrupted makes its worker exit, its attempt recorded at once."""

from __future__ import annotations

import os
import signal
import socket
import time
from datetime import timedelta

import pytest
from flask import Flask

from flask_bgqueue import BackgroundQueue, ConfigurationError, JobState
from flask_bgqueue.clock import utcnow
from flask_bgqueue.timeouts import EXIT_TIMED_OUT
from tests.conftest import AMQP_URL, AppFactory, ProcEnv


def test_a_callback_past_its_timeout_fails_temporarily_with_backoff(make_app: AppFactory) -> None:
    # pytest-timeout holds SIGALRM here, so the callback is interrupted as in a job thread
    app = make_app(BGQUEUE_MAX_ATTEMPTS=2, BGQUEUE_TIMEOUT_GRACE_SECONDS=20)
    bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]
    ended: list[str] = []

    @bgq.callback("slow", timeout=0.3)
    def slow() -> None:
        try:
            deadline = time.time() + 30
            while time.time() < deadline:
                time.sleep(0.01)
        except Exception:
            ended.append("interrupted")  # swallowed: still timed out
        ended.append("returned")

    with app.app_context():
        job_id = bgq.publish("slow")
        assert job_id is not None
        bgq.process()
        job = bgq.get_job(job_id)
        assert job is not None
        assert ended == ["interrupted", "returned"]
        assert job.state is JobState.TEMPORARILY_FAILED
        assert job.error_message == "JobTimeout: timed out after 0.3 s"
        assert job.number_of_attempts == 1 and job.available_at > utcnow()


def test_the_default_timeout_applies_and_counts_against_max_attempts(
    make_app: AppFactory,
) -> None:
    app = make_app(
        BGQUEUE_MAX_ATTEMPTS=1,
        BGQUEUE_DEFAULT_TIMEOUT_SECONDS=0.2,
        BGQUEUE_TIMEOUT_GRACE_SECONDS=20,
    )
    bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]

    @bgq.callback("busy")
    def busy() -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            pass

    with app.app_context():
        job_id = bgq.publish("busy")
        assert job_id is not None
        bgq.process()
        job = bgq.get_job(job_id)
        assert job is not None
        assert job.state is JobState.PERMANENTLY_FAILED
        assert job.error_message == "gave up after 1 attempts: JobTimeout: timed out after 0.2 s"


def test_a_blocking_call_in_the_main_thread_is_interrupted_by_a_signal(procs: ProcEnv) -> None:
    procs.config = {"BGQUEUE_TIMEOUT_GRACE_SECONDS": 20}
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("sleeps_too_long")
    result = procs.run("bgq", "process")  # the cron sweep runs callbacks in its main thread
    assert result.returncode == 0, result.stderr
    with app.app_context():
        job = bgq.get_job(job_id)
    assert job.state is JobState.TEMPORARILY_FAILED
    assert job.error_message == "JobTimeout: timed out after 0.5 s"


def test_a_bad_timeout_is_refused_at_registration(make_app: AppFactory) -> None:
    app: Flask = make_app()
    with pytest.raises(ConfigurationError, match="timeout must be a number of seconds above 0"):
        app.bgq.callback("x", timeout=0)(lambda: None)  # type: ignore[attr-defined]


@pytest.fixture
def rabbit(procs: ProcEnv, amqp_queue: str) -> ProcEnv:
    procs.config = {
        "BGQUEUE_BROKER_URL": AMQP_URL,
        "BGQUEUE_QUEUE": amqp_queue,
        "BGQUEUE_TIMEOUT_GRACE_SECONDS": 1,
        "BGQUEUE_WORKER_LOST_AFTER_SECONDS": 600,  # so only the worker can record it
    }
    return procs


def test_a_job_thread_past_its_timeout_is_interrupted(rabbit: ProcEnv) -> None:
    app = rabbit.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("loops_too_long")
    result = rabbit.run("bgq", "consume", "-j", "1")
    assert result.returncode == 0, result.stderr
    with app.app_context():
        job = bgq.get_job(job_id)
    assert job.state is JobState.TEMPORARILY_FAILED
    assert job.error_message == "JobTimeout: timed out after 0.5 s"
    assert rabbit.records() == []


def test_a_callback_that_cannot_be_interrupted_makes_the_worker_exit_and_is_recorded(
    rabbit: ProcEnv,
) -> None:
    app = rabbit.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("sleeps_too_long")
    result = rabbit.run("bgq", "consume", "-j", "1", timeout=60)
    assert result.returncode == EXIT_TIMED_OUT, result.stderr
    assert "could not interrupt it and exited" in result.stderr
    with app.app_context():
        job = bgq.get_job(job_id)
    assert job.state is JobState.TEMPORARILY_FAILED  # recorded at once, not by the reaper
    assert job.error_message.startswith("JobTimeout: timed out after 0.5 s; pid ")
    assert job.heartbeat_at is None and job.number_of_attempts == 1
    assert rabbit.records() == []


# -- the watchdog process --------------------------------------------------------------


def watchdogs_of(pid: int) -> list[int]:
    """The pids of the watchdog processes started by process ``pid`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if any(a.endswith(b"watchdog.py") for a in argv) and str(pid).encode() in argv:
            found.append(int(entry))
    return found


def wait_until_no_watchdog_of(pid: int) -> None:
    deadline = time.monotonic() + 60
    while watchdogs_of(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watchdogs_of(pid) == [], f"the watchdog of pid {pid} was left behind"


@pytest.fixture
def gil(procs: ProcEnv) -> ProcEnv:
    procs.config = {
        "BGQUEUE_TIMEOUT_GRACE_SECONDS": 1,
        "BGQUEUE_WORKER_LOST_AFTER_SECONDS": 300,  # so only the watchdog can record it
    }
    return procs


def _a_callback_holding_the_gil_is_recorded_and_its_worker_killed(env: ProcEnv) -> None:
    app = env.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("holds_the_gil")
    consumer = env.start("bgq", "consume", "-j", "1")
    _, stderr = consumer.communicate(timeout=120)
    assert consumer.returncode == -signal.SIGKILL, stderr
    assert f"bgqueue watchdog: job {job_id} (holds_the_gil) still ran" in stderr
    assert "recorded as TEMPORARILY_FAILED; killed pid" in stderr
    with app.app_context():
        job = bgq.get_job(job_id)
    assert job.state is JobState.TEMPORARILY_FAILED
    assert job.error_message == (
        f"JobTimeout: timed out after 0.5 s; pid {consumer.pid} on {socket.gethostname()}"
        " could not interrupt it and was killed by its watchdog"
    )
    assert job.number_of_attempts == 1 and job.heartbeat_at is None
    assert job.available_at > utcnow() + timedelta(seconds=30)  # backoff: 1 min
    # written by the watchdog: the reaper would have waited 300 s since the last beat
    assert job.updated_at - job.last_attempt_at < timedelta(seconds=300)
    assert env.records() == [["holds_the_gil", "start", str(consumer.pid)]]
    wait_until_no_watchdog_of(consumer.pid)


def test_a_callback_holding_the_gil_is_recorded_timed_out_by_the_watchdog_process(
    gil: ProcEnv,
) -> None:
    _a_callback_holding_the_gil_is_recorded_and_its_worker_killed(gil)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same path as consume's
def test_flask_bgq_process_has_a_watchdog_process_too(gil: ProcEnv) -> None:
    app = gil.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("holds_the_gil")
    sweep = gil.start("bgq", "process")
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == -signal.SIGKILL, stderr
    assert "recorded as TEMPORARILY_FAILED; killed pid" in stderr
    with app.app_context():
        job = bgq.get_job(job_id)
    assert job.state is JobState.TEMPORARILY_FAILED and job.number_of_attempts == 1
    assert job.error_message.endswith("could not interrupt it and was killed by its watchdog")
    wait_until_no_watchdog_of(sweep.pid)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the databases: above
def test_a_broker_consumer_holding_the_gil_is_recorded_timed_out_by_the_watchdog_process(
    rabbit: ProcEnv,
) -> None:
    rabbit.config["BGQUEUE_WORKER_LOST_AFTER_SECONDS"] = 300
    _a_callback_holding_the_gil_is_recorded_and_its_worker_killed(rabbit)


def test_the_watchdog_process_runs_only_while_a_consumer_has_callbacks_with_timeouts(
    make_app: AppFactory,
) -> None:
    seen: dict[str, list[int]] = {}
    for name, timeout in (("without", None), ("with", 30.0)):
        app = make_app()
        bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]

        @bgq.callback("look", timeout=timeout)
        def look(name: str) -> None:
            seen[name] = watchdogs_of(os.getpid())

        with app.app_context():
            bgq.publish("look", name)
            assert bgq.consume(max_jobs=1).jobs == 1
    assert seen["without"] == []
    assert len(seen["with"]) == 1
    assert watchdogs_of(os.getpid()) == []  # closed with its consumer


def _open_files(pid: int) -> list[str]:
    """What a process has open (a descriptor it closes meanwhile, as the watchdog does with
    its look at /proc every second, is left out)."""
    opened = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            opened.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return opened


def test_the_watchdog_process_ends_when_its_worker_is_killed(gil: ProcEnv) -> None:
    app = gil.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    (gil.dir / "held.hold").touch()
    with app.app_context():
        bgq.publish("slow", {"name": "held", "seconds": 120})
    consumer = gil.start("bgq", "consume", "-j", "1")
    try:
        deadline = time.monotonic() + 60
        while ["slow", "held", "start", str(consumer.pid)] not in gil.records():
            assert time.monotonic() < deadline and consumer.poll() is None, "the job never ran"
            time.sleep(0.05)
        [watchdog] = watchdogs_of(consumer.pid)
        opened = _open_files(watchdog)
        # light: no database connection (a socket) or file (SQLite's) until it must write
        assert not [f for f in opened if f.startswith("socket:") or f.endswith(".db")], opened
    finally:
        consumer.kill()
        consumer.communicate(timeout=60)
    wait_until_no_watchdog_of(consumer.pid)


def test_a_callback_holding_the_gil_that_was_asked_to_stop_is_cancelled_by_the_watchdog(
    gil: ProcEnv,
) -> None:
    app = gil.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("holds_the_gil")
        consumer = gil.start("bgq", "consume", "-j", "1")
        deadline = time.monotonic() + 60
        while ["holds_the_gil", "start", str(consumer.pid)] not in gil.records():
            assert time.monotonic() < deadline and consumer.poll() is None, "the job never ran"
            time.sleep(0.05)
        assert bgq.cancel([job_id], by="operator") == [job_id]  # no thread of it can read it
        _, stderr = consumer.communicate(timeout=120)
        assert consumer.returncode == -signal.SIGKILL, stderr
        assert "recorded as CANCELLED; killed pid" in stderr
        job = bgq.get_job(job_id)
    assert job.state is JobState.CANCELLED and job.finished_at is not None
    assert job.cancelled_by == "operator"
    assert job.error_message.endswith("could not interrupt it and was killed by its watchdog")
    wait_until_no_watchdog_of(consumer.pid)
