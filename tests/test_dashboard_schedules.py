"""The dashboard's Schedules page in a real browser: a person pauses and resumes a schedule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from flask_bgqueue.periodic import enqueue_due
from tests.conftest import AppFactory
from tests.dashboard_app import dashboard_app, serving
from tests.test_dashboard_browser import browser  # noqa: F401  (the fixture)

SCHEDULE = {
    "rates": {"cron": "*/5 * * * *", "callback": "work", "parameters": 1,
              "timezone": "Europe/Prague"},
    "gone": {"cron": "0 3 * * *", "callback": "work"},
}  # fmt: skip


@pytest.fixture
def served(make_app: AppFactory) -> Iterator[tuple[Flask, str]]:
    old = dashboard_app(make_app, BGQUEUE_SCHEDULE=SCHEDULE)
    t = datetime(2030, 1, 1, 12, 0)
    with old.app_context():  # both schedules seen, "rates" made a job
        enqueue_due(old.extensions["bgqueue"], t)
        enqueue_due(old.extensions["bgqueue"], t + timedelta(minutes=5))
    app = dashboard_app(make_app, BGQUEUE_SCHEDULE={"rates": SCHEDULE["rates"]})  # "gone" removed
    with serving(app) as url:
        yield app, url


def test_a_person_sees_the_schedules_and_pauses_and_resumes_one(
    served: tuple[Flask, str],
    browser: Any,  # noqa: F811
) -> None:
    app, base = served
    page = browser.new_page()
    page.goto(base + "/")
    page.click("nav >> text=Schedules")
    page.wait_for_url("**/schedules")
    assert page.inner_text("h1") == "Periodic schedules"
    rates = page.inner_text("#schedule-rates")
    assert "*/5 * * * *" in rates and "Europe/Prague" in rates and "active" in rates
    assert "2030-01-01 12:05:00" in rates and "READY" in rates
    gone = page.inner_text("#schedule-gone")
    assert "orphaned" in gone and "Pause" not in gone
    assert "Orphaned: no schedule of this name" in page.inner_text("table.schedules")

    page.once("dialog", lambda d: d.accept())
    page.click("#schedule-rates >> button:has-text('Pause')")
    assert "Schedule 'rates' is paused." in page.inner_text(".bgq-notice")
    assert "paused" in page.inner_text("#schedule-rates")
    with app.app_context():
        assert [v.status for v in app.bgq.schedules()] == ["orphaned", "paused"]  # type: ignore[attr-defined]
    page.once("dialog", lambda d: d.accept())
    page.click("#schedule-rates >> button:has-text('Resume')")
    assert "Schedule 'rates' is resumed." in page.inner_text(".bgq-notice")
    with app.app_context():
        assert [v.status for v in app.bgq.schedules()] == ["orphaned", "active"]  # type: ignore[attr-defined]
    page.close()
