"""Periodic schedules, pure: cron expressions, ticks, catch-up and the DST rule.

A schedule's ticks are the moments its cron expression matches in its time zone, parsed and
walked by `cronsim <https://pypi.org/project/cronsim/>`_ (five fields, or six with the
seconds first). Every time here is naive UTC, as in the job table.

Daylight saving time follows Debian cron, as cronsim implements it: a five-field expression
with a fixed minute and hour (``30 2 * * *``) ticks once a day, at the first instant after a
skipped hour (02:30 that does not exist ticks at 03:00) and at the first of a repeated one.
Other expressions (``*/5 * * * *``, and every six-field one) match real instants: nothing
ticks in a skipped hour, and a repeated hour ticks twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: What a schedule does with the ticks no worker saw (workers down, a long job):
#: ``one`` enqueues one job for all of them, ``all`` one per tick, ``none`` none.
CATCH_UP = ("one", "all", "none")
#: A tick seen at most this late is on time (``flask bgq process`` runs once a minute);
#: with ``catch_up="none"`` a later one is dropped.
ON_TIME = timedelta(seconds=90)
#: ``catch_up="all"``: at most this many ticks become jobs in one pass (the next goes on).
MAX_TICKS_PER_PASS = 1000


class ScheduleError(ValueError):
    """An expression, time zone or catch-up mode that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Schedule:
    """One periodic schedule: publish ``callback_name`` with ``parameters`` at each tick."""

    name: str
    expression: str
    parameters: Any = None
    timezone: str = "UTC"
    catch_up: str = "one"
    callback_name: str = ""
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.callback_name:
            object.__setattr__(self, "callback_name", self.name)
        object.__setattr__(
            self, "zone", check(self.name, self.expression, self.timezone, self.catch_up)
        )

    def ticks_after(self, after: datetime) -> Iterator[datetime]:
        """The ticks later than ``after``, in order, forever."""
        return (_utc(t) for t in CronSim(self.expression, _local(after, self.zone)))

    def next_tick(self, after: datetime) -> datetime:
        """The first tick later than ``after``."""
        return next(self.ticks_after(after))

    def last_tick(self, at: datetime) -> datetime | None:
        """The latest tick at or before ``at``, or ``None`` (none in the last 50 years)."""
        start = _local(at.replace(microsecond=0) + timedelta(seconds=1), self.zone)
        try:
            return _utc(next(CronSim(self.expression, start, reverse=True)))
        except StopIteration:
            return None

    def due(self, last: datetime, now: datetime) -> list[datetime]:
        """The ticks to turn into jobs now, given the last tick handled (see ``catch_up``).

        Empty when no tick passed since ``last``. ``one``: the latest passed tick. ``all``:
        every passed tick (at most :data:`MAX_TICKS_PER_PASS`, the oldest first). ``none``:
        the latest, if it is no more than :data:`ON_TIME` old.
        """
        if self.catch_up == "all":
            ticks: list[datetime] = []
            for tick in self.ticks_after(last):
                if tick > now or len(ticks) == MAX_TICKS_PER_PASS:
                    break
                ticks.append(tick)
            return ticks
        latest = self.last_tick(now)
        if latest is None or latest <= last:
            return []
        if self.catch_up == "none" and now - latest > ON_TIME:
            return []
        return [latest]

    def passed(self, last: datetime, now: datetime) -> datetime:
        """Where the last handled tick moves to when :meth:`due` found nothing to enqueue
        (``none`` drops late ticks): the latest tick at or before ``now``."""
        return max(last, self.last_tick(now) or last)


def check(name: str, expression: Any, timezone_name: Any, catch_up: Any) -> ZoneInfo:
    """Raise :class:`ScheduleError` saying what is wrong; return the time zone."""
    if not isinstance(expression, str) or len(expression.split()) not in (5, 6):
        raise ScheduleError(
            f"schedule {name!r}: {expression!r} is not a cron expression; use five fields"
            " (minute hour day month weekday, e.g. '*/5 * * * *') or six with seconds first"
            " ('*/10 * * * * *')."
        )
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except (CronSimError, ValueError, KeyError) as exc:
        raise ScheduleError(f"schedule {name!r}: cron expression {expression!r}: {exc}") from None
    if not isinstance(timezone_name, str) or not timezone_name:
        raise ScheduleError(f"schedule {name!r}: timezone must be a name such as 'Europe/Prague'.")
    try:
        zone = ZoneInfo(timezone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"schedule {name!r}: unknown time zone {timezone_name!r}; use an IANA name such"
            " as 'UTC' or 'Europe/Prague' (on Windows, pip install tzdata)."
        ) from None
    if catch_up not in CATCH_UP:
        raise ScheduleError(
            f"schedule {name!r}: catch_up is {catch_up!r}; use one of {', '.join(CATCH_UP)}."
        )
    return zone


def _local(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.replace(tzinfo=timezone.utc).astimezone(zone)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)
