"""The dashboard driven by a real browser: headless Chromium through Playwright.

The pictures the docs show are made by ``scripts/screenshots.py``, run here too so that it
keeps working. Without Chromium the tests are skipped locally and fail under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from tests.conftest import IN_CI, AppFactory
from tests.dashboard_app import dashboard_app, serving
from tests.helpers import all_jobs, set_columns

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason + " (CI=true: scripts/test.sh installs chromium and playwright)")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def served(make_app: AppFactory) -> Iterator[tuple[Flask, str]]:
    """The dashboard app served by werkzeug on 127.0.0.1, in a thread (its live pages
    refresh every 0.3 s)."""
    app = dashboard_app(make_app, BGQUEUE_DASHBOARD_REFRESH_SECONDS=0.3)
    with serving(app) as url:
        yield app, url


def _fill(app: Flask) -> int:
    """A small realistic table; returns the id of a failed job for the test to retry."""
    bgq = app.bgq  # type: ignore[attr-defined]
    app.failing.update({13, 21})  # type: ignore[attr-defined]
    with app.app_context():
        ids = [bgq.publish("work", n, serial_group=f"invoice-{n % 4}") for n in range(24)]
        bgq.publish("work", 99, identifier="report-7", is_unique=True)
        bgq.process()
        bgq.publish("work", 100, available_at=timedelta(minutes=20))
        bgq.publish("work", 101, serial_group="invoice-1")
        bgq.publish("work", 102, serial_group="invoice-1")
        set_columns(bgq, ids[21], state=JobState.PERMANENTLY_FAILED)
        now = utcnow()
        for n, row in enumerate(all_jobs(bgq)):  # spread the finished ones over the chart
            if row.state == JobState.FINISHED:
                set_columns(bgq, row.id, finished_at=now - timedelta(minutes=n * 7 % 170))
    return int(ids[13])


def test_a_person_filters_failed_jobs_retries_one_and_sees_it_finished(
    served: tuple[Flask, str], browser: Any, db_url: str
) -> None:
    app, base = served
    failed_id = _fill(app)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    page.goto(base + "/")
    assert page.inner_text("h1") == "Overview"
    assert "temporarily failed" in page.inner_text(".bgq-cards")
    assert page.locator("svg.bgq-chart rect.failed").count() >= 1

    from playwright.sync_api import expect  # waits until the condition holds

    page.click("nav >> text=Failed")
    page.wait_for_url("**/jobs?state=*")  # the click navigates: wait for the new page
    rows = page.locator("table.jobs tbody tr")
    expect(rows).to_have_count(2)
    assert "cannot work on 13" in page.inner_text("table.jobs")

    page.click(f"table.jobs >> text='{failed_id}'")
    page.wait_for_url(f"**/jobs/{failed_id}")
    assert page.inner_text("h1").startswith(f"Job {failed_id}")
    assert "After failed attempt 1, it is retried at" in page.inner_text(".bgq-why")
    assert "ValueError: cannot work on 13" in page.inner_text("body")

    app.failing.clear()  # type: ignore[attr-defined]
    questions: list[str] = []

    def answer(dialog: Any, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, accept=False))
    page.click("button:has-text('Retry now')")
    assert questions == [f"Run job {failed_id} again now?"]
    assert page.locator(".bgq-notice").count() == 0  # dismissed: nothing was sent
    with app.app_context():
        assert app.bgq.get_job(failed_id).state is JobState.TEMPORARILY_FAILED  # type: ignore[attr-defined]
    page.once("dialog", lambda d: answer(d, accept=True))
    page.click("button:has-text('Retry now')")
    assert "READY and due now" in page.inner_text(".bgq-notice")
    assert not [m for m in console if "Content Security Policy" in m], console
    with app.app_context():
        app.bgq.process()  # type: ignore[attr-defined]
    page.reload()
    assert "FINISHED" in page.inner_text("h1")
    assert "Finished at" in page.inner_text(".bgq-why")
    page.close()


def test_a_job_published_after_the_page_opened_appears_without_a_reload(
    served: tuple[Flask, str], browser: Any, db_url: str
) -> None:
    app, base = served
    bgq = app.bgq  # type: ignore[attr-defined]
    _fill(app)
    shots = os.environ.get("BGQUEUE_SCREENSHOTS") if db_url.startswith("postgresql") else None
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    loads: list[str] = []
    page.on("load", lambda p: loads.append(p.url))

    page.goto(base + "/jobs")
    page.fill("input[name=identifier]", "typed, not sent")  # outside the live part
    with app.app_context():
        new_id = bgq.publish("send", 7, identifier="arrived-later")
    row = page.locator(f"table.jobs tbody tr:has(a:text-is('{new_id}'))")
    row.wait_for(timeout=10_000)  # the refresh brings it: no reload, no click
    assert "arrived-later" in row.inner_text() and "READY" in row.inner_text()
    assert page.input_value("input[name=identifier]") == "typed, not sent"
    assert page.inner_text("#bgq-live").startswith("live")
    hidden = "hidden => { Object.defineProperty(document, 'hidden', {value: hidden,"
    hidden += " configurable: true}); document.dispatchEvent(new Event('visibilitychange')); }"
    page.evaluate(hidden, True)  # as when the tab goes to the background
    assert page.inner_text("#bgq-live") == "paused while the tab is hidden"
    with app.app_context():
        back_id = bgq.publish("send", 8)
    page.evaluate(hidden, False)  # back in front: refreshed at once
    page.locator(f"table.jobs tbody tr:has(a:text-is('{back_id}'))").wait_for(timeout=10_000)

    page.goto(base + "/")
    ready = page.locator(".bgq-cards .s-ready .n")
    before = int(ready.inner_text())
    with app.app_context():
        bgq.publish("work", 200)
    page.wait_for_function(
        "n => Number(document.querySelector('.bgq-cards .s-ready .n').textContent) === n",
        arg=before + 1,
        timeout=10_000,
    )
    with app.app_context():
        bgq.process()
    page.wait_for_function(
        "() => document.querySelector('#bgq-workers').textContent.includes('default_mail')",
        timeout=10_000,
    )
    if shots:
        page.screenshot(path=str(Path(shots) / "dashboard-live.png"), full_page=True)
    assert loads == [base + "/jobs", base + "/"]  # one load per goto: nothing reloaded
    assert not [m for m in console if "Content Security Policy" in m], console
    page.close()


def test_a_refresh_that_lands_after_the_tab_was_hidden_still_says_paused(
    served: tuple[Flask, str], browser: Any
) -> None:
    _app, base = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    held: list[Any] = []  # the refreshes' requests, answered when the test says so

    def hold(route: Any) -> None:
        if route.request.headers.get("x-bgqueue-live"):
            held.append(route)
        else:
            route.continue_()

    page.route("**/jobs*", hold)
    page.goto(base + "/jobs")
    deadline = 50
    while not held and deadline:  # the first refresh is on its way, and held
        page.wait_for_timeout(100)
        deadline -= 1
    assert held, "no refresh was sent"
    hidden = "hidden => { Object.defineProperty(document, 'hidden', {value: hidden,"
    hidden += " configurable: true}); document.dispatchEvent(new Event('visibilitychange')); }"
    page.evaluate(hidden, True)
    assert page.inner_text("#bgq-live") == "paused while the tab is hidden"
    with page.expect_response(lambda r: bool(r.request.headers.get("x-bgqueue-live"))):
        held.pop(0).continue_()  # the answer to the refresh sent before the tab was hidden
    page.wait_for_timeout(300)  # for the page to read and apply it
    assert page.inner_text("#bgq-live") == "paused while the tab is hidden"
    page.close()


def test_the_docs_pictures_can_be_remade_and_show_no_path_of_this_machine(tmp_path: Path) -> None:
    """``scripts/screenshots.py`` (it refuses a page that shows a local path)."""
    import importlib.util

    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")

    script = Path(__file__).resolve().parent.parent / "scripts" / "screenshots.py"
    spec = importlib.util.spec_from_file_location("screenshots", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shots = module.main(tmp_path / "shots")
    assert [p.name for p in shots] == [
        "dashboard-overview.png",
        "dashboard-jobs.png",
        "dashboard-job.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in shots)


def test_a_person_cancels_a_job_and_every_job_of_a_filter_after_confirming(
    make_app: AppFactory, browser: Any
) -> None:
    app = dashboard_app(make_app)
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        single = bgq.publish("work", 1, identifier="single")
        batch = [bgq.publish("work", n, identifier="batch-a") for n in range(3)]
        other = bgq.publish("work", 9, identifier="batch-b")

    def states() -> dict[int, JobState]:
        with app.app_context():
            return {row.id: JobState(row.state) for row in all_jobs(bgq)}

    questions: list[str] = []

    def answer(dialog: Any, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    with serving(app) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/jobs/{single}")
        before = states()
        page.once("dialog", lambda d: answer(d, accept=False))
        page.click("button:text-is('Cancel')")
        assert questions == [f"Cancel job {single}? If it runs, it is asked to stop."]
        assert page.locator(".bgq-notice").count() == 0  # dismissed: nothing was sent
        assert states() == before
        page.once("dialog", lambda d: answer(d, accept=True))
        with page.expect_navigation():
            page.click("button:text-is('Cancel')")
        assert f"Job {single} is cancelled" in page.inner_text(".bgq-notice")
        with app.app_context():
            job = bgq.get_job(single)
        assert job.state is JobState.CANCELLED
        assert job.cancelled_by == "dashboard (127.0.0.1)"

        page.goto(f"{base}/jobs?identifier=batch-a")
        bulk = "button:text-is('Cancel every job matching this filter that is not over')"
        before = states()
        page.once("dialog", lambda d: answer(d, accept=False))
        page.click(bulk)
        assert questions[-1].startswith("Cancel every job this filter matches")
        assert page.locator(".bgq-notice").count() == 0
        assert states() == before
        page.once("dialog", lambda d: answer(d, accept=True))
        with page.expect_navigation():
            page.click(bulk)
        assert "3 job(s) are cancelled or asked to stop." in page.inner_text(".bgq-notice")
        page.close()
    after = states()
    assert [after[i] for i in batch] == [JobState.CANCELLED] * 3
    assert after[other] is JobState.READY and after[single] is JobState.CANCELLED
