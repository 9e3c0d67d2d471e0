"""Periodic schedules at work: due ticks become ordinary jobs, and what people see of them.

Whatever runs anyway turns ticks into jobs: each ``flask bgq process`` sweep, and every
consumer between two batches (:class:`Ticker`, at each tick's time). The tick math is in
:mod:`.schedule`; the exactly-once write in :mod:`.store.schedules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import serialization
from .clock import utcnow
from .exceptions import BgQueueError
from .models import JobState
from .publishing import build_row, send_to_broker
from .runtime import Runtime
from .schedule import ON_TIME, Schedule

#: A consumer looks at the schedules at least this often, whatever their ticks.
LOOK_AT_LEAST_EVERY = timedelta(seconds=60)


def enqueue_due(runtime: Runtime, now: datetime | None = None) -> list[int]:
    """Turn the due ticks of every schedule into jobs; return the new jobs' ids.

    A schedule seen for the first time starts from its next tick. Paused ones are left as
    they are (their ticks pass; on resume the catch-up rule applies to what was missed).
    """
    schedules = runtime.schedules()
    if not schedules:
        return []
    now = now or utcnow()
    store = runtime.store
    known = store.schedule_rows()
    ids: list[int] = []
    for name, schedule in schedules.items():
        if runtime.callback(schedule.callback_name) is None:
            _warn_once(
                runtime,
                name,
                f"bgqueue: schedule {name!r} names callback {schedule.callback_name!r}, which"
                " is not registered; it makes no jobs until it is",
            )
            continue
        row = known.get(name)
        if row is None:
            store.add_schedule(
                name, schedule.expression, schedule.timezone, schedule.last_tick(now), now
            )
            continue
        if row.paused:
            continue
        last = row.last_tick_at or row.created_at
        ticks = schedule.due(last, now)
        moved_to = ticks[-1] if ticks else schedule.passed(last, now)
        if moved_to == row.last_tick_at:
            continue
        try:
            rows = [_job_row(runtime, schedule, tick) for tick in ticks]
        except BgQueueError as exc:
            _warn_once(runtime, name, f"bgqueue: schedule {name!r} cannot publish its job: {exc}")
            continue
        got = store.take_ticks(
            name, schedule.expression, schedule.timezone, row.last_tick_at, moved_to, rows, now
        )
        if got:
            ids += got
            if runtime.broker is not None:
                send_to_broker(runtime, list(zip(got, rows, strict=True)))
    return ids


def _job_row(runtime: Runtime, schedule: Schedule, tick: datetime) -> dict[str, Any]:
    row = build_row(
        runtime,
        schedule.callback_name,
        schedule.parameters,
        serial_group=None,
        identifier=None,
        is_unique=False,
        available_at=None,
        priority=None,
    )
    return {**row, "schedule": schedule.name, "tick_at": tick}


def _warn_once(runtime: Runtime, name: str, message: str) -> None:
    if message not in runtime.schedule_warnings:
        runtime.schedule_warnings.add(message)
        runtime.logger.error(message)


class Ticker:
    """Calls :func:`enqueue_due` from a consumer's loop at each tick's time, not more."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.next_look: datetime | None = None

    def maybe_run(self) -> list[int]:
        schedules = self.runtime.schedules()
        if not schedules:
            return []
        now = utcnow()
        if self.next_look is not None and now < self.next_look:
            return []
        ids = enqueue_due(self.runtime, now)
        soonest = min(s.next_tick(now) for s in schedules.values())
        self.next_look = min(soonest, now + LOOK_AT_LEAST_EVERY)
        return ids


# -- what people see ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleView:
    """A schedule as ``flask bgq schedules`` and the dashboard show it."""

    name: str
    expression: str
    timezone: str
    catch_up: str | None  # None: orphaned (not in this app's code or config)
    callback_name: str | None
    paused: bool
    last_tick_at: datetime | None
    next_tick_at: datetime | None
    last_job_id: int | None
    last_job_state: JobState | None
    problem: str | None  # why it makes no jobs, if it makes none

    @property
    def orphaned(self) -> bool:
        return self.catch_up is None

    @property
    def status(self) -> str:
        if self.orphaned:
            return "orphaned"
        if self.paused:
            return "paused"
        return "problem" if self.problem else "active"


def overview(runtime: Runtime, now: datetime | None = None) -> list[ScheduleView]:
    """Every schedule of the app and every one the database remembers (orphans), by name."""
    now = now or utcnow()
    schedules = runtime.schedules()
    store = runtime.store
    rows = store.schedule_rows()
    jobs = store.jobs_by_id([r.last_job_id for r in rows.values() if r.last_job_id is not None])
    views = []
    for name in sorted({*schedules, *rows}):
        schedule, row = schedules.get(name), rows.get(name)
        job = jobs.get(row.last_job_id) if row is not None and row.last_job_id else None
        common: dict[str, Any] = {
            "name": name,
            "paused": bool(row and row.paused),
            "last_tick_at": row.last_tick_at if row else None,
            "last_job_id": row.last_job_id if row else None,
            "last_job_state": job.state if job else None,
        }
        if schedule is None:
            assert row is not None
            views.append(
                ScheduleView(
                    expression=row.expression,
                    timezone=row.timezone,
                    catch_up=None,
                    callback_name=None,
                    next_tick_at=None,
                    problem="no longer in this app's code or BGQUEUE_SCHEDULE: it makes no jobs",
                    **common,
                )
            )
            continue
        views.append(
            ScheduleView(
                expression=schedule.expression,
                timezone=schedule.timezone,
                catch_up=schedule.catch_up,
                callback_name=schedule.callback_name,
                next_tick_at=schedule.next_tick(now),
                problem=None
                if common["paused"]
                else _problem(runtime, schedule, row.last_tick_at if row else None, now),
                **common,
            )
        )
    return views


def _problem(
    runtime: Runtime, schedule: Schedule, last: datetime | None, now: datetime
) -> str | None:
    if runtime.callback(schedule.callback_name) is None:
        return f"callback {schedule.callback_name!r} is not registered in this app"
    s = runtime.settings
    try:
        serialization.dump(schedule.parameters, s.parameters_format, s.signing_keys)
    except BgQueueError as exc:
        return f"its parameters cannot be stored: {exc}"
    if last is None:
        return None
    missed = schedule.next_tick(last)
    if now - missed > ON_TIME:
        return (
            f"its tick of {missed:%Y-%m-%d %H:%M:%S} UTC has not been turned into a job yet:"
            " is 'flask bgq process' in cron, or a consumer running?"
        )
    return None


def set_paused(runtime: Runtime, name: str, paused: bool) -> None:
    """Pause or resume a schedule, for every worker, without a deploy."""
    store = runtime.store
    schedule = runtime.schedules().get(name)
    if schedule is not None and name not in store.schedule_rows():
        now = utcnow()
        store.add_schedule(
            name, schedule.expression, schedule.timezone, schedule.last_tick(now), now
        )
    if not store.pause_schedule(name, paused, utcnow()):
        known = ", ".join(v.name for v in overview(runtime)) or "none"
        raise BgQueueError(f"no schedule named {name!r}; known: {known}.")


def forget(runtime: Runtime, name: str) -> None:
    """Delete what the database remembers of an orphaned schedule (its jobs stay)."""
    if name in runtime.schedules():
        raise BgQueueError(
            f"schedule {name!r} is still defined in this app; remove it from the code or"
            " BGQUEUE_SCHEDULE first (or pause it)."
        )
    if not runtime.store.forget_schedule(name):
        raise BgQueueError(f"the database remembers no schedule named {name!r}.")
