"""The store's fast path: straight to the driver, or through SQLAlchemy, with the same
results; and the SQLAlchemy internals it relies on."""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from flask_bgqueue.models import RUNNABLE_STATES
from flask_bgqueue.store import Claim, Store
from flask_bgqueue.store.driver import SQLALCHEMY_ATTRIBUTES
from tests.conftest import AppFactory, StorePath


def _lifecycle(app: Flask, tag: str) -> list[tuple[Any, ...]]:
    """Publish (one row, then three in one INSERT), claim (delivered, then checked), save
    outcomes and give one job back; the jobs as they end up, without ids and times."""
    bgq = app.bgq  # type: ignore[attr-defined]
    store: Store = bgq._state().store
    ids = [bgq.publish("f", {"tag": tag, "n": 0}, identifier=f"{tag}-0")]
    bgq.start_bulk()
    for n in (1, 2, 3):
        bgq.publish("f", {"tag": tag, "n": n}, serial_group=f"{tag}-g" if n == 3 else None)
    ids += bgq.end_bulk()
    assert len(ids) == 4
    now = utcnow()
    claim = {"now": now, "callbacks": ["f"], "pid": 7, "hostname": "h"}
    claims: list[Claim] = (
        store.claim_delivered(job_ids=ids[:2], states=RUNNABLE_STATES, **claim) or []
    )
    claims += store.claim(
        limit=4,
        priorities=None,
        waiting_expiration=timedelta(seconds=1),
        job_ids=[i for i in ids if i not in {c.job.id for c in claims}],
        **claim,
    )
    claims.sort(key=lambda c: c.job.id)
    assert [c.job.id for c in claims] == ids
    assert store.save_outcomes(
        [
            (
                claims[0],
                JobState.FINISHED,
                {"updated_at": now, "finished_at": now, "execution_time": 5},
            ),
            (claims[1], JobState.TEMPORARILY_FAILED, {"updated_at": now, "error_message": "later"}),
            (claims[2], JobState.PERMANENTLY_FAILED, {"updated_at": now, "error_message": "never"}),
        ]
    ) == [True, True, True]
    store.release([claims[3]], now)
    return [
        (
            j.state,
            j.number_of_attempts,
            j.parameters_json.replace(tag, "TAG"),
            (j.identifier or "").replace(tag, "TAG"),
            (j.serial_group or "").replace(tag, "TAG"),
            j.pid,
            j.hostname,
            j.error_message,
            j.execution_time,
            j.finished_at is not None,
        )
        for j in (store.get(i) for i in ids)
        if j is not None
    ]


def test_publish_claim_save_and_release_give_the_same_jobs_on_both_paths(
    make_app: AppFactory, store_path: StorePath
) -> None:
    """Run once on the driver path and once through SQLAlchemy (the ``store_path``
    fixture checks which way each statement went); each run is compared with the same
    life cycle on a second app whose engine goes the other way."""
    ours = store_path.apply(make_app())
    other = StorePath("sqlalchemy" if store_path.name == "driver" else "driver")
    theirs = other.apply(make_app())
    for app in (ours, theirs):
        app.bgq.callback("f")(lambda **kw: None)  # type: ignore[attr-defined]
    with ours.app_context():
        mine = _lifecycle(ours, "ours")
    with theirs.app_context():
        reference = _lifecycle(theirs, "theirs")
    other.check()
    assert mine == reference
    assert [row[0] for row in mine] == [
        JobState.FINISHED,
        JobState.TEMPORARILY_FAILED,
        JobState.PERMANENTLY_FAILED,
        JobState.READY,
    ]
    assert store_path.calls["transaction"] == 2  # one publish, one bulk of three


def test_every_sqlalchemy_attribute_the_fast_path_uses_exists() -> None:
    """The driver module reaches into SQLAlchemy; an upgrade that renames any of these
    must fail here, by name, rather than slow down or break publishing."""
    engine = sa.create_engine("sqlite://")
    raw = engine.raw_connection()
    # Attributes set per instance exist on a live object only.
    live = {
        "sqlalchemy.engine.default.DefaultDialect": engine.dialect,
        "sqlalchemy.pool.base._ConnectionFairy": raw,
        "sqlalchemy.engine.events.ConnectionEvents": engine.dispatch,
    }
    missing = []
    try:
        for owner, names in SQLALCHEMY_ATTRIBUTES.items():
            module, _, cls_name = owner.rpartition(".")
            cls = getattr(importlib.import_module(module), cls_name, None)
            assert cls is not None, f"SQLAlchemy {sa.__version__} has no {owner}"
            where = live.get(owner, cls)
            missing += [f"{owner}.{name}" for name in names if not hasattr(where, name)]
    finally:
        raw.close()
        engine.dispose()
    assert not missing, f"SQLAlchemy {sa.__version__} lacks {', '.join(missing)}"
