"""The dashboard's pages and actions; each a few lines over :class:`Inspector`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask import abort, redirect, render_template, request, session, url_for
from markupsafe import Markup, escape
from werkzeug.wrappers import Response

from ..clock import utcnow
from ..exceptions import BgQueueError
from ..explain import Reason, explain_schedule, span
from ..inspection import Inspector, JobPage
from ..models import (
    CANCELLABLE_STATES,
    DISCARDABLE_STATES,
    FAILED_STATES,
    RETRYABLE_STATES,
    Job,
    JobState,
)
from ..periodic import overview as schedule_overview
from ..periodic import set_paused
from ..runtime import current_runtime
from ..selection import MAX_JOB_ID, JobFilter, check_job_id, parse_states
from . import blueprint
from .chart import throughput_svg

NOTICE_KEY = "_bgqueue_notice"
FILTER_FIELDS = ("state", "callback", "queue", "group", "identifier", "q")
MAX_PAGE_SIZE = 500
#: The header dashboard.js sends when it refreshes a page in the background.
LIVE_HEADER = "X-BgQueue-Live"


def _inspector() -> Inspector:
    return Inspector()


@blueprint.context_processor
def helpers() -> dict[str, Any]:
    return {
        "JobState": JobState,
        "FAILED": ",".join(s.name.lower() for s in FAILED_STATES),
        "when": _when,
        # A page's own refresh (dashboard.js) leaves a notice for the next page shown.
        "notice": None if request.headers.get(LIVE_HEADER) else session.pop(NOTICE_KEY, None),
        "refresh_ms": round(current_runtime().settings.dashboard_refresh_seconds * 1000),
        "callbacks": current_runtime().callback_names(),
    }


def _when(moment: datetime | None, now: datetime | None = None) -> str:
    """``2024-05-01 12:00:03 (3 min ago)``, in UTC."""
    if moment is None:
        return "-"
    now = now or utcnow()
    rel = f"in {span(moment - now)}" if moment > now else f"{span(now - moment)} ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} ({rel})"


def _notice(text: str) -> None:
    session[NOTICE_KEY] = text


def _filter(source: Any) -> JobFilter:
    text = {k: (source.get(k) or "").strip() or None for k in FILTER_FIELDS[1:]}
    try:
        states = parse_states(source.getlist("state"))
        return JobFilter(
            states, text["callback"], text["queue"], text["group"], text["identifier"], text["q"]
        )
    except ValueError as exc:
        abort(400, str(exc))


def _number(source: Any, name: str, low: int, high: int) -> int | None:
    """The integer argument ``name`` (``None`` when absent); 400 saying why when it is not
    a whole number from ``low`` to ``high``."""
    raw = source.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        abort(400, f"{name}={raw[:40]!r} is not a whole number.")
    if not low <= value <= high:
        abort(400, f"{name}={value} is out of range: use {low} to {high}.")
    return value


def _existing_id(job_id: int) -> int:
    """A job id from the URL; 404 when no job can have it (beyond the 64-bit column)."""
    try:
        return check_job_id(job_id)
    except ValueError as exc:
        abort(404, str(exc))


def found_job(inspector: Inspector, job_id: int) -> Job:
    """The job of a URL, or a 404 that says it may have been deleted."""
    job = inspector.job(_existing_id(job_id))
    if job is None:
        abort(404, f"No job {job_id} in this queue (it may have been deleted).")
    return job


@blueprint.after_request
def harden(response: Response) -> Response:
    """No caching of job data, no framing, no sniffing, no referrer to other sites; scripts
    only from the dashboard's own files (it has no inline script)."""
    headers = response.headers
    if request.endpoint != "bgqueue.static":
        headers["Cache-Control"] = "no-store"
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    )
    return response


def _filter_args(flt: JobFilter) -> dict[str, Any]:
    """The query string of a filter (for links that keep it)."""
    args: dict[str, Any] = {
        "callback": flt.callback_name,
        "queue": flt.queue,
        "group": flt.serial_group,
        "identifier": flt.identifier,
        "q": flt.text,
    }
    if flt.states:
        args["state"] = ",".join(s.name.lower() for s in flt.states)
    return {k: v for k, v in args.items() if v}


@blueprint.get("/")
def overview() -> str:
    stats = _inspector().stats(hours=3)
    return render_template(
        "bgqueue/overview.html", stats=stats, chart=throughput_svg(stats.throughput)
    )


def jobs_page(flt: JobFilter, limit: int, newest: bool = True) -> tuple[JobPage, int | None]:
    """The page ``before=``/``after=`` ask for, and (with ``newest``) the id of the newest
    job the filter matches (the bulk retry's limit)."""
    before = _number(request.args, "before", 1, MAX_JOB_ID + 1)
    after = _number(request.args, "after", 0, MAX_JOB_ID)
    if before is not None and after is not None:
        abort(400, "give before= or after=, not both.")
    inspector = _inspector()
    page = inspector.page(flt, before_id=before, after_id=after, limit=limit)
    if not newest:
        return page, None
    if not page.has_newer and (page.jobs or (before is None and after is None)):
        # the newest page: its first job is the newest match (or none matches, for
        # the first page; a text search may have more in older windows)
        return page, page.jobs[0].id if page.jobs else None
    first = inspector.page(flt, limit=1).jobs
    return page, first[0].id if first else None


