"""One job's pipeline and the cron sweep.

The sweep claims a few due jobs per transaction (``BGQUEUE_CLAIM_BATCH_SIZE``), runs them
one by one inside a fresh app context, and saves each outcome with an UPDATE guarded by
the claim. A heartbeat thread keeps the claimed rows' ``heartbeat_at`` fresh, so a job is
taken back ("worker lost") only from a worker that really stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Flask

from . import instrumentation, migrate, serialization, signals
from .aio import resolve
from .clock import utcnow
from .context import running, take_cancel_request
from .exceptions import DatabaseUnavailable, JobTimeout, SignatureError
from .holding import Heartbeat, OutcomeWriter, Owed, Pending
from .models import AGAIN_STATES, ENDED_STATES, FAILED_STATES, JobState, job_fields
from .outcome import Outcome, cancelled, classify, kept_result, permanent
from .pacing import Pacer
from .periodic import enqueue_due
from .publishing import send_jobs_to_broker, send_to_broker
from .resources import job_memory, start_job
from .runtime import Runtime
from .store import Claim
from .tally import Tally
from .timeouts import Deadline, TimeLimits

HOSTNAME = socket.gethostname()
#: The outcomes the throughput chart counts: finished, and failed attempts.
TALLIED_STATES = (JobState.FINISHED, *FAILED_STATES)


@dataclass
class SweepResult:
    """What one :meth:`BackgroundQueue.process` call did.

    ``outcomes`` counts the jobs by the state each one ended the sweep in
    (``{"FINISHED": 12}``): a job that waited and then ran again in the same sweep counts
    once, as what it became last. ``runs`` counts how many times a job was run, that job
    twice. ``reaped`` lists the jobs taken back from lost workers, ``resent`` how many ids
    were sent to the broker again, ``died`` whether a :class:`~flask_bgqueue.DieException`
    stopped the sweep.
    """

    outcomes: dict[str, int] = field(default_factory=dict)
    reaped: list[int] = field(default_factory=list)
    resent: int = 0
    died: bool = False
    runs: int = 0
    #: The jobs whose last run left them due again later (so they may run again here).
    _again: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def processed(self) -> int:
        """How many jobs ran (each counted once, however often it ran)."""
        return sum(self.outcomes.values())

    @property
    def did_anything(self) -> bool:
        """Whether the sweep ran, recovered or sent anything."""
        return bool(self.runs or self.reaped or self.resent)

    def count(self, job_id: int, state: JobState) -> None:
        """A run of job ``job_id`` ended in ``state``."""
        self.runs += 1
        before = self._again.pop(job_id, None)
        if before is not None:  # it ran before in this sweep: count it once, as it is now
            self.outcomes[before] -= 1
            if not self.outcomes[before]:
                del self.outcomes[before]
        self.outcomes[state.name] = self.outcomes.get(state.name, 0) + 1
        if state in AGAIN_STATES:
            self._again[job_id] = state.name

    def summary(self) -> str:
        """One line for a person: ``processed 5 job(s) in 6 runs: 5 finished``."""
        runs = f" in {self.runs} runs" if self.runs != self.processed else ""
        states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.outcomes.items()))
        return f"processed {self.processed} job(s){runs}{': ' + states if states else ''}"


class Processor:
    """Runs claimed jobs for one application."""

    def __init__(self, state: Runtime, app: Flask) -> None:
        self.state = state
        self.settings = state.settings
        self.app = app
        self.store = state.store
        self.logger = state.logger
        self.pid = os.getpid()
        self.hostname = HOSTNAME
        self.owed = Owed()
        #: The outcomes saved, on their way to the throughput chart.
        self.tally = Tally(self.store, (self.hostname, self.pid), self.logger)
        #: The claim whose job runs now (read by a forced shutdown from another thread).
        self.current: Claim | None = None
        #: The callbacks' time limits (and the consumer's watchdog process).
        self.limits = TimeLimits(state, self.pid, self.hostname)
        migrate.settle(app)  # nothing waits for Flask-Migrate at each job's app context

    # -- the cron sweep -----------------------------------------------------------------

    def sweep(self, priorities: Any = None) -> SweepResult:
        """Run due jobs until none is due (see :meth:`BackgroundQueue.process`)."""
        s = self.settings
        result = SweepResult()
        self.store.ensure_statistics()
        now = utcnow()
        result.reaped = self.reap(now)
        enqueue_due(self.state, now)  # periodic schedules' due ticks become jobs
        known = self.state.callback_names()
        states = None
        if self.state.broker is not None:
            # Consumers run the jobs; cron sends lost or due ids again and runs inline only
            # the jobs the broker never got.
            result.resent = self.resend(now)
            states = (JobState.BROKER_FAILED,)
        self.note_unknown_callbacks(now, "worker")
        waiting = timedelta(milliseconds=s.waiting_job_expiration_ms)
        heartbeat = Heartbeat(self.store, s.heartbeat_interval_seconds, self.logger)
        heartbeat.start()
        progressed = False
        pacer = self.claim_pacer()
        try:
            while True:
                claims = self.claim(priorities, known, limit=pacer.size, states=states)
                if not claims:
                    # Jobs of a serial group left WAITING by another worker become due
                    # shortly; wait for them only while jobs keep finishing, so a job that
                    # keeps asking to wait cannot hold the sweep forever.
                    soonest = self.store.next_available_at(priorities, known, (JobState.WAITING,))
                    delay = (soonest - utcnow()).total_seconds() if soonest else None
                    if progressed and delay is not None and delay <= waiting.total_seconds() + 0.05:
                        progressed = False
                        time.sleep(max(0.0, delay))
                        continue
                    return result
                heartbeat.hold(claims)
                ended: list[JobState] = []
                started = time.perf_counter()
                died = self.run_claims(claims, heartbeat, _counting(result, ended))
                pacer.record(len(claims), time.perf_counter() - started)
                if died:
                    result.died = True
                    return result
                if self.owed:  # outcomes not saved: stop here, they run again later
                    raise DatabaseUnavailable(
                        f"{len(self.owed.outcomes)} job outcome(s) could not be saved; those"
                        " jobs run again once a sweep takes them back as lost"
                    )
                progressed = progressed or bool(ended)
        finally:
            heartbeat.stop()
            self.tally.flush(force=True)

    def claim_pacer(self, cap: int | None = None) -> Pacer:
        """Claim more at once while jobs take under 2 ms each, up to ten times the setting
        (or ``cap``).

        A full batch of quick jobs doubles the next claim; slow jobs (20 ms or more) bring
        it back to ``BGQUEUE_CLAIM_BATCH_SIZE``, so slow work stays spread over workers.
        """
        configured = self.settings.claim_batch_size
        most = configured * 10
        return Pacer(start=configured, cap=most if cap is None else min(most, cap))

    def reap(self, now: datetime) -> list[int]:
        """Take back the jobs of lost workers (see :meth:`Store.reap_lost`), logging each."""
        s = self.settings
        reaped = self.store.reap_lost(
            now, timedelta(seconds=s.worker_lost_after_seconds), s.max_attempts
        )
        for job_id in reaped:
            self.logger.warning(
                "bgqueue: job %s was PROCESSING under a lost worker; retrying it",
                job_id,
                extra={"job_id": job_id},
            )
        return reaped

    def note_unknown_callbacks(self, now: datetime, role: str) -> None:
        """Note on due jobs no callback of this process can run why they wait (never fail
        them: a worker that knows the callback takes them)."""
        self.store.note_unknown_callbacks(
            now,
            self.state.callback_names(),
            f"no callback of this name is registered in {role} pid {self.pid} on {self.hostname}",
        )

    def resend(self, now: Any) -> int:
        """Broker mode: send due ids again (state ``READY``); failures become ``BROKER_FAILED``."""
        lost_before = now - timedelta(seconds=self.settings.broker_resend_after_seconds)
        jobs = self.store.take_for_resending(now, lost_before)
        if jobs:
            send_jobs_to_broker(self.state, jobs)
        return len(jobs)

    def claim(
        self,
        priorities: Any,
        known: list[str],
        limit: int | None = None,
        states: Any = None,
        queue: str | None = None,
    ) -> list[Claim]:
        limit = limit or self.settings.claim_batch_size
        limits = self.state.limits()
        with self.claiming() as now:
            which: dict[str, Any] = {
                "now": now,
                "priorities": priorities,
                "callbacks": known,
                "pid": self.pid,
                "hostname": self.hostname,
                "queue": queue,
                **({"states": states} if states is not None else {}),
            }
            # The one-statement claim checks no limit: with limits, every claim is checked.
            plain = None if limits else self.store.claim_plain(limit=limit, **which)
            claims: list[Claim] = []
            if plain is not None:  # PostgreSQL: plain jobs claimed in one statement
                claims, checks_needed = plain
                if not checks_needed:
                    return claims
                limit -= len(claims)
            rest = self.store.claim(
                limit=limit,
                limits=limits,
                waiting_expiration=timedelta(milliseconds=self.settings.waiting_job_expiration_ms),
                **which,
            )
            if not claims:
                return rest
            return sorted(claims + rest, key=lambda c: (c.job.priority, c.job.id))

    @contextmanager
    def claiming(self) -> Iterator[datetime]:
        """The time a claim stamps on its jobs; remembered as owed when the database fails
        the claim (its commit may have happened: see :meth:`settle`)."""
        now = utcnow()
        try:
            yield now
        except Exception as exc:
            if self.store.is_database_error(exc):
                self.owed.claim_times.append(now)
            raise

    def save_outcomes(self, items: list[Pending]) -> None:
        """Save outcomes together and observe them; when the database fails, they are owed
        (:attr:`owed`) and the error goes up."""
        clones: list[tuple[int, dict[str, Any]]] = []  # of recurring jobs (publish(recurring))
        try:
            saved = self.store.save_outcomes(
                [(c, o.state, v) for c, o, v in items],
                recurring_after=timedelta(milliseconds=self.settings.waiting_job_expiration_ms),
                clones=clones,
            )
        except Exception as exc:
            if self.store.is_database_error(exc):
                self.owed.outcomes.extend(items)
            raise
        again = [
            c.job.id
            for (c, o, _), ok in zip(items, saved, strict=True)
            if ok and o.state in AGAIN_STATES
        ]
        if again:  # a cancel asked for after the heartbeat's last read: no next attempt
            self.store.cancel_requested_retries(again, utcnow())
        if clones and self.state.broker is not None:
            send_to_broker(self.state, clones)
        with self.app.app_context():
            for (claim, outcome, values), ok in zip(items, saved, strict=True):
                if ok and outcome.state in TALLIED_STATES:
                    finished = outcome.state is JobState.FINISHED
                    self.tally.add(claim.job.queue, values["updated_at"], finished)
                self.after_save(claim, outcome, ok)
        self.tally.flush()

    def settle(self) -> list[int]:
        """Write what is owed, once the database answers again: the outcomes of jobs that
        ran, then the jobs not started go back (those of claims whose commit went
        unanswered too). Returns the ids given back; raises the database's error while it
        is still away (nothing owed is lost then)."""
        self.store.ping()
        owed = self.owed
        if owed.outcomes:
            items = list(owed.outcomes)
            del owed.outcomes[: len(items)]
            self.save_outcomes(items)
        given_back: list[int] = []
        if owed.claims:
            claims = list(owed.claims)
            self.store.release(claims, utcnow())
            del owed.claims[: len(claims)]
            given_back += [c.job.id for c in claims]
        if owed.claim_times:
            times = list(owed.claim_times)
            given_back += self.store.release_unknown_claims(
                self.pid, self.hostname, times, utcnow()
            )
            del owed.claim_times[: len(times)]
        return given_back

    def run_claims(
        self,
        claims: list[Claim],
        heartbeat: Heartbeat,
        ran: Callable[[Claim, Outcome], None],
        should_stop: Callable[[], bool] | None = None,
        given_back: Callable[[list[Claim]], None] | None = None,
    ) -> bool:
        """Run claimed jobs in order; return whether a ``DieException`` ended the batch.

        ``ran`` hears of each job once it has run, ``should_stop()`` (checked before each
        job) may end the batch early. The jobs not started then go back to the state they
        were claimed from and ``given_back`` hears of them, even when a job raised
        ``KeyboardInterrupt`` or ``SystemExit``. Outcomes are saved by an
        :class:`OutcomeWriter`: together at the end of the batch, or within
        ``OutcomeWriter.FLUSH_AFTER_SECONDS`` when a later job runs longer.
        """
        writer = OutcomeWriter(self.save_outcomes, self.logger) if len(claims) > 1 else None
        self.limits.heartbeat = heartbeat
        started = 0
        died = False
        try:
            for claim in claims:
                # After an outcome that could not be saved, no job starts: the database is
                # away or refuses this worker, and every job run now would run again.
                if writer is not None:
                    writer.settled()
                if self.owed or (should_stop is not None and should_stop()):
                    break
                started += 1
                self.current = claim
                try:
                    outcome = self.run(claim, writer)
                finally:
                    self.current = None
                    heartbeat.drop(claim)
                ran(claim, outcome)
                if outcome.die:
                    died = True
                    break
        except BaseException:
            self._wind_up(writer, claims[started:], heartbeat, given_back, raising=True)
            raise
        self._wind_up(writer, claims[started:], heartbeat, given_back, raising=False)
        return died

    def _wind_up(
        self,
        writer: OutcomeWriter | None,
        rest: list[Claim],
        heartbeat: Heartbeat,
        given_back: Callable[[list[Claim]], None] | None,
        raising: bool,
    ) -> None:
        """Save the batch's outcomes and give back the jobs not started.

        What the database fails stays owed (:meth:`settle`); its error goes up, unless
        another one already does (``raising``).
        """
        failure: BaseException | None = None
        if writer is not None:
            try:
                writer.flush()
            except Exception as exc:
                failure = exc
        if rest:
            for claim in rest:
                heartbeat.drop(claim)
            try:
                self.store.release(rest, utcnow())
            except Exception as exc:
                if not self.store.is_database_error(exc):
                    raise
                self.owed.claims.extend(rest)
                failure = failure or exc
            else:
                if given_back is not None:
                    given_back(rest)
        if failure is not None and not raising:
            raise failure

    # -- one job ------------------------------------------------------------------------

    def run(self, claim: Claim, writer: OutcomeWriter | None = None) -> Outcome:
        """Run one claimed job in a fresh app context and save its outcome (or hand it to
        ``writer``)."""
        with self.app.app_context(), instrumentation.attempt(self.state, claim.job) as seen:
            outcome, measured = seen(*self._attempt(claim))  # reported to metrics, tracing
        values = {**outcome.values, **measured, "updated_at": utcnow(), "heartbeat_at": None}
        if writer is not None:
            writer.add(claim, outcome, values)
        else:
            self.save_outcomes([(claim, outcome, values)])
        return outcome

    def after_save(self, claim: Claim, outcome: Outcome, saved: bool) -> None:
        if not saved:
            self.logger.error(
                "bgqueue: job %s was taken from this worker while it ran (its heartbeat"
                " stopped?); its outcome %s was not saved",
                claim.job.id,
                outcome.state.name,
                extra=job_fields(claim.job, outcome.state),
            )
            return
        self._observe(claim, outcome)

    def _attempt(self, claim: Claim) -> tuple[Outcome, dict[str, Any]]:
        job = claim.job
        measured: dict[str, Any] = {}
        spec = self.state.callback(job.callback_name)
        try:
            parameters = serialization.load(
                serialization.Stored(job.parameters, job.parameters_json),
                self.settings.signing_keys,
            )
        except SignatureError as exc:
            return permanent(exc, f"parameters refused: {exc}"), measured
        except Exception as exc:
            return permanent(exc, f"parameters cannot be decoded: {exc!r}"), measured

        if take_cancel_request(job.id):  # asked to stop before it started
            return cancelled(None), measured
        mark = start_job()  # the peak recorded is this job's, not the process's
        error: BaseException | None = None
        deadline: Deadline | None = None
        started = time.perf_counter()
        try:
            with running(job):
                metadata_func = self.state.registry.metadata_func
                if metadata_func is not None:
                    metadata = metadata_func(parameters)
                    self.store.update_claimed(claim, metadata=metadata)
                if signals.before_process.receivers:
                    signals.before_process.send(self.app, job=job, parameters=parameters)
                started = time.perf_counter()
                try:
                    assert spec is not None  # claims only pick known callbacks
                    # An async callback (or any awaitable it returns) runs to its end here.
                    with self.limits.limit(claim, spec.timeout) as deadline:
                        value = resolve(_call(spec.func, parameters), job.callback_name)
                finally:
                    measured["execution_time"] = round((time.perf_counter() - started) * 1000)
                if signals.after_process.receivers:
                    signals.after_process.send(self.app, job=job, parameters=parameters)
            measured.update(kept_result(value, job, self.settings.max_result_bytes))
        except Exception as exc:
            error = exc
        if deadline is not None and deadline.expired:  # even if the callback caught it
            timed_out = JobTimeout(f"timed out after {deadline.seconds:g} s")
            timed_out.__context__ = error
            error = timed_out
        measured.setdefault("execution_time", round((time.perf_counter() - started) * 1000))
        after = job_memory(mark)
        before = after.rss if mark.before is None else mark.before
        measured["memory"] = {"before": before, "after": after.rss, "peak": after.peak}

        if error is not None:
            try:
                signals.process_error.send(
                    self.app, job=job, parameters=parameters, exception=error
                )
            except Exception as replaced:  # the receiver decides the outcome
                replaced.__context__ = error
                error = replaced
        if take_cancel_request(job.id):
            return cancelled(error), measured
        return classify(job, error, self.settings), measured

    def _observe(self, claim: Claim, outcome: Outcome) -> None:
        """Log and send the observation signals; nothing here changes the saved outcome."""
        job = claim.job
        logger = self.logger
        try:
            if outcome.state is JobState.PERMANENTLY_FAILED:
                logger.critical(
                    "bgqueue: job %s (%s) failed permanently: %s",
                    job.id,
                    job.callback_name,
                    outcome.values.get("error_message"),
                    extra=job_fields(job, outcome.state),
                )
            elif outcome.state is JobState.TEMPORARILY_FAILED:
                logger.warning(
                    "bgqueue: job %s (%s) failed, attempt %s, retry at %s: %s",
                    job.id,
                    job.callback_name,
                    job.number_of_attempts,
                    outcome.values["available_at"],
                    outcome.values.get("error_message"),
                    extra=job_fields(job, outcome.state),
                )
                if job.number_of_attempts == self.settings.notify_on_number_of_attempts:
                    logger.critical(
                        "bgqueue: job %s (%s) has failed %s times: %s",
                        job.id,
                        job.callback_name,
                        job.number_of_attempts,
                        outcome.values.get("error_message"),
                        extra=job_fields(job, outcome.state),
                    )
                    signals.attempts_notification.send(self.app, job=job)
            elif logger.isEnabledFor(logging.INFO):  # one record per outcome, for log pipelines
                logger.info(
                    "bgqueue: job %s (%s): %s",
                    job.id,
                    job.callback_name,
                    outcome.state.name,
                    extra=job_fields(job, outcome.state),
                )
            if outcome.state is JobState.FINISHED and signals.job_finished.receivers:
                signals.job_finished.send(self.app, job=job)
            if outcome.state in FAILED_STATES:
                signals.job_failed.send(self.app, job=job, exception=outcome.exception)
        except Exception:
            logger.exception(
                "bgqueue: an observer of job %s failed (the outcome is saved)",
                job.id,
                extra=job_fields(job, outcome.state),
            )


def _counting(result: SweepResult, ended: list[JobState]) -> Callable[[Claim, Outcome], None]:
    """A :meth:`Processor.run_claims` listener that counts outcomes into ``result`` and
    collects in ``ended`` those that ended an attempt (not a wait)."""

    def ran(claim: Claim, outcome: Outcome) -> None:
        result.count(claim.job.id, outcome.state)
        if outcome.state in ENDED_STATES:
            ended.append(outcome.state)

    return ran


def _call(func: Any, parameters: Any) -> Any:
    """dict → keyword arguments, list/tuple → positional, None → none, else one argument."""
    if parameters is None:
        return func()
    if isinstance(parameters, dict):
        return func(**parameters)
    if isinstance(parameters, (list, tuple)):
        return func(*parameters)
    return func(parameters)
