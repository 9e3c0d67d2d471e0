"""Prometheus metrics: gauges read from the table at scrape time, and counters kept by
each process.

Nothing imports ``prometheus_client`` until a process records (``BGQUEUE_METRICS``) or
someone scrapes (``/metrics`` on the dashboard, ``flask bgq stats --prometheus``).

*From the table* (exact whatever the number of workers and hosts, read at each scrape
with a few indexed queries): jobs by state, queue and callback; due jobs and the oldest
due job's age per queue; workers seen; the time of the last worker activity.

*Per process* (counters and a histogram, recorded where the event happens): attempts by
callback and outcome, attempt durations, publishes. Workers are separate processes, so
these need prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set
(in the environment of the workers, the web app and ``stats --prometheus``, before they
start) every process writes its counters there and a scrape adds them up. Without it, a
scrape shows the counters of the process that answers it. The table cannot give these:
it keeps each job's last attempt only, and ``clear-finished`` deletes rows.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from .clock import utcnow
from .models import JobState
from .runtime import Runtime
from .store.activity import WORKERS_WINDOW

#: Attempt duration buckets, seconds: jobs run from milliseconds to hours.
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


@lru_cache(maxsize=1)
def _instruments() -> dict[str, Any]:
    """This process's counters, made once (not registered globally: a scrape collects them
    itself, or reads them from ``PROMETHEUS_MULTIPROC_DIR``)."""
    from prometheus_client import Counter, Histogram

    return {
        "attempts": Counter(
            "bgqueue_job_attempts",
            "Attempts that ended, by callback and outcome (the state the job went to).",
            ["callback", "outcome"],
            registry=None,
        ),
        "duration": Histogram(
            "bgqueue_job_duration_seconds",
            "Time a job's callback ran, per attempt.",
            ["callback"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        "published": Counter(
            "bgqueue_jobs_published",
            "Jobs written to the table by publish().",
            ["callback"],
            registry=None,
        ),
    }


def record_attempt(callback: str, state: JobState, execution_ms: int | None) -> None:
    found = _instruments()
    found["attempts"].labels(callback, state.label).inc()
    if execution_ms is not None:
        found["duration"].labels(callback).observe(execution_ms / 1000)


def record_published(callbacks: Iterable[str]) -> None:
    counter = _instruments()["published"]
    for name in callbacks:
        counter.labels(name).inc()


def _timestamp(moment: datetime) -> float:
    return moment.replace(tzinfo=timezone.utc).timestamp()


def table_metrics(runtime: Runtime, now: datetime | None = None) -> list[Any]:
    """The gauges read from the table, as prometheus_client metric families."""
    from prometheus_client.core import GaugeMetricFamily

    store = runtime.store
    now = now or utcnow()
    jobs = GaugeMetricFamily(
        "bgqueue_jobs", "Jobs in the table by state, queue and callback.",
        labels=["state", "queue", "callback"],
    )  # fmt: skip
    counts: dict[tuple[str, str], dict[JobState, int]] = {}
    for state, queue, callback, n in store.count_by_state_queue_callback():
        slot = counts.setdefault((queue, callback), {})
        slot[state] = slot.get(state, 0) + n
    for (queue, callback), by_state in sorted(counts.items()):
        for state in [*JobState, *(s for s in by_state if not s.known)]:
            jobs.add_metric([state.label, queue, callback], by_state.get(state, 0))

    due = GaugeMetricFamily("bgqueue_due_jobs", "Jobs due now, per queue.", labels=["queue"])
    lag = GaugeMetricFamily(
        "bgqueue_oldest_due_job_age_seconds",
        "How long the oldest due job of each queue has been due (0: none is due).",
        labels=["queue"],
    )
    found = {queue: (n, oldest) for queue, n, oldest in store.due_by_queue(now)}
    for queue in sorted({*runtime.queues(), *found}):
        n, oldest = found.get(queue, (0, None))
        due.add_metric([queue], n)
        lag.add_metric([queue], 0 if oldest is None else max(0.0, (now - oldest).total_seconds()))

    workers = {(h, p) for h, p, *_ in store.worker_activity(now - WORKERS_WINDOW)}
    seen = GaugeMetricFamily(
        "bgqueue_workers_seen",
        f"Workers that held or claimed a job in the last {WORKERS_WINDOW.seconds // 60} min.",
        value=len(workers),
    )
    last = store.last_worker_activity()
    activity = GaugeMetricFamily(
        "bgqueue_last_worker_activity_timestamp_seconds",
        "Unix time of the latest claim or heartbeat of any worker (absent: never).",
    )
    if last is not None:
        activity.add_metric([], _timestamp(last))
    return [jobs, due, lag, seen, activity]


class _Fixed:
    """A collector that yields metric families read beforehand."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        yield from self.families


class _ThisProcess:
    """A collector of this process's counters (when not in multiprocess mode)."""

    def collect(self) -> Iterator[Any]:
        for metric in _instruments().values():
            yield from metric.collect()


#: Why there are no metrics to show, when there are none.
MISSING = "prometheus_client is not installed: pip install 'Flask-BgQueue[metrics]'."


def available() -> bool:
    """Whether prometheus_client is installed (without importing it)."""
    return importlib.util.find_spec("prometheus_client") is not None


def exposition(runtime: Runtime) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type (see :data:`MISSING`
    when not :func:`available`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(table_metrics(runtime)))
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call,unused-ignore]
    else:
        registry.register(_ThisProcess())
    return generate_latest(registry), CONTENT_TYPE_LATEST
