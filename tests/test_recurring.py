"""The original's RECURRING mode: a finished job is published again, a failed one is not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask

from flask_bgqueue import Job, JobState, PublishError
from flask_bgqueue.clock import utcnow
from tests.conftest import AppFactory
from tests.helpers import make_due


def recurring_app(make_app: AppFactory) -> Flask:
    app = make_app(BGQUEUE_WAITING_JOB_EXPIRATION_MS=60_000)
    calls: list[str] = []

    def sync(source: str) -> None:
        calls.append(source)
        if source == "broken":
            raise ValueError("no")

    app.bgq.callback("sync")(sync)  # type: ignore[attr-defined]
    app.calls = calls  # type: ignore[attr-defined]
    return app


def jobs(app: Flask) -> list[Job]:
    store = app.extensions["bgqueue"].store
    return [store.get(i) for i in range(1, 10) if store.get(i) is not None]


def test_a_finished_recurring_job_is_published_again_later(make_app: AppFactory) -> None:
    app = recurring_app(make_app)
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        first = bgq.publish("sync", {"source": "crm"}, identifier="sync-crm", recurring=True)
        before = utcnow()
        bgq.process()
        assert bgq.get_job(first).state is JobState.FINISHED
        [_, clone] = jobs(app)
        assert clone.state is JobState.READY and clone.recurring
        assert (clone.callback_name, clone.identifier) == ("sync", "sync-crm")
        assert bgq.load_parameters(clone) == {"source": "crm"}
        # WAITING_JOB_EXPIRATION_MS later
        assert (
            before + timedelta(seconds=59) < clone.available_at < utcnow() + timedelta(seconds=61)
        )
        bgq.process()  # not due yet: nothing runs, nothing more is cloned
        assert len(jobs(app)) == 2
        make_due(bgq, clone.id)
        bgq.process()
        assert len(jobs(app)) == 3  # and so on
    assert app.calls == ["crm", "crm"]  # type: ignore[attr-defined]


def test_a_failed_recurring_job_is_not_cloned(make_app: AppFactory) -> None:
    app = recurring_app(make_app)
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        job_id = bgq.publish("sync", {"source": "broken"}, recurring=True)
        bgq.process()
        assert bgq.get_job(job_id).state is JobState.TEMPORARILY_FAILED
        assert len(jobs(app)) == 1


def test_no_clone_while_an_unfinished_job_has_the_identifier(make_app: AppFactory) -> None:
    app = recurring_app(make_app)
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        first = bgq.publish("sync", {"source": "crm"}, identifier="sync-crm", recurring=True)
        later = bgq.publish(
            "sync",
            {"source": "crm"},
            identifier="sync-crm",
            available_at=timedelta(hours=1),
        )
        bgq.process()
        assert bgq.get_job(first).state is JobState.FINISHED
        assert [j.id for j in jobs(app)] == [first, later]  # the later one covers it


def test_coalesce_threshold_needs_a_serial_group(make_app: AppFactory) -> None:
    app = recurring_app(make_app)
    with app.app_context(), pytest.raises(PublishError, match="with a serial_group"):
        app.bgq.publish("sync", {"source": "x"}, coalesce_threshold=3)  # type: ignore[attr-defined]
