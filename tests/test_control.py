"""Control over work in flight: cancellation (and what a cancelled job never does)."""

from __future__ import annotations

import time

import pytest
from flask import Flask

from flask_bgqueue import BackgroundQueue, JobState
from tests.conftest import AMQP_URL, AppFactory, ProcEnv
from tests.helpers import set_columns
from tests.test_workers import wait_for

NOT_RUNNING = [
    JobState.READY,
    JobState.WAITING,
    JobState.TEMPORARILY_FAILED,
    JobState.BROKER_FAILED,
    JobState.BACK_TO_BROKER,
]
OVER = [JobState.FINISHED, JobState.PERMANENTLY_FAILED, JobState.REDUNDANT]


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    app = make_app()
    ran: list[int] = []
    app.ran = ran  # type: ignore[attr-defined]
    bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]

    @bgq.callback("work")
    def work(n: int) -> None:
        ran.append(n)

    return app


def test_cancel_ends_jobs_not_running_cancelled_and_they_never_run(app: Flask) -> None:
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        ids = {}
        for n, state in enumerate(NOT_RUNNING + OVER):
            ids[state] = bgq.publish("work", {"n": n})
            set_columns(bgq, ids[state], state=state)
        done = bgq.cancel(list(ids.values()), by="the test")
        assert sorted(done) == sorted(ids[s] for s in NOT_RUNNING)
        for state in NOT_RUNNING:
            job = bgq.get_job(ids[state])
            assert job.state is JobState.CANCELLED
            assert job.cancelled_by == "the test"
            assert job.cancel_requested_at is not None and job.finished_at is not None
        for state in OVER:
            assert bgq.get_job(ids[state]).state is state
        make_all_due = {s: ids[s] for s in NOT_RUNNING}
        for job_id in make_all_due.values():
            set_columns(bgq, job_id, available_at=bgq.get_job(job_id).created_at)
        bgq.process()
        assert app.ran == []  # type: ignore[attr-defined]
        assert bgq.cancel([ids[JobState.READY]]) == []  # over already: left alone
        # never retried, and removed by clear-finished like the finished ones
        from flask_bgqueue.inspection import Inspector

        assert Inspector(bgq).retry([ids[JobState.READY]]) == []
        assert bgq.clear_finished() == len(NOT_RUNNING) + 2  # + FINISHED, REDUNDANT


def test_cancel_by_default_names_this_process(app: Flask) -> None:
    import os

    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("work", {"n": 1})
        assert bgq.cancel([job_id]) == [job_id]
        assert bgq.get_job(job_id).cancelled_by.startswith(f"pid {os.getpid()} on ")


def test_a_running_callback_sees_cancel_requested_within_a_heartbeat_and_ends_cancelled(
    procs: ProcEnv,
) -> None:
    interval = 0.3
    procs.config = {"BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": interval}
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("until_cancelled", {"name": "c", "seconds": 60})
        worker = procs.start("bgq", "consume", "-j", "1")
        cancelled = procs.dir / "cancelled.txt"
        wait_for(lambda: cancelled.exists() and "start" in cancelled.read_text(), what="start")
        asked = time.time()
        assert bgq.cancel([job_id], by="operator") == [job_id]
        assert bgq.get_job(job_id).state is JobState.PROCESSING  # asked, still running
        assert bgq.cancel([job_id]) == []  # asked before
        _out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        seen = [line.split() for line in cancelled.read_text().splitlines() if " seen " in line]
        assert len(seen) == 1
        # within one heartbeat interval (plus the time a beat's queries take)
        assert float(seen[0][2]) - asked < interval + 1.0
        job = bgq.get_job(job_id)
        assert job.state is JobState.CANCELLED
        assert job.cancelled_by == "operator" and job.cancel_requested_at is not None
        assert job.finished_at is not None


