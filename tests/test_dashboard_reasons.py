"""'Why is this job not running?': each answer, on the job page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask import Flask

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from tests.conftest import AppFactory
from tests.dashboard_app import PREFIX, dashboard_app
from tests.helpers import set_columns


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return dashboard_app(make_app)


def reasons(app: Flask, job_id: int) -> list[str]:
    html = app.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    items = re.findall(r'<li class="why-[a-z_]+">(.*?)</li>', html, re.S)
    return [re.sub(r"<[^>]+>", "", item).replace("&#39;", "'") for item in items]


def publish(app: Flask, *args: object, **kw: object) -> int:
    with app.app_context():
        return int(app.bgq.publish(*args, **kw))  # type: ignore[attr-defined]


def test_a_job_whose_time_has_not_come_waits_for_it(app: Flask) -> None:
    job_id = publish(app, "work", 1, available_at=timedelta(hours=2))
    [text] = reasons(app, job_id)
    assert text.startswith("Waiting for its time: it becomes due at ")
    assert text.endswith("(in 1 h).") or text.endswith("(in 2 h).")


def test_a_job_behind_another_of_its_serial_group_names_that_job(app: Flask) -> None:
    first = publish(app, "work", 1, serial_group="invoice-1")
    second = publish(app, "work", 2, serial_group="invoice-1")
    assert reasons(app, second) == [
        f"Blocked by job {first} of its serial group 'invoice-1': it runs after that one is"
        " finished, redundant or failed for good."
    ]
    html = app.test_client().get(f"{PREFIX}/jobs/{second}").get_data(as_text=True)
    assert f'<a href="{PREFIX}/jobs/{first}">job {first}</a>' in html


def test_a_unique_duplicate_names_the_older_job(app: Flask) -> None:
    first = publish(app, "work", 1, identifier="report-3", is_unique=True)
    second = publish(app, "work", 2, identifier="report-3", is_unique=True)
    assert reasons(app, second) == [
        f"Duplicate of job {first} (unique identifier 'report-3'): a worker will mark it"
        " REDUNDANT instead of running it."
    ]
    with app.app_context():
        app.bgq.process()  # type: ignore[attr-defined]
    assert reasons(app, second) == [
        f"Duplicate of job {first} (unique identifier 'report-3'): it was skipped and will"
        " never run."
    ]


def test_a_job_without_a_callback_in_this_app_says_so(app: Flask) -> None:
    job_id = publish(app, "work", 1)
    with app.app_context():
        set_columns(app.bgq, job_id, callback_name="legacy_import")  # type: ignore[attr-defined]
    [text] = reasons(app, job_id)
    assert text.startswith("No callback named 'legacy_import' is registered in this app")


def test_a_permanently_failed_job_failed_for_good(app: Flask) -> None:
    job_id = publish(app, "work", 1)
    with app.app_context():
        set_columns(
            app.bgq,  # type: ignore[attr-defined]
            job_id,
            state=JobState.PERMANENTLY_FAILED,
            error_message="PermanentError: the customer is gone",
        )
    assert reasons(app, job_id) == [
        "Failed for good: PermanentError: the customer is gone. It runs again only if"
        " someone retries it."
    ]


def test_a_finished_job_is_finished(app: Flask) -> None:
    job_id = publish(app, "work", 1)
    with app.app_context():
        app.bgq.process()  # type: ignore[attr-defined]
    [text] = reasons(app, job_id)
    assert text.startswith("Finished at ") and text.endswith("Nothing left to do.")


def test_a_due_job_waits_for_the_next_process_run(app: Flask) -> None:
    job_id = publish(app, "work", 1)
    [text] = reasons(app, job_id)
    assert text.startswith("Due since ")
    assert "the next 'flask bgq process' run" in text


def test_a_temporarily_failed_job_says_when_it_is_retried(app: Flask) -> None:
    app.failing.add(1)  # type: ignore[attr-defined]
    job_id = publish(app, "work", 1)
    with app.app_context():
        app.bgq.process()  # type: ignore[attr-defined]
    [text] = reasons(app, job_id)
    assert text.startswith("After failed attempt 1, it is retried at ")


def test_a_processing_job_names_its_worker_and_a_lost_one_says_so(app: Flask) -> None:
    job_id = publish(app, "work", 1)
    now = utcnow()
    with app.app_context():
        set_columns(
            app.bgq,  # type: ignore[attr-defined]
            job_id,
            state=JobState.PROCESSING,
            pid=4242,
            hostname="web-3",
            last_attempt_at=now,
            heartbeat_at=now,
        )
    [text] = reasons(app, job_id)
    assert text.startswith("Running now: pid 4242 on web-3 since ")
    with app.app_context():
        set_columns(app.bgq, job_id, heartbeat_at=now - timedelta(minutes=5))  # type: ignore[attr-defined]
    [text] = reasons(app, job_id)
    assert text.startswith("Claimed by pid 4242 on web-3, whose last heartbeat was 5 min ago")
