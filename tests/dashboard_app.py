"""An app with the dashboard open, a callback that fails on demand, and helpers."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from flask_bgqueue import BackgroundQueue
from tests.conftest import AppFactory

PREFIX = "/bgq"


def dashboard_app(make_app: AppFactory, **config: Any) -> Flask:
    """``app.failing`` holds the values for which the ``work`` callback raises."""
    bgq = BackgroundQueue()
    failing: set[Any] = set()

    @bgq.callback
    def work(n: Any = None, **details: Any) -> None:
        if n in failing:
            raise ValueError(f"cannot work on {n}")

    @bgq.callback(queue="mail")
    def send(n: Any) -> None:
        pass

    options: dict[str, Any] = {
        "BGQUEUE_DASHBOARD_URL_PREFIX": PREFIX,
        "BGQUEUE_DASHBOARD_AUTHORIZE": lambda: True,
    }
    options.update(config)
    app = make_app(bgq, **options)
    app.failing = failing  # type: ignore[attr-defined]
    return app


def csrf_token(client: FlaskClient) -> str:
    """The session's token, as a page of the dashboard embeds it in its forms."""
    html = client.get(f"{PREFIX}/jobs").get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert match is not None, html
    return match.group(1)


def job_ids(html: str) -> list[int]:
    """The ids of the job list's rows, in page order."""
    return [int(x) for x in re.findall(r'<td><a href="[^"]*/jobs/(\d+)">', html)]


def allow_everyone() -> bool:
    """An authorization hook for tests (by import string, as in a config file)."""
    return True


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """``app`` served by werkzeug on 127.0.0.1 in a thread; yields the dashboard's URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{PREFIX}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
