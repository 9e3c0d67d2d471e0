"""The original's coalescing: a claimed job of a serial group covers the group's pending jobs
whose coalesce_threshold is at least its own."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from flask_bgqueue import JobState
from flask_bgqueue.explain import explain
from flask_bgqueue.models import PENDING_STATES
from tests.conftest import AppFactory, ProcEnv


def test_claiming_a_job_makes_pending_jobs_with_a_higher_threshold_redundant(
    make_app: AppFactory,
) -> None:
    app = make_app()
    bgq = app.bgq  # type: ignore[attr-defined]
    ran: list[str] = []
    bgq.callback("recompute")(ran.append)
    with app.app_context():

        def publish(name: str, threshold: int | None) -> int:
            job_id: int | None = bgq.publish(
                "recompute", name, serial_group="inv-1", coalesce_threshold=threshold
            )
            assert job_id is not None
            return job_id

        head = publish("head", 5)
        same = publish("same", 5)
        higher = publish("higher", 9)
        lower = publish("lower", 3)
        plain = publish("plain", None)
        other = bgq.publish("recompute", "other", serial_group="inv-2", coalesce_threshold=9)
        bgq.process()
        state = {i: bgq.get_job(i) for i in (head, same, higher, lower, plain, other)}
        store = app.extensions["bgqueue"].store
        reasons = explain(
            state[same], store=store, callback_known=True, now=state[same].finished_at,
            lost_after=timedelta(seconds=60),
        )  # fmt: skip
    assert sorted(ran) == ["head", "lower", "other", "plain"]
    assert ran.index("head") < ran.index("lower") < ran.index("plain")
    for i in (same, higher):
        assert state[i].state is JobState.REDUNDANT
        assert state[i].finished_at is not None
        assert state[i].error_message == f"coalesced into job {head}"
    for i in (head, lower, plain, other):
        assert state[i].state is JobState.FINISHED
    assert reasons[0].code == "coalesced" and reasons[0].job_id == head


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_four_workers_coalesce_without_deadlock(procs: ProcEnv) -> None:
    """Four processes claim one group's jobs at once: every job ends FINISHED or REDUNDANT
    (coalesced into a job of its group that ran, with a threshold at most its own), the
    jobs without a threshold all run, one by one, and no worker fails."""
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        with bgq.bulk():
            for n in range(120):
                group = f"g{n % 3}"
                threshold = (None, 2, 5, 9)[n % 4]
                bgq.publish(
                    "record",
                    {"group": group, "name": f"j{n}", "pause": 0.01},
                    serial_group=group,
                    coalesce_threshold=threshold,
                )
        start_at = time.time() + 2
    code = (
        "import time, sys; from tests.procapp import create_app; app = create_app();"
        f" time.sleep(max(0, {start_at} - time.time()));"
        " app.app_context().push(); from tests.procapp import bgq; print(bgq.process())"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code], env=procs._env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]  # fmt: skip
    for w in workers:
        _out, err = w.communicate(timeout=180)
        assert w.returncode == 0, err
        assert "Deadlock" not in err and "deadlock" not in err
    with app.app_context():
        # later cron runs: jobs a finished sweep left WAITING for their group run then
        for _ in range(20):
            if not _pending(app):
                break
            bgq.process()
            time.sleep(1.1)
        store = app.extensions["bgqueue"].store
        t = store.table
        with store.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(sa.select(t))}
    runs = {line[1]: line for line in procs.records()}
    assert {JobState(r.state) for r in rows.values()} <= {JobState.FINISHED, JobState.REDUNDANT}
    for r in rows.values():
        name = f"j{r.id - 1}"
        if r.coalesce_threshold is None:
            assert r.state == JobState.FINISHED
        if r.state == JobState.REDUNDANT:
            into = rows[int(r.error_message.rsplit(" ", 1)[-1])]
            assert into.state == JobState.FINISHED and into.serial_group == r.serial_group
            assert into.coalesce_threshold <= r.coalesce_threshold
            assert r.finished_at is not None and name not in runs
        else:
            assert name in runs
    assert any(r.state == JobState.REDUNDANT for r in rows.values())
    # a group's runs never overlap
    for group in ("g0", "g1", "g2"):
        spans = sorted((float(x[2]), float(x[3])) for x in runs.values() if x[0] == group)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def _pending(app: object) -> bool:
    store = app.extensions["bgqueue"].store  # type: ignore[attr-defined]
    t = store.table
    with store.engine.connect() as conn:
        return bool(conn.execute(sa.select(t.c.id).where(t.c.state.in_(PENDING_STATES))).first())
