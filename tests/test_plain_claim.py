"""The claim's fast path for plain jobs (PostgreSQL: one statement), with the semantics
of the full claim: serial groups, unique twins and claim order as before."""

from __future__ import annotations

from datetime import timedelta

from flask_bgqueue import JobState
from flask_bgqueue.processor import Processor
from tests.conftest import AppFactory, StorePath
from tests.helpers import all_jobs


def test_plain_jobs_are_claimed_in_one_statement_and_the_others_checked_as_before(
    make_app: AppFactory, store_path: StorePath, db_url: str
) -> None:
    app = store_path.apply(make_app(BGQUEUE_PRIORITIES=[1, 2]))
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda **kw: None)
    with app.app_context():
        ids = {
            "plain_low": bgq.publish("f", {"n": 0}, priority=2),
            "group_1": bgq.publish("f", {"n": 1}, serial_group="g"),
            "group_2": bgq.publish("f", {"n": 2}, serial_group="g"),
            "unique_1": bgq.publish("f", {"n": 3}, identifier="u", is_unique=True),
            "unique_2": bgq.publish("f", {"n": 4}, identifier="u", is_unique=True),
            "plain_a": bgq.publish("f", {"n": 5}),
            "plain_b": bgq.publish("f", {"n": 6}),
            "later": bgq.publish("f", {"n": 7}, available_at=timedelta(hours=1)),
            "plain_low_2": bgq.publish("f", {"n": 8}, priority=2),
        }
        processor = Processor(app.extensions["bgqueue"], app)
        before = store_path.calls["execute_one"]
        claims = processor.claim(None, ["f"], limit=10)
        one_statement = store_path.calls["execute_one"] - before
        # a second claim finds only the group's second job, blocked by the first
        assert processor.claim(None, ["f"], limit=10) == []
        jobs = {j.id: j for j in all_jobs(bgq)}
    claimed = [c.job.id for c in claims]
    # claim order: priority, then id
    assert claimed == [
        ids["group_1"],
        ids["unique_1"],
        ids["plain_a"],
        ids["plain_b"],
        ids["plain_low"],
        ids["plain_low_2"],
    ]
    assert all(c.previous_state == JobState.READY for c in claims)
    assert all(jobs[i].state == JobState.PROCESSING and jobs[i].pid for i in claimed)
    assert jobs[ids["group_2"]].state == JobState.WAITING
    assert jobs[ids["unique_2"]].state == JobState.REDUNDANT
    assert jobs[ids["later"]].state == JobState.READY
    if db_url.startswith("postgresql"):
        assert one_statement == 1  # the plain ones in one statement, then the checked claim
        if store_path.name == "sqlalchemy":
            assert any("bgq_candidates" in s for s in store_path.statements)
    else:
        assert one_statement == 0


def test_a_backlog_of_plain_jobs_needs_no_other_claim(
    make_app: AppFactory, store_path: StorePath, db_url: str
) -> None:
    app = store_path.apply(make_app())
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda **kw: None)
    with app.app_context():
        with bgq.bulk():
            for n in range(25):
                bgq.publish("f", {"n": n})
        processor = Processor(app.extensions["bgqueue"], app)
        before = dict(store_path.calls)
        batches = [processor.claim(None, ["f"], limit=10) for _ in range(4)]
        calls = {k: store_path.calls[k] - before[k] for k in before}
    assert [len(b) for b in batches] == [10, 10, 5, 0]
    ids = [c.job.id for b in batches for c in b]
    assert ids == sorted(ids) and len(set(ids)) == 25
    if db_url.startswith("postgresql"):  # one statement per claim, no transaction beside
        assert calls["execute_one"] == 4 and calls["transaction"] == 0
        assert calls["raw"] == (4 if store_path.name == "driver" else 0)
