"""The Flask app the benchmarks run, configured from the environment.

``BENCH_DB_URL``     SQLAlchemy URL of the job database (required)
``BENCH_TABLE``      ``BGQUEUE_TABLE_NAME`` (required)
``BENCH_LOCKS_DIR``  ``BGQUEUE_LOCKS_DIR`` and instance folder (default: <tmp>/bgq-bench-locks).
                     ``flask bgq process`` holds a per-host lock there, so two workers on
                     one host need two folders (drain.py gives each worker its own, as if
                     each ran on a host of its own).
``BENCH_CONFIG``     JSON object of extra config keys (e.g. ``{"BGQUEUE_BULK_SIZE": 500}``)

Run the worker with ``flask --app benchapp:create_app bgq process`` (``benchmarks/`` on
``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import tempfile

from flask import Flask

from flask_bgqueue import BackgroundQueue

bgq = BackgroundQueue()


@bgq.callback("noop")
def noop() -> None:
    """The drain benchmark's job: does nothing, so only the queue's own cost is measured."""


@bgq.callback("send_mail")
def send_mail(n: int, to: str) -> None:
    """The publish benchmark's job (never run there)."""


def create_app() -> Flask:
    locks_dir = os.environ.get("BENCH_LOCKS_DIR") or os.path.join(
        tempfile.gettempdir(), "bgq-bench-locks"
    )
    app = Flask(__name__, instance_path=locks_dir)
    app.config.update(
        SECRET_KEY="bench",
        BGQUEUE_DATABASE_URI=os.environ["BENCH_DB_URL"],
        BGQUEUE_TABLE_NAME=os.environ["BENCH_TABLE"],
        BGQUEUE_LOCKS_DIR=locks_dir,
    )
    app.config.update(json.loads(os.environ.get("BENCH_CONFIG") or "{}"))
    bgq.init_app(app)
    return app
