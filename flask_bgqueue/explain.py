"""Why a job is not running right now, in plain words.

The answer follows the rules a worker applies when it claims a job (spec §6), asked of the
job's current row: so "blocked by job 12" names the very job a claim would wait for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .limits import LIMITED
from .models import PENDING_STATES, Job, JobState

if TYPE_CHECKING:
    from .periodic import ScheduleView
    from .store import Store


@dataclass(frozen=True)
class Reason:
    """One sentence about the job; ``code`` is stable (for tests and scripts)."""

    code: str
    text: str
    job_id: int | None = None  # the other job the sentence names, if any


def explain(
    job: Job, *, store: Store, callback_known: bool, now: datetime, lost_after: timedelta
) -> list[Reason]:
    """The reasons ``job`` is not running now, most important first (never empty)."""
    s = job.state
    if not s.known:
        return [
            Reason(
                "unknown_state",
                f"Its state {int(s)} is not one this version of Flask-BgQueue knows (a newer"
                " version's, or set by hand): it is left alone until a version that knows the"
                " state handles it, or a person sets a known state.",
            )
        ]
    if s is JobState.FINISHED:
        when = _at(job.finished_at)
        if job.error_message:
            return [Reason("finished", f"Finished {when}, skipped: {job.error_message}")]
        return [Reason("finished", f"Finished {when}. Nothing left to do.")]
    if s is JobState.CANCELLED:
        who = f" by {job.cancelled_by}" if job.cancelled_by else ""
        return [Reason("cancelled", f"Cancelled{who} {_at(job.finished_at)}. It never runs again.")]
    if s is JobState.REDUNDANT and (job.error_message or "").startswith("coalesced into job"):
        into = job.error_message.rsplit(" ", 1)[-1] if job.error_message else ""
        return [
            Reason(
                "coalesced",
                f"Coalesced into job {into} of its serial group {job.serial_group!r} (its"
                f" coalesce_threshold {job.coalesce_threshold} was at least that job's): that"
                " run covered it, and it will never run itself.",
                int(into) if into.isdigit() else None,
            )
        ]
    if s is JobState.REDUNDANT:
        twin = store.older_twin(job) if job.identifier is not None else None
        return [
            Reason(
                "duplicate",
                f"Duplicate of job {twin} (unique identifier {job.identifier!r}): it was"
                " skipped and will never run."
                if twin is not None
                else f"Skipped as a duplicate of an older job with identifier"
                f" {job.identifier!r} (that job is deleted now). It will never run.",
                twin,
            )
        ]
    if s is JobState.PERMANENTLY_FAILED:
        return [
            Reason(
                "failed_for_good",
                f"Failed for good: {job.error_message or 'no message'}. It runs again only"
                " if someone retries it.",
            )
        ]
    if s is JobState.PROCESSING:
        return [_processing(job, now, lost_after)]

    reasons: list[Reason] = []
    if not callback_known:
        reasons.append(
            Reason(
                "no_callback",
                f"No callback named {job.callback_name!r} is registered in this app: only a"
                " worker that knows it can run the job (it stays as it is until then).",
            )
        )
    limited = LIMITED.match(job.error_message or "") if s is JobState.WAITING else None
    if limited is not None:
        reasons.append(
            Reason(
                "rate_limited" if limited.group(1) == "rate limited" else "concurrency_limit",
                f"Held back by its callback's limit ({job.error_message}); it is tried again"
                f" {_at(job.available_at)}. It is not failed: it waits its turn.",
            )
        )
    elif job.available_at > now:
        what = {
            JobState.TEMPORARILY_FAILED: (
                f"After failed attempt {job.number_of_attempts}, it is retried"
            ),
            JobState.WAITING: "It was asked to wait; it is tried again",
        }.get(s, "Waiting for its time: it becomes due")
        reasons.append(
            Reason(
                "not_due", f"{what} {_at(job.available_at)} (in {span(job.available_at - now)})."
            )
        )
    if job.is_unique and job.identifier is not None:
        twin = store.older_twin(job)
        if twin is not None:
            reasons.append(
                Reason(
                    "duplicate",
                    f"Duplicate of job {twin} (unique identifier {job.identifier!r}): a worker"
                    " will mark it REDUNDANT instead of running it.",
                    twin,
                )
            )
    if job.serial_group is not None and s in PENDING_STATES:
        blocker = store.group_blocker(job)
        if blocker is not None:
            reasons.append(
                Reason(
                    "blocked",
                    f"Blocked by job {blocker} of its serial group {job.serial_group!r}: it runs"
                    " after that one is finished, redundant or failed for good.",
                    blocker,
                )
            )
    if s is JobState.BROKER_FAILED:
        reasons.append(
            Reason(
                "broker_failed",
                "Sending it to the broker failed; 'flask bgq process' runs or sends it again.",
            )
        )
    if s is JobState.BACK_TO_BROKER:
        reasons.append(
            Reason("back_to_broker", "It waits to be sent to the broker again by 'process'.")
        )
    if not reasons:
        reasons.append(
            Reason(
                "due",
                f"Due since {_at(job.available_at)}: the next 'flask bgq process' run (or a"
                " free consumer) takes it.",
            )
        )
    return reasons


def explain_schedule(view: ScheduleView, now: datetime) -> list[Reason]:
    """Why a periodic schedule makes no job now, or when it makes the next one."""
    if view.orphaned:
        return [
            Reason(
                "orphaned",
                "Orphaned: no schedule of this name is in the app's code or BGQUEUE_SCHEDULE"
                " any more, so it makes no jobs. 'flask bgq schedules --forget NAME' deletes"
                " what the database remembers of it (its jobs stay).",
            )
        ]
    if view.paused:
        return [
            Reason(
                "paused",
                "Paused: its ticks pass without jobs until 'flask bgq schedules --resume"
                f" {view.name}' (or the dashboard) resumes it; then catch_up={view.catch_up!r}"
                " decides what the pause missed.",
            )
        ]
    if view.problem:
        return [Reason("schedule_problem", f"It makes no jobs: {view.problem}.")]
    if view.next_tick_at is None:
        return [Reason("no_tick", "Its expression matches no time in the next 50 years.")]
    return [
        Reason(
            "next_tick",
            f"Next tick {_at(view.next_tick_at)} (in {span(view.next_tick_at - now)}): the"
            " first 'flask bgq process' run or consumer to look after it makes its job.",
        )
    ]


def _processing(job: Job, now: datetime, lost_after: timedelta) -> Reason:
    where = f"pid {job.pid} on {job.hostname}"
    beat = job.heartbeat_at
    if beat is not None and now - beat > lost_after:
        return Reason(
            "worker_lost",
            f"Claimed by {where}, whose last heartbeat was {span(now - beat)} ago: the worker"
            " seems lost; the next 'flask bgq process' takes the job back.",
        )
    return Reason("running", f"Running now: {where} since {_at(job.last_attempt_at)}.")


def _at(moment: datetime | None) -> str:
    return "at an unknown time" if moment is None else f"at {moment:%Y-%m-%d %H:%M:%S} UTC"


def span(delta: timedelta) -> str:
    """A length of time in short words: ``3 min``, ``2 h``, ``40 s``."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
