"""The long-running consumer (``flask bgq consume``).

With a broker it takes job ids from it; without one it claims due jobs from the table,
waking up through PostgreSQL ``LISTEN``/``NOTIFY`` or every ``BGQUEUE_POLL_INTERVAL_MS``.
Either way jobs are claimed by the same guarded UPDATE as in cron mode, several at once
while they are quick, a stop request (SIGTERM, SIGINT, ``-j N`` reached, ``DieException``)
is honoured between two jobs, and jobs claimed but not started are given back (and, with a
broker, their ids sent again). ``reload-consumers`` is honoured between two batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask

from .broker import BrokerError, Delivery
from .clock import utcnow
from .models import RUNNABLE_STATES, JobState
from .processor import Heartbeat, Outcome, Processor
from .store import Claim

if TYPE_CHECKING:
    from .runtime import Runtime

#: A consumer takes a job a little early rather than send its id around once more.
EARLY_MS = 100
#: How long the id of a job whose callback is unknown here waits before it is offered again.
UNKNOWN_CALLBACK_DELAY_MS = 60_000
CLAIMABLE = (*RUNNABLE_STATES, JobState.BACK_TO_BROKER)
#: At most this many jobs are claimed in one transaction.
MAX_BATCH = 128


@dataclass
class ConsumeResult:
    """What one :meth:`BackgroundQueue.consume` call did."""

    jobs: int = 0
    died: bool = False
    reloaded: bool = False


class Worker:
    """One consumer: a queue, its priorities, and when to stop."""

    def __init__(
        self,
        state: Runtime,
        app: Flask,
        queue: str | None,
        priorities: Sequence[int] | None,
        max_jobs: int | None,
        stop: threading.Event,
    ) -> None:
        self.state, self.app, self.stop = state, app, stop
        self.settings = state.settings
        self.queue = queue or self.settings.queue
        self.priorities = tuple(priorities) if priorities is not None else self.settings.priorities
        self.max_jobs = max_jobs
        self.processor = Processor(state, app)
        self.store = state.store
        self.result = ConsumeResult()
        self.heartbeat = Heartbeat(
            self.store, self.settings.heartbeat_interval_seconds, state.logger
        )
        self._last_reap = 0.0

    def run(self) -> ConsumeResult:
        self.store.ensure_statistics()
        self.heartbeat.start()
        try:
            broker = self.state.broker
            if broker is None:
                self._poll()
            else:
                broker.consume(
                    self.queue,
                    self.priorities,
                    self._handle,
                    self.stop.is_set,
                    self._reap,
                    self._batch_limit,
                )
                self.result.reloaded = not self.stop.is_set()
        finally:
            self.heartbeat.stop()
        return self.result

    # -- shared -------------------------------------------------------------------------

    def _batch_limit(self) -> int:
        """How many jobs the next claim may take: all it likes, but ``-j N`` caps it."""
        if self.max_jobs is None:
            return MAX_BATCH
        return max(1, min(MAX_BATCH, self.max_jobs - self.result.jobs))

    def _run(self, claims: list[Claim]) -> None:
        """Run claimed jobs in order; a stop request gives back those not started.

        With a broker, the ids of jobs to retry and of jobs given back are sent once the
        batch's outcomes are saved, so a consumer never gets the id of a job still
        ``PROCESSING`` here.
        """
        again: list[tuple[Any, float]] = []

        def ran(claim: Claim, outcome: Outcome) -> None:
            if outcome.state in (JobState.TEMPORARILY_FAILED, JobState.WAITING):
                due = outcome.values.get("available_at") or utcnow()
                again.append((claim.job, (due - utcnow()).total_seconds() * 1000))
            self._ran(claim, outcome)

        def given_back(rest: list[Claim]) -> None:
            again.extend((claim.job, 0) for claim in rest)  # their messages were acknowledged

        broker = self.state.broker is not None
        try:
            self.processor.run_claims(
                claims, self.heartbeat, ran, self.stop.is_set, given_back if broker else None
            )
        finally:
            if broker:
                for job, delay_ms in again:
                    self._send(job, delay_ms)

    def _ran(self, claim: Claim, outcome: Outcome) -> None:
        self.result.jobs += 1
        if outcome.die:
            self.result.died = True
            self.stop.set()
        if self.max_jobs is not None and self.result.jobs >= self.max_jobs:
            self.stop.set()

    def _reap(self) -> None:
        """Take back jobs of lost workers, at most every half of the lost-worker delay."""
        lost_after = self.settings.worker_lost_after_seconds
        if time.monotonic() - self._last_reap < lost_after / 2:
            return
        self._last_reap = time.monotonic()
        reaped = self.store.reap_lost(
            utcnow(), timedelta(seconds=lost_after), self.settings.max_attempts
        )
        for job_id in reaped:
            self.state.logger.warning(
                "bgqueue: job %s was PROCESSING under a lost worker; retrying it", job_id
            )
            job = self.store.get(job_id)
            if self.state.broker is not None and job is not None:
                self._send(job, 0)

    # -- without a broker ---------------------------------------------------------------

    def _poll(self) -> None:
        known = self.state.callback_names()
        limit = self.settings.claim_batch_size
        with _Wakeup(self.store, self.settings.poll_interval_ms / 1000) as wakeup:
            while not self.stop.is_set():
                self._reap()
                claims = self.processor.claim(
                    self.priorities, known, limit=min(limit, self._batch_limit())
                )
                if not claims:
                    wakeup.wait(self.stop)
                    continue
                self.heartbeat.hold(claims)
                started = time.perf_counter()
                self._run(claims)
                # Like the cron sweep: claim more at once while jobs are quick.
                limit = self.processor.next_batch_size(
                    limit, len(claims), time.perf_counter() - started
                )

    # -- with a broker ------------------------------------------------------------------

    def _handle(self, deliveries: Sequence[Delivery]) -> Callable[[], None] | None:
        """Claim the delivered jobs (then the messages are acknowledged) or send them on."""
        ids = list(dict.fromkeys(d.job_id for d in deliveries))
        claims = self._claim(ids)
        claimed = {c.job.id for c in claims}
        for job_id in ids:
            if job_id in claimed:
                continue
            job = self.store.get(job_id)
            if job is None or job.state not in CLAIMABLE:
                continue  # finished, running elsewhere or gone: a stale message
            delay_ms = (job.available_at - utcnow()).total_seconds() * 1000
            if delay_ms <= EARLY_MS:  # (nearly) due now: it was just not due at the claim
                time.sleep(max(0.0, delay_ms) / 1000)
                more = self._claim([job_id])
                if more:
                    claims += more
                    continue
            self._redirect(job, delay_ms)
        if not claims:
            return None
        order = {job_id: i for i, job_id in enumerate(ids)}
        claims.sort(key=lambda c: order[c.job.id])  # as the broker delivered them
        self.heartbeat.hold(claims)
        return lambda: self._run(claims)

    def _claim(self, job_ids: list[int]) -> list[Claim]:
        """Claim the delivered jobs: the plain ones in one statement, the rest checked."""
        now = utcnow()
        claims = self.store.claim_delivered(
            now=now,
            job_ids=job_ids,
            callbacks=self.state.callback_names(),
            pid=self.processor.pid,
            hostname=self.processor.hostname,
            states=CLAIMABLE,
        )
        if claims is None:
            claims = []
        else:
            taken = {c.job.id for c in claims}
            job_ids = [i for i in job_ids if i not in taken]
            if not job_ids:
                return claims
        return claims + self.store.claim(
            now=now,
            limit=len(job_ids),
            priorities=None,
            callbacks=self.state.callback_names(),
            pid=self.processor.pid,
            hostname=self.processor.hostname,
            waiting_expiration=timedelta(milliseconds=self.settings.waiting_job_expiration_ms),
            job_ids=job_ids,
            states=CLAIMABLE,
        )

    def _redirect(self, job: Any, delay_ms: float) -> None:
        """A job delivered too early, blocked, or unknown here goes back, delayed."""
        if self.state.callback(job.callback_name) is None:
            self.store.note_unknown_callbacks(
                utcnow(),
                self.state.callback_names(),
                f"no callback of this name is registered in consumer pid {self.processor.pid}"
                f" on {self.processor.hostname}",
            )
            delay_ms = max(delay_ms, UNKNOWN_CALLBACK_DELAY_MS)
        elif delay_ms <= 0:  # due, yet not claimed: its group is busy; try again later
            delay_ms = self.settings.waiting_job_expiration_ms
        self._send(job, delay_ms)

    def _send(self, job: Any, delay_ms: float) -> None:
        broker = self.state.broker
        assert broker is not None
        try:
            broker.publish(job.queue, job.priority, job.id, max(0, int(delay_ms)))
        except BrokerError as exc:  # the row says when it is due; `process` sends it again
            self.state.logger.warning("bgqueue: could not send job %s again: %s", job.id, exc)


class _Wakeup:
    """Wait for new jobs: the store's listener (PostgreSQL ``LISTEN``, or a timed wait)."""

    def __init__(self, store: Any, interval: float) -> None:
        self.store, self.interval = store, interval
        self.listener: Any = None

    def __enter__(self) -> _Wakeup:
        self.listener = self.store.listener(self.interval)
        return self

    def wait(self, stop: threading.Event) -> None:
        self.listener.wait(stop)

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
