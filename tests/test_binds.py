"""The job table on its own Flask-SQLAlchemy bind, with its own connections."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_bgqueue import BackgroundQueue, ConfigurationError


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = f"order_{uuid.uuid4().hex[:8]}"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(sa.String(50))


@pytest.fixture
def bound(
    db_url: str, table_name: str, tmp_path: Any, drop_tables: None
) -> Iterator[tuple[Flask, SQLAlchemy, BackgroundQueue]]:
    app = Flask("bind", root_path=str(tmp_path))
    app_db = f"sqlite:///{tmp_path / 'app.db'}" if db_url.startswith("sqlite") else db_url
    app.config.update(
        SECRET_KEY="s",
        SQLALCHEMY_DATABASE_URI=app_db,
        SQLALCHEMY_BINDS={"bgqueue": db_url},
        BGQUEUE_TABLE_NAME=table_name,
    )
    db = SQLAlchemy(model_class=Base)
    db.init_app(app)
    bgq = BackgroundQueue(app)
    bgq.callback("ship")(lambda order_id: None)
    with app.app_context():
        Base.metadata.create_all(db.engine)
        yield app, db, bgq
        db.session.remove()
        Base.metadata.drop_all(db.engine)
        for engine in db.engines.values():
            engine.dispose()


def test_the_table_is_created_on_the_bind_engine(
    bound: tuple[Flask, SQLAlchemy, BackgroundQueue],
) -> None:
    _app, db, bgq = bound
    job_id = bgq.publish("ship", {"order_id": 1})
    assert bgq._state().store.engine.url == db.engines["bgqueue"].url
    with db.engines["bgqueue"].connect() as conn:
        assert (
            conn.execute(sa.text(f"SELECT id FROM {bgq._state().settings.table_name}")).scalar()
            == job_id
        )


def test_rolling_back_the_app_session_keeps_a_published_job(
    bound: tuple[Flask, SQLAlchemy, BackgroundQueue],
) -> None:
    _app, db, bgq = bound
    db.session.add(Order(note="new"))
    db.session.flush()
    job_id = bgq.publish("ship", {"order_id": 1})
    assert job_id is not None
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 0
    assert bgq.get_job(job_id) is not None


def test_publishing_neither_flushes_nor_commits_the_app_session(
    bound: tuple[Flask, SQLAlchemy, BackgroundQueue],
) -> None:
    _app, db, bgq = bound
    order = Order(note="pending")
    db.session.add(order)
    bgq.publish("ship", {"order_id": 1})
    assert order in db.session.new  # not flushed
    db.session.flush()
    bgq.publish("ship", {"order_id": 2})
    other = sa.create_engine(db.engine.url, poolclass=sa.NullPool)
    with other.connect() as conn:  # not committed either: another connection sees nothing
        assert conn.execute(sa.select(sa.func.count()).select_from(Order.__table__)).scalar() == 0
    other.dispose()
    db.session.rollback()


def test_a_missing_bind_names_both_ways_to_configure_it(tmp_path: Any) -> None:
    app = Flask("nobind", root_path=str(tmp_path))
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", SQLALCHEMY_BINDS={"other": "sqlite://"})
    SQLAlchemy(app)
    with pytest.raises(ConfigurationError) as info:
        BackgroundQueue(app)
    assert "SQLALCHEMY_BINDS['bgqueue']" in str(info.value)
    assert "BGQUEUE_DATABASE_URI" in str(info.value)


def test_a_bind_without_flask_sqlalchemy_says_to_init_it(tmp_path: Any) -> None:
    app = Flask("nosa", root_path=str(tmp_path))
    app.config.update(SQLALCHEMY_BINDS={"jobs": "sqlite://"}, BGQUEUE_BIND_KEY="jobs")
    bgq = BackgroundQueue(app)
    with (
        app.app_context(),
        pytest.raises(
            ConfigurationError, match="db.init_app\\(app\\), or set BGQUEUE_DATABASE_URI"
        ),
    ):
        bgq.get_job(1)