def test_flask_bgq_cancel_cancels_and_names_what_it_could_not(procs: ProcEnv) -> None:
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        ready = bgq.publish("noop")
        over = bgq.publish("noop")
        set_columns(bgq, over, state=JobState.FINISHED)
    result = procs.run("bgq", "cancel", str(ready), str(over))
    assert "cancelled 1 job(s)" in result.stdout
    assert (
        result.returncode != 0 and "not cancelled" in result.stderr and str(over) in result.stderr
    )
    with app.app_context():
        job = bgq.get_job(ready)
        assert job.state is JobState.CANCELLED
        assert job.cancelled_by.startswith("flask bgq cancel (")
    shown = procs.run("bgq", "show", str(ready))
    assert "CANCELLED (9)" in shown.stdout and "by flask bgq cancel" in shown.stdout


@pytest.mark.parametrize("db_url", ["postgresql", "mysql", "sqlite"], indirect=True)
def test_a_cancelled_job_whose_broker_message_is_in_flight_never_runs(
    procs: ProcEnv, amqp_queue: str
) -> None:
    procs.config = {"BGQUEUE_BROKER_URL": AMQP_URL, "BGQUEUE_QUEUE": amqp_queue}
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        first = bgq.publish("record", {"group": "g", "name": "cancelled"})  # id sent now
        second = bgq.publish("record", {"group": "g", "name": "runs"})
        assert bgq.cancel([first]) == [first]
    result = procs.run("bgq", "consume", "-j", "1")
    assert result.returncode == 0, result.stderr
    assert [r[1] for r in procs.records()] == ["runs"]
    with app.app_context():
        assert bgq.get_job(first).state is JobState.CANCELLED
        assert bgq.get_job(second).state is JobState.FINISHED


def test_a_cancelled_job_explains_who_cancelled_it(app: Flask) -> None:
    from flask_bgqueue.inspection import Inspector

    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("work", {"n": 1})
        bgq.cancel([job_id], by="ops")
        reasons = Inspector(bgq).why_not_running(bgq.get_job(job_id))
    assert [r.code for r in reasons] == ["cancelled"]
    assert "Cancelled by ops" in reasons[0].text


def test_a_job_asked_to_stop_whose_worker_was_killed_is_cancelled_by_the_reaper(
    procs: ProcEnv,
) -> None:
    # "slow" never reads cancel_requested: only the reaper can end it
    procs.config = {
        "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.2,
        "BGQUEUE_WORKER_LOST_AFTER_SECONDS": 2,
    }
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    (procs.dir / "held.hold").touch()
    with app.app_context():
        job_id = bgq.publish("slow", {"name": "held", "seconds": 120})
        worker = procs.start("bgq", "consume", "-j", "1")
        try:
            wait_for(
                lambda: ["slow", "held", "start", str(worker.pid)] in procs.records(), what="run"
            )
            assert bgq.cancel([job_id], by="operator") == [job_id]
        finally:
            worker.kill()  # SIGKILL: nothing of the worker runs after it
            worker.communicate(timeout=60)
        assert bgq.get_job(job_id).state is JobState.PROCESSING  # until the reaper comes
        deadline = time.monotonic() + 60
        while bgq.get_job(job_id).state is JobState.PROCESSING:
            assert time.monotonic() < deadline, "the reaper never took the job back"
            bgq.process()  # the cron sweep reaps once the heartbeat is 2 s old
            time.sleep(0.2)
        job = bgq.get_job(job_id)
    assert job.state is JobState.CANCELLED  # not retried
    assert job.cancelled_by == "operator" and job.cancel_requested_at is not None
    assert job.finished_at is not None and job.number_of_attempts == 1
    assert job.error_message == (
        f"worker lost: pid {worker.pid} on {job.hostname} stopped without saving the job"
        " (cancel was asked)"
    )
    assert [r for r in procs.records() if r[2] == "start"] == [
        ["slow", "held", "start", str(worker.pid)]  # it never ran again
    ]
