"""What a worker keeps while it holds claimed jobs: the heartbeat that keeps them its own,
the outcomes waiting to be saved together, and what it owes a database that went away."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .clock import utcnow
from .context import note_cancel_requested
from .exceptions import one_line
from .outcome import Outcome
from .store import Claim, Store

#: An outcome waiting to be saved: the claim, the outcome, the row values it writes.
Pending = tuple[Claim, Outcome, dict[str, Any]]


class Heartbeat(threading.Thread):
    """Refreshes ``heartbeat_at`` of the jobs this process holds, from a daemon thread,
    and reads which of them someone asked to stop (``current_job().cancel_requested``)."""

    def __init__(self, store: Store, interval: float, logger: Any) -> None:
        super().__init__(name="bgqueue-heartbeat", daemon=True)
        self.store, self.interval, self.logger = store, interval, logger
        self.held: dict[int, Claim] = {}
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def hold(self, claims: list[Claim]) -> None:
        with self._lock:
            self.held.update((c.job.id, c) for c in claims)

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self.held.pop(claim.job.id, None)

    def holding(self) -> list[Claim]:
        """The claims held now (the running job's and those not started)."""
        with self._lock:
            return list(self.held.values())

    def run(self) -> None:
        failing = False  # the database's error is said once, not at every beat
        while not self._stop_event.wait(self.interval):
            with self._lock:
                claims = list(self.held.values())
            try:
                self.store.heartbeat(claims, utcnow())
                if claims:
                    note_cancel_requested(self.store.cancel_requested([c.job.id for c in claims]))
            except Exception as exc:  # the next beat tries again
                if not self.store.is_database_error(exc):
                    self.logger.exception("bgqueue heartbeat failed")
                elif not failing:  # a lost database: one line (the worker says more)
                    failing = True
                    self.logger.warning(
                        "bgqueue heartbeat failed: %s; trying again at each beat", one_line(exc)
                    )
            else:
                failing = False

    def stop(self) -> None:
        self._stop_event.set()


@dataclass
class Owed:
    """What a worker could not write while its database was away, to write once it is back.

    ``outcomes`` of jobs that ran, ``claims`` of jobs not started (to give back), and the
    times of claims whose commit went unanswered (their jobs may be ``PROCESSING`` under
    this worker without its knowing). While anything is owed, the worker takes no job.
    """

    outcomes: list[Pending] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    claim_times: list[datetime] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.claims or self.claim_times)


class OutcomeWriter:
    """Saves the outcomes of a batch of jobs in one transaction instead of one each.

    An outcome waits at most :attr:`FLUSH_AFTER_SECONDS` (a timer flushes it while a
    later, slower job runs), so a job's successors in its serial group, the dashboard and
    a crash see it finished almost at once; a crash in that window runs the job again, as
    a crash during the job would. Before each job the worker calls :meth:`settled`: no job
    starts while an outcome waits longer than that or its save is under way, so a save the
    database refuses stops the batch before the next job however slowly the refusal comes
    (at most the one job that started before the outcome was due ran beside it).
    """

    FLUSH_AFTER_SECONDS = 0.02

    def __init__(self, save: Callable[[list[Pending]], None], logger: Any) -> None:
        self.save, self.logger = save, logger  # save: Processor.save_outcomes
        self._pending: list[Pending] = []
        self._timer: threading.Timer | None = None
        self._due = 0.0  # when the oldest pending outcome must be saved (monotonic)
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def add(self, claim: Claim, outcome: Outcome, values: dict[str, Any]) -> None:
        with self._lock:
            self._pending.append((claim, outcome, values))
            if self._timer is None:
                self._due = time.monotonic() + self.FLUSH_AFTER_SECONDS
                self._timer = threading.Timer(self.FLUSH_AFTER_SECONDS, self._flush_logged)
                self._timer.daemon = True
                self._timer.start()

    def settled(self) -> None:
        """Save the outcomes that are due now, in this thread, if the timer has not begun
        to (its thread may not have been scheduled yet), or wait for its save under way;
        either way it ends saved, or owed (``Processor.owed``)."""
        with self._lock:
            due = self._timer is not None and time.monotonic() >= self._due
        if due:
            self._flush_logged()
        elif self._flushing.locked():
            with self._flushing:
                pass

    def flush(self) -> None:
        with self._flushing:
            with self._lock:
                items, self._pending = self._pending, []
                timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()
            if not items:
                return
            self.save(items)

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # owed (see Processor.save_outcomes): no job starts now
            self.logger.error(
                "bgqueue: could not save job outcomes (%s); no job starts until they are saved",
                one_line(exc),
            )
