"""The store's fast path: straight to the driver, or through SQLAlchemy, with the same
results; and the SQLAlchemy internals it relies on."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypedDict, cast

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from flask_bgqueue.models import RUNNABLE_STATES
from flask_bgqueue.store import Claim, Store
from flask_bgqueue.store.driver import SQLALCHEMY_ATTRIBUTES
from tests.conftest import AppFactory, StorePath


class Claimer(TypedDict):
    """The keyword arguments ``Store.claim`` and ``Store.claim_delivered`` share."""

    now: datetime
    callbacks: list[str]
    pid: int
    hostname: str


class DeliveredClaimer(TypedDict):
    """``Store.claim_delivered``'s keyword arguments besides ``now`` and ``job_ids``."""

    callbacks: list[str]
    pid: int
    hostname: str
    states: Sequence[JobState]


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
    claim: Claimer = {"now": now, "callbacks": ["f"], "pid": 7, "hostname": "h"}
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
            cast(str, j.parameters_json).replace(tag, "TAG"),  # published with a dict
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


def test_a_bulk_on_postgresql_is_one_insert_from_arrays_with_ids_in_order(
    make_app: AppFactory, store_path: StorePath, db_url: str
) -> None:
    """PostgreSQL: one ``INSERT ... SELECT ... FROM unnest(arrays)`` per chunk of a bulk (the
    same SQL for any number of rows), on both paths; the ids come back in publish order,
    every column as given (NULLs, bytes, booleans, times). Elsewhere: multi-row VALUES."""
    app = store_path.apply(make_app(BGQUEUE_BULK_SIZE=100, BGQUEUE_PARAMETERS_FORMAT="auto"))
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda *a, **kw: None)
    driver = app.extensions["bgqueue"].store.driver
    with app.app_context():
        bgq.get_job(0)  # the table exists before statements are counted
        del store_path.statements[:]
        bgq.start_bulk()
        for n in range(130):
            parameters = {"n": n, "blob": b"\x00\xff"} if n % 7 == 0 else {"n": n}
            bgq.publish(
                "f",
                parameters,
                serial_group="g" if n % 5 == 0 else None,
                identifier=f"id-{n}" if n % 3 == 0 else None,
                is_unique=n % 6 == 0,
                available_at=timedelta(seconds=n),
            )
        tail = bgq.end_bulk()  # the ids of the last chunk, in publish order
        store = app.extensions["bgqueue"].store
        with store.engine.connect() as conn:
            ids = list(conn.execute(sa.select(store.table.c.id).order_by("id")).scalars())
        jobs = [bgq.get_job(i) for i in ids]
        loaded = [bgq.load_parameters(j) for j in jobs]
    # the SQL written, and on the SQLAlchemy path the statements sent
    written = list(driver._insert_cache.values())
    sent = [s for s in store_path.statements if s.lstrip().upper().startswith("INSERT INTO")]
    assert store_path.calls["transaction"] == 2  # 100 rows, then 30
    if db_url.startswith("postgresql"):
        assert len(written) == 1 and " FROM unnest(" in written[0]  # any row count
        assert sent == ([written[0]] * 2 if store_path.name == "sqlalchemy" else [])
    else:
        assert len(written) == 2 and all("unnest" not in s for s in written)
    assert len(ids) == 130 and tail == ids[100:]
    assert [p["n"] for p in loaded] == list(range(130))
    assert all(p.get("blob") == (b"\x00\xff" if p["n"] % 7 == 0 else None) for p in loaded)
    assert [j.serial_group for j in jobs] == ["g" if n % 5 == 0 else None for n in range(130)]
    assert [j.identifier for j in jobs] == [f"id-{n}" if n % 3 == 0 else None for n in range(130)]
    assert [j.is_unique for j in jobs] == [n % 6 == 0 for n in range(130)]
    delays = [(j.available_at - jobs[0].available_at).total_seconds() for j in jobs]
    assert [round(d) for d in delays] == list(range(130))


