"""The Flask app of ``broker.py``, configured from the environment.

``BROKERBENCH_DB_URL``      SQLAlchemy URL of the job database (required)
``BROKERBENCH_TABLE``       ``BGQUEUE_TABLE_NAME`` (required)
``BROKERBENCH_QUEUE``       ``BGQUEUE_QUEUE`` (required)
``BROKERBENCH_BROKER_URL``  ``BGQUEUE_BROKER_URL``; unset or empty: no broker (the consumer
                            polls the table and, on PostgreSQL, waits with LISTEN/NOTIFY)
``BROKERBENCH_DIR``         instance folder and ``BGQUEUE_LOCKS_DIR`` (default: a temp folder)
``BROKERBENCH_STAMP_ADDR``  ``host:port``: where the ``stamp`` callback sends its UDP datagram
``BROKERBENCH_CONFIG``      JSON object of extra config keys

Run a consumer with ``flask --app brokerapp:create_app bgq consume`` (``benchmarks/`` on
``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Mapping

from flask import Flask

from flask_bgqueue import BackgroundQueue

bgq = BackgroundQueue()

_stamp_socket: socket.socket | None = None


@bgq.callback("noop")
def noop() -> None:
    """The drain and memory job: does nothing, so only the queue's own cost is measured."""


@bgq.callback("send_mail")
def send_mail(n: int, to: str) -> None:
    """The publish benchmark's job (never run)."""


@bgq.callback("stamp")
def stamp(seq: int) -> None:
    """The latency job: take ``time.time()`` first thing, then send ``"<seq> <time>"`` by UDP."""
    started = time.time()
    global _stamp_socket
    if _stamp_socket is None:
        _stamp_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host, port = os.environ["BROKERBENCH_STAMP_ADDR"].rsplit(":", 1)
    _stamp_socket.sendto(f"{seq} {started!r}".encode(), (host, int(port)))


def create_app(env: Mapping[str, str] | None = None) -> Flask:
    """The app, configured from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    folder = env.get("BROKERBENCH_DIR") or os.path.join(tempfile.gettempdir(), "bgq-brokerbench")
    os.makedirs(folder, exist_ok=True)
    app = Flask(__name__, instance_path=os.path.abspath(folder))
    app.config.update(
        SECRET_KEY="brokerbench",
        BGQUEUE_DATABASE_URI=env["BROKERBENCH_DB_URL"],
        BGQUEUE_TABLE_NAME=env["BROKERBENCH_TABLE"],
        BGQUEUE_QUEUE=env["BROKERBENCH_QUEUE"],
        BGQUEUE_BROKER_URL=env.get("BROKERBENCH_BROKER_URL") or None,
        BGQUEUE_LOCKS_DIR=os.path.abspath(folder),
    )
    app.config.update(json.loads(env.get("BROKERBENCH_CONFIG") or "{}"))
    bgq.init_app(app)
    return app
