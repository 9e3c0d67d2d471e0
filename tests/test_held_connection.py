"""A consumer keeps one connection for its claims (PostgreSQL): taken from the pool once,
in autocommit mode, each claim committed at once; a connection the server drops fails one
claim (a database error the consumer rides out, nothing claimed) and the next claim takes
another; a pool without room for it, and the other databases, hold nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_bgqueue import JobState
from flask_bgqueue.clock import utcnow
from flask_bgqueue.models import RUNNABLE_STATES
from flask_bgqueue.store import Claim, Store
from flask_bgqueue.store.driver import HOLD_MIN_POOL, _can_hold
from tests.conftest import SERVER_URLS, AppFactory, require_server


@pytest.fixture
def pg_app(make_app: AppFactory, request: pytest.FixtureRequest) -> Iterator[Flask]:
    """An app on the real PostgreSQL; ``engine_options`` by indirect parametrization."""
    options = getattr(request, "param", {})
    app = make_app(BGQUEUE_ENGINE_OPTIONS=options)
    app.bgq.callback("f")(lambda n: None)  # type: ignore[attr-defined]
    with app.app_context():
        yield app


def _store(app: Flask) -> Store:
    store: Store = app.bgq._state().store  # type: ignore[attr-defined]
    return store


def _checkouts(store: Store) -> list[int]:
    """A list that grows by one at each connection the store's pool hands out."""
    seen: list[int] = []
    sa.event.listen(store.engine.pool, "checkout", lambda *args: seen.append(1))
    return seen


def _claim(store: Store, job_id: int) -> list[Claim]:
    claims = store.claim_delivered(
        now=utcnow(),
        job_ids=[job_id],
        callbacks=["f"],
        pid=1,
        hostname="h",
        states=RUNNABLE_STATES,
    )
    assert claims is not None  # PostgreSQL claims delivered jobs in one statement
    return claims


def _state_elsewhere(job_id: int, table: str) -> JobState:
    """The job's state as another connection sees it: only what is committed."""
    engine = sa.create_engine(SERVER_URLS["postgresql"], poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            state = conn.exec_driver_sql(f'SELECT state FROM "{table}" WHERE id = {job_id}')
            return JobState(state.scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_claims_while_holding_take_one_connection_and_commit_each_at_once(
    pg_app: Flask, table_name: str
) -> None:
    bgq: Any = pg_app.bgq  # type: ignore[attr-defined]
    store = _store(pg_app)
    ids = [bgq.publish("f", {"n": n}) for n in range(6)]
    checkouts = _checkouts(store)
    for job_id in ids[:3]:  # not held: one connection from the pool for each claim
        assert [c.job.id for c in _claim(store, job_id)] == [job_id]
    assert len(checkouts) == 3
    with store.holding_connection():
        for job_id in ids[3:]:
            assert [c.job.id for c in _claim(store, job_id)] == [job_id]
            # committed by itself (autocommit), while the connection stays out of the pool
            assert _state_elsewhere(job_id, table_name) == JobState.PROCESSING
        assert len(checkouts) == 4
        assert store.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    # back in the pool as the pool hands connections out: not in autocommit mode
    raw: Any = store.engine.raw_connection()
    try:
        assert raw.driver_connection.autocommit is False
    finally:
        raw.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_held_connection_the_server_drops_fails_one_claim_and_the_next_takes_another(
    pg_app: Flask, table_name: str
) -> None:
    bgq: Any = pg_app.bgq  # type: ignore[attr-defined]
    store = _store(pg_app)
    first, second = bgq.publish("f", {"n": 1}), bgq.publish("f", {"n": 2})
    with store.holding_connection():
        _claim(store, first)
        held = store.driver._held
        assert held is not None and held.raw is not None
        backend = held.raw.driver_connection.info.backend_pid
        admin = sa.create_engine(require_server("postgresql"), poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        admin.dispose()
        with pytest.raises(sa.exc.OperationalError) as failed:
            _claim(store, second)
        assert store.is_database_error(failed.value)  # what a consumer rides out
        assert failed.value.connection_invalidated
        assert _state_elsewhere(second, table_name) == JobState.READY  # nothing claimed
        assert [c.job.id for c in _claim(store, second)] == [second]
        assert held.raw.driver_connection.info.backend_pid != backend
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("pg_app", [{"pool_size": 2, "max_overflow": 1}], indirect=True)
def test_a_pool_without_room_for_a_held_connection_lends_one_per_claim(pg_app: Flask) -> None:
    bgq: Any = pg_app.bgq  # type: ignore[attr-defined]
    store = _store(pg_app)
    ids = [bgq.publish("f", {"n": n}) for n in range(3)]
    checkouts = _checkouts(store)
    with store.holding_connection():
        for job_id in ids:
            _claim(store, job_id)
        assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert len(checkouts) == 3


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_consumer_claims_on_the_connection_it_holds(pg_app: Flask) -> None:
    """``flask bgq consume``: the jobs see the connection their claim came on, held by the
    consuming thread, the same for every job."""
    bgq: Any = pg_app.bgq  # type: ignore[attr-defined]
    store = _store(pg_app)
    seen: list[tuple[int, int]] = []

    @bgq.callback("g")
    def g(n: int) -> None:
        held = store.driver._held
        assert held is not None and held.raw is not None
        seen.append((held.thread, held.raw.driver_connection.info.backend_pid))

    for n in range(3):
        bgq.publish("g", {"n": n})
    result = pg_app.test_cli_runner().invoke(args=["bgq", "consume", "-j", "3"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 3 and len(set(seen)) == 1
    assert store.driver._held is None  # handed back when the consumer stopped


def test_which_pools_can_spare_a_held_connection() -> None:
    def engine(**options: Any) -> sa.Engine:
        return sa.create_engine("postgresql+psycopg://u@h/d", **options)

    assert HOLD_MIN_POOL == 4
    assert _can_hold(engine())  # the default: 5 and 10 more
    assert _can_hold(engine(pool_size=1, max_overflow=-1))  # no limit
    assert _can_hold(engine(pool_size=2, max_overflow=2))
    assert not _can_hold(engine(pool_size=2, max_overflow=1))
    assert not _can_hold(engine(pool_size=1, max_overflow=0))
    assert _can_hold(engine(poolclass=sa.NullPool))  # a new connection per use anyway
    assert not _can_hold(engine(poolclass=sa.StaticPool))


@pytest.mark.parametrize("db_url", ["sqlite", "mysql"], indirect=True)
def test_other_databases_hold_nothing(make_app: AppFactory) -> None:
    app = make_app()
    with app.app_context():
        store = _store(app)
        with store.holding_connection():
            assert store.driver._held is None