def test_columns_alike_in_every_row_of_a_bulk_are_sent_once(
    make_app: AppFactory, store_path: StorePath, db_url: str
) -> None:
    """PostgreSQL sends a column with one value in every row of a chunk as one scalar, not an
    array (identical jobs: every column but the times; all NULL but one row: an array);
    each row still reads back as published, ids in order, on both paths and every database."""
    app = store_path.apply(make_app(BGQUEUE_BULK_SIZE=40))
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda *a, **kw: None)
    driver = app.extensions["bgqueue"].store.driver
    with app.app_context():
        with bgq.bulk():
            for _ in range(40):  # alike but for the times
                bgq.publish("f", {"same": True}, priority=1)
            for n in range(40):  # one row differs in each of three columns
                bgq.publish(
                    "f",
                    {"same": True},
                    serial_group="g" if n == 39 else None,
                    identifier="only" if n == 0 else None,
                    concurrency_key=f"k{n}" if n == 20 else None,
                )
        store = app.extensions["bgqueue"].store
        with store.engine.connect() as conn:
            ids = list(conn.execute(sa.select(store.table.c.id).order_by("id")).scalars())
        jobs = [bgq.get_job(i) for i in ids]
        loaded = [bgq.load_parameters(j) for j in jobs]
    assert len(ids) == 80
    assert loaded == [{"same": True}] * 80
    second = jobs[40:]
    assert [j.serial_group for j in second] == [None] * 39 + ["g"]
    assert [j.identifier for j in second] == ["only"] + [None] * 39
    assert [j.concurrency_key for j in second] == [None] * 20 + ["k20"] + [None] * 19
    assert all(j.serial_group is None and j.identifier is None for j in jobs[:40])
    if db_url.startswith("postgresql"):
        first_sql, second_sql = list(driver._insert_cache.values())
        columns = first_sql.count("::")
        assert first_sql.count("[]") < columns - 5  # most columns went as scalars
        assert second_sql.count("[]") == first_sql.count("[]") + 3


