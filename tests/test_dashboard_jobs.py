"""The job list: each filter, keyset paging, and the job page's contents."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from flask import Flask

from flask_bgqueue import JobState
from tests.conftest import AppFactory
from tests.dashboard_app import PREFIX, dashboard_app, job_ids
from tests.helpers import set_columns


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return dashboard_app(make_app)


@pytest.fixture
def jobs(app: Flask) -> dict[str, int]:
    """Named jobs, one per filter to tell apart."""
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        ids = {
            "plain": bgq.publish("work", {"customer": "ACME Corp"}),
            "grouped": bgq.publish("work", 2, serial_group="invoice-9"),
            "tagged": bgq.publish("work", 3, identifier="report-1"),
            "mail": bgq.publish("send", 4),
            "failing": bgq.publish("work", 5),
        }
        set_columns(
            bgq,
            ids["failing"],
            state=JobState.TEMPORARILY_FAILED,
            error_message="ConnectionError: smtp.example.org refused",
        )
    return {k: int(v) for k, v in ids.items()}


def listed(app: Flask, query: str) -> list[int]:
    response = app.test_client().get(f"{PREFIX}/jobs?{query}")
    assert response.status_code == 200, response.data
    return job_ids(response.get_data(as_text=True))


def test_without_a_filter_every_job_is_listed_newest_first(
    app: Flask, jobs: dict[str, int]
) -> None:
    assert listed(app, "") == sorted(jobs.values(), reverse=True)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=temporarily_failed", ["failing"]),
        ("state=failed", ["failing"]),
        ("state=ready&callback=send", ["mail"]),
        ("callback=send", ["mail"]),
        ("queue=default_mail", ["mail"]),
        ("group=invoice-9", ["grouped"]),
        ("identifier=report-1", ["tagged"]),
        ("q=smtp.example", ["failing"]),  # text of the error
        ("q=acme", ["plain"]),  # text of the JSON parameters, any case
        ("q=100%25", []),  # % is not a wildcard
        ("state=finished", []),
    ],
)
def test_each_filter_selects_only_its_jobs(
    app: Flask, jobs: dict[str, int], query: str, expected: list[str]
) -> None:
    assert listed(app, query) == sorted((jobs[k] for k in expected), reverse=True)


def test_an_unknown_state_is_a_400_that_says_why(app: Flask) -> None:
    response = app.test_client().get(f"{PREFIX}/jobs?state=sleepy")
    assert response.status_code == 400
    assert b"is not a state" in response.data


def test_keyset_pages_walk_older_and_back_newer(app: Flask) -> None:
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        ids = [bgq.publish("work", n) for n in range(7)]
        bgq.publish("send", 99)  # filtered out below: paging skips it
    client = app.test_client()
    first = client.get(f"{PREFIX}/jobs?callback=work&limit=3").get_data(as_text=True)
    assert job_ids(first) == [ids[6], ids[5], ids[4]]
    assert "← newer" not in first and f"before={ids[4]}" in first
    second = client.get(f"{PREFIX}/jobs?callback=work&limit=3&before={ids[4]}")
    html = second.get_data(as_text=True)
    assert job_ids(html) == [ids[3], ids[2], ids[1]]
    assert f"after={ids[3]}" in html and f"before={ids[1]}" in html
    last = client.get(f"{PREFIX}/jobs?callback=work&limit=3&before={ids[1]}").get_data(as_text=True)
    assert job_ids(last) == [ids[0]]
    assert "older →" not in last and f"after={ids[0]}" in last
    back = client.get(f"{PREFIX}/jobs?callback=work&limit=3&after={ids[3]}").get_data(as_text=True)
    assert job_ids(back) == [ids[6], ids[5], ids[4]]
    assert "← newer" not in back and f"before={ids[4]}" in back


def test_the_job_page_shows_fields_parameters_error_and_traceback(app: Flask) -> None:
    bgq = app.bgq  # type: ignore[attr-defined]
    app.failing.add(7)  # type: ignore[attr-defined]
    with app.app_context():
        job_id = bgq.publish("work", 7, serial_group="g<1>", identifier="i-7")
        bgq.process()
    html = app.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert "TEMPORARILY_FAILED (4)" in html
    assert "g&lt;1&gt;" in html and "g<1>" not in html  # escaped
    assert "stored as JSON" in html
    assert "ValueError: cannot work on 7" in html
    assert "Traceback (most recent call last)" in html
    assert "MiB" in html and "pid " in html


def test_an_unknown_job_is_404(app: Flask) -> None:
    assert app.test_client().get(f"{PREFIX}/jobs/987654").status_code == 404


class Opaque:
    """Not JSON: stored as a signed pickle."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"Opaque({self.label!r})"


def test_a_verified_pickle_is_shown_decoded(app: Flask) -> None:
    with app.app_context():
        job_id = app.bgq.publish("work", Opaque("x"))  # type: ignore[attr-defined]
    html = app.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert "signature verifies" in html and "Opaque(&#39;x&#39;)" in html


def test_a_forged_pickle_is_described_never_unpickled(app: Flask, tmp_path: Any) -> None:
    marker = tmp_path / "unpickled"
    with app.app_context():
        job_id = app.bgq.publish("work", 1)  # type: ignore[attr-defined]
        forged = b"BGQ1" + b"\0" * 32 + pickle.dumps(_Touch(str(marker)))
        set_columns(app.bgq, job_id, parameters=forged, parameters_json=None)  # type: ignore[attr-defined]
    html = app.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert f"&lt;pickle, {len(forged)} bytes&gt;" in html
    assert "not unpickled" in html and "does not verify" in html
    assert not marker.exists()


class _Touch:
    """Unpickling it creates a file: proof that a payload was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))
