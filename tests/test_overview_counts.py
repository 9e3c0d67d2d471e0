"""The overview's counts: exact up to BGQUEUE_EXACT_COUNT_LIMIT jobs per state, estimates
from the database's statistics above it (PostgreSQL, MariaDB), marked as such everywhere."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from flask_bgqueue.inspection import Inspector
from tests.conftest import AppFactory
from tests.dashboard_app import PREFIX, dashboard_app

#: How many jobs of each (state, queue, callback) the table gets.
SHAPE = {
    (JobState.FINISHED, "default", "work"): 90,
    (JobState.FINISHED, "default_mail", "send"): 30,
    (JobState.READY, "default", "work"): 7,
    (JobState.PERMANENTLY_FAILED, "default_mail", "send"): 3,
    (JobState(42), "default", "work"): 2,  # a state of a newer version
    (JobState.FINISHED, "other", "work"): 5,  # another app's queue: never counted
}


def filled(make_app: AppFactory, **config: Any) -> Flask:
    app = dashboard_app(make_app, **config)
    now = utcnow()
    rows = [
        {
            "queue": queue,
            "priority": 1,
            "callback_name": callback,
            "state": state,
            "created_at": now,
            "updated_at": now,
            "available_at": now,
            "last_attempt_at": now - timedelta(minutes=1),
            "finished_at": now if state == JobState.FINISHED else None,
            "number_of_attempts": 1,
            "is_unique": False,
        }
        for (state, queue, callback), n in SHAPE.items()
        for _ in range(n)
    ]
    with app.app_context():
        store = app.extensions["bgqueue"].store
        with store.engine.begin() as conn:
            conn.execute(store.table.insert(), rows)
        with store.engine.connect() as conn:  # what autovacuum / a DBA would have done
            name = store.table.name
            conn.exec_driver_sql(
                {"postgresql": f"ANALYZE {name}", "sqlite": "ANALYZE"}.get(
                    conn.dialect.name, f"ANALYZE TABLE {name}"
                )
            )
            conn.commit()
    return app


def exact_expected() -> dict[str, Any]:
    ours = {k: n for k, n in SHAPE.items() if k[1] != "other"}
    by_state: dict[JobState, int] = {}
    for (state, _, _), n in ours.items():
        by_state[state] = by_state.get(state, 0) + n
    return {"by_state": by_state}


def test_every_count_is_exact_while_each_state_stays_under_the_limit(
    make_app: AppFactory,
) -> None:
    app = filled(make_app)  # the default limit, 100,000
    with app.app_context():
        stats = Inspector(app.bgq).stats()  # type: ignore[attr-defined]
    assert stats.estimated == frozenset()
    assert {s: n for s, n in stats.by_state.items() if n} == exact_expected()["by_state"]
    assert stats.by_queue["default_mail"] == {
        JobState.FINISHED: 30,
        JobState.PERMANENTLY_FAILED: 3,
    }
    assert stats.by_callback["work"] == {
        JobState.FINISHED: 90,
        JobState.READY: 7,
        JobState(42): 2,
    }
    assert "other" not in stats.by_queue


def test_a_state_over_the_limit_is_estimated_and_marked_where_the_database_can_estimate(
    make_app: AppFactory, db_url: str
) -> None:
    app = filled(make_app, BGQUEUE_EXACT_COUNT_LIMIT=20)
    with app.app_context():
        stats = Inspector(app.bgq).stats()  # type: ignore[attr-defined]
    # the states under the limit, a newer version's included, are exact everywhere
    assert stats.by_state[JobState.READY] == 7
    assert stats.by_state[JobState.PERMANENTLY_FAILED] == 3
    assert stats.by_state[JobState(42)] == 2
    assert stats.by_queue["default_mail"][JobState.PERMANENTLY_FAILED] == 3
    finished = stats.by_state[JobState.FINISHED]
    if db_url.startswith("sqlite"):  # no statistics to estimate from: exact, unmarked
        assert stats.estimated == frozenset()
        assert finished == 120
        return
    assert stats.estimated == {JobState.FINISHED}
    assert 60 <= finished <= 240, finished  # the planner's figure, more than the limit
    # split between queues and callbacks as among the newest FINISHED jobs (all of them
    # here): 3 to 1
    work = stats.by_queue["default"][JobState.FINISHED]
    mail = stats.by_queue["default_mail"][JobState.FINISHED]
    assert work + mail == finished
    assert abs(work - 3 * mail) <= 2, (work, mail)
    assert stats.by_callback["send"][JobState.FINISHED] == mail


def test_the_overview_and_stats_json_say_which_counts_are_estimates(
    make_app: AppFactory, db_url: str
) -> None:
    app = filled(make_app, BGQUEUE_EXACT_COUNT_LIMIT=20)
    html = app.test_client().get(f"{PREFIX}/").get_data(as_text=True)
    doc = json.loads(app.test_cli_runner().invoke(args=["bgq", "stats", "--json"]).output)
    api = app.test_client().get(f"{PREFIX}/api/overview").get_json()
    text = app.test_cli_runner().invoke(args=["bgq", "stats"]).output
    if db_url.startswith("sqlite"):
        assert doc["estimated_states"] == api["estimated_states"] == []
        assert "≈" not in html and "≈" not in text
        assert doc["states"]["FINISHED"] == 120
        return
    assert doc["estimated_states"] == api["estimated_states"] == ["FINISHED"]
    assert doc["states"]["READY"] == 7
    card = html.split('class="card s-finished"')[1].split("</a>")[0]
    assert "≈" in card
    ready = html.split('class="card s-ready"')[1].split("</a>")[0]
    assert "≈" not in ready and ">7<" in ready
    assert 'id="bgq-estimated"' in html and "finished hold more jobs" in html
    assert "FINISHED             ≈" in text and "READY                 " in text


def test_no_limit_means_every_count_is_exact(make_app: AppFactory) -> None:
    app = filled(make_app, BGQUEUE_EXACT_COUNT_LIMIT=None)
    with app.app_context():
        stats = Inspector(app.bgq).stats()  # type: ignore[attr-defined]
    assert stats.estimated == frozenset()
    assert stats.by_state[JobState.FINISHED] == 120


def test_the_counts_read_only_their_index_on_sqlite(make_app: AppFactory, db_url: str) -> None:
    """Every column the counts and the workers read is in an index (migration 0010):
    SQLite says COVERING INDEX for each of those statements; the chart reads its own
    table's minutes through its primary key (migration 0011)."""
    if not db_url.startswith("sqlite"):
        return
    app = filled(make_app)
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *a: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, params))

    with app.app_context():
        store = app.extensions["bgqueue"].store
        sa.event.listen(store.engine, "before_cursor_execute", record)
        try:
            store.count_by_state_queue_callback()
            store.outcomes_per_minute(utcnow() - timedelta(hours=3))
            store.worker_activity(utcnow() - timedelta(minutes=15))
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        with store.engine.connect() as conn:
            plans = [
                " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + s, p))
                for s, p in sent
            ]
    name = store.table.name
    counts, chart, running, recent = plans
    assert f"COVERING INDEX ix_{name}_due" in counts, counts
    assert f"INDEX sqlite_autoindex_{name}_throughput_1" in chart, chart
    assert "SCAN" not in chart, chart
    assert f"COVERING INDEX ix_{name}_last_attempt_at" in recent, recent
    assert "USING" in running and "SCAN" not in running, running  # the PROCESSING jobs


