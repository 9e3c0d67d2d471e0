"""BGQUEUE_PUBLISH_AFTER_APP_COMMIT: jobs follow the fate of the app's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_bgqueue import BackgroundQueue


@pytest.fixture
def env(
    db_url: str, table_name: str, tmp_path: Any, drop_tables: None
) -> Iterator[tuple[SQLAlchemy, BackgroundQueue]]:
    app = Flask("after", root_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="s",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}",
        SQLALCHEMY_BINDS={"bgqueue": db_url},
        BGQUEUE_TABLE_NAME=table_name,
        BGQUEUE_PUBLISH_AFTER_APP_COMMIT=True,
    )
    db = SQLAlchemy(app)
    bgq = BackgroundQueue(app)
    bgq.callback("f")(lambda n: None)
    with app.app_context():
        db.session.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        db.session.commit()
        yield db, bgq
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()


def published(bgq: BackgroundQueue) -> list[Any]:
    store = bgq._state().store
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(store.table.c.parameters_json).order_by(store.table.c.id))
        return [r[0] for r in rows]


def open_transaction(db: SQLAlchemy) -> None:
    db.session.execute(sa.text("INSERT INTO t VALUES (1)"))


def test_jobs_appear_when_the_app_session_commits(env: tuple[SQLAlchemy, BackgroundQueue]) -> None:
    db, bgq = env
    open_transaction(db)
    assert bgq.publish("f", [1]) is None
    with bgq.bulk():
        bgq.publish("f", [2])
    assert published(bgq) == []
    db.session.commit()
    assert published(bgq) == ["[1]", "[2]"]


def test_jobs_never_appear_if_the_app_session_rolls_back(
    env: tuple[SQLAlchemy, BackgroundQueue],
) -> None:
    db, bgq = env
    open_transaction(db)
    bgq.publish("f", [1])
    db.session.rollback()
    db.session.commit()  # a later commit does not resurrect them
    assert published(bgq) == []


def test_a_rolled_back_savepoint_drops_only_its_jobs(
    env: tuple[SQLAlchemy, BackgroundQueue],
) -> None:
    db, bgq = env
    open_transaction(db)
    bgq.publish("f", ["outer"])
    savepoint = db.session.begin_nested()
    bgq.publish("f", ["inner-rolled-back"])
    savepoint.rollback()
    with db.session.begin_nested():
        bgq.publish("f", ["inner-released"])
    assert published(bgq) == []
    db.session.commit()
    assert published(bgq) == ['["outer"]', '["inner-released"]']


def test_jobs_of_a_released_savepoint_die_with_the_outer_rollback(
    env: tuple[SQLAlchemy, BackgroundQueue],
) -> None:
    db, bgq = env
    open_transaction(db)
    with db.session.begin_nested():
        bgq.publish("f", ["inner"])
    db.session.rollback()
    assert published(bgq) == []


def test_without_an_open_app_transaction_the_job_is_written_at_once(
    env: tuple[SQLAlchemy, BackgroundQueue],
) -> None:
    db, bgq = env
    assert not db.session().in_transaction()
    job_id = bgq.publish("f", [1])
    assert job_id is not None and published(bgq) == ["[1]"]
