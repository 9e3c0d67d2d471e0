"""A callback's result and progress, on every database (SPEC §10: result, set_progress)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_bgqueue import JobState
from tests.conftest import AppFactory, ProcEnv
from tests.dashboard_app import PREFIX, dashboard_app
from tests.test_workers import wait_for


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return dashboard_app(make_app)


def run(app: Flask, func: Any, **config: Any) -> Any:
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("give")(func)
    with app.app_context():
        job_id = bgq.publish("give")
        bgq.process()
        return bgq.get_job(job_id)


def test_a_return_value_is_kept_as_the_result_and_shown(app: Flask) -> None:
    value = {"total": 3, "names": ["a", "é"], "ratio": 0.5, "ok": True, "none": None}
    job = run(app, lambda: value)
    assert job.state is JobState.FINISHED and job.result == value
    assert job.error_message is None
    shown = app.test_cli_runner().invoke(args=["bgq", "show", str(job.id)])
    assert '"names": ["a", "\\u00e9"]' in shown.output
    page = app.test_client().get(f"{PREFIX}/jobs/{job.id}").get_data(as_text=True)
    assert "Result" in page and "total" in page


def test_no_return_value_keeps_no_result(app: Flask) -> None:
    job = run(app, lambda: None)
    assert job.state is JobState.FINISHED and job.result is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"bytes", "not plain JSON"),
        (float("nan"), "not plain JSON"),
        ("x" * 70_000, "over BGQUEUE_MAX_RESULT_BYTES (65,536)"),
    ],
)
def test_a_result_that_cannot_be_kept_still_finishes_the_job_saying_why(
    app: Flask, value: Any, why: str
) -> None:
    job = run(app, lambda: value)
    assert job.state is JobState.FINISHED and job.result is None
    assert job.error_message.startswith("result not kept: ") and why in job.error_message
    assert job.number_of_attempts == 1  # not run again for it


def test_a_failed_attempt_keeps_no_result(app: Flask) -> None:
    def fail() -> int:
        raise ValueError("no")

    job = run(app, fail)
    assert job.state is JobState.TEMPORARILY_FAILED and job.result is None


def test_clear_finished_removes_the_result_with_its_job(app: Flask) -> None:
    job = run(app, lambda: {"n": 1})
    with app.app_context():
        assert app.bgq.clear_finished() == 1  # type: ignore[attr-defined]
        assert app.bgq.get_job(job.id) is None  # type: ignore[attr-defined]


def test_set_progress_is_seen_by_another_process_before_the_job_ends(procs: ProcEnv) -> None:
    app = procs.app()
    (procs.dir / "p.hold").touch()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        job_id = bgq.publish("progress", {"name": "p"})
        worker = procs.start("bgq", "process")
        try:
            job = wait_for(
                lambda: (j := bgq.get_job(job_id)).progress is not None and j, what="progress"
            )
            assert job.state is JobState.PROCESSING  # still running
            assert job.progress == 0.5 and job.progress_message == "p half done"
        finally:
            (procs.dir / "p.hold").unlink()
            worker.communicate(timeout=60)
        job = bgq.get_job(job_id)
    assert job.state is JobState.FINISHED and job.result == {"name": "p", "done": True}


def test_set_progress_outside_a_callback_or_out_of_range_says_so(app: Flask) -> None:
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context(), pytest.raises(RuntimeError, match="from inside a callback"):
        bgq.set_progress(0.5)
    seen: list[str] = []

    def bad() -> None:
        try:
            bgq.set_progress(1.5)
        except ValueError as exc:
            seen.append(str(exc))

    run(app, bad)
    assert seen == ["progress must be a number from 0.0 to 1.0, not 1.5."]
