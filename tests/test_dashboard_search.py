"""A text search reads BGQUEUE_SEARCH_WINDOW ids per page, says so, and its pages together
find what one unbounded search finds."""

from __future__ import annotations

import re

import pytest
from flask import Flask

from flask_bgqueue.inspection import Inspector
from flask_bgqueue.selection import JobFilter
from tests.conftest import AppFactory
from tests.dashboard_app import PREFIX, dashboard_app, job_ids

WINDOW = 10


def searched_app(make_app: AppFactory, window: int | None) -> tuple[Flask, dict[str, list[int]]]:
    """30 jobs; "Café" in the 4th and the 26th, 'say "hi"' in the 13th and the 14th."""
    app = dashboard_app(make_app, BGQUEUE_SEARCH_WINDOW=window)
    bgq = app.bgq  # type: ignore[attr-defined]
    found: dict[str, list[int]] = {"Café": [], 'say "hi"': []}
    with app.app_context():
        for n in range(30):
            if n in (3, 25):
                found["Café"].append(bgq.publish("work", {"shop": "Café Louvre", "n": n}))
            elif n in (12, 13):
                found['say "hi"'].append(bgq.publish("work", {"text": 'say "hi"', "n": n}))
            else:
                bgq.publish("work", {"shop": "Bakery", "text": "hello", "n": n})
    return app, {k: sorted(v, reverse=True) for k, v in found.items()}


def every_page(app: Flask, text: str, limit: int = 50) -> tuple[list[int], int]:
    """The ids of every page, following "older", and how many pages that took."""
    ids: list[int] = []
    before = None
    pages = 0
    with app.app_context():
        while True:
            page = Inspector(app.bgq).page(  # type: ignore[attr-defined]
                JobFilter(text=text), before_id=before, limit=limit
            )
            pages += 1
            ids += [j.id for j in page.jobs]
            if not page.has_older:
                return ids, pages
            before = page.older_than


@pytest.mark.parametrize("text", ["Café", "CAFÉ", 'say "hi"'])
def test_the_pages_of_a_bounded_search_find_what_an_unbounded_one_finds(
    make_app: AppFactory, text: str
) -> None:
    app, found = searched_app(make_app, WINDOW)
    expected = found["Café" if text.lower() == "café" else text]
    ids, pages = every_page(app, text)
    assert ids == expected
    assert pages == 3  # 30 ids, 10 a page
    unbounded = dashboard_app(make_app, BGQUEUE_SEARCH_WINDOW=None)  # the same table
    assert every_page(unbounded, text) == (expected, 1)


def test_a_full_page_stops_at_its_last_match_not_at_the_window(make_app: AppFactory) -> None:
    app, found = searched_app(make_app, WINDOW)
    hi = found['say "hi"']
    with app.app_context():
        page = Inspector(app.bgq).page(  # type: ignore[attr-defined]
            JobFilter(text='say "hi"'), before_id=hi[0] + 1, limit=1
        )
    assert [j.id for j in page.jobs] == found['say "hi"'][:1]
    assert page.has_older and page.older_than == found['say "hi"'][0]
    assert page.searched is None
    assert every_page(app, 'say "hi"', limit=1)[0] == found['say "hi"']


def test_the_job_list_says_which_ids_a_search_read_and_links_to_the_older_ones(
    make_app: AppFactory,
) -> None:
    app, found = searched_app(make_app, WINDOW)
    client = app.test_client()
    newest = found["Café"][0] + 4  # the 30th job
    html = client.get(f"{PREFIX}/jobs?q=Caf%C3%A9").get_data(as_text=True)
    assert job_ids(html) == [found["Café"][0]]
    note = re.search(r'<p class="bgq-note" id="bgq-searched">(.*?)</p>', html, re.S)
    assert note is not None, html
    assert f"searched #{newest - 9} to #{newest}" in note.group(1)
    older = re.search(r'<a rel="next" href="([^"]+)"', html)
    assert older is not None and f"before={newest - 9}" in older.group(1)
    # the next window holds no match: the page says so, and still leads further
    html = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert job_ids(html) == [] and "No job matches." in html
    assert f"searched #{newest - 19} to #{newest - 10}" in html
    assert 'rel="prev"' in html and 'rel="next"' in html
    api = client.get(f"{PREFIX}/api/jobs?q=Caf%C3%A9").get_json()
    assert api["searched_ids"] == [newest - 9, newest] and api["older_than"] == newest - 9


def test_the_newer_pages_of_a_search_read_one_window_each(make_app: AppFactory) -> None:
    app, found = searched_app(make_app, WINDOW)
    oldest = found["Café"][-1] - 3  # the first job
    with app.app_context():
        inspector = Inspector(app.bgq)  # type: ignore[attr-defined]
        page = inspector.page(JobFilter(text="Café"), after_id=oldest + 9)
        assert page.jobs == [] and page.searched == (oldest + 10, oldest + 19)
        assert page.has_newer and page.newer_than == oldest + 19
        assert page.has_older and page.older_than == oldest + 10
        page = inspector.page(JobFilter(text="Café"), after_id=page.newer_than)
        assert [j.id for j in page.jobs] == found["Café"][:1]
        assert page.searched is None and not page.has_newer


def test_a_search_with_no_match_on_its_first_page_offers_no_bulk_action(
    make_app: AppFactory,
) -> None:
    app, _ = searched_app(make_app, WINDOW)
    html = app.test_client().get(f"{PREFIX}/jobs?q=nobody+wrote+this").get_data(as_text=True)
    assert "No job matches." in html and "max_id" not in html


def test_list_says_which_ids_its_text_search_read_and_how_to_go_on(
    make_app: AppFactory,
) -> None:
    app, found = searched_app(make_app, WINDOW)
    newest = found["Café"][0] + 4
    runner = app.test_cli_runner()
    out = runner.invoke(args=["bgq", "list", "-t", "Café"]).output
    assert f"(the text was searched in jobs {newest - 9} to {newest} only)" in out
    assert f"(more: --before {newest - 9})" in out and f"{found['Café'][0]:>8}" in out
    out = runner.invoke(args=["bgq", "list", "-t", "Café", "--before", str(newest - 9)]).output
    assert "no job matches" in out and f"(more: --before {newest - 19})" in out
