"""What a person asks about the queue, and the things they may do to jobs.

:class:`Inspector` is the library behind the dashboard and the ``list``, ``show``,
``retry``, ``stats`` and ``health`` commands; scripts and tests can call it directly::

    from flask_bgqueue.inspection import Inspector

    with app.app_context():
        health = Inspector(bgq).health(max_age_seconds=600)
        if not health.ok:
            print(*health.problems, sep="\\n")
"""

from __future__ import annotations

import pprint
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import serialization
from .clock import utcnow
from .exceptions import SignatureError
from .explain import Reason, explain, span
from .models import Job, JobState
from .publishing import send_jobs_to_broker
from .runtime import Runtime, current_runtime
from .selection import JobFilter
from .store import StateCounts
from .store.activity import WORKERS_WINDOW
from .tally import KEPT

#: The longest text shown for decoded parameters.
MAX_PARAMETERS_TEXT = 100_000


@dataclass(frozen=True)
class JobPage:
    """One page of a filtered job list, newest first, and whether more lie either side."""

    jobs: list[Job]
    has_older: bool
    has_newer: bool
    #: ``before_id`` of the page of older jobs, ``after_id`` of the page of newer ones.
    older_than: int | None = None
    newer_than: int | None = None
    #: ``(lowest, highest)``: the ids a text search read when it stopped at the end of
    #: its window (``BGQUEUE_SEARCH_WINDOW``) before filling the page; ``None`` otherwise.
    searched: tuple[int, int] | None = None


@dataclass(frozen=True)
class Minute:
    """Outcomes in one minute of the throughput chart."""

    start: datetime
    finished: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Worker:
    """A process seen working through its jobs' ``pid``, ``hostname`` and times."""

    hostname: str | None
    pid: int | None
    last_attempt_at: datetime | None
    last_heartbeat_at: datetime | None
    current_jobs: list[tuple[int, str]] = field(default_factory=list)  # (id, callback)
    #: The queues of the jobs it claimed.
    queues: list[str] = field(default_factory=list)
    #: Jobs whose last attempt was this worker's within the window and has ended.
    jobs_done: int = 0


@dataclass(frozen=True)
class Stats:
    """The overview: counts, the oldest due job, throughput and workers."""

    now: datetime
    by_state: dict[JobState, int]
    by_queue: dict[str, dict[JobState, int]]
    by_callback: dict[str, dict[JobState, int]]
    due_count: int
    oldest_due_at: datetime | None
    throughput: list[Minute]
    workers: list[Worker]
    #: States whose counts (in ``by_state``, ``by_queue`` and ``by_callback``) are
    #: estimates: more than ``BGQUEUE_EXACT_COUNT_LIMIT`` jobs, on PostgreSQL or MySQL.
    estimated: frozenset[JobState] = frozenset()

    @property
    def total(self) -> int:
        return sum(self.by_state.values())

    @property
    def oldest_due_age(self) -> timedelta | None:
        return None if self.oldest_due_at is None else self.now - self.oldest_due_at


@dataclass(frozen=True)
class Health:
    """The answer of ``flask bgq health``: ``ok``, and ``problems`` saying why not."""

    ok: bool
    problems: list[str]
    summary: str


@dataclass(frozen=True)
class ParametersView:
    """Parameters as text for a person, and how they were stored."""

    text: str
    note: str
    decoded: bool


