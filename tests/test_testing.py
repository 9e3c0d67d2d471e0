"""flask_bgqueue.testing: the helpers documented for applications' tests."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask

from flask_bgqueue import BackgroundQueue, JobState
from flask_bgqueue.testing import assert_not_published, assert_published, published_jobs, run_jobs


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_assert_published_matches_parameters_and_columns(app: Flask, bgq: BackgroundQueue) -> None:
    bgq.callback("send")(lambda to: None)
    assert_not_published(bgq, "send")
    bgq.publish("send", {"to": "a"}, serial_group="g")
    bgq.publish("send", {"to": "b"})
    assert [j.id for j in assert_published(bgq, "send", {"to": "a"}, serial_group="g")] == [1]
    assert len(assert_published(bgq, "send", count=2)) == 2
    with pytest.raises(
        AssertionError, match=r"expected a job of 'send' with parameters \{'to': 'c'\}"
    ):
        assert_published(bgq, "send", {"to": "c"})
    with pytest.raises(AssertionError, match="expected 1 job"):
        assert_published(bgq, "send", count=1)
    with pytest.raises(AssertionError, match="expected no job"):
        assert_not_published(bgq)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_jobs_runs_due_jobs_and_with_include_future_the_delayed_ones(
    app: Flask, bgq: BackgroundQueue
) -> None:
    ran = []
    bgq.callback("work")(lambda n: ran.append(n))
    bgq.publish("work", [1])
    bgq.publish("work", [2], available_at=timedelta(days=1))
    assert run_jobs(bgq).outcomes == {"FINISHED": 1}
    assert ran == [1]
    assert run_jobs(bgq, include_future=True).outcomes == {"FINISHED": 1}
    assert ran == [1, 2]
    assert [j.state for j in published_jobs(bgq)] == [JobState.FINISHED] * 2
