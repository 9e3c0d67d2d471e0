"""The outcome writer's rule before each job (:meth:`OutcomeWriter.settled`), on a fake
save: the real database cases are in ``test_db_faults.py``."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from flask_bgqueue.holding import OutcomeWriter, Pending


class Log:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, msg: str, *args: Any) -> None:
        self.errors.append(msg % args)


class NeverFires:
    """A timer whose thread is never scheduled, as on a machine busy elsewhere."""

    def __init__(self, interval: float, function: Any) -> None:
        self.daemon = False

    def start(self) -> None:
        pass

    def cancel(self) -> None:
        pass


def pending(n: int) -> Pending:
    return (n, None, {})  # type: ignore[return-value]  # the fake save only counts them


def test_an_outcome_due_is_saved_before_the_next_job_though_the_timer_never_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("flask_bgqueue.holding.threading.Timer", NeverFires)
    saved: list[tuple[list[Pending], str]] = []
    writer = OutcomeWriter(
        lambda items: saved.append((items, threading.current_thread().name)), Log()
    )
    writer.add(*pending(1))
    writer.settled()  # not due yet: it waits to be saved with the next ones
    assert saved == []
    time.sleep(OutcomeWriter.FLUSH_AFTER_SECONDS * 1.5)
    writer.settled()
    assert saved == [([pending(1)], threading.current_thread().name)]
    writer.flush()  # nothing left
    assert len(saved) == 1


def test_no_job_starts_while_the_timers_save_is_under_way() -> None:
    entered, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow_save(items: list[Pending]) -> None:
        entered.set()
        release.wait(5)
        done.append("saved")

    writer = OutcomeWriter(slow_save, Log())
    writer.add(*pending(1))
    assert entered.wait(5), "the timer's save did not begin"
    settled = threading.Thread(target=writer.settled)
    settled.start()
    settled.join(0.2)
    assert settled.is_alive(), "settled() returned while the save was under way"
    release.set()
    settled.join(5)
    assert not settled.is_alive() and done == ["saved"]


def test_a_refused_save_before_a_job_is_logged_and_left_to_what_is_owed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("flask_bgqueue.holding.threading.Timer", NeverFires)

    def refuse(items: list[Pending]) -> None:
        raise RuntimeError("database refused")

    log = Log()
    writer = OutcomeWriter(refuse, log)
    writer.add(*pending(1))
    time.sleep(OutcomeWriter.FLUSH_AFTER_SECONDS * 1.5)
    writer.settled()  # does not raise: Processor.save_outcomes made them owed
    assert log.errors == [
        "bgqueue: could not save job outcomes (RuntimeError: database refused); no job starts"
        " until they are saved"
    ]
