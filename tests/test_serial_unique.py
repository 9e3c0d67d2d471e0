"""Serial groups and unique jobs, in one process and with four processes at once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask

from flask_bgqueue import JobState
from tests.conftest import AppFactory, ProcEnv
from tests.helpers import (
    CANONICAL,
    all_jobs,
    assert_groups_in_order_without_overlap,
    make_due,
    publish_serial_groups,
)


@pytest.fixture
def gapp(make_app: AppFactory) -> Any:
    app = make_app(BGQUEUE_PRIORITIES=[1, 2], BGQUEUE_WAITING_JOB_EXPIRATION_MS=50)
    with app.app_context():
        yield app


def test_a_serial_group_runs_by_priority_then_publishing_order(gapp: Flask) -> None:
    bgq = gapp.bgq  # type: ignore[attr-defined]
    ran = []
    bgq.callback("step")(lambda name: ran.append(name))
    for name, priority in CANONICAL:
        bgq.publish("step", [name], serial_group="invoice-42", priority=priority)
    bgq.process()
    assert ran == list("abdegcf")


def test_a_job_waits_while_an_earlier_job_of_its_group_is_pending(gapp: Flask) -> None:
    bgq = gapp.bgq  # type: ignore[attr-defined]
    bgq.callback("step")(lambda name: None)
    first = bgq.publish("step", ["first"], serial_group="g", available_at=_later())
    second = bgq.publish("step", ["second"], serial_group="g")
    bgq.process()
    job = bgq.get_job(second)
    assert job.state is JobState.WAITING and job.error_message == f"waiting for job {first}"
    assert job.number_of_attempts == 0


@pytest.mark.parametrize(
    "state", [JobState.FINISHED, JobState.REDUNDANT, JobState.PERMANENTLY_FAILED]
)
def test_finished_redundant_and_failed_jobs_do_not_block_their_group(
    gapp: Flask, state: JobState
) -> None:
    from tests.helpers import set_columns

    bgq = gapp.bgq  # type: ignore[attr-defined]
    bgq.callback("step")(lambda name: None)
    first = bgq.publish("step", ["first"], serial_group="g")
    set_columns(bgq, first, state=state)
    second = bgq.publish("step", ["second"], serial_group="g")
    bgq.process()
    assert bgq.get_job(second).state is JobState.FINISHED


@pytest.mark.parametrize(
    "state", [JobState.PROCESSING, JobState.TEMPORARILY_FAILED, JobState.BACK_TO_BROKER]
)
def test_processing_or_pending_earlier_jobs_block_their_group(gapp: Flask, state: JobState) -> None:
    from tests.helpers import set_columns

    bgq = gapp.bgq  # type: ignore[attr-defined]
    bgq.callback("step")(lambda name: None)
    first = bgq.publish("step", ["first"], serial_group="g")
    set_columns(bgq, first, state=state, available_at=_later(), heartbeat_at=_later())
    second = bgq.publish("step", ["second"], serial_group="g")
    bgq.process()
    assert bgq.get_job(second).state is JobState.WAITING


def test_a_blocked_group_does_not_hold_up_other_groups(gapp: Flask) -> None:
    bgq = gapp.bgq  # type: ignore[attr-defined]
    ran = []
    bgq.callback("step")(lambda name: ran.append(name))
    bgq.publish("step", ["blocker"], serial_group="slow", available_at=_later())
    bgq.publish("step", ["blocked"], serial_group="slow")
    bgq.publish("step", ["free"], serial_group="fast")
    bgq.publish("step", ["loose"])
    bgq.process()
    assert ran == ["free", "loose"]


def test_only_the_oldest_unique_job_runs_younger_ones_are_redundant(gapp: Flask) -> None:
    bgq = gapp.bgq  # type: ignore[attr-defined]
    ran = []
    bgq.callback("sync")(lambda n: ran.append(n))
    oldest = bgq.publish("sync", [1], identifier="sync-7", is_unique=True)
    younger = [bgq.publish("sync", [n], identifier="sync-7", is_unique=True) for n in (2, 3)]
    plain = [bgq.publish("sync", [n], identifier="sync-7") for n in (4, 5)]
    bgq.process()
    assert sorted(ran) == [1, 4, 5]
    assert bgq.get_job(oldest).state is JobState.FINISHED
    for job_id in younger:
        job = bgq.get_job(job_id)
        assert job.state is JobState.REDUNDANT and job.number_of_attempts == 0
        assert job.finished_at is not None
    assert all(bgq.get_job(j).state is JobState.FINISHED for j in plain)


def test_a_unique_job_is_redundant_even_when_the_older_one_finished(gapp: Flask) -> None:
    bgq = gapp.bgq  # type: ignore[attr-defined]
    bgq.callback("sync")(lambda: None)
    bgq.publish("sync", identifier="u", is_unique=True)
    bgq.process()
    later = bgq.publish("sync", identifier="u", is_unique=True)
    bgq.process()
    assert bgq.get_job(later).state is JobState.REDUNDANT


def _later() -> Any:
    from datetime import timedelta

    from flask_bgqueue.clock import utcnow

    return utcnow() + timedelta(hours=1)


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_four_processes_never_overlap_within_a_group_and_keep_its_order(procs: ProcEnv) -> None:
    procs.config = {"BGQUEUE_PRIORITIES": [1, 2], "BGQUEUE_WAITING_JOB_EXPIRATION_MS": 50}
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    groups = [f"g{n}" for n in range(12)]
    with app.app_context():
        with bgq.bulk():
            publish_serial_groups(bgq, groups, pause=0.01)  # interleaved
            for n in range(40):  # jobs without a group run in between
                # each waits until two workers have started a job: however late the
                # others start, the first cannot take every job alone
                bgq.publish("record", {"group": "free", "name": str(n), "meet": 2})
        for _round in range(20):
            workers = [procs.start("sweep") for _ in range(4)]
            for w in workers:
                _out, err = w.communicate(timeout=120)
                assert w.returncode == 0, err
            left = [r for r in all_jobs(bgq) if r.state != JobState.FINISHED]
            if not left:
                break
            time.sleep(0.06)
            make_due(bgq)
        assert not left
    records = procs.records()
    assert len(records) == 12 * 7 + 40
    assert len({pid for *_, pid in records}) > 1  # the work really was shared
    assert_groups_in_order_without_overlap(records, groups)