@blueprint.get("/jobs")
def jobs() -> str:
    flt = _filter(request.args)
    limit = _number(request.args, "limit", 1, MAX_PAGE_SIZE) or 50
    page, newest = jobs_page(flt, limit)
    return render_template(
        "bgqueue/jobs.html",
        page=page,
        flt=flt,
        args=_filter_args(flt),
        limit=limit,
        newest=newest,
        retryable=RETRYABLE_STATES,
    )


@blueprint.get("/workers")
def workers() -> str:
    return render_template("bgqueue/workers.html", workers=_inspector().workers(), now=utcnow())


@blueprint.get("/jobs/<int:job_id>")
def job(job_id: int) -> str:
    inspector = _inspector()
    found = found_job(inspector, job_id)
    return render_template(
        "bgqueue/job.html",
        job=found,
        reasons=[_linked(r) for r in inspector.why_not_running(found)],
        parameters=inspector.parameters(found),
        metadata=json.dumps(found.metadata, indent=2, default=str) if found.metadata else None,
        retryable=found.state in RETRYABLE_STATES,
        discardable=found.state in DISCARDABLE_STATES,
        cancellable=found.state in CANCELLABLE_STATES
        or (found.state is JobState.PROCESSING and found.cancel_requested_at is None),
        result=None if found.result is None else json.dumps(found.result, indent=2)[:100_000],
    )


def _linked(reason: Reason) -> tuple[str, Markup]:
    """The reason as HTML, the job it names turned into a link."""
    html = escape(reason.text)
    if reason.job_id is not None:
        name = f"job {reason.job_id}"
        link = Markup('<a href="{}">{}</a>').format(url_for(".job", job_id=reason.job_id), name)
        html = html.replace(name, link)
    return reason.code, Markup(html)


@blueprint.post("/jobs/<int:job_id>/retry")
def retry(job_id: int) -> Response:
    done = _inspector().retry([_existing_id(job_id)])
    _notice(
        f"Job {job_id} is READY and due now."
        if done
        else f"Job {job_id} was not retried: it is no longer failed or waiting."
    )
    return redirect(url_for(".job", job_id=job_id))


@blueprint.post("/jobs/<int:job_id>/cancel")
def cancel(job_id: int) -> Response:
    done = _inspector().cancel([_existing_id(job_id)], by=_operator())
    _notice(
        f"Job {job_id} is cancelled (or, if it runs, asked to stop)."
        if done
        else f"Job {job_id} was not cancelled: it is over already, or was asked before."
    )
    return redirect(url_for(".job", job_id=job_id))


def _operator() -> str:
    """Who acts, for ``cancelled_by``: the authenticated user, else the client address."""
    return f"dashboard ({request.remote_user or request.remote_addr or 'unknown'})"


@blueprint.post("/jobs/<int:job_id>/discard")
def discard(job_id: int) -> Response:
    if _inspector().discard([_existing_id(job_id)]):
        _notice(f"Job {job_id} was deleted.")
        return redirect(url_for(".jobs"))
    _notice(f"Job {job_id} was not deleted: it is running, waiting to run, or gone.")
    return redirect(url_for(".job", job_id=job_id))


def _matching(action: str) -> tuple[JobFilter, int]:
    """The filter of a bulk action and the newest id the person saw (``max_id``): jobs
    published after the page was shown are left alone."""
    max_id = _number(request.form, "max_id", 1, MAX_JOB_ID)
    if max_id is None:
        abort(400, f"max_id is missing: {action} from the job list.")
    return _filter(request.form), max_id


@blueprint.post("/jobs/retry")
def retry_matching() -> Response:
    flt, max_id = _matching("retry")
    done = _inspector().retry_matching(flt, max_id=max_id)
    _notice(f"{len(done)} job(s) are READY and due now.")
    return redirect(url_for(".jobs", **_filter_args(flt)))


@blueprint.post("/jobs/cancel")
def cancel_matching() -> Response:
    flt, max_id = _matching("cancel")
    done = _inspector().cancel_matching(flt, max_id=max_id, by=_operator())
    _notice(f"{len(done)} job(s) are cancelled or asked to stop.")
    return redirect(url_for(".jobs", **_filter_args(flt)))


@blueprint.get("/schedules")
def schedules() -> str:
    now = utcnow()
    views = schedule_overview(current_runtime(), now)
    return render_template(
        "bgqueue/schedules.html",
        schedules=[(v, explain_schedule(v, now)[0]) for v in views],
        now=now,
    )


@blueprint.post("/schedules/<name>/<any(pause, resume):action>")
def pause_schedule(name: str, action: str) -> Response:
    try:
        set_paused(current_runtime(), name, action == "pause")
    except BgQueueError as exc:
        abort(404, str(exc))
    _notice(f"Schedule {name!r} is {'paused' if action == 'pause' else 'resumed'}.")
    return redirect(url_for(".schedules"))
