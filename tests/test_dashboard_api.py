"""The dashboard's JSON API mirrors its pages, behind the same authorization; the workers
page lists real worker processes."""

from __future__ import annotations

import os
import socket
import time

from flask import Flask

from flask_bgqueue.models import JobState
from tests.conftest import AppFactory, ProcEnv
from tests.dashboard_app import PREFIX, dashboard_app, job_ids


def _filled(make_app: AppFactory, allowed: list[bool] | None = None) -> Flask:
    options = {} if allowed is None else {"BGQUEUE_DASHBOARD_AUTHORIZE": lambda: allowed[0]}
    app = dashboard_app(make_app, **options)
    app.failing.add(3)  # type: ignore[attr-defined]
    with app.app_context():
        for n in range(6):
            app.bgq.publish("work", n)  # type: ignore[attr-defined]
        app.bgq.publish("send", 1)  # type: ignore[attr-defined]
        app.bgq.process()  # type: ignore[attr-defined]
        app.bgq.publish("work", 10)  # type: ignore[attr-defined]
    return app


def test_the_json_job_list_mirrors_the_page_with_its_filters_and_paging(
    make_app: AppFactory,
) -> None:
    client = _filled(make_app).test_client()
    for query in ("", "?state=finished", "?callback=work&limit=3", "?q=cannot"):
        page = job_ids(client.get(f"{PREFIX}/jobs{query}").get_data(as_text=True))
        doc = client.get(f"{PREFIX}/api/jobs{query}").get_json()
        assert [j["id"] for j in doc["jobs"]] == page, query
    doc = client.get(f"{PREFIX}/api/jobs?limit=3").get_json()
    assert doc["has_older"] and not doc["has_newer"]
    older = client.get(f"{PREFIX}/api/jobs?limit=3&before={doc['older_than']}").get_json()
    assert [j["id"] for j in older["jobs"]] == [j["id"] - 3 for j in doc["jobs"]]
    failed = client.get(f"{PREFIX}/api/jobs?state=failed").get_json()["jobs"]
    assert [(j["state"], j["error_message"]) for j in failed] == [
        ("TEMPORARILY_FAILED", "ValueError: cannot work on 3")
    ]
    assert client.get(f"{PREFIX}/api/jobs?state=nonsense").status_code == 400


def test_the_json_overview_and_job_mirror_the_pages(make_app: AppFactory) -> None:
    app = _filled(make_app)
    client = app.test_client()
    doc = client.get(f"{PREFIX}/api/overview").get_json()
    assert doc["states"]["FINISHED"] == 6
    assert doc["states"]["TEMPORARILY_FAILED"] == 1
    assert doc["states"]["READY"] == 1
    assert doc["callbacks"]["send"] == {"FINISHED": 1}
    assert doc["queues"]["default_mail"] == {"FINISHED": 1}
    assert doc["due"] == 1 and doc["oldest_due_at"].endswith("Z")
    [worker] = doc["workers"]
    assert (worker["hostname"], worker["pid"]) == (socket.gethostname(), os.getpid())
    assert worker["jobs_done"] == 7
    assert sorted(worker["queues"]) == ["default", "default_mail"]
    assert sum(m["finished"] for m in doc["throughput"]) == 6

    failed_id = client.get(f"{PREFIX}/api/jobs?state=failed").get_json()["jobs"][0]["id"]
    job = client.get(f"{PREFIX}/api/jobs/{failed_id}").get_json()
    assert job["state"] == "TEMPORARILY_FAILED" and job["attempts"] == 1
    assert job["parameters"] == {"text": "3", "note": "stored as JSON", "decoded": True}
    assert "ValueError: cannot work on 3" in job["traceback"]
    assert any("retried at" in reason for reason in job["why_not_running"])
    assert client.get(f"{PREFIX}/api/jobs/999999").status_code == 404


def test_the_json_api_sits_behind_the_dashboard_authorization(make_app: AppFactory) -> None:
    allowed = [False]
    client = _filled(make_app, allowed).test_client()
    paths = ["/api/overview", "/api/jobs", "/api/jobs/1", "/api/workers", "/workers"]
    for path in paths:
        assert client.get(PREFIX + path).status_code == 403, path
    allowed[0] = True
    for path in paths:
        assert client.get(PREFIX + path).status_code == 200, path


def test_the_workers_page_lists_a_real_worker_with_its_current_job_and_jobs_done(
    procs: ProcEnv,
) -> None:
    procs.config = {
        "BGQUEUE_DASHBOARD_URL_PREFIX": PREFIX,
        "BGQUEUE_DASHBOARD_AUTHORIZE": "tests.dashboard_app:allow_everyone",
    }
    app = procs.app()
    hold = procs.dir / "long.hold"
    hold.write_text("")
    with app.app_context():
        for n in range(3):
            app.bgq.publish("record", {"group": "g", "name": str(n)})  # type: ignore[attr-defined]
        slow_id = app.bgq.publish("slow", {"name": "long", "seconds": 60})  # type: ignore[attr-defined]
    worker = procs.start("bgq", "process")
    try:
        client = app.test_client()
        deadline = time.monotonic() + 60
        while True:  # until the slow job runs, the others saved as done
            with app.app_context():
                states = [j.state for j in app.bgq._state().store.jobs()]  # type: ignore[attr-defined]
            if states == [JobState.FINISHED] * 3 + [JobState.PROCESSING]:
                break
            assert time.monotonic() < deadline and worker.poll() is None, worker.stderr.read()
            time.sleep(0.05)
        [seen] = client.get(f"{PREFIX}/api/workers").get_json()["workers"]
        assert (seen["hostname"], seen["pid"]) == (socket.gethostname(), worker.pid)
        assert seen["current_jobs"] == [{"id": slow_id, "callback": "slow"}]
        assert seen["queues"] == ["default"]
        assert seen["jobs_done"] == 3
        html = client.get(f"{PREFIX}/workers").get_data(as_text=True)
        assert f"<td>{worker.pid}</td>" in html
        assert f"#{slow_id} slow" in html
        assert "<td>3</td>" in html
    finally:
        hold.unlink()
        _out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    [seen] = client.get(f"{PREFIX}/api/workers").get_json()["workers"]
    assert seen["current_jobs"] == [] and seen["jobs_done"] == 4


def test_a_background_refresh_leaves_the_notice_for_the_next_page(
    make_app: AppFactory,
) -> None:
    client = _filled(make_app).test_client()
    with client.session_transaction() as session:
        session["_bgqueue_notice"] = "Job 1 was deleted."
    live = client.get(f"{PREFIX}/jobs", headers={"X-BgQueue-Live": "1"}).get_data(as_text=True)
    assert "Job 1 was deleted." not in live
    shown = client.get(f"{PREFIX}/jobs").get_data(as_text=True)
    assert "Job 1 was deleted." in shown
