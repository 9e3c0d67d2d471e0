"""Retry, retry-matching and discard change exactly the jobs they name."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from tests.conftest import AppFactory
from tests.dashboard_app import PREFIX, csrf_token, dashboard_app
from tests.helpers import all_jobs, set_columns

STATES = [
    JobState.READY,
    JobState.PROCESSING,
    JobState.FINISHED,
    JobState.TEMPORARILY_FAILED,
    JobState.PERMANENTLY_FAILED,
    JobState.WAITING,
    JobState.REDUNDANT,
    JobState.BROKER_FAILED,
    JobState.BACK_TO_BROKER,
]
RETRYABLE = {
    JobState.TEMPORARILY_FAILED,
    JobState.PERMANENTLY_FAILED,
    JobState.WAITING,
    JobState.BROKER_FAILED,
}
DISCARDABLE = {
    JobState.FINISHED,
    JobState.REDUNDANT,
    JobState.PERMANENTLY_FAILED,
    JobState.TEMPORARILY_FAILED,
}


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return dashboard_app(make_app)


@pytest.fixture
def one_per_state(app: Flask) -> dict[JobState, int]:
    """A job in every state, due in an hour (so a retry visibly makes it due now)."""
    from datetime import timedelta

    later = utcnow() + timedelta(hours=1)
    ids = {}
    with app.app_context():
        for state in STATES:
            job_id = app.bgq.publish("work", state.name)  # type: ignore[attr-defined]
            set_columns(app.bgq, job_id, state=state, available_at=later)  # type: ignore[attr-defined]
            ids[state] = int(job_id)
    return ids


def snapshot(app: Flask) -> dict[int, tuple[int, object]]:
    with app.app_context():
        return {r.id: (r.state, r.available_at) for r in all_jobs(app.bgq)}  # type: ignore[attr-defined]


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
def test_retry_now_changes_only_the_named_job_and_only_from_its_allowed_states(
    app: Flask, one_per_state: dict[JobState, int], state: JobState
) -> None:
    before = snapshot(app)
    client = app.test_client()
    job_id = one_per_state[state]
    response = client.post(f"{PREFIX}/jobs/{job_id}/retry", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 302
    after = snapshot(app)
    assert {k: v for k, v in after.items() if k != job_id} == {
        k: v for k, v in before.items() if k != job_id
    }
    notice = client.get(response.location).get_data(as_text=True)
    if state in RETRYABLE:
        assert after[job_id][0] == JobState.READY
        assert after[job_id][1] <= utcnow()  # type: ignore[operator]
        assert "is READY and due now" in notice
    else:
        assert after[job_id] == before[job_id]
        assert "was not retried" in notice


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
def test_discard_deletes_only_the_named_job_and_never_a_running_one(
    app: Flask, one_per_state: dict[JobState, int], state: JobState
) -> None:
    before = snapshot(app)
    client = app.test_client()
    job_id = one_per_state[state]
    client.post(f"{PREFIX}/jobs/{job_id}/discard", data={"csrf_token": csrf_token(client)})
    after = snapshot(app)
    expected = dict(before)
    if state in DISCARDABLE:
        del expected[job_id]
    assert after == expected


def test_retry_matching_retries_the_filtered_jobs_up_to_max_id_only(app: Flask) -> None:
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        work = [bgq.publish("work", n) for n in range(3)]
        mail = bgq.publish("send", 9)
        late = bgq.publish("work", 10)  # arrived after the person looked
        for job_id in (*work, mail, late):
            set_columns(bgq, job_id, state=JobState.PERMANENTLY_FAILED)
        set_columns(bgq, work[1], state=JobState.FINISHED)
    client = app.test_client()
    form = {
        "csrf_token": csrf_token(client),
        "state": "failed",
        "callback": "work",
        "max_id": str(work[2]),
    }
    response = client.post(f"{PREFIX}/jobs/retry", data=form)
    assert response.status_code == 302
    assert "callback=work" in response.location and "state=" in response.location
    assert "2 job(s) are READY" in client.get(response.location).get_data(as_text=True)
    states = {job_id: state for job_id, (state, _) in snapshot(app).items()}
    assert states == {
        work[0]: JobState.READY,
        work[1]: JobState.FINISHED,
        work[2]: JobState.READY,
        mail: JobState.PERMANENTLY_FAILED,
        late: JobState.PERMANENTLY_FAILED,
    }


def test_retry_matching_without_max_id_is_refused(app: Flask) -> None:
    client = app.test_client()
    response = client.post(f"{PREFIX}/jobs/retry", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 400


CANCELLABLE = {
    JobState.READY,
    JobState.WAITING,
    JobState.TEMPORARILY_FAILED,
    JobState.BROKER_FAILED,
    JobState.BACK_TO_BROKER,
}


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
def test_cancel_changes_only_the_named_job_and_asks_a_running_one_to_stop(
    app: Flask, one_per_state: dict[JobState, int], state: JobState
) -> None:
    before = snapshot(app)
    client = app.test_client()
    job_id = one_per_state[state]
    page = client.get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert (f"/jobs/{job_id}/cancel" in page) == (state in CANCELLABLE | {JobState.PROCESSING})
    client.post(f"{PREFIX}/jobs/{job_id}/cancel", data={"csrf_token": csrf_token(client)})
    after = snapshot(app)
    assert {k: v for k, v in after.items() if k != job_id} == {
        k: v for k, v in before.items() if k != job_id
    }
    with app.app_context():
        job = app.bgq.get_job(job_id)  # type: ignore[attr-defined]
    if state in CANCELLABLE:
        assert job.state is JobState.CANCELLED
        assert job.cancelled_by.startswith("dashboard (")
    elif state is JobState.PROCESSING:
        assert job.state is JobState.PROCESSING and job.cancel_requested_at is not None
    else:
        assert job.state is state and job.cancel_requested_at is None


def test_cancel_matching_cancels_the_filtered_jobs_up_to_max_id_only(app: Flask) -> None:
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        work = [bgq.publish("work", n) for n in range(3)]
        mail = bgq.publish("send", 9)
        late = bgq.publish("work", 10)  # arrived after the person looked
        set_columns(bgq, work[1], state=JobState.FINISHED)
    client = app.test_client()
    assert "/jobs/cancel" in client.get(f"{PREFIX}/jobs?callback=work").get_data(as_text=True)
    form = {"csrf_token": csrf_token(client), "callback": "work", "max_id": str(work[2])}
    response = client.post(f"{PREFIX}/jobs/cancel", data=form)
    assert response.status_code == 302
    assert "2 job(s) are cancelled" in client.get(response.location).get_data(as_text=True)
    states = {job_id: state for job_id, (state, _) in snapshot(app).items()}
    assert states == {
        work[0]: JobState.CANCELLED,
        work[1]: JobState.FINISHED,
        work[2]: JobState.CANCELLED,
        mail: JobState.READY,
        late: JobState.READY,
    }
