"""Logging the Flask way: a logger of its own, and job fields a JSON formatter picks up."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from example_app.jsonlog import JsonFormatter
from flask_bgqueue import BackgroundQueue, PermanentError
from tests.conftest import AppFactory


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    bgq = BackgroundQueue()

    @bgq.callback(queue="mail")
    def fails(n: int) -> None:
        raise PermanentError(f"no {n}")

    @bgq.callback
    def retries(n: int) -> None:
        raise RuntimeError(f"later {n}")

    @bgq.callback
    def works(n: int) -> None:
        pass

    return make_app(bgq)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the ``flask_bgqueue`` logger says at INFO, through the documented formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("flask_bgqueue")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run(app: Flask, callback: str, n: int) -> int:
    with app.app_context():
        job_id = app.bgq.publish(callback, {"n": n})  # type: ignore[attr-defined]
        app.bgq.process()  # type: ignore[attr-defined]
    return int(job_id)


def docs(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_job_records_carry_the_job_fields_for_a_json_formatter(
    app: Flask, json_lines: io.StringIO
) -> None:
    failed = run(app, "fails", 1)
    retried = run(app, "retries", 2)
    finished = run(app, "works", 3)
    by_job = {doc["job_id"]: doc for doc in docs(json_lines) if "job_id" in doc}
    assert by_job[failed] | {"time": None, "message": None} == {
        "time": None,
        "level": "CRITICAL",
        "logger": "flask_bgqueue",
        "message": None,
        "job_id": failed,
        "callback": "fails",
        "queue": "default_mail",
        "attempt": 1,
        "state": "PERMANENTLY_FAILED",
    }
    assert "failed permanently: PermanentError: no 1" in by_job[failed]["message"]
    assert (by_job[retried]["level"], by_job[retried]["state"]) == (
        "WARNING",
        "TEMPORARILY_FAILED",
    )
    assert (by_job[finished]["level"], by_job[finished]["state"]) == ("INFO", "FINISHED")


def test_the_queue_logger_has_a_level_apart_from_the_apps(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    # the app's own messages off; its logger ("tests") is every test logger's parent, so
    # its level is put back, or loggers such as "tests.heartbeat" stay silent afterwards
    app_level = app.logger.level
    app.logger.setLevel(logging.CRITICAL + 1)
    try:
        with caplog.at_level(logging.WARNING, logger="flask_bgqueue"):
            run(app, "retries", 1)
        assert [r.name for r in caplog.records] == ["flask_bgqueue"]
        logging.getLogger("flask_bgqueue").setLevel(logging.ERROR)
        caplog.clear()
        run(app, "retries", 2)  # a WARNING: below the queue's level now
        assert caplog.records == []
    finally:
        logging.getLogger("flask_bgqueue").setLevel(logging.NOTSET)
        app.logger.setLevel(app_level)


def test_without_any_logging_set_up_warnings_still_reach_standard_error(tmp_path: Path) -> None:
    """As with ``app.logger``: Flask's default handler when nothing else would show them."""
    import subprocess
    import sys

    script = f"""
from flask import Flask
from flask_bgqueue import BackgroundQueue
bgq = BackgroundQueue()
bgq.callback("boom")(lambda: 1 / 0)
app = Flask("plain")
app.config.update(BGQUEUE_DATABASE_URI="sqlite:///{tmp_path}/j.db")
bgq.init_app(app)
with app.app_context():
    bgq.publish("boom")
    bgq.process()
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING in processor: bgqueue: job 1 (boom) failed, attempt 1" in result.stderr