def test_workers_come_from_the_window_and_from_the_jobs_running_since_before_it(
    make_app: AppFactory,
) -> None:
    """The window is read from its index alone; a job running since before the window
    still shows its worker, with the heartbeat only running jobs have."""
    app = dashboard_app(make_app)
    bgq = app.bgq  # type: ignore[attr-defined]
    now = utcnow().replace(microsecond=0)
    long_ago, recently = now - timedelta(hours=2), now - timedelta(minutes=3)
    with app.app_context():
        ids = [bgq.publish("work", n) for n in range(4)]
        store = app.extensions["bgqueue"].store
        t = store.table
        changes = [
            # a long job on web-1, claimed two hours ago, beating now
            (ids[0], JobState.PROCESSING, "web-1", 11, long_ago, now),
            # two jobs web-2 ended in the window, one web-1 ended long ago
            (ids[1], JobState.FINISHED, "web-2", 22, recently, None),
            (ids[2], JobState.PERMANENTLY_FAILED, "web-2", 22, recently, None),
            (ids[3], JobState.FINISHED, "web-1", 11, long_ago, None),
        ]
        with store.engine.begin() as conn:
            for job_id, state, host, pid, attempt, beat in changes:
                conn.execute(
                    t.update()
                    .where(t.c.id == job_id)
                    .values(
                        state=state,
                        hostname=host,
                        pid=pid,
                        last_attempt_at=attempt,
                        heartbeat_at=beat,
                    )
                )
        workers = {(w.hostname, w.pid): w for w in Inspector(bgq).workers(now)}
    assert set(workers) == {("web-1", 11), ("web-2", 22)}
    web1, web2 = workers[("web-1", 11)], workers[("web-2", 22)]
    assert web1.current_jobs == [(ids[0], "work")] and web1.jobs_done == 0
    assert web1.last_attempt_at == long_ago and web1.last_heartbeat_at == now
    assert web2.current_jobs == [] and web2.jobs_done == 2
    assert web2.last_attempt_at == recently and web2.last_heartbeat_at is None
