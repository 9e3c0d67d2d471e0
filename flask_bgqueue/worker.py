"""The long-running consumer (``flask bgq consume``).

One loop serves every source of jobs: it takes a batch (ids from a broker's
:class:`~flask_bgqueue.broker.Consumer`, or due jobs claimed from the table, waking up
through PostgreSQL ``LISTEN``/``NOTIFY`` or every ``BGQUEUE_POLL_INTERVAL_MS``), claims
it by the same guarded UPDATE as in cron mode, runs it, and paces the next batch: several
jobs at once while they are quick (:class:`~flask_bgqueue.pacing.Pacer`). A stop request
(SIGTERM, SIGINT, ``-j N`` reached, ``DieException``) is honoured between two jobs, and
jobs claimed but not started are given back (and, with a broker, their ids sent again).
``reload-consumers`` is honoured between two batches.

With a broker, a message is acknowledged once its job's claim is committed, and the jobs
run in a thread of their own (:class:`JobThread`) while this thread serves the broker's
connection; after a lost connection the loop goes on with a new broker consumer.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask

from .broker import Broker, BrokerConnectionLost, BrokerError, Consumer, Delivery
from .clock import utcnow
from .exceptions import DatabaseUnavailable, one_line
from .holding import Heartbeat
from .jobthread import JobThread
from .models import AGAIN_STATES, DELIVERABLE_STATES, job_fields
from .outcome import Outcome
from .pacing import MAX_BATCH, Pacer
from .periodic import Ticker
from .processor import Processor
from .resources import resident
from .runtime import Runtime
from .store import Claim

log = logging.getLogger("flask_bgqueue.broker")

#: A consumer takes a job a little early rather than send its id around once more.
EARLY_MS = 100
#: How long the id of a job whose callback is unknown here waits before it is offered again.
UNKNOWN_CALLBACK_DELAY_MS = 60_000
#: How long a broker consumer waits for ids before the loop looks around (stop, reaping).
IDLE_SECONDS = 1.0
#: Reconnecting to a database that went away: the first pause, doubled up to the last.
RECONNECT_FIRST_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 30.0


@dataclass
class ConsumeResult:
    """What one :meth:`BackgroundQueue.consume` call did."""

    jobs: int = 0
    died: bool = False
    reloaded: bool = False
    #: Stopped because the process held more than ``max_memory`` bytes after a job.
    over_memory: bool = False


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
        max_memory: int | None = None,
    ) -> None:
        self.state, self.app, self.stop = state, app, stop
        self.max_memory = max_memory
        self.settings = state.settings
        # QUEUE means the same with and without a broker: one (sub-)queue, named in full
        # or by a callback's queue=. Without QUEUE, a broker consumer takes BGQUEUE_QUEUE
        # (RabbitMQ has a queue per sub-queue) and the broker-less one every queue.
        self.only_queue: str | None = None
        if queue is None:
            self.queue = self.settings.queue
        else:
            self.queue, known = state.queue_name(queue)
            self.only_queue = self.queue
            if not known:
                state.logger.warning(
                    "bgqueue: queue %r is none this app publishes to (%s); consuming it anyway",
                    queue,
                    ", ".join(state.queues()),
                )
        self.priorities = tuple(priorities) if priorities is not None else self.settings.priorities
        self.max_jobs = max_jobs
        self.processor = Processor(state, app)
        self.store = state.store
        self.result = ConsumeResult()
        self.heartbeat = Heartbeat(
            self.store, self.settings.heartbeat_interval_seconds, state.logger
        )
        self._last_reap = 0.0
        self._connected = False  # to the broker, once: a failure before that is fatal
        self.ticker = Ticker(state)  # periodic schedules: due ticks become jobs

    def describe(self) -> str:
        """Who this consumer is, in one line: queue, priorities, mode, where, pid."""
        broker = self.state.broker
        where = (
            f"RabbitMQ {broker.describe()}"
            if broker is not None
            else "the table of " + self.store.engine.url.render_as_string(hide_password=True)
        )
        mode = "broker" if broker is not None else self.store.wakeup
        return (
            f"bgqueue consumer pid {self.processor.pid} on {self.processor.hostname}: queue"
            f" {self.only_queue or (self.queue if broker else 'every queue')}, priorities"
            f" {','.join(map(str, self.priorities))}, {mode}, {where}"
        )

    def force_stop(self, why: str) -> None:
        """Stop now, from a signal handler (a second SIGINT): the running job's attempt is
        recorded as interrupted (due again at once, not after the lost-worker delay) and the
        jobs not started go back. The caller then exits without waiting for the job."""
        now = utcnow()
        running = self.processor.current
        rest = [c for c in self.heartbeat.holding() if running is None or c is not running]
        again: list[int] = []
        try:
            if running is not None and self.store.interrupt(
                running, now, why, self.settings.max_attempts
            ):
                again.append(running.job.id)
            if rest:
                self.store.release(rest, now)
                again += [c.job.id for c in rest]
            if self.state.broker is not None:
                for job in filter(None, map(self.store.get, again)):
                    self._send(job, 0)
        except Exception as exc:  # the lost-worker sweep takes them back later
            self.state.logger.error("bgqueue: could not record the interruption: %s", one_line(exc))

    def run(self) -> ConsumeResult:
        self.store.ensure_statistics()
        self.heartbeat.start()
        try:
            with self.processor.limits.watching():  # a watchdog process, if needed
                broker = self.state.broker
                if broker is None:
                    with _Wakeup(self.store, self.settings.poll_interval_ms / 1000) as wakeup:
                        self.result.reloaded = self._consume(_TableFeed(self, wakeup))
                else:
                    self.result.reloaded = self._consume_broker(broker)
        finally:
            self.heartbeat.stop()
            self.processor.tally.flush(force=True)
            if self.processor.owed:  # stopped while the database was away
                self.state.logger.error(
                    "bgqueue: stopping with %d job outcome(s) unsaved; those jobs run again"
                    " once a sweep takes them back as lost",
                    len(self.processor.owed.outcomes),
                )
        return self.result

    # -- the consume loop ---------------------------------------------------------------

    def _consume(self, feed: _Feed) -> bool:
        """Take, claim, run and pace batches until told to stop (``False``) or asked to
        reload (``True``)."""
        while not self.stop.is_set():
            try:
                if self.processor.owed:
                    raise DatabaseUnavailable("job outcomes or claims could not be written")
                self._reap()
                self.ticker.maybe_run()
                if feed.take_reload_request():
                    return True
                taken = feed.take(self._batch_limit())
                if taken is None:
                    continue
                size, claims = taken
                started = time.perf_counter()
                feed.run(functools.partial(self._run, claims))
                feed.paced(size, time.perf_counter() - started)
            except Exception as exc:
                if not (isinstance(exc, DatabaseUnavailable) or self.store.is_database_error(exc)):
                    raise
                self._ride_out(exc, feed)
        return False

    def _ride_out(self, error: Exception, feed: _Feed) -> None:
        """The database went away (a restart, a failover, killed connections) or refused a
        write: log one line, reconnect with backoff, save what is owed and give back the
        jobs not started (their ids sent again with a broker), then go on."""
        self.state.logger.warning(
            "bgqueue: lost the database (%s); reconnecting (%s)",
            one_line(error),
            self.store.engine.url.render_as_string(hide_password=True),
        )
        delay = RECONNECT_FIRST_SECONDS
        tries = 0
        while not self.stop.is_set():
            tries += 1
            self.store.forget_connections()
            try:
                given_back = self.processor.settle()
                feed.reconnected()
            except Exception as exc:
                if not self.store.is_database_error(exc):
                    raise
                self.state.logger.debug("bgqueue: database still away: %s", one_line(exc))
                self.stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            self.state.logger.warning(
                "bgqueue: database back after %d attempt(s); %d job(s) given back",
                tries,
                len(given_back),
            )
            if self.state.broker is not None:
                for job in filter(None, map(self.store.get, given_back)):
                    self._send(job, 0)
            return

    def _consume_broker(self, broker: Broker) -> bool:
        """The consume loop on broker consumers, a new one after each lost connection.

        A broker that cannot be reached at start (a wrong password, virtual host or host)
        will not heal by waiting: :class:`BrokerError` naming it, and the command exits 1.
        A connection lost later is retried with backoff (as the database's), each retry
        logged with the broker's address.
        """
        started = time.time()
        runner = JobThread()
        where = f"the broker at {broker.describe()}"
        delay, tries = RECONNECT_FIRST_SECONDS, 0
        try:
            while not self.stop.is_set():
                try:
                    consumer = broker.consumer(self.queue, self.priorities, started)
                except BrokerConnectionLost as exc:
                    if not self._connected:
                        raise BrokerError(f"cannot connect to {where}: {exc}") from exc
                    tries += 1
                    log.warning(
                        "bgqueue: %s still unreachable: %s; retry %d in %.2g s",
                        where,
                        exc,
                        tries,
                        delay,
                    )
                    self.stop.wait(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                    continue
                node = consumer.describe()  # the node of a cluster it reached
                if tries:
                    log.warning("bgqueue: %s is back after %d retries", where, tries)
                if node:  # a reconnection is worth a warning: work moved to this node
                    (log.warning if self._connected else log.info)(
                        "bgqueue: consuming from node %s of %s", node, where
                    )
                self._connected, delay, tries = True, RECONNECT_FIRST_SECONDS, 0
                try:
                    return self._consume(_BrokerFeed(self, consumer, runner))
                except BrokerConnectionLost as exc:
                    lost = f"node {node} of {where}" if node else where
                    log.warning("bgqueue: lost %s: %s; reconnecting in %.2g s", lost, exc, delay)
                    self.stop.wait(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                finally:
                    consumer.close()
            return False
        finally:
            runner.close()

    def _batch_limit(self) -> int:
        """How many jobs the next batch may take: all it likes, but ``-j N`` caps it."""
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
            if outcome.state in AGAIN_STATES:
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
        if self.max_memory is not None and (resident() or 0) > self.max_memory:
            # Memory a job leaves behind (caches, fragmentation) is not given back: a
            # fresh process from the supervisor is the sure way to get it back.
            self.result.over_memory = True
            self.stop.set()

    def _reap(self) -> None:
        """Take back jobs of lost workers, at most every half of the lost-worker delay."""
        lost_after = self.settings.worker_lost_after_seconds
        if time.monotonic() - self._last_reap < lost_after / 2:
            return
        self._last_reap = time.monotonic()
        for job_id in self.processor.reap(utcnow()):
            job = self.store.get(job_id)
            if self.state.broker is not None and job is not None:
                self._send(job, 0)

    # -- delivered ids ------------------------------------------------------------------

    def _claim_delivered(self, deliveries: Sequence[Delivery]) -> list[Claim]:
        """Claim the delivered jobs, in the order they came; send the others on."""
        ids = list(dict.fromkeys(d.job_id for d in deliveries))
        claims = self._claim(ids)
        claimed = {c.job.id for c in claims}
        for job_id in ids:
            if job_id in claimed:
                continue
            job = self.store.get(job_id)
            if job is None or job.state not in DELIVERABLE_STATES:
                continue  # finished, running elsewhere or gone: a stale message
            delay_ms = (job.available_at - utcnow()).total_seconds() * 1000
            if delay_ms <= EARLY_MS:  # (nearly) due now: it was just not due at the claim
                time.sleep(max(0.0, delay_ms) / 1000)
                more = self._claim([job_id])
                if more:
                    claims += more
                    continue
            self._redirect(job, delay_ms)
        order = {job_id: i for i, job_id in enumerate(ids)}
        claims.sort(key=lambda c: order[c.job.id])  # as the broker delivered them
        return claims

    def _claim(self, job_ids: list[int]) -> list[Claim]:
        """Claim the delivered jobs: the plain ones in one statement, the rest checked."""
        with self.processor.claiming() as now:
            return self._claim_at(now, job_ids)

    def _claim_at(self, now: datetime, job_ids: list[int]) -> list[Claim]:
        limits = self.state.limits()
        claims = self.store.claim_delivered(
            now=now,
            job_ids=job_ids,
            # jobs of limited callbacks take the checked claim below
            callbacks=[c for c in self.state.callback_names() if c not in limits],
            pid=self.processor.pid,
            hostname=self.processor.hostname,
            states=DELIVERABLE_STATES,
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
            states=DELIVERABLE_STATES,
            limits=limits,
        )

    def _redirect(self, job: Any, delay_ms: float) -> None:
        """A job delivered too early, blocked, or unknown here goes back, delayed."""
        if self.state.callback(job.callback_name) is None:
            self.processor.note_unknown_callbacks(utcnow(), "consumer")
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
            self.state.logger.warning(
                "bgqueue: could not send job %s again: %s", job.id, exc, extra=job_fields(job)
            )


class _Feed:
    """Where the consume loop's batches come from, and how their jobs run."""

    def take_reload_request(self) -> bool:
        return False

    def reconnected(self) -> None:
        """The database is back: renew what held a connection to it."""

    def take(self, limit: int) -> tuple[int, list[Claim]] | None:
        """Up to ``limit`` claimed jobs, held by the heartbeat, and how many the batch
        counts for pacing; ``None`` after waiting for some in vain."""
        raise NotImplementedError

    def run(self, work: Callable[[], None]) -> None:
        work()

    def paced(self, size: int, seconds: float) -> None:
        """Pace the next batch: ``size`` jobs took ``seconds`` to run."""


class _TableFeed(_Feed):
    """Without a broker: due jobs claimed from the table, like the cron sweep does."""

    def __init__(self, worker: Worker, wakeup: _Wakeup) -> None:
        self.worker, self.wakeup = worker, wakeup
        self.known = worker.state.callback_names()
        self.pacer = worker.processor.claim_pacer(cap=MAX_BATCH)

    def take(self, limit: int) -> tuple[int, list[Claim]] | None:
        w = self.worker
        claims = w.processor.claim(
            w.priorities, self.known, limit=min(self.pacer.size, limit), queue=w.only_queue
        )
        if not claims:
            # before the wait, not after it: a job that woke the wait is claimed at once
            w.processor.tally.flush()
            self.wakeup.wait(w.stop)
            return None
        w.heartbeat.hold(claims)
        return len(claims), claims

    def paced(self, size: int, seconds: float) -> None:
        self.pacer.record(size, seconds)

    def reconnected(self) -> None:
        self.wakeup.renew()


class _BrokerFeed(_Feed):
    """Ids from a broker consumer, acknowledged once their jobs' claims are committed:
    while the batch runs (see :meth:`JobThread.run`), so that the acknowledgement does not
    delay its first job."""

    def __init__(self, worker: Worker, consumer: Consumer, runner: JobThread) -> None:
        self.worker, self.consumer, self.runner = worker, consumer, runner
        self.claimed: list[Delivery] = []  # taken, their jobs claimed, not acknowledged yet
        self.pacer = Pacer(start=1, cap=MAX_BATCH)  # of the prefetch
        consumer.set_prefetch(self.pacer.size)

    def take_reload_request(self) -> bool:
        return self.consumer.take_reload_request()

    def take(self, limit: int) -> tuple[int, list[Claim]] | None:
        deliveries = self.consumer.next_batch(limit, IDLE_SECONDS)
        if not deliveries:  # idle for a while
            self.worker.processor.tally.flush()
            return None
        try:
            claims = self.worker._claim_delivered(deliveries)
        except Exception as exc:
            self.consumer.nack(deliveries)
            if self.worker.store.is_database_error(exc):
                raise  # the consume loop rides it out
            log.exception(
                "bgqueue: could not take jobs %s; they will be delivered again",
                [d.job_id for d in deliveries],
            )
            self._pause(1)
            return None
        self.worker.heartbeat.hold(claims)
        if not claims:  # stale or sent on: nothing to run
            self.consumer.ack(deliveries)
            return None
        self.claimed = deliveries
        return len(deliveries), claims

    def run(self, work: Callable[[], None]) -> None:
        # The claims are committed: the jobs run even if the acknowledgement fails (the
        # connection dropped); the error goes up once they are done.
        deliveries, self.claimed = self.claimed, []
        self.runner.run(work, self.consumer.pump, functools.partial(self.consumer.ack, deliveries))

    def paced(self, size: int, seconds: float) -> None:
        before = self.pacer.size
        if self.pacer.record(size, seconds) != before:
            self.consumer.set_prefetch(self.pacer.size)

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` while serving the broker's connection."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.consumer.pump()
            time.sleep(0.05)


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

    def renew(self) -> None:
        """A new listener after the database came back (the old connection is dead)."""
        try:
            self.listener.close()
        except Exception:  # closing a dead connection: nothing left to release
            pass
        self.listener = self.store.listener(self.interval)

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
