"""Prometheus metrics: after a scripted workload of real processes, the exposition (parsed
with ``prometheus_client.parser``) agrees with the table."""

from __future__ import annotations

import json
import sys
from collections import Counter
from datetime import timezone
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_bgqueue.clock import utcnow
from flask_bgqueue.exceptions import ConfigurationError
from flask_bgqueue.models import Job
from tests.conftest import AppFactory, ProcEnv
from tests.dashboard_app import PREFIX, dashboard_app
from tests.helpers import all_jobs


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_of_several_worker_processes_agree_with_the_table(
    procs: ProcEnv, tmp_path: Any
) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    procs.env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    procs.config = {"BGQUEUE_METRICS": True}
    work = [["noop", None]] * 5 + [["fail", {"kind": "temporary"}]] * 2
    work += [["fail", {"kind": "permanent"}]]
    published = procs.run("publish-jobs", json.dumps(work))
    assert published.returncode == 0, published.stderr
    first = procs.run("bgq", "process")
    assert first.returncode == 0, first.stderr
    app = procs.app()
    with app.app_context():
        app.bgq._state().store.make_due(utcnow())  # type: ignore[attr-defined]
    second = procs.run("bgq", "process")  # another process: the two failing jobs again
    assert second.returncode == 0, second.stderr
    late = procs.run("publish-jobs", json.dumps([["noop", None]] * 2))
    assert late.returncode == 0, late.stderr

    before = utcnow()
    scraped = procs.run("bgq", "stats", "--prometheus")
    after = utcnow()
    assert scraped.returncode == 0, scraped.stderr
    samples = _samples(scraped.stdout)
    with app.app_context():
        rows = [Job.from_row(r) for r in all_jobs(app.bgq)]  # type: ignore[attr-defined]

    by_state = Counter((r.callback_name, r.queue, r.state) for r in rows)
    for (callback, queue, state), n in by_state.items():
        labels = {"callback": callback, "queue": queue, "state": state.label}
        assert _value(samples, "bgqueue_jobs", **labels) == n
    assert sum(v for (name, _), v in samples.items() if name == "bgqueue_jobs") == len(rows)

    attempts: Counter[str] = Counter()  # attempts per callback, from the table
    for r in rows:
        attempts[r.callback_name] += r.number_of_attempts
    for callback in ("noop", "fail"):
        counted = sum(
            v
            for (name, labels), v in samples.items()
            if name == "bgqueue_job_attempts_total" and ("callback", callback) in labels
        )
        assert counted == attempts[callback]
        assert (
            _value(samples, "bgqueue_job_duration_seconds_count", callback=callback)
            == attempts[callback]
        )
        published_n = sum(1 for r in rows if r.callback_name == callback)
        assert _value(samples, "bgqueue_jobs_published_total", callback=callback) == published_n
    temporary = sum(r.number_of_attempts for r in rows if r.state.label == "temporarily_failed")
    assert temporary == 4
    assert (
        _value(samples, "bgqueue_job_attempts_total", callback="fail", outcome="temporarily_failed")
        == temporary
    )
    assert _value(
        samples, "bgqueue_job_attempts_total", callback="fail", outcome="permanently_failed"
    ) == sum(1 for r in rows if r.state.label == "permanently_failed")
    assert _value(
        samples, "bgqueue_job_attempts_total", callback="noop", outcome="finished"
    ) == sum(1 for r in rows if r.state.label == "finished")

    due = [r for r in rows if r.state.label == "ready"]
    assert _value(samples, "bgqueue_due_jobs", queue="default") == len(due) == 2
    lag = _value(samples, "bgqueue_oldest_due_job_age_seconds", queue="default")
    oldest = min(r.available_at for r in due)
    assert (before - oldest).total_seconds() <= lag <= (after - oldest).total_seconds()
    workers = {(r.hostname, r.pid) for r in rows if r.pid is not None}
    assert len(workers) == 2
    assert _value(samples, "bgqueue_workers_seen") == len(workers)
    last = max(r.last_attempt_at for r in rows if r.last_attempt_at is not None)
    stamp = _value(samples, "bgqueue_last_worker_activity_timestamp_seconds")
    assert stamp == pytest.approx(last.replace(tzinfo=timezone.utc).timestamp())


def _metrics_app(make_app: AppFactory, allowed: list[bool]) -> Flask:
    return dashboard_app(
        make_app, BGQUEUE_METRICS=True, BGQUEUE_DASHBOARD_AUTHORIZE=lambda: allowed[0]
    )


def test_the_dashboard_serves_this_process_metrics_behind_its_authorization(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    allowed = [True]
    app = _metrics_app(make_app, allowed)
    client = app.test_client()
    start = _samples(client.get(f"{PREFIX}/metrics").get_data(as_text=True))
    app.failing.add(2)  # type: ignore[attr-defined]
    with app.app_context():
        for n in range(3):
            app.bgq.publish("work", n)  # type: ignore[attr-defined]
        app.bgq.process()  # type: ignore[attr-defined]
    response = client.get(f"{PREFIX}/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    end = _samples(response.get_data(as_text=True))

    def grew(name: str, **labels: str) -> float:
        return _value(end, name, **labels) - _value(start, name, **labels)

    assert grew("bgqueue_jobs_published_total", callback="work") == 3
    assert grew("bgqueue_job_attempts_total", callback="work", outcome="finished") == 2
    assert grew("bgqueue_job_attempts_total", callback="work", outcome="temporarily_failed") == 1
    assert grew("bgqueue_job_duration_seconds_count", callback="work") == 3
    assert _value(end, "bgqueue_jobs", state="finished", queue="default", callback="work") == 2
    assert _value(end, "bgqueue_due_jobs", queue="default_mail") == 0  # known queues show 0

    allowed[0] = False
    assert client.get(f"{PREFIX}/metrics").status_code == 403


def test_without_prometheus_client_metrics_say_what_to_install(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"Flask-BgQueue\[metrics\]"):
        dashboard_app(make_app, BGQUEUE_METRICS=True)
    app = dashboard_app(make_app)
    response = app.test_client().get(f"{PREFIX}/metrics")
    assert response.status_code == 501
    assert "Flask-BgQueue[metrics]" in response.get_data(as_text=True)
    result = app.test_cli_runner().invoke(args=["bgq", "stats", "--prometheus"])
    assert result.exit_code == 1
    assert "Flask-BgQueue[metrics]" in result.output


def test_metrics_on_needs_a_bool(make_app: AppFactory) -> None:
    with pytest.raises(ConfigurationError, match="BGQUEUE_METRICS must be True or False"):
        make_app(BGQUEUE_METRICS="yes")
