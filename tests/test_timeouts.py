"""Timeouts: a callback past its limit is interrupted and fails as a temporary error; one
that cannot be interrupted makes its worker exit, its attempt recorded at once."""

from __future__ import annotations

import time

import pytest
from flask import Flask

from flask_bgqueue import ConfigurationError, JobState
from flask_bgqueue.clock import utcnow
from flask_bgqueue.timeouts import EXIT_TIMED_OUT
from tests.conftest import AMQP_URL, AppFactory, ProcEnv


def test_a_callback_past_its_timeout_fails_temporarily_with_backoff(make_app: AppFactory) -> None:
    # pytest-timeout holds SIGALRM here, so the callback is interrupted as in a job thread
    app = make_app(BGQUEUE_MAX_ATTEMPTS=2, BGQUEUE_TIMEOUT_GRACE_SECONDS=20)
    bgq = app.bgq  # type: ignore[attr-defined]
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
        bgq.process()
        job = bgq.get_job(job_id)
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
    bgq = app.bgq  # type: ignore[attr-defined]

    @bgq.callback("busy")
    def busy() -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            pass

    with app.app_context():
        job_id = bgq.publish("busy")
        bgq.process()
        job = bgq.get_job(job_id)
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