def test_an_insert_leaves_out_the_columns_no_row_sets(
    make_app: AppFactory, store_path: StorePath
) -> None:
    """Columns whose value is what the database stores anyway (NULL, or ``recurring``'s
    server default) in every row of an INSERT are not named in it; a row that sets one
    gets it named, and every job reads back as published."""
    app = store_path.apply(make_app(BGQUEUE_BULK_SIZE=10))
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda *a, **kw: None)
    driver = app.extensions["bgqueue"].store.driver
    optional: tuple[str, ...] = ("serial_group", "identifier", "trace_context", "recurring")
    optional += ("coalesce_threshold", "concurrency_key", "parameters")
    with app.app_context():
        bgq.publish("f", {"n": 0})
        with bgq.bulk():
            for n in range(1, 10):
                bgq.publish("f", {"n": n})
        sql_plain = list(driver._insert_cache.values())
        driver._insert_cache.clear()
        with bgq.bulk():
            for n in range(9):
                bgq.publish("f", {"n": n})
            bgq.publish("f", {"n": 9}, recurring=True, concurrency_key="k")
        sql_mixed = list(driver._insert_cache.values())
        store = app.extensions["bgqueue"].store
        with store.engine.connect() as conn:
            ids = list(conn.execute(sa.select(store.table.c.id).order_by("id")).scalars())
        jobs = [bgq.get_job(i) for i in ids]

    def columns(sql: str) -> set[str]:
        named = sql[sql.index("(") + 1 : sql.index(")")]
        return {c.strip().strip('"`') for c in named.split(",")}

    assert len(sql_plain) == 2  # one row, then ten
    assert all(columns(sql).isdisjoint(optional) for sql in sql_plain)
    assert all({"callback_name", "parameters_json", "state"} <= columns(s) for s in sql_plain)
    [insert] = sql_mixed
    assert columns(insert) & set(optional) == {"recurring", "concurrency_key"}
    assert [j.recurring for j in jobs] == [False] * 19 + [True]
    assert [j.concurrency_key for j in jobs] == [None] * 19 + ["k"]
    assert all(j.serial_group is None and j.coalesce_threshold is None for j in jobs)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_one_statement_claim_learns_its_column_names_once(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's one-statement claims read the driver's ``description`` (36 columns
    built anew at each read) at their first run only; later claims name the same columns."""
    import psycopg

    app = make_app()
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda: None)
    reads = []
    description = psycopg.Cursor.description

    def counted(cursor: Any) -> Any:
        reads.append(1)
        return description.fget(cursor)  # type: ignore[attr-defined]

    monkeypatch.setattr(psycopg.Cursor, "description", property(counted))
    with app.app_context():
        store: Store = bgq._state().store
        claimed = []
        for _ in range(3):
            job_id = bgq.publish("f")
            claims = store.claim_delivered(
                now=utcnow(), job_ids=[job_id], callbacks=["f"], pid=1, hostname="h",
                states=RUNNABLE_STATES,
            )  # fmt: skip
            assert claims is not None
            claimed += [(c.job.id, c.job.state, c.previous_state) for c in claims]
            if len(claimed) == 1:
                first_reads = len(reads)
    assert [c[0] for c in claimed] == sorted(c[0] for c in claimed) and len(claimed) == 3
    assert {c[1:] for c in claimed} == {(JobState.PROCESSING, JobState.READY)}
    assert first_reads >= 1 and len(reads) == first_reads


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_delivered_claim_compares_one_id_as_a_scalar_and_keeps_its_checks(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One delivered id is claimed by a statement with no array parameter and literal
    states; one id or several, the claim takes only due, plain jobs of the callbacks and in
    the states asked, and says each one's previous state."""
    import psycopg

    app = make_app()
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda: None)
    bgq.callback("g")(lambda: None)
    sent: list[tuple[str, dict[str, Any]]] = []
    execute = psycopg.Cursor.execute

    def recorded(cursor: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        if isinstance(params, dict) and "cd_ids" in params:
            sent.append((str(query), params))
        return execute(cursor, query, params, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", recorded)
    with app.app_context():
        store: Store = bgq._state().store
        ready, failed, unique, other_state, later, other_callback = (
            bgq.publish("f"),
            bgq.publish("f"),
            bgq.publish("f", identifier="u", is_unique=True),
            bgq.publish("f"),
            bgq.publish("f", available_at=timedelta(hours=1)),
            bgq.publish("g"),
        )
        t = store.table
        with store.engine.begin() as conn:
            conn.execute(
                t.update().where(t.c.id == failed).values(state=JobState.TEMPORARILY_FAILED)
            )
            conn.execute(t.update().where(t.c.id == other_state).values(state=JobState.FINISHED))
        claim: DeliveredClaimer = {
            "callbacks": ["f"],
            "pid": 1,
            "hostname": "h",
            "states": RUNNABLE_STATES,
        }
        passed_over = [unique, other_state, later, other_callback]
        alone = {i: store.claim_delivered(now=utcnow(), job_ids=[i], **claim) for i in passed_over}
        one = store.claim_delivered(now=utcnow(), job_ids=[ready], **claim)
        several = store.claim_delivered(now=utcnow(), job_ids=[failed, *passed_over], **claim)
    assert alone == {i: [] for i in passed_over}
    assert one is not None and several is not None
    assert [(c.job.id, c.job.state, c.previous_state) for c in one] == [
        (ready, JobState.PROCESSING, JobState.READY)
    ]
    assert [(c.job.id, c.job.state, c.previous_state) for c in several] == [
        (failed, JobState.PROCESSING, JobState.TEMPORARILY_FAILED)
    ]
    states = ", ".join(str(int(s)) for s in RUNNABLE_STATES)
    assert len(sent) == len(passed_over) + 2
    for (sql, params), job_id in zip(sent, [*passed_over, ready], strict=False):
        assert params["cd_ids"] == job_id and f"IN ({states})" in sql
        assert not any(isinstance(v, list) for k, v in params.items() if k != "cd_callbacks")
    several_sql, several_params = sent[-1]
    assert several_params["cd_ids"] == [failed, *passed_over]
    assert f"IN ({states})" in several_sql
