"""publish(), bulk publishing and reading jobs back, on every database."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_bgqueue import (
    BackgroundQueue,
    JobState,
    ParametersError,
    PublishError,
    UnknownCallbackError,
)
from flask_bgqueue.clock import utcnow
from tests.conftest import AppFactory, StorePath


def count_rows(bgq: BackgroundQueue) -> int:
    store = bgq._state().store
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(store.table)).scalar_one()


@pytest.fixture
def queue_app(make_app: AppFactory, store_path: StorePath) -> Flask:
    app = store_path.apply(make_app(BGQUEUE_PRIORITIES=[10, 20, 30], BGQUEUE_QUEUE="shop"))
    bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]

    @bgq.callback("send_email")
    def send_email(to: str) -> None: ...

    @bgq.callback("import_data", queue="imports", priority=30)
    def import_data() -> None: ...

    return app


def test_publish_returns_the_id_of_a_ready_row_with_every_column(queue_app: Flask) -> None:
    bgq = queue_app.bgq  # type: ignore[attr-defined]
    with queue_app.app_context():
        before = utcnow()
        job_id = bgq.publish(
            "send_email", {"to": "a@b.c"}, serial_group="g", identifier="mail-1", is_unique=True
        )
        job = bgq.get_job(job_id)
        assert bgq.load_parameters(job) == {"to": "a@b.c"}
    assert isinstance(job_id, int)
    assert job.id == job_id and job.state is JobState.READY
    assert (job.queue, job.priority, job.callback_name) == ("shop", 10, "send_email")
    assert (job.serial_group, job.identifier, job.is_unique) == ("g", "mail-1", True)
    assert job.number_of_attempts == 0 and job.parameters is None
    assert before <= job.created_at <= job.available_at <= utcnow()


def test_priority_resolution_explicit_then_callback_then_first_configured(queue_app: Flask) -> None:
    bgq = queue_app.bgq  # type: ignore[attr-defined]
    with queue_app.app_context():
        assert bgq.get_job(bgq.publish("send_email", ["x"])).priority == 10
        assert bgq.get_job(bgq.publish("import_data")).priority == 30
        assert bgq.get_job(bgq.publish("import_data", priority=20)).priority == 20


def test_callback_queue_becomes_a_sub_queue(queue_app: Flask) -> None:
    bgq = queue_app.bgq  # type: ignore[attr-defined]
    with queue_app.app_context():
        assert bgq.get_job(bgq.publish("import_data")).queue == "shop_imports"


def test_an_instance_sees_only_its_queue_matched_exactly(make_app: AppFactory) -> None:
    """Queue "shop" must not see "shopping" nor "shopX" (no LIKE prefix traps)."""
    apps = {name: make_app(BGQUEUE_QUEUE=name) for name in ("shop", "shopping", "shop_sub", "sho_")}
    ids = {}
    for name, app in apps.items():
        app.bgq.callback("noop")(lambda: None)  # type: ignore[attr-defined]
        with app.app_context():
            ids[name] = app.bgq.publish("noop", identifier=name)  # type: ignore[attr-defined]
    with apps["shop"].app_context():
        bgq = apps["shop"].bgq  # type: ignore[attr-defined]
        assert bgq.get_job(ids["shopping"]) is None
        assert bgq.get_job(ids["shop_sub"]) is not None  # a sub-queue of "shop"
        assert bgq.get_unfinished_job_identifiers() == ["shop", "shop_sub"]
    with apps["sho_"].app_context():
        assert apps["sho_"].bgq.get_unfinished_job_identifiers() == ["sho_"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda b: b.publish("nope"), UnknownCallbackError, "no callback named 'nope'"),
        (lambda b: b.publish(""), UnknownCallbackError, "non-empty"),
        (lambda b: b.publish("send_email", is_unique=True), PublishError, "needs an identifier"),
        (
            lambda b: b.publish("send_email", priority=15),
            PublishError,
            "not one of BGQUEUE_PRIORITIES",
        ),
        (
            lambda b: b.publish("send_email", available_at="tomorrow"),
            PublishError,
            "datetime or a timedelta",
        ),
        (lambda b: b.publish("send_email", lambda: 1), ParametersError, "cannot be pickled"),
    ],
)
def test_invalid_publish_raises_before_anything_is_written(
    queue_app: Flask,
    call: Callable[[BackgroundQueue], object],
    error: type[Exception],
    fragment: str,
) -> None:
    bgq = queue_app.bgq  # type: ignore[attr-defined]
    with queue_app.app_context():
        with pytest.raises(error, match=fragment):
            call(bgq)
        assert count_rows(bgq) == 0


def test_json_format_refuses_an_object_naming_it_and_writes_nothing(make_app: AppFactory) -> None:
    app = make_app(BGQUEUE_PARAMETERS_FORMAT="json")
    app.bgq.callback("f")(lambda **kw: None)  # type: ignore[attr-defined]
    with app.app_context():
        with pytest.raises(ParametersError, match=r"parameters\['when'\]"):
            app.bgq.publish("f", {"when": object()})  # type: ignore[attr-defined]
        assert count_rows(app.bgq) == 0  # type: ignore[attr-defined]


def test_without_secret_key_pickle_is_refused_saying_so(make_app: AppFactory) -> None:
    app = make_app(SECRET_KEY=None)
    app.bgq.callback("f")(lambda x: None)  # type: ignore[attr-defined]
    with app.app_context():
        with pytest.raises(
            ParametersError, match="no key signs it: set SECRET_KEY or BGQUEUE_SIGNING_KEY"
        ):
            app.bgq.publish("f", [object()])  # type: ignore[attr-defined]
        assert app.bgq.get_job(app.bgq.publish("f", [1])) is not None  # type: ignore[attr-defined]


def test_rich_parameters_round_trip_through_the_database(queue_app: Flask) -> None:
    bgq = queue_app.bgq  # type: ignore[attr-defined]
    value = {
        "b": b"\x00\xff",
        "d": Decimal("2.50"),
        "u": uuid.uuid4(),
        "t": (1, (2, 3)),
        "w": datetime(2026, 5, 1, 12, tzinfo=timezone.utc),
        "text": "žluťoučký 🐎",
    }
    with queue_app.app_context():
        bgq.callback("takes_anything")(lambda **kwargs: None)
        job = bgq.get_job(bgq.publish("takes_anything", value))
        assert job.parameters_json is not None
        assert bgq.load_parameters(job) == value


@pytest.mark.parametrize(
    "available_at",
    [
        timedelta(hours=1),
        datetime(2030, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))),  # aware: converted
        datetime(2030, 1, 1, 12, 0),  # naive: taken as UTC
    ],
)
def test_available_at_is_stored_as_utc(queue_app: Flask, available_at: object) -> None:
    bgq = queue_app.bgq  # type: ignore[attr-defined]
    with queue_app.app_context():
        before = utcnow()
        job = bgq.get_job(bgq.publish("send_email", ["x"], available_at=available_at))
    if isinstance(available_at, timedelta):
        assert before + available_at <= job.available_at <= utcnow() + available_at
    else:
        assert job.available_at == datetime(2030, 1, 1, 12, 0)


def test_get_job_of_an_unknown_id_is_none(queue_app: Flask) -> None:
    with queue_app.app_context():
        assert queue_app.bgq.get_job(987654321) is None  # type: ignore[attr-defined]


def test_unfinished_identifiers_exclude_finished_redundant_and_cancelled(
    queue_app: Flask,
) -> None:
    bgq = queue_app.bgq  # type: ignore[attr-defined]
    with queue_app.app_context():
        ids = {s: bgq.publish("send_email", ["x"], identifier=f"id-{s.name}") for s in JobState}
        store = bgq._state().store
        with store.engine.begin() as conn:
            for s, job_id in ids.items():
                conn.execute(store.table.update().where(store.table.c.id == job_id).values(state=s))
        done = {"id-FINISHED", "id-REDUNDANT", "id-CANCELLED"}  # final: never run again
        unfinished = {f"id-{s.name}" for s in JobState} - done
        assert bgq.get_unfinished_job_identifiers() == sorted(unfinished)
        assert bgq.get_unfinished_job_identifiers(["id-READY", "id-FINISHED", "id-other"]) == [
            "id-READY"
        ]
        assert bgq.get_unfinished_job_identifiers(["id-PROCESSING"], exclude_processing=True) == []
        assert bgq.get_unfinished_job_identifiers([]) == []


def _insert_statements(bgq: BackgroundQueue) -> list[str]:
    statements: list[str] = []
    engine = bgq._state().store.engine

    @sa.event.listens_for(engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO"):
            statements.append(statement)

    return statements


def test_bulk_writes_multi_row_inserts_of_bulk_size_then_the_rest(make_app: AppFactory) -> None:
    app = make_app(BGQUEUE_BULK_SIZE=100)
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda n: None)
    with app.app_context():
        bgq.get_job(0)  # create the table before counting statements
        statements = _insert_statements(bgq)
        with bgq.bulk():
            for n in range(250):
                assert bgq.publish("f", [n]) is None
        assert len(statements) == 3  # 100 + 100 + 50 rows, one statement each
        store = bgq._state().store
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(store.table.c.id, store.table.c.parameters_json).order_by("id")
            ).all()
    assert [r.parameters_json for r in rows] == [f"[{n}]" for n in range(250)]


def test_start_and_end_bulk_return_the_ids_read_from_the_database(make_app: AppFactory) -> None:
    app = make_app(BGQUEUE_BULK_SIZE=3)
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda n: None)
    with app.app_context():
        bgq.start_bulk()
        for n in range(5):
            bgq.publish("f", [n])
        tail_ids = bgq.end_bulk()
        assert len(tail_ids) == 2
        assert [bgq.load_parameters(bgq.get_job(i)) for i in tail_ids] == [[3], [4]]


def test_exception_in_bulk_block_discards_rows_not_yet_written(make_app: AppFactory) -> None:
    app = make_app(BGQUEUE_BULK_SIZE=10)
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda n: None)
    with app.app_context():
        with pytest.raises(KeyError), bgq.bulk():
            for n in range(15):
                bgq.publish("f", [n])
            raise KeyError("stop")
        assert count_rows(bgq) == 10  # the full chunk was written, the 5 pending were not
        assert bgq.publish("f", [99]) is not None  # the bulk is closed


def test_end_bulk_without_start_is_an_error(queue_app: Flask) -> None:
    with queue_app.app_context(), pytest.raises(RuntimeError, match="without start_bulk"):
        queue_app.bgq.end_bulk()  # type: ignore[attr-defined]


@pytest.fixture
def pooled_app(make_app: AppFactory) -> Flask:
    """An app whose queue engine pools its connections (even on SQLite), with callback f."""
    app = make_app(BGQUEUE_ENGINE_OPTIONS={"poolclass": sa.QueuePool})
    app.bgq.callback("f")(lambda: None)  # type: ignore[attr-defined]
    return app


def test_a_failed_insert_raises_sqlalchemys_error_and_returns_the_connection(
    pooled_app: Flask,
) -> None:
    app = pooled_app
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        store = bgq._state().store
        assert bgq.publish("f") is not None
        with store.engine.begin() as conn:  # the table goes away under the queue
            conn.execute(sa.text(f"DROP TABLE {store.table.name}"))
        pool = store.engine.pool
        for publish in (lambda: bgq.publish("f"), lambda: _publish_bulk(bgq, 3)):
            with pytest.raises(sa.exc.DBAPIError) as info:
                publish()
            assert store.table.name in str(info.value) or "exist" in str(info.value)
            assert pool.checkedout() == 0


def _publish_bulk(bgq: BackgroundQueue, n: int) -> None:
    with bgq.bulk():
        for _ in range(n):
            bgq.publish("f")


def test_publishing_leaves_no_transaction_open_on_pooled_connections(
    pooled_app: Flask,
) -> None:
    app = pooled_app
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        first = bgq.publish("f")
        _publish_bulk(bgq, 3)
        store = bgq._state().store
        assert store.engine.pool.checkedout() == 0
        # Another connection sees every row: each was committed, not left in a transaction.
        other = sa.create_engine(store.engine.url)
        try:
            with other.connect() as conn:
                ids = conn.execute(sa.select(store.table.c.id).order_by("id")).scalars().all()
        finally:
            other.dispose()
    assert ids[0] == first and len(ids) == 4


def test_a_failed_publish_hands_back_a_connection_whose_transactions_still_roll_back(
    make_app: AppFactory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL writes one-statement publishes in autocommit mode; a failure must not leave
    the pooled connection in it (the next transaction on it could not roll back)."""
    one_connection = {"pool_size": 1, "max_overflow": 0}
    app = make_app(
        BGQUEUE_ENGINE_OPTIONS={"poolclass": sa.NullPool}
        if db_url.startswith("sqlite")
        else one_connection
    )
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("cb")(lambda: None)
    with app.app_context():
        store = bgq._state().store
        bgq.publish("cb")
        monkeypatch.setattr(
            store.driver, "insert", lambda rows, returning: ("SELECT * FROM bgq_no_such_table", ())
        )
        with pytest.raises(sa.exc.DBAPIError):
            bgq.publish("cb")
        monkeypatch.undo()
        with store.engine.connect() as conn:  # the same connection: the pool holds one
            with conn.begin() as transaction:
                conn.execute(store.table.delete())
                transaction.rollback()
        assert count_rows(bgq) == 1
        assert bgq.publish("cb") is not None
        assert count_rows(bgq) == 2


@pytest.mark.parametrize("db_url", ["mysql"], indirect=True)
def test_parameters_over_the_servers_packet_limit_are_refused_saying_why(
    make_app: AppFactory,
) -> None:
    from flask_bgqueue import ParametersError

    app = make_app()
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("big")(lambda blob: None)
    with app.app_context():
        with pytest.raises(ParametersError, match=r"max_allowed_packet = 16,777,216 bytes"):
            bgq.publish("big", {"blob": "x" * 17_000_000})
        assert count_rows(bgq) == 0
        # Rows that fit one by one go in, in statements within the limit (20 MB in all).
        with bgq.bulk():
            for n in range(20):
                bgq.publish("big", {"blob": str(n) * 1_000_000})
        assert count_rows(bgq) == 20
        firsts = [bgq.load_parameters(j)["blob"][:1] for j in bgq._state().store.jobs()]
    assert firsts == [str(n)[0] for n in range(20)]
