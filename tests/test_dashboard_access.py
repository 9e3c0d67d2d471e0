"""Who reaches the dashboard: off by default, closed until authorized, CSRF on actions."""

from __future__ import annotations

import pytest
from flask import Flask, redirect

from flask_bgqueue import BackgroundQueue, ConfigurationError
from tests.conftest import AppFactory
from tests.dashboard_app import PREFIX, csrf_token, dashboard_app

allowed = {"yes": True}


def may_see_jobs() -> bool:
    """Importable authorization function for BGQUEUE_DASHBOARD_AUTHORIZE as a string."""
    return allowed["yes"]


def test_without_a_url_prefix_the_dashboard_is_not_mounted() -> None:
    app = Flask("off")
    app.config.update(SECRET_KEY="s", BGQUEUE_DATABASE_URI="sqlite://")
    BackgroundQueue(app)
    assert "bgqueue" not in app.blueprints
    assert app.test_client().get("/bgqueue/").status_code == 404


def test_mounted_without_an_authorization_hook_everyone_gets_403(make_app: AppFactory) -> None:
    app = dashboard_app(make_app, BGQUEUE_DASHBOARD_AUTHORIZE=None)
    client = app.test_client()
    for url in ("/", "/jobs", "/jobs/1"):
        response = client.get(PREFIX + url)
        assert response.status_code == 403
        assert b"BGQUEUE_DASHBOARD_AUTHORIZE" in response.data
    assert client.post(f"{PREFIX}/jobs/1/retry").status_code == 403


def test_a_hook_returning_false_denies_and_true_allows(make_app: AppFactory) -> None:
    app = dashboard_app(make_app, BGQUEUE_DASHBOARD_AUTHORIZE=f"{__name__}:may_see_jobs")
    client = app.test_client()
    allowed["yes"] = False
    try:
        assert client.get(PREFIX + "/").status_code == 403
    finally:
        allowed["yes"] = True
    assert client.get(PREFIX + "/").status_code == 200


def test_a_hook_may_answer_with_its_own_response(make_app: AppFactory) -> None:
    app = dashboard_app(make_app, BGQUEUE_DASHBOARD_AUTHORIZE=lambda: redirect("/login"))
    response = app.test_client().get(PREFIX + "/jobs")
    assert response.status_code == 302
    assert response.location == "/login"


def test_the_hook_runs_on_static_files_too(make_app: AppFactory) -> None:
    closed = dashboard_app(make_app, BGQUEUE_DASHBOARD_AUTHORIZE=None)
    url = f"{PREFIX}/static/bgqueue/dashboard.css"
    assert closed.test_client().get(url).status_code == 403
    opened = dashboard_app(make_app)
    response = opened.test_client().get(url)
    assert response.status_code == 200 and b".bgq-table" in response.data
    response.close()


@pytest.mark.parametrize("token", [None, "forged"])
def test_a_post_without_the_sessions_token_is_refused_with_400(
    make_app: AppFactory, token: str | None
) -> None:
    app = dashboard_app(make_app)
    with app.app_context():
        job_id = app.bgq.publish("work", 1)  # type: ignore[attr-defined]
    client = app.test_client()
    csrf_token(client)  # the session has a token; the form below does not carry it
    data = {} if token is None else {"csrf_token": token}
    for url in (f"/jobs/{job_id}/retry", f"/jobs/{job_id}/discard", "/jobs/retry"):
        response = client.post(PREFIX + url, data=data)
        assert response.status_code == 400
        assert b"CSRF token" in response.data


def test_a_token_from_another_session_is_refused(make_app: AppFactory) -> None:
    app = dashboard_app(make_app)
    other = csrf_token(app.test_client())
    client = app.test_client()
    csrf_token(client)
    response = client.post(f"{PREFIX}/jobs/1/retry", data={"csrf_token": other})
    assert response.status_code == 400


def test_a_post_with_the_sessions_token_goes_through(make_app: AppFactory) -> None:
    app = dashboard_app(make_app)
    client = app.test_client()
    response = client.post(f"{PREFIX}/jobs/1/retry", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 302


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BGQUEUE_DASHBOARD_URL_PREFIX", "bgqueue", "use a path such as '/bgqueue'"),
        ("BGQUEUE_DASHBOARD_URL_PREFIX", "/", "use a path such as '/bgqueue'"),
        ("BGQUEUE_DASHBOARD_AUTHORIZE", "no.such.module:f", "does not import"),
        ("BGQUEUE_DASHBOARD_AUTHORIZE", 42, "must be a function"),
    ],
)
def test_bad_dashboard_settings_name_their_key(key: str, value: object, message: str) -> None:
    app = Flask("bad")
    app.config.update(SECRET_KEY="s", BGQUEUE_DATABASE_URI="sqlite://", **{key: value})
    with pytest.raises(ConfigurationError, match=message) as info:
        BackgroundQueue(app)
    assert info.value.key == key


def test_a_trailing_slash_in_the_prefix_is_dropped() -> None:
    app = Flask("slash")
    app.config.update(
        SECRET_KEY="s",
        BGQUEUE_DATABASE_URI="sqlite://",
        BGQUEUE_DASHBOARD_URL_PREFIX="/admin/jobs/",
        BGQUEUE_DASHBOARD_AUTHORIZE=lambda: True,
    )
    BackgroundQueue(app)
    assert app.test_client().get("/admin/jobs/").status_code == 200
