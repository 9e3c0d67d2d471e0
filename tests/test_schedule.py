"""The pure tick math of periodic schedules: cron, catch-up, DST (no database)."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import islice

import pytest

from flask_bgqueue.schedule import MAX_TICKS_PER_PASS, ON_TIME, Schedule, ScheduleError

T0 = datetime(2025, 1, 1, 12, 0)


def ticks(schedule: Schedule, after: datetime, n: int) -> list[datetime]:
    return list(islice(schedule.ticks_after(after), n))


def test_five_fields_tick_on_minutes_and_six_fields_on_seconds() -> None:
    assert ticks(Schedule("a", "*/5 * * * *"), T0, 2) == [
        T0 + timedelta(minutes=5),
        T0 + timedelta(minutes=10),
    ]
    assert ticks(Schedule("b", "*/10 * * * * *"), T0, 2) == [
        T0 + timedelta(seconds=10),
        T0 + timedelta(seconds=20),
    ]


def test_a_time_zone_moves_the_ticks() -> None:
    # 08:00 in Prague is 07:00 UTC in winter
    assert ticks(Schedule("a", "0 8 * * *", timezone="Europe/Prague"), T0, 1) == [
        datetime(2025, 1, 2, 7, 0)
    ]


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        ("one", [T0 + timedelta(minutes=50)]),
        ("all", [T0 + timedelta(minutes=m) for m in range(5, 55, 5)]),
        ("none", []),
    ],
)
def test_after_an_outage_catch_up_decides_how_many_jobs(
    catch_up: str, expected: list[datetime]
) -> None:
    schedule = Schedule("a", "*/5 * * * *", catch_up=catch_up)
    # ten ticks passed while no worker looked; the last one 3 minutes ago
    assert schedule.due(T0, T0 + timedelta(minutes=53)) == expected


def test_catch_up_none_still_runs_a_tick_seen_on_time() -> None:
    schedule = Schedule("a", "*/5 * * * *", catch_up="none")
    seen = T0 + timedelta(minutes=5) + ON_TIME - timedelta(seconds=1)
    assert schedule.due(T0, seen) == [T0 + timedelta(minutes=5)]
    assert schedule.passed(T0, T0 + timedelta(minutes=53)) == T0 + timedelta(minutes=50)


def test_no_tick_passed_means_nothing_is_due() -> None:
    schedule = Schedule("a", "*/5 * * * *")
    assert schedule.due(T0, T0 + timedelta(minutes=4, seconds=59)) == []
    assert schedule.due(T0 + timedelta(minutes=5), T0 + timedelta(minutes=6)) == []


def test_catch_up_all_is_bounded_per_pass() -> None:
    schedule = Schedule("a", "* * * * * *", catch_up="all")
    due = schedule.due(T0, T0 + timedelta(hours=2))
    assert len(due) == MAX_TICKS_PER_PASS and due[0] == T0 + timedelta(seconds=1)


def test_a_fixed_time_in_the_spring_gap_ticks_once_right_after_it() -> None:
    # Prague, 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist
    daily = Schedule("a", "30 2 * * *", timezone="Europe/Prague")
    assert ticks(daily, datetime(2025, 3, 29, 2, 0), 2) == [
        datetime(2025, 3, 30, 1, 0),  # 03:00 CEST, the first instant after the gap
        datetime(2025, 3, 31, 0, 30),  # 02:30 CEST
    ]


def test_a_fixed_time_in_the_repeated_autumn_hour_ticks_once() -> None:
    # Prague, 2025-10-26: 03:00 CEST goes back to 02:00 CET (01:00 UTC); 02:30 happens twice
    daily = Schedule("a", "30 2 * * *", timezone="Europe/Prague")
    assert ticks(daily, datetime(2025, 10, 25, 2, 0), 2) == [
        datetime(2025, 10, 26, 0, 30),  # the first 02:30 (CEST)
        datetime(2025, 10, 27, 1, 30),
    ]


def test_an_interval_schedule_follows_real_time_across_dst() -> None:
    every_half_hour = Schedule("a", "*/30 * * * *", timezone="Europe/Prague")
    autumn = ticks(every_half_hour, datetime(2025, 10, 25, 23, 50), 4)
    assert autumn == [datetime(2025, 10, 26, 0, 0) + timedelta(minutes=30 * k) for k in range(4)]
    spring = ticks(every_half_hour, datetime(2025, 3, 29, 23, 50), 4)
    assert spring == [datetime(2025, 3, 30, 0, 0) + timedelta(minutes=30 * k) for k in range(4)]


def test_last_tick_is_at_or_before_the_moment() -> None:
    schedule = Schedule("a", "*/5 * * * *")
    assert schedule.last_tick(T0) == T0
    assert schedule.last_tick(T0 + timedelta(minutes=4, microseconds=5)) == T0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expression": "every 5 minutes"}, "is not a cron expression"),
        ({"expression": "61 * * * *"}, "cron expression '61 \\* \\* \\* \\*'"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"catch_up": "some"}, "catch_up is 'some'; use one of one, all, none"),
    ],
)
def test_bad_schedules_say_what_is_wrong(kwargs: dict[str, str], message: str) -> None:
    args = {"expression": "* * * * *", **kwargs}
    with pytest.raises(ScheduleError, match=message):
        Schedule("a", **args)
