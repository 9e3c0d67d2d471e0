"""BGQUEUE_NETWORK_TIMEOUT_SECONDS: the queue's TCP connections give up on a silent network.

(What it is for, a host cut off mid-job, is shown in tests/test_hosts.py.)
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_bgqueue import BackgroundQueue
from flask_bgqueue.store.dialects import _socket_fd
from tests.conftest import AppFactory, require_server


def socket_options(engine: sa.Engine) -> dict[str, int]:
    raw: Any = engine.raw_connection()
    try:
        fd = _socket_fd(raw.driver_connection)
        assert fd is not None
        sock = socket.socket(fileno=os.dup(fd))
        try:
            return {
                "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            }
        finally:
            sock.close()
    finally:
        raw.close()


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_the_private_engines_connections_time_out_on_a_silent_network(
    make_app: AppFactory, db_url: str
) -> None:
    app = make_app(BGQUEUE_NETWORK_TIMEOUT_SECONDS=7)
    with app.app_context():
        engine = app.extensions["bgqueue"].engine
        seen: list[dict[str, Any]] = []
        sa.event.listen(engine, "do_connect", lambda *args: seen.append(args[3]))
        engine.dispose()
        assert socket_options(engine) == {"keepalive": 1, "user_timeout_ms": 7000, "idle": 3}
        assert seen[0]["connect_timeout"] == 7


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_none_leaves_the_systems_defaults(make_app: AppFactory, db_url: str) -> None:
    app = make_app(BGQUEUE_NETWORK_TIMEOUT_SECONDS=None)
    with app.app_context():
        engine = app.extensions["bgqueue"].engine
        assert socket_options(engine)["user_timeout_ms"] == 0


@pytest.mark.parametrize("name", ["postgresql", "mysql"])
def test_a_binds_connections_time_out_too(name: str, tmp_path: Any) -> None:
    app = Flask("bind", instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="s",
        SQLALCHEMY_DATABASE_URI="sqlite://",
        SQLALCHEMY_BINDS={"bgqueue": require_server(name)},
        BGQUEUE_NETWORK_TIMEOUT_SECONDS=4,
        BGQUEUE_AUTO_UPDATE_SCHEMA=False,
    )
    db = SQLAlchemy(app)
    BackgroundQueue(app)
    with app.app_context():
        engine = app.extensions["bgqueue"].engine
        assert engine is db.engines["bgqueue"]
        try:
            assert socket_options(engine)["user_timeout_ms"] == 4000
        finally:
            engine.dispose()
