"""The dashboard's JSON API (the pages' data, for scripts) and ``/metrics``.

Behind the same authorization hook as the pages (:func:`.security.guard`). Times are
ISO 8601 in UTC (``2024-05-01T12:00:03.120000Z``); states are their names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import abort, jsonify, request
from werkzeug.wrappers import Response

from .. import metrics
from ..clock import utcnow
from ..inspection import Inspector, Worker
from ..models import Job
from ..runtime import current_runtime
from . import blueprint
from .views import MAX_PAGE_SIZE, _filter, _number, found_job, jobs_page


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat() + "Z"


def job_summary(job: Job) -> dict[str, Any]:
    """A job as the list shows it."""
    return {
        "id": job.id,
        "state": job.state.name,
        "callback": job.callback_name,
        "queue": job.queue,
        "priority": job.priority,
        "attempts": job.number_of_attempts,
        "created_at": _time(job.created_at),
        "available_at": _time(job.available_at),
        "last_attempt_at": _time(job.last_attempt_at),
        "finished_at": _time(job.finished_at),
        "serial_group": job.serial_group,
        "identifier": job.identifier,
        "error_message": job.error_message,
    }


def worker_dict(w: Worker) -> dict[str, Any]:
    return {
        "hostname": w.hostname,
        "pid": w.pid,
        "queues": w.queues,
        "current_jobs": [{"id": i, "callback": c} for i, c in w.current_jobs],
        "last_attempt_at": _time(w.last_attempt_at),
        "last_heartbeat_at": _time(w.last_heartbeat_at),
        "jobs_done": w.jobs_done,
    }


@blueprint.get("/api/overview")
def api_overview() -> Response:
    hours = _number(request.args, "hours", 1, 48) or 3
    stats = Inspector().stats(hours=hours)

    def named(counts: dict[Any, int]) -> dict[str, int]:
        return {s.name: n for s, n in counts.items()}

    age = stats.oldest_due_age
    return jsonify(
        {
            "now": _time(stats.now),
            "states": named(stats.by_state),
            "queues": {q: named(c) for q, c in stats.by_queue.items()},
            "callbacks": {k: named(c) for k, c in stats.by_callback.items()},
            "estimated_states": sorted(s.name for s in stats.estimated),
            "due": stats.due_count,
            "oldest_due_at": _time(stats.oldest_due_at),
            "oldest_due_age_seconds": None if age is None else age.total_seconds(),
            "throughput": [
                {"minute": _time(m.start), "finished": m.finished, "failed": m.failed}
                for m in stats.throughput
            ],
            "workers": [worker_dict(w) for w in stats.workers],
        }
    )


@blueprint.get("/api/jobs")
def api_jobs() -> Response:
    """The job list: the same filters and paging as ``/jobs``."""
    flt = _filter(request.args)
    limit = _number(request.args, "limit", 1, MAX_PAGE_SIZE) or 50
    page, _newest = jobs_page(flt, limit, newest=False)
    return jsonify(
        {
            "jobs": [job_summary(j) for j in page.jobs],
            "has_older": page.has_older,
            "has_newer": page.has_newer,
            "older_than": page.older_than if page.has_older else None,
            "newer_than": page.newer_than if page.has_newer else None,
            "searched_ids": list(page.searched) if page.searched else None,
        }
    )


@blueprint.get("/api/jobs/<int:job_id>")
def api_job(job_id: int) -> Response:
    inspector = Inspector()
    job = found_job(inspector, job_id)
    parameters = inspector.parameters(job)
    return jsonify(
        {
            **job_summary(job),
            "is_unique": job.is_unique,
            "updated_at": _time(job.updated_at),
            "heartbeat_at": _time(job.heartbeat_at),
            "pid": job.pid,
            "hostname": job.hostname,
            "execution_time_ms": job.execution_time,
            "memory": job.memory,
            "metadata": job.metadata,
            "traceback": job.traceback,
            "parameters": {
                "text": parameters.text,
                "note": parameters.note,
                "decoded": parameters.decoded,
            },
            "why_not_running": [r.text for r in inspector.why_not_running(job)],
        }
    )


@blueprint.get("/api/workers")
def api_workers() -> Response:
    return jsonify(
        {"now": _time(utcnow()), "workers": [worker_dict(w) for w in Inspector().workers()]}
    )


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus' text format (see :mod:`flask_bgqueue.metrics`)."""
    if not metrics.available():
        abort(501, metrics.MISSING)
    body, content_type = metrics.exposition(current_runtime())
    return Response(body, content_type=content_type)
