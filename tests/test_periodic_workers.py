"""Exactly one job per tick of a periodic schedule, with several real workers at once."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import timedelta

import sqlalchemy as sa

from flask_bgqueue import JobState
from tests.conftest import ProcEnv

# SIGTERM ends the loop after the sweep that runs (bash runs a trap between commands)
SWEEP_LOOP = (
    'trap "stop=1" TERM; while [ -z "$stop" ]; do "$0" -m flask sweep >/dev/null || exit 1; done'
)
RUN_SECONDS = 64


def test_three_workers_make_exactly_one_job_per_tick(procs: ProcEnv) -> None:
    import sys

    procs.config = {
        "BGQUEUE_SCHEDULE": {"tick": {"cron": "* * * * * *", "catch_up": "all"}},
        "BGQUEUE_POLL_INTERVAL_MS": 200,
    }
    app = procs.app()
    with app.app_context():
        app.bgq.update_schema()  # type: ignore[attr-defined]
    env = procs._env()
    workers = [
        procs.start("bgq", "consume"),
        procs.start("bgq", "consume"),
        # `flask sweep` is `flask bgq process` without the host lock, run again and again
        subprocess.Popen(["bash", "-c", SWEEP_LOOP, sys.executable], env=env, text=True),
    ]
    time.sleep(RUN_SECONDS)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers[:2]:
        _out, err = w.communicate(timeout=60)
        assert w.returncode == 0, err
    assert workers[2].wait(timeout=60) == 0
    procs.run("sweep")  # run what the consumers left due

    with app.app_context():
        store = app.extensions["bgqueue"].store
        t = store.table
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.id, t.c.tick_at, t.c.state).where(t.c.schedule == "tick")
            ).all()
    ticks = sorted(r.tick_at for r in rows)
    assert len(ticks) >= 60
    assert len(set(ticks)) == len(ticks)  # no tick twice
    # catch_up="all": every second from the first tick to the last has its job
    span = int((ticks[-1] - ticks[0]).total_seconds())
    assert ticks == [ticks[0] + timedelta(seconds=k) for k in range(span + 1)]
    assert {r.state for r in rows} == {JobState.FINISHED}
    ran = [line[0] for line in _lines(procs)]
    assert sorted(map(int, ran)) == sorted(r.id for r in rows)  # each job ran exactly once
    pids = {line[1] for line in _lines(procs)}
    assert len(pids) >= 2  # the work was shared


def _lines(procs: ProcEnv) -> list[list[str]]:
    return [line.split() for line in (procs.dir / "ticks.txt").read_text().splitlines()]