class Inspector:
    """Read and act on the jobs of ``bgq`` in the current app (needs an app context).

    Without ``bgq``: the queue registered on the current app.
    """

    def __init__(self, bgq: object | None = None) -> None:
        self.bgq = bgq

    @property
    def _app(self) -> Runtime:
        return current_runtime(self.bgq)

    # -- reading ------------------------------------------------------------------------

    def page(
        self,
        flt: JobFilter | None = None,
        *,
        before_id: int | None = None,
        after_id: int | None = None,
        limit: int = 50,
    ) -> JobPage:
        """Up to ``limit`` matching jobs below ``before_id`` (or above ``after_id``).

        Keyset paging on the id: no page counts the table, so each stays fast on a large one.
        A text search reads at most ``BGQUEUE_SEARCH_WINDOW`` ids per page (see
        :attr:`JobPage.searched`).
        """
        flt = flt or JobFilter()
        window = self._app.settings.search_window
        if flt.text and window is not None:
            return self._search_page(flt, before_id, after_id, limit, window)
        store, where = self._app.store, flt.as_kwargs()
        rows = store.find_jobs(limit=limit + 1, before_id=before_id, after_id=after_id, **where)
        if after_id is not None:
            has_newer = len(rows) > limit
            jobs = rows[1:] if has_newer else rows
            below = jobs[-1].id if jobs else after_id + 1
            above = jobs[0].id if jobs else after_id
            has_older = store.has_job_beyond(below=below, **where)
            return JobPage(jobs, has_older, has_newer, below, above)
        has_older = len(rows) > limit
        jobs = rows[:limit]
        has_newer = False
        newer_than = None
        if before_id is not None:
            newer_than = jobs[0].id if jobs else before_id - 1
            has_newer = store.has_job_beyond(above=newer_than, **where)
        return JobPage(jobs, has_older, has_newer, jobs[-1].id if jobs else before_id, newer_than)

    def _search_page(
        self, flt: JobFilter, before_id: int | None, after_id: int | None, limit: int, window: int
    ) -> JobPage:
        """A page of a text search that reads ``window`` ids at most: a text cannot be
        looked up in an index, so each page reads its rows. Whether more jobs lie either
        side is asked without the text (one step along the primary key): the next page
        may then say that no job of its window matches."""
        store, where = self._app.store, flt.as_kwargs()
        if after_id is not None:
            top = after_id + window
            rows = store.find_jobs(limit=limit + 1, after_id=after_id, highest_id=top, **where)
            full = len(rows) > limit
            jobs = rows[1:] if full else rows
            newer_than = jobs[0].id if full else top
            below = jobs[-1].id if jobs else after_id + 1
            cut = not full and store.has_job_beyond(above=top)
            return JobPage(
                jobs,
                store.has_job_beyond(below=below),
                full or cut,
                below,
                newer_than,
                (after_id + 1, top) if cut else None,
            )
        upper = before_id if before_id is not None else (store.newest_id() or 0) + 1
        bottom = max(1, upper - window)
        rows = store.find_jobs(limit=limit + 1, before_id=upper, lowest_id=bottom, **where)
        full = len(rows) > limit
        jobs = rows[:limit]
        cut = not full and store.has_job_beyond(below=bottom)
        has_newer = before_id is not None and store.has_job_beyond(above=upper - 1)
        return JobPage(
            jobs,
            full or cut,
            has_newer,
            jobs[-1].id if full else bottom,
            upper - 1 if has_newer else None,
            (bottom, upper - 1) if cut else None,
        )

    def job(self, job_id: int) -> Job | None:
        return self._app.store.get(job_id)

    def why_not_running(self, job: Job, now: datetime | None = None) -> list[Reason]:
        """Plain sentences saying why ``job`` is not running now (see :mod:`.explain`)."""
        app = self._app
        return explain(
            job,
            store=app.store,
            callback_known=app.callback(job.callback_name) is not None,
            now=now or utcnow(),
            lost_after=timedelta(seconds=app.settings.worker_lost_after_seconds),
        )

    def parameters(self, job: Job) -> ParametersView:
        """The decoded parameters; a pickle is unpickled only after its signature verifies."""
        stored = serialization.Stored(job.parameters, job.parameters_json)
        if job.parameters_json is not None:
            note = "stored as JSON"
        elif job.parameters is None:
            note = "no parameters"
        else:
            note = "stored as a signed pickle; the signature verifies"
        try:
            value = serialization.load(stored, self._app.settings.signing_keys)
        except SignatureError as exc:
            return ParametersView(
                serialization.describe(stored).replace(", signed>", ">"),
                f"not unpickled: {exc}",
                False,
            )
        except Exception as exc:
            return ParametersView(
                serialization.describe(stored), f"cannot be decoded here: {exc!r}", False
            )
        text = pprint.pformat(value, width=88, sort_dicts=False)
        if len(text) > MAX_PARAMETERS_TEXT:
            text = text[:MAX_PARAMETERS_TEXT] + f"\n… ({len(text)} characters in all)"
        return ParametersView(text, note, True)

    def stats(self, hours: float = 3, now: datetime | None = None) -> Stats:
        """Counts per state, queue and callback, the oldest due job, per-minute outcomes over
        the last ``hours``, and the workers seen in the last :data:`WORKERS_WINDOW`.

        A state with more than ``BGQUEUE_EXACT_COUNT_LIMIT`` jobs is estimated from the
        database's statistics on PostgreSQL and MySQL/MariaDB (:attr:`Stats.estimated`).

        ``hours`` (at least one minute is shown) may be at most the 7 days the
        per-minute counts are kept (:data:`~flask_bgqueue.tally.KEPT`): more would show
        the minutes no longer kept as minutes without work, so it raises
        :class:`ValueError`, as it does for 0 or less."""
        _check_hours(hours)
        store = self._app.store
        now = now or utcnow()
        by_state = dict.fromkeys(JobState, 0)
        by_queue: dict[str, dict[JobState, int]] = {}
        by_callback: dict[str, dict[JobState, int]] = {}
        limit = self._app.settings.exact_count_limit
        if limit is None:
            found = StateCounts(store.count_by_state_queue_callback(), frozenset())
        else:
            found = store.state_counts(limit)
        for state, queue, callback, n in found.rows:
            by_state[state] = by_state.get(state, 0) + n  # unknown states too
            for group, key in ((by_queue, queue), (by_callback, callback)):
                counts = group.setdefault(key, {})
                counts[state] = counts.get(state, 0) + n
        due_count, oldest = store.due_summary(now)
        return Stats(
            now=now,
            by_state=by_state,
            by_queue=dict(sorted(by_queue.items())),
            by_callback=dict(sorted(by_callback.items())),
            due_count=due_count,
            oldest_due_at=oldest,
            throughput=self._throughput(now, hours),
            workers=self.workers(now),
            estimated=found.estimated,
        )

    def _throughput(self, now: datetime, hours: float) -> list[Minute]:
        end = now.replace(second=0, microsecond=0)
        start = end - timedelta(minutes=max(1, round(hours * 60)) - 1)
        counts: dict[datetime, dict[str, int]] = {}
        for kind, minute, n in self._app.store.outcomes_per_minute(start):
            slot = counts.setdefault(minute, {})
            slot[kind] = slot.get(kind, 0) + n
        minutes = []
        t = start
        while t <= end:
            c = counts.get(t, {})
            minutes.append(Minute(t, c.get("finished", 0), c.get("failed", 0)))
            t += timedelta(minutes=1)
        return minutes

    def workers(self, now: datetime | None = None) -> list[Worker]:
        """Workers holding a job now or that claimed one in the last :data:`WORKERS_WINDOW`,
        the most recently active first (derived from the jobs' ``hostname`` and ``pid``)."""
        store = self._app.store
        now = now or utcnow()
        current: dict[tuple[str | None, int | None], list[tuple[int, str]]] = {}
        for job in store.jobs(states=[JobState.PROCESSING]):
            current.setdefault((job.hostname, job.pid), []).append((job.id, job.callback_name))
        found: dict[tuple[str | None, int | None], dict[str, Any]] = {}
        for host, pid, queue, attempt, beat, done in store.worker_activity(now - WORKERS_WINDOW):
            w = found.setdefault((host, pid), {"queues": [], "attempt": attempt, "beat": beat})
            w["queues"].append(queue)
            w["attempt"] = max(w["attempt"], attempt)
            w["beat"] = max((b for b in (w["beat"], beat) if b is not None), default=None)
            w["done"] = w.get("done", 0) + done
        seen = [
            Worker(
                host,
                pid,
                w["attempt"],
                w["beat"],
                current.get((host, pid), []),
                sorted(w["queues"]),
                w["done"],
            )
            for (host, pid), w in found.items()
        ]
        return sorted(seen, key=lambda w: w.last_attempt_at or now, reverse=True)

    def health(self, max_age_seconds: float | None = None, now: datetime | None = None) -> Health:
        """Unhealthy when due jobs wait and no worker was seen within
        ``BGQUEUE_WORKER_LOST_AFTER_SECONDS``, or the oldest due job is older than
        ``max_age_seconds``."""
        app = self._app
        now = now or utcnow()
        lost_after = timedelta(seconds=app.settings.worker_lost_after_seconds)
        due_count, oldest = app.store.due_summary(now)
        last_seen = app.store.last_worker_activity()
        problems = []
        age = None if oldest is None else now - oldest
        seen_text = "never" if last_seen is None else f"{span(now - last_seen)} ago"
        if (
            age is not None
            and age > lost_after
            and (last_seen is None or now - last_seen > lost_after)
        ):
            problems.append(
                f"{due_count} due job(s) wait, the oldest for {span(age)}, and no worker was"
                f" seen within {app.settings.worker_lost_after_seconds:g} s (last: {seen_text})."
                " Is 'flask bgq process' in cron, or a consumer running?"
            )
        if (
            age is not None
            and max_age_seconds is not None
            and age.total_seconds() > max_age_seconds
        ):
            problems.append(
                f"the oldest due job has waited {span(age)}, more than {max_age_seconds:g} s."
            )
        summary = (
            f"{due_count} due job(s)"
            + ("" if age is None else f", the oldest due for {span(age)}")
            + f"; last worker activity: {seen_text}"
        )
        return Health(not problems, problems, summary)

    # -- acting -------------------------------------------------------------------------

    def retry(self, job_ids: Iterable[int]) -> list[int]:
        """Run these jobs as soon as possible, skipping their backoff.

        Only jobs in ``TEMPORARILY_FAILED``, ``PERMANENTLY_FAILED``, ``WAITING`` or
        ``BROKER_FAILED`` change (to ``READY``, due now); returns their ids.
        """
        return self._announce(self._app.store.retry_now(job_ids, utcnow()))

    def retry_matching(self, flt: JobFilter, max_id: int | None = None) -> list[int]:
        """:meth:`retry` every retryable job the filter matches (with an id up to ``max_id``,
        so jobs that arrived after a person looked are left alone)."""
        store = self._app.store
        ids = store.retry_now(store.retryable_ids(max_id=max_id, **flt.as_kwargs()), utcnow())
        return self._announce(ids)

    def _announce(self, job_ids: list[int]) -> list[int]:
        """Broker mode: send the retried jobs' ids at once (a failed send leaves them
        ``BROKER_FAILED`` for ``flask bgq process``)."""
        if self._app.broker is not None and job_ids:
            jobs = [j for j in (self._app.store.get(i) for i in job_ids) if j is not None]
            send_jobs_to_broker(self._app, jobs)
        return job_ids

    def cancel(self, job_ids: Iterable[int], by: str | None = None) -> list[int]:
        """Cancel these jobs (see :meth:`BackgroundQueue.cancel`); the ids that changed."""
        return self._app.cancel(job_ids, by)

    def cancel_matching(
        self, flt: JobFilter, max_id: int | None = None, by: str | None = None
    ) -> list[int]:
        """:meth:`cancel` every job the filter matches that is not over yet (with an id up
        to ``max_id``, so jobs that arrived after a person looked are left alone)."""
        return self._app.cancel(
            self._app.store.cancellable_ids(max_id=max_id, **flt.as_kwargs()), by
        )

    def discard(self, job_ids: Iterable[int]) -> list[int]:
        """Delete these jobs if FINISHED, REDUNDANT or failed (never PROCESSING ones)."""
        return self._app.store.discard(job_ids)


def _check_hours(hours: float) -> None:
    kept = KEPT / timedelta(hours=1)
    if not 0 < hours <= kept:  # also False for NaN
        raise ValueError(
            f"stats(hours={hours!r}): the per-minute outcome counts are kept for"
            f" {kept:g} hours; ask for more than 0 and at most {kept:g} hours"
        )
