"""The heartbeat is fenced like the outcome: it keeps alive only the attempt that beats."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask

from flask_bgqueue import BackgroundQueue, JobState
from flask_bgqueue.clock import utcnow
from flask_bgqueue.store import Claim
from tests.helpers import set_columns


def test_a_worker_whose_job_was_taken_back_does_not_beat_for_the_next_attempt(
    app: Flask, bgq: BackgroundQueue
) -> None:
    bgq.callback("noop")(lambda: None)
    job_id = bgq.publish("noop")
    assert job_id is not None
    store = bgq._state().store
    set_columns(bgq, job_id, state=JobState.PROCESSING, number_of_attempts=1)
    attempt_1 = store.get(job_id)
    assert attempt_1 is not None
    lost = Claim(attempt_1, JobState.READY)  # host-a's attempt 1, then cut off
    # Taken back as lost and claimed again elsewhere: attempt 2, beating on its own.
    beat = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    set_columns(bgq, job_id, number_of_attempts=2, heartbeat_at=beat, hostname="host-b")
    attempt_2 = store.get(job_id)
    assert attempt_2 is not None
    current = Claim(attempt_2, JobState.TEMPORARILY_FAILED)

    store.heartbeat([lost], utcnow())  # host-a is back and beats for its old claim
    job = store.get(job_id)
    assert job is not None
    assert job.heartbeat_at == beat  # host-b's attempt may still be reaped

    now = utcnow().replace(microsecond=0)
    store.heartbeat([lost, current], now)
    job = store.get(job_id)
    assert job is not None
    assert job.heartbeat_at == now
