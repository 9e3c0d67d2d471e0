"""The consumer's job thread: the work runs there while the consuming thread pumps the
connection and acknowledges the batch (``first``) without holding up the work."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from flask_bgqueue.jobthread import JobThread


@pytest.fixture
def runner() -> Iterator[JobThread]:
    thread = JobThread()
    yield thread
    thread.close()


def test_first_is_called_once_while_a_long_work_still_runs(runner: JobThread) -> None:
    """The work waits until ``first`` has run: ``first`` must come while it runs (at the
    first 50 ms), not after it, and only once however many pumps follow."""
    events: list[str] = []
    acknowledged = threading.Event()

    def work() -> None:
        events.append("work started")
        events.append("acknowledged" if acknowledged.wait(5) else "never acknowledged")
        threading.Event().wait(0.15)  # a few more pumps
        events.append("work done")

    def first() -> None:
        events.append("first")
        acknowledged.set()

    pumps: list[int] = []
    runner.run(work, lambda: pumps.append(1), first)
    assert events == ["work started", "first", "acknowledged", "work done"]
    assert len(pumps) >= 2


def test_first_that_raises_lets_the_work_end_then_raises(runner: JobThread) -> None:
    """``first`` failing (the connection dropped at the acknowledgement) does not stop the
    work: it runs to its end, then the error goes up."""
    release = threading.Event()
    done: list[bool] = []

    def work() -> None:
        release.wait(5)
        done.append(True)

    def first() -> None:
        release.set()
        raise ConnectionError("dropped")

    with pytest.raises(ConnectionError):
        runner.run(work, lambda: None, first)
    assert done == [True]


def test_a_work_that_fails_still_gets_first_then_its_error_goes_up(runner: JobThread) -> None:
    """A short work that fails: ``first`` is called all the same (its claims were
    committed), then the work's error goes up."""
    calls: list[str] = []

    def work() -> None:
        calls.append("work")
        raise KeyError("boom")

    with pytest.raises(KeyError):
        runner.run(work, lambda: None, lambda: calls.append("first"))
    assert sorted(calls) == ["first", "work"]
