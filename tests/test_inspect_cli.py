"""``flask bgq list|show|retry|stats|health`` on every database."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from flask import Flask

from flask_bgqueue import BackgroundQueue, JobState
from flask_bgqueue.clock import utcnow
from tests.conftest import AppFactory, ProcEnv
from tests.helpers import set_columns


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    bgq = BackgroundQueue()

    @bgq.callback
    def ok(n: int) -> None:
        pass

    @bgq.callback
    def boom(n: int) -> None:
        raise ValueError(f"boom {n}")

    return make_app(bgq)


def run(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["bgq", *args])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.output  # stdout and stderr, as a terminal shows them


def publish(app: Flask, callback: str, n: int, **kw: object) -> int:
    with app.app_context():
        job_id = app.bgq.publish(callback, {"n": n}, **kw)  # type: ignore[attr-defined]
    assert job_id is not None
    return int(job_id)


def process(app: Flask) -> None:
    with app.app_context():
        app.bgq.process()  # type: ignore[attr-defined]


def test_list_shows_jobs_newest_first_and_filters_by_state_and_callback(app: Flask) -> None:
    first = publish(app, "ok", 1)
    second = publish(app, "boom", 2)
    process(app)
    third = publish(app, "ok", 3)
    code, out = run(app, "list")
    assert code == 0
    ids = [int(line.split()[0]) for line in out.splitlines()[1:]]
    assert ids == [third, second, first]
    code, out = run(app, "list", "--state", "failed")
    assert [int(line.split()[0]) for line in out.splitlines()[1:]] == [second]
    assert "ValueError: boom 2" in out
    code, out = run(app, "list", "--callback", "ok", "--state", "ready")
    assert [int(line.split()[0]) for line in out.splitlines()[1:]] == [third]


def test_list_limit_pages_with_before(app: Flask) -> None:
    ids = [publish(app, "ok", n) for n in range(5)]
    code, out = run(app, "list", "--limit", "2")
    assert code == 0
    assert [int(x.split()[0]) for x in out.splitlines()[1:3]] == [ids[4], ids[3]]
    assert f"(more: --before {ids[3]})" in out
    code, out = run(app, "list", "--limit", "2", "--before", str(ids[3]))
    assert [int(x.split()[0]) for x in out.splitlines()[1:3]] == [ids[2], ids[1]]


def test_list_with_an_unknown_state_is_a_usage_error(app: Flask) -> None:
    code, out = run(app, "list", "--state", "sleeping")
    assert code == 2
    assert "'sleeping' is not a state" in out
    assert "Traceback" not in out


def test_show_prints_fields_parameters_reason_and_traceback(app: Flask) -> None:
    job_id = publish(app, "boom", 7)
    process(app)
    code, out = run(app, "show", str(job_id))
    assert code == 0
    assert "TEMPORARILY_FAILED (4)" in out
    assert "{'n': 7}" in out
    assert "After failed attempt 1, it is retried at" in out
    assert 'raise ValueError(f"boom {n}")' in out


def test_show_of_an_unknown_job_is_an_error_without_traceback(app: Flask) -> None:
    code, out = run(app, "show", "999999")
    assert code == 1
    assert "no job 999999 in this queue" in out
    assert "Traceback" not in out


def test_retry_by_id_makes_only_that_failed_job_ready_and_due(app: Flask) -> None:
    a, b = publish(app, "boom", 1), publish(app, "boom", 2)
    process(app)
    code, out = run(app, "retry", str(a))
    assert code == 0, out
    assert f"retried 1 job(s): {a}" in out
    with app.app_context():
        job_a, job_b = app.bgq.get_job(a), app.bgq.get_job(b)  # type: ignore[attr-defined]
    assert job_a.state is JobState.READY and job_a.available_at <= utcnow()
    assert job_b.state is JobState.TEMPORARILY_FAILED


def test_retry_of_a_job_that_is_not_failed_says_so_and_exits_1(app: Flask) -> None:
    job_id = publish(app, "ok", 1)
    process(app)
    code, out = run(app, "retry", str(job_id), "424242")
    assert code == 1
    assert f"not retried (unknown, or not failed/waiting): {job_id}, 424242" in out
    with app.app_context():
        assert app.bgq.get_job(job_id).state is JobState.FINISHED  # type: ignore[attr-defined]


def test_retry_failed_retries_every_failed_job_and_nothing_else(app: Flask) -> None:
    failed = [publish(app, "boom", n) for n in range(3)]
    done = publish(app, "ok", 9)
    process(app)
    waiting = publish(app, "ok", 10)
    with app.app_context():
        set_columns(app.bgq, failed[2], state=JobState.PERMANENTLY_FAILED)  # type: ignore[attr-defined]
        set_columns(app.bgq, waiting, state=JobState.WAITING)  # type: ignore[attr-defined]
    code, out = run(app, "retry", "--failed")
    assert code == 0
    assert "retried 3 failed job(s)" in out
    with app.app_context():
        states = {i: app.bgq.get_job(i).state for i in [*failed, done, waiting]}  # type: ignore[attr-defined]
    assert states == {
        **dict.fromkeys(failed, JobState.READY),
        done: JobState.FINISHED,
        waiting: JobState.WAITING,
    }


def test_retry_needs_ids_or_failed(app: Flask) -> None:
    code, out = run(app, "retry")
    assert code == 2
    assert "give job ids or --failed" in out


def test_stats_counts_states_and_callbacks(app: Flask) -> None:
    publish(app, "ok", 1)
    publish(app, "boom", 2)
    process(app)
    publish(app, "ok", 3)
    code, out = run(app, "stats", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["states"]["FINISHED"] == 1
    assert doc["states"]["TEMPORARILY_FAILED"] == 1
    assert doc["states"]["READY"] == 1
    assert doc["callbacks"] == {
        "boom": {"TEMPORARILY_FAILED": 1},
        "ok": {"FINISHED": 1, "READY": 1},
    }
    assert doc["due"] == 1
    assert doc["last_hour"] == {"finished": 1, "failed": 1}
    assert len(doc["workers"]) == 1
    code, out = run(app, "stats")
    assert "per callback:" in out and "ok: 1 ready, 1 finished" in out


def test_health_is_ok_while_a_worker_keeps_up(app: Flask) -> None:
    publish(app, "ok", 1)
    process(app)
    publish(app, "ok", 2)
    code, out = run(app, "health")
    assert code == 0
    assert out.startswith("ok: 1 due job(s)")


def test_health_fails_when_due_jobs_wait_and_no_worker_was_seen(app: Flask) -> None:
    job_id = publish(app, "ok", 1)
    with app.app_context():
        set_columns(app.bgq, job_id, available_at=utcnow() - timedelta(minutes=5))  # type: ignore[attr-defined]
    code, out = run(app, "health")
    assert code == 1
    assert "1 due job(s) wait, the oldest for 5 min, and no worker was seen within 60 s" in out


def test_health_fails_when_the_oldest_due_job_is_older_than_max_age(app: Flask) -> None:
    job_id = publish(app, "ok", 1)
    with app.app_context():
        set_columns(  # a worker claimed something a moment ago: it is alive
            app.bgq,  # type: ignore[attr-defined]
            job_id,
            available_at=utcnow() - timedelta(seconds=30),
            last_attempt_at=utcnow(),
        )
    assert run(app, "health")[0] == 0
    code, out = run(app, "health", "--max-age", "10")
    assert code == 1
    assert "the oldest due job has waited 30 s, more than 10 s" in out


def test_health_runs_as_a_real_flask_command(procs: ProcEnv) -> None:
    app = procs.app()
    with app.app_context():
        job_id = app.bgq.publish("noop")  # type: ignore[attr-defined]
        set_columns(app.bgq, job_id, available_at=utcnow() - timedelta(minutes=3))  # type: ignore[attr-defined]
    result = procs.run("bgq", "health")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no worker was seen" in result.stderr
    assert "Traceback" not in result.stderr
    assert procs.run("bgq", "process").returncode == 0
    result = procs.run("bgq", "health")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 0 due job(s)")
