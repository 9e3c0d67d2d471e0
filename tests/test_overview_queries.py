"""The overview's queries read what they need through an index, not every job."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from tests.conftest import AppFactory


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_throughput_chart_reads_its_window_from_indexes_alone(
    make_app: AppFactory,
) -> None:
    app = make_app()
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda **kw: None)
    now = utcnow()
    with app.app_context():
        store = app.extensions["bgqueue"].store
        rows = []
        # six hours of jobs, mostly finished, the others in every state (SQLite's planner
        # then takes "state = FINISHED" for the rarer condition, without the fix)
        for n in range(5000):
            at = now - timedelta(seconds=n * 4.3)
            others = [s for s in JobState if s != JobState.FINISHED]
            state = JobState.FINISHED if n % 7 else others[n // 7 % len(others)]
            rows.append(
                {
                    "queue": "default",
                    "priority": 1,
                    "callback_name": f"f{n % 12}",
                    "state": state,
                    "created_at": at,
                    "updated_at": at,
                    "available_at": at,
                    # REDUNDANT and CANCELLED jobs end too, but are not finished
                    "finished_at": at if state in (3, 7, 9) else None,
                    "number_of_attempts": 1,
                    "is_unique": False,
                }
            )
        with store.engine.begin() as conn:
            conn.execute(store.table.insert(), rows)
            conn.exec_driver_sql("ANALYZE")
        sent: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, params: Any, *a: Any) -> None:
            sent.append((statement, params))

        sa.event.listen(store.engine, "before_cursor_execute", record)
        try:
            counts = store.outcomes_per_minute(now - timedelta(minutes=10))
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        ended, ended_otherwise = [(s, p) for s, p in sent if "finished_at" in s]
        with store.engine.connect() as conn:
            plans = [
                " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + s, p))
                for s, p in (ended, ended_otherwise)
            ]
    # the jobs ended in the window, less those ended otherwise: both from an index alone
    assert f"COVERING INDEX ix_{store.table.name}_finished_at" in plans[0], plans
    assert f"COVERING INDEX ix_{store.table.name}_due" in plans[1], plans
    since = now - timedelta(minutes=10)
    assert sum(n for kind, _, n in counts if kind == "finished") == len(
        [
            r
            for r in rows
            if r["state"] == JobState.FINISHED and r["finished_at"] and r["finished_at"] >= since
        ]
    )


def test_the_chart_puts_each_outcome_in_its_minute_on_every_database(
    make_app: AppFactory,
) -> None:
    """Each database truncates to the minute its own way (MySQL/MariaDB as a number): a
    job ended a microsecond before an hour begins is in the minute before it, and the
    minutes come back as naive datetimes."""
    app = make_app()
    app.bgq.callback("f")(lambda **kw: None)  # type: ignore[attr-defined]
    hour = (utcnow() - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    jobs = [  # (state, finished_at, last_attempt_at)
        (JobState.FINISHED, hour - timedelta(microseconds=1), None),
        (JobState.FINISHED, hour, None),
        (JobState.FINISHED, hour + timedelta(seconds=59, microseconds=999_999), None),
        (JobState.REDUNDANT, hour + timedelta(seconds=30), None),  # ended, not finished
        (JobState.PERMANENTLY_FAILED, None, hour + timedelta(minutes=2, seconds=5)),
        (JobState.FINISHED, hour - timedelta(hours=2), None),  # before the window
    ]
    with app.app_context():
        store = app.extensions["bgqueue"].store
        rows = [
            {
                "queue": "default",
                "priority": 1,
                "callback_name": "f",
                "state": state,
                "created_at": hour - timedelta(hours=3),
                "updated_at": hour,
                "available_at": hour - timedelta(hours=3),
                "finished_at": finished,
                "last_attempt_at": attempt or finished,
                "number_of_attempts": 1,
                "is_unique": False,
            }
            for state, finished, attempt in jobs
        ]
        with store.engine.begin() as conn:
            conn.execute(store.table.insert(), rows)
        counts = store.outcomes_per_minute(hour - timedelta(minutes=30))
    assert sorted(counts) == [
        ("failed", hour + timedelta(minutes=2), 1),
        ("finished", hour - timedelta(minutes=1), 1),
        ("finished", hour, 2),
    ]
    assert all(minute.tzinfo is None for _, minute, _ in counts)
