"""Broker mode's logic with the in-memory broker (the real RabbitMQ: test_broker_amqp.py)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_bgqueue import BackgroundQueue, ConfigurationError, JobState
from flask_bgqueue.broker.memory import MemoryBroker
from flask_bgqueue.clock import utcnow
from tests.conftest import AppFactory
from tests.helpers import make_due, set_columns

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def broker_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def bapp(make_app: AppFactory, broker_url: str) -> Iterator[Flask]:
    app = make_app(BGQUEUE_BROKER_URL=broker_url, BGQUEUE_PRIORITIES=[10, 30])
    app.bgq.callback("work")(lambda n: app.ran.append(n))  # type: ignore[attr-defined]
    app.ran = []  # type: ignore[attr-defined]
    with app.app_context():
        yield app


def broker(app: Flask) -> MemoryBroker:
    b = app.extensions["bgqueue"].broker
    assert isinstance(b, MemoryBroker)
    return b


def test_a_published_id_is_sent_after_its_row_is_committed(bapp: Flask) -> None:
    bgq = bapp.bgq  # type: ignore[attr-defined]
    job_id = bgq.publish("work", [1], priority=30)
    assert broker(bapp).pending("default", 30) == [job_id]
    assert bgq.get_job(job_id).state is JobState.READY


def test_a_delayed_job_is_sent_with_its_delay(bapp: Flask) -> None:
    job_id = bapp.bgq.publish("work", [1], available_at=timedelta(seconds=30))  # type: ignore[attr-defined]
    [(_name, sent_id, delay)] = broker(bapp).sent
    assert sent_id == job_id and 29_000 < delay <= 30_000


def test_a_discarded_bulk_sends_nothing(bapp: Flask) -> None:
    bgq = bapp.bgq  # type: ignore[attr-defined]
    with pytest.raises(KeyError), bgq.bulk():
        bgq.publish("work", [1])
        raise KeyError
    assert broker(bapp).sent == []


def test_with_the_broker_down_publish_succeeds_and_the_job_is_broker_failed(bapp: Flask) -> None:
    bgq = bapp.bgq  # type: ignore[attr-defined]
    broker(bapp).fail = True
    job_id = bgq.publish("work", [1])
    job = bgq.get_job(job_id)
    assert job.state is JobState.BROKER_FAILED and "memory broker is down" in job.error_message
    broker(bapp).fail = False
    result = bgq.process()  # cron runs what the broker never got
    assert result.outcomes == {"FINISHED": 1} and bapp.ran == [1]  # type: ignore[attr-defined]


def test_process_with_a_broker_sends_due_and_lost_jobs_again_and_runs_nothing_else(
    bapp: Flask,
) -> None:
    bgq = bapp.bgq  # type: ignore[attr-defined]
    ids = {
        s: bgq.publish("work", [s.name])
        for s in (
            JobState.BACK_TO_BROKER,
            JobState.TEMPORARILY_FAILED,
            JobState.WAITING,
            JobState.READY,
        )
    }
    fresh = bgq.publish("work", ["fresh"])
    future = bgq.publish("work", ["future"], available_at=timedelta(hours=1))
    set_columns(bgq, future, state=JobState.TEMPORARILY_FAILED)
    for state, job_id in ids.items():
        set_columns(bgq, job_id, state=state, updated_at=utcnow() - timedelta(hours=1))
    make_due(bgq, *ids.values())
    broker(bapp).sent.clear()
    result = bgq.process()
    assert result.resent == 4 and result.processed == 0 and bapp.ran == []  # type: ignore[attr-defined]
    assert sorted(job_id for _, job_id, _ in broker(bapp).sent) == sorted(ids.values())
    assert all(bgq.get_job(j).state is JobState.READY for j in ids.values())
    assert (
        bgq.get_job(fresh).state is JobState.READY
        and bgq.get_job(future).state is JobState.TEMPORARILY_FAILED
    )


def test_a_consumer_runs_delivered_jobs_most_urgent_first_and_stops_after_n(bapp: Flask) -> None:
    bgq = bapp.bgq  # type: ignore[attr-defined]
    for n in range(3):
        bgq.publish("work", [f"slow{n}"], priority=30)
    for n in range(3):
        bgq.publish("work", [f"fast{n}"], priority=10)
    result = bgq.consume(max_jobs=4)
    assert result.jobs == 4
    assert bapp.ran == ["fast0", "fast1", "fast2", "slow0"]  # type: ignore[attr-defined]


def test_a_consumer_restricted_to_priorities_hears_only_them(bapp: Flask) -> None:
    bgq = bapp.bgq  # type: ignore[attr-defined]
    bgq.publish("work", ["urgent"], priority=10)
    bgq.publish("work", ["later"], priority=30)
    assert bgq.consume(priorities=(30,), max_jobs=1).jobs == 1
    assert bapp.ran == ["later"]  # type: ignore[attr-defined]


def test_a_stale_or_duplicate_message_changes_nothing(bapp: Flask) -> None:
    bgq = bapp.bgq  # type: ignore[attr-defined]
    job_id = bgq.publish("work", [1])
    broker(bapp).publish("default", 10, job_id)  # a duplicate
    broker(bapp).publish("default", 10, 999_999)  # a job that does not exist
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    bgq.consume(stop=stop)
    assert bapp.ran == [1]  # type: ignore[attr-defined]
    assert bgq.get_job(job_id).number_of_attempts == 1


def test_a_failed_job_is_sent_again_for_its_retry_time(bapp: Flask) -> None:
    bgq = bapp.bgq  # type: ignore[attr-defined]
    bgq.callback("boom")(lambda: 1 / 0)
    job_id = bgq.publish("boom")
    broker(bapp).sent.clear()
    bgq.consume(max_jobs=1)
    [(_, sent_id, delay)] = broker(bapp).sent
    assert sent_id == job_id and 55_000 < delay <= 60_000  # backoff of the first attempt


def test_a_die_exception_ends_the_consumer_after_its_job_is_saved(bapp: Flask) -> None:
    from flask_bgqueue import DieException

    bgq: BackgroundQueue = bapp.bgq  # type: ignore[attr-defined]

    @bgq.callback("die")
    def die() -> None:
        raise DieException("stop")

    die_id = bgq.publish("die")
    assert die_id is not None
    bgq.publish("work", [1])
    result = bgq.consume()
    assert result.died and result.jobs == 1 and bapp.ran == []  # type: ignore[attr-defined]
    job = bgq.get_job(die_id)
    assert job is not None
    assert job.state is JobState.PERMANENTLY_FAILED


def test_reload_consumers_without_a_broker_says_what_to_do(make_app: AppFactory) -> None:
    app = make_app()
    with app.app_context(), pytest.raises(RuntimeError, match="send SIGTERM"):
        app.bgq.reload_consumers("default", 1)  # type: ignore[attr-defined]


def test_an_unknown_broker_scheme_fails_at_init_app(make_app: AppFactory) -> None:
    with pytest.raises(ConfigurationError, match="unknown scheme"):
        make_app(BGQUEUE_BROKER_URL="redis://localhost")


def test_without_pika_an_amqp_url_says_what_to_install(
    make_app: AppFactory, monkeypatch: Any
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pika", None)  # as if the amqp extra were not installed
    monkeypatch.delitem(sys.modules, "flask_bgqueue.broker.amqp", raising=False)
    with pytest.raises(ConfigurationError, match=r"install 'Flask-BgQueue\[amqp\]'"):
        make_app(BGQUEUE_BROKER_URL="amqp://localhost")


def test_pika_is_imported_only_by_the_amqp_broker(db_url: str) -> None:
    import subprocess
    import sys

    code = (
        "import flask_bgqueue, flask_bgqueue.worker, flask_bgqueue.cli, sys;"
        " print('pika' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture
def committed_env(db_url: str, table_name: str, tmp_path: Any, broker_url: str) -> Iterator[Any]:
    app = Flask("after", root_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="s",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}",
        SQLALCHEMY_BINDS={"bgqueue": db_url},
        BGQUEUE_TABLE_NAME=table_name,
        BGQUEUE_PUBLISH_AFTER_APP_COMMIT=True,
        BGQUEUE_BROKER_URL=broker_url,
    )
    db = SQLAlchemy(app)
    bgq = BackgroundQueue(app)
    bgq.callback("f")(lambda n: None)
    with app.app_context():
        yield app, db, bgq
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()


def test_a_job_of_a_rolled_back_transaction_is_never_sent(committed_env: Any) -> None:
    app, db, bgq = committed_env
    db.session.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
    bgq.publish("f", [1])
    db.session.rollback()
    db.session.execute(sa.text("INSERT INTO t VALUES (1)"))
    bgq.publish("f", [2])
    assert broker(app).sent == []
    db.session.commit()
    [(_, job_id, _)] = broker(app).sent
    assert bgq.load_parameters(bgq.get_job(job_id)) == [2]


def test_an_operator_retry_in_broker_mode_sends_the_id_again(bapp: Flask) -> None:
    from flask_bgqueue.inspection import Inspector

    bgq = bapp.bgq  # type: ignore[attr-defined]
    job_id = bgq.publish("work", [1])
    set_columns(bgq, job_id, state=JobState.PERMANENTLY_FAILED)
    broker(bapp).sent.clear()
    assert Inspector(bgq).retry([job_id]) == [job_id]
    assert [sent_id for _, sent_id, _ in broker(bapp).sent] == [job_id]
    assert bgq.consume(max_jobs=1).jobs == 1
    assert bgq.get_job(job_id).state is JobState.FINISHED


def test_a_lost_connection_at_the_acknowledgement_still_lets_the_claimed_jobs_run(
    bapp: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The messages of a batch are acknowledged once its claims are committed, while the batch
    runs; if the connection drops then, the claimed jobs run to their end and their
    outcomes are saved before the consumer reconnects."""
    from flask_bgqueue.broker import BrokerConnectionLost
    from flask_bgqueue.broker.memory import MemoryConsumer

    bgq = bapp.bgq  # type: ignore[attr-defined]
    job_id = bgq.publish("work", [1])
    states_at_ack: list[JobState] = []

    def ack_then_drop(self: MemoryConsumer, deliveries: Any) -> None:
        states_at_ack.extend(bgq.get_job(d.job_id).state for d in deliveries)
        monkeypatch.undo()  # the next connection acknowledges as usual
        raise BrokerConnectionLost("connection reset while acknowledging")

    monkeypatch.setattr(MemoryConsumer, "ack", ack_then_drop)
    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)  # after the reconnection (0.25 s later)
    timer.start()
    bgq.consume(stop=stop)
    assert states_at_ack in ([JobState.PROCESSING], [JobState.FINISHED])  # claim committed
    assert bapp.ran == [1]  # type: ignore[attr-defined]
    job = bgq.get_job(job_id)
    assert job.state is JobState.FINISHED and job.number_of_attempts == 1
