"""A row in a state this version does not know: shown as "unknown state N", left alone."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from flask_bgqueue import JobState
from tests.conftest import AppFactory
from tests.dashboard_app import PREFIX, dashboard_app
from tests.helpers import make_due, set_columns


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return dashboard_app(make_app)


@pytest.fixture
def odd(app: Flask) -> tuple[int, int]:
    """A job in state 42 (a newer version's row) next to an ordinary failed one."""
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        odd_id, plain_id = bgq.publish("work", 1), bgq.publish("work", 2)
        set_columns(bgq, odd_id, state=42, error_message="set by a newer version")
        set_columns(bgq, plain_id, state=JobState.TEMPORARILY_FAILED)
        make_due(bgq)
    return odd_id, plain_id


def test_get_job_reads_a_row_of_an_unknown_state(app: Flask, odd: tuple[int, int]) -> None:
    with app.app_context():
        job = app.bgq.get_job(odd[0])  # type: ignore[attr-defined]
    assert int(job.state) == 42 and not job.state.known
    assert job.state.name == "unknown state 42"


def test_the_commands_show_an_unknown_state_and_keep_going(
    app: Flask, odd: tuple[int, int]
) -> None:
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["bgq", "list"])
    assert listed.exit_code == 0, listed.output
    assert "unknown state 42" in listed.output and "TEMPORARILY_FAILED" in listed.output
    shown = runner.invoke(args=["bgq", "show", str(odd[0])])
    assert shown.exit_code == 0, shown.output
    assert "unknown state 42 (42)" in shown.output
    assert "not one this version of Flask-BgQueue knows" in shown.output
    stats = runner.invoke(args=["bgq", "stats"])
    assert stats.exit_code == 0 and "unknown state 42" in stats.output, stats.output
    doc = json.loads(runner.invoke(args=["bgq", "stats", "--json"]).output)
    assert doc["states"]["unknown state 42"] == 1
    by_number = runner.invoke(args=["bgq", "list", "-s", "42"])
    ids = [line.split()[0] for line in by_number.output.splitlines()[1:]]
    assert ids == [str(odd[0])]


def test_the_dashboard_shows_an_unknown_state_on_every_page(
    app: Flask, odd: tuple[int, int]
) -> None:
    client = app.test_client()
    for url in ("/", "/jobs", f"/jobs/{odd[0]}", "/jobs?state=42"):
        response = client.get(PREFIX + url)
        assert response.status_code == 200, (url, response.data[:300])
        assert b"unknown state 42" in response.data, url


def test_workers_and_retries_leave_a_row_of_an_unknown_state_alone(
    app: Flask, odd: tuple[int, int]
) -> None:
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        result = bgq.process()
        assert result.outcomes == {"FINISHED": 1}  # the failed job; not the odd one
        assert bgq.get_job(odd[1]).state is JobState.FINISHED
        assert app.test_cli_runner().invoke(args=["bgq", "retry", str(odd[0])]).exit_code == 1
        assert bgq.clear_finished() == 1
        job = bgq.get_job(odd[0])
    assert int(job.state) == 42 and job.error_message == "set by a newer version"
