"""Real `flask bgq …` processes: crashes, slow jobs, the host lock, the commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from tests.conftest import ProcEnv
from tests.helpers import set_columns


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fast_recovery(procs: ProcEnv) -> ProcEnv:
    procs.config = {
        "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.3,
        "BGQUEUE_WORKER_LOST_AFTER_SECONDS": 2,
    }
    return procs


def test_a_job_of_a_killed_worker_is_recovered_as_worker_lost_and_finishes(
    fast_recovery: ProcEnv,
) -> None:
    procs = fast_recovery
    # 5 s, not 2: the early `process` below must reach its sweep inside the window, and a
    # process start alone can take 2 s on a loaded machine
    procs.config["BGQUEUE_WORKER_LOST_AFTER_SECONDS"] = LOST_AFTER = 5
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    (procs.dir / "crash.hold").touch()
    with app.app_context():
        job_id = bgq.publish("slow", {"name": "crash", "seconds": 60})
        worker = procs.start("bgq", "process")
        wait_for(lambda: bgq.get_job(job_id).state is JobState.PROCESSING, what="the claim")
        wait_for(
            lambda: ["slow", "crash", "start", str(worker.pid)] in procs.records(), what="the start"
        )
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate()
        (procs.dir / "crash.hold").unlink()

        early = procs.run("bgq", "process")  # right after the crash: the heartbeat is fresh
        assert early.returncode == 0, early.stderr
        assert bgq.get_job(job_id).state is JobState.PROCESSING

        time.sleep(LOST_AFTER + 0.2)
        later = procs.run("bgq", "process")
        assert later.returncode == 0, later.stderr
        assert "recovered 1 job(s) of lost workers" in later.stdout
        job = bgq.get_job(job_id)
    assert job.state is JobState.FINISHED
    assert job.number_of_attempts == 2  # the lost attempt counts
    starts = [r for r in procs.records() if r[2] == "start"]
    assert len(starts) == 2
    # The re-run knows the attempt before it was lost with its worker (at-least-once).
    attempts = (procs.dir / "attempts.txt").read_text().split("\n")
    assert attempts[:2] == ["crash 1 False", "crash 2 True"]


def test_worker_lost_is_recorded_before_the_retry(fast_recovery: ProcEnv) -> None:
    app = fast_recovery.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("noop", available_at=timedelta(hours=1))
        stale = utcnow() - timedelta(seconds=5)
        set_columns(
            bgq,
            job_id,
            state=JobState.PROCESSING,
            heartbeat_at=stale,
            pid=999999,
            hostname="gone-host",
            number_of_attempts=1,
        )
        store = bgq._state().store
        reaped = store.reap_lost(utcnow(), timedelta(seconds=2), None)
        job = bgq.get_job(job_id)
    assert reaped == [job_id]
    assert job.state is JobState.TEMPORARILY_FAILED and job.number_of_attempts == 1
    assert (
        job.error_message == "worker lost: pid 999999 on gone-host stopped without saving the job"
    )
    assert job.available_at <= utcnow()


def test_a_slow_job_in_a_live_worker_is_never_taken_from_it(fast_recovery: ProcEnv) -> None:
    procs = fast_recovery
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    (procs.dir / "long.hold").touch()
    with app.app_context():
        job_id = bgq.publish("slow", {"name": "long", "seconds": 60})
        worker = procs.start("bgq", "process")
        wait_for(lambda: bgq.get_job(job_id).state is JobState.PROCESSING, what="the claim")
        # Longer than BGQUEUE_WORKER_LOST_AFTER_SECONDS, with sweeps of other processes.
        for _ in range(3):
            time.sleep(1.2)
            other = procs.run("sweep")
            assert other.returncode == 0, other.stderr
            assert bgq.get_job(job_id).state is JobState.PROCESSING
        (procs.dir / "long.hold").unlink()
        _out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        job = bgq.get_job(job_id)
    assert job.state is JobState.FINISHED and job.number_of_attempts == 1
    assert [r[2] for r in procs.records()] == ["start", "end"]


def test_a_second_process_run_exits_0_at_once_while_one_is_running(procs: ProcEnv) -> None:
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    (procs.dir / "busy.hold").touch()
    with app.app_context():
        job_id = bgq.publish("slow", {"name": "busy", "seconds": 60})
        first = procs.start("bgq", "process")
        wait_for(lambda: bgq.get_job(job_id).state is JobState.PROCESSING, what="the claim")
        started = time.monotonic()
        second = procs.run("bgq", "process", "-v")
        assert second.returncode == 0 and "already running" in second.stdout
        assert time.monotonic() - started < 10
        (procs.dir / "busy.hold").unlink()
        first.communicate(timeout=60)
        assert bgq.get_job(job_id).state is JobState.FINISHED


HOLD_LOCK = """
import sys, time
from flask_bgqueue.locks import host_lock
with host_lock(sys.argv[1], sys.argv[2]) as held:
    print("held" if held else "busy", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("command", ["process", "clear-finished", "update-schema"])
def test_each_command_skips_while_locked_and_a_killed_holder_never_blocks(
    procs: ProcEnv, command: str
) -> None:
    table = procs.env["PROCAPP_TABLE"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(procs.dir), f"bgqueue-{table}-{command}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    busy = procs.run("bgq", command, *(["-v"] if command == "process" else []))
    assert busy.returncode == 0 and "already running on this host" in busy.stdout
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    free = procs.run("bgq", command)
    assert free.returncode == 0, free.stderr
    assert "already running" not in free.stdout


def test_clear_finished_deletes_finished_redundant_and_cancelled_only(procs: ProcEnv) -> None:
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        ids = {state: bgq.publish("noop") for state in JobState}
        old = bgq.publish("noop")
        for state, job_id in ids.items():
            set_columns(bgq, job_id, state=state, finished_at=utcnow() - timedelta(days=1))
        set_columns(bgq, old, state=JobState.FINISHED, finished_at=utcnow() - timedelta(days=10))

        result = procs.run("bgq", "clear-finished", "5")
        assert result.returncode == 0 and "deleted 1 finished job(s)" in result.stdout
        assert bgq.get_job(old) is None and bgq.get_job(ids[JobState.FINISHED]) is not None

        result = procs.run("bgq", "clear-finished")
        assert "deleted 3 finished job(s)" in result.stdout
        left = {state for state, job_id in ids.items() if bgq.get_job(job_id) is not None}
    assert left == set(JobState) - {JobState.FINISHED, JobState.REDUNDANT, JobState.CANCELLED}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("spec", "runs"),
    [("10", ["p10"]), ("20-40", ["p20", "p30"]), ("25-", ["p30", "p50"]), ("-20", ["p10", "p20"])],
)
def test_process_priority_spec_selects_configured_priorities(
    procs: ProcEnv, spec: str, runs: list[str]
) -> None:
    procs.config = {"BGQUEUE_PRIORITIES": [10, 20, 30, 50]}
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        for p in (10, 20, 30, 50):
            bgq.publish("record", {"group": "p", "name": f"p{p}"}, priority=p)
    result = procs.run("bgq", "process", "-p", spec)
    assert result.returncode == 0, result.stderr
    assert [r[1] for r in procs.records()] == runs


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("spec", ["15", "60-", "abc", "40-20"])
def test_a_priority_spec_matching_nothing_is_a_click_error_listing_the_priorities(
    procs: ProcEnv, spec: str
) -> None:
    procs.config = {"BGQUEUE_PRIORITIES": [10, 20, 30, 50]}
    result = procs.run("bgq", "process", "-p", spec)
    assert result.returncode == 2
    assert "configured priorities: 10, 20, 30, 50" in result.stderr
    assert "Traceback" not in result.stderr


def test_update_schema_command_creates_the_table(procs: ProcEnv) -> None:
    result = procs.run("bgq", "update-schema")
    assert result.returncode == 0 and "job table upgraded" in result.stdout
    again = procs.run("bgq", "update-schema")
    assert "already up to date" in again.stdout
