"""Remake the dashboard pictures of the docs (docs/_static/dashboard-*.png).

    .venv/bin/python scripts/screenshots.py [FOLDER]      (default: docs/_static)

A small shop's queue is filled with demo data in a temporary SQLite file, the dashboard is
served on 127.0.0.1 and headless Chromium (Debian's /usr/bin/chromium, through Playwright)
takes the pictures. Nothing in them depends on the machine: tracebacks show the neutral
install path /srv/shop, the workers a neutral host and pid. Run it after every change to
the pages; a test runs it too, so it keeps working.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.serving import make_server

import flask_bgqueue
from flask_bgqueue import BackgroundQueue, JobState
from flask_bgqueue.clock import utcnow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
PREFIX = "/bgqueue"
#: Where the pictures say the app and the package are installed.
APP_PATH = "/srv/shop"
SITE_PACKAGES = f"{APP_PATH}/.venv/lib/python3.12/site-packages"
HOST, PID = "worker-1", 4242

SHOP_JOBS = '''
"""The shop's background jobs (written by scripts/screenshots.py)."""

from flask_bgqueue import PermanentError


def send_confirmation(order_id):
    pass


def ship_order(order_id):
    pass


def charge_card(order_id):
    if order_id % 7 == 3:
        raise ValueError(f"card declined for order {order_id}")


def import_catalog(source):
    raise TimeoutError(f"{source} did not answer within 30 s")


def refund(order_id):
    raise PermanentError(f"order {order_id} was never charged")
'''


def demo_app(folder: Path) -> Flask:
    """The shop: its callbacks in a module of their own, the queue in a SQLite file."""
    (folder / "shop").mkdir()
    (folder / "shop" / "jobs.py").write_text(SHOP_JOBS)
    sys.path.insert(0, str(folder))
    try:
        import shop.jobs as jobs
    finally:
        sys.path.remove(str(folder))
        for name in ("shop", "shop.jobs"):  # a second run imports its own
            sys.modules.pop(name, None)

    bgq = BackgroundQueue()
    bgq.callback(priority=10)(jobs.send_confirmation)
    bgq.callback(priority=20)(jobs.ship_order)
    bgq.callback(priority=10)(jobs.charge_card)
    bgq.callback(queue="imports", priority=30)(jobs.import_catalog)
    bgq.callback(priority=20)(jobs.refund)
    app = Flask("shop", instance_path=str(folder / "instance"))
    app.config.update(
        SECRET_KEY="screenshots",
        BGQUEUE_DATABASE_URI=f"sqlite:///{folder / 'jobs.db'}",
        BGQUEUE_PRIORITIES=[10, 20, 30],
        BGQUEUE_DASHBOARD_URL_PREFIX=PREFIX,
        BGQUEUE_DASHBOARD_AUTHORIZE=lambda: True,
    )
    bgq.init_app(app)
    app.bgq = bgq  # type: ignore[attr-defined]
    return app


def fill(app: Flask, folder: Path) -> int:
    """Demo jobs in every interesting state; returns the id of a failed one."""
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        for order_id in range(1, 25):
            group = f"order-{order_id}"
            bgq.publish("charge_card", {"order_id": order_id}, serial_group=group)
            bgq.publish("send_confirmation", {"order_id": order_id}, serial_group=group)
            bgq.publish("ship_order", {"order_id": order_id}, serial_group=group)
        bgq.publish("import_catalog", {"source": "https://supplier.example/catalog.csv"})
        bgq.publish("refund", {"order_id": 12})
        bgq.process()
        bgq.publish("ship_order", {"order_id": 25}, available_at=timedelta(minutes=20))
        bgq.publish("charge_card", {"order_id": 26}, serial_group="order-3")
        _neutral(app, folder)
        store = bgq._state().store
        jobs = store.jobs("charge_card", [JobState.TEMPORARILY_FAILED])
        return int(jobs[0].id)


def _neutral(app: Flask, folder: Path) -> None:
    """Tracebacks as if installed in /srv/shop; one neutral worker; finished jobs spread
    over the last three hours, for the chart."""
    store = app.bgq._state().store  # type: ignore[attr-defined]
    t = store.table
    package = str(Path(flask_bgqueue.__file__).resolve().parent.parent)
    now = utcnow()
    with store.engine.begin() as conn:
        for n, row in enumerate(conn.execute(t.select().order_by(t.c.id)).all()):
            values: dict[str, Any] = {}
            if row.traceback:
                text = row.traceback.replace(package, SITE_PACKAGES)
                values["traceback"] = text.replace(str(folder), APP_PATH)
            if row.pid is not None:
                values.update(pid=PID, hostname=HOST)
            if row.state == JobState.FINISHED:
                values["finished_at"] = now - timedelta(minutes=n * 7 % 170)
            if values:
                conn.execute(t.update().where(t.c.id == row.id).values(**values))


@contextmanager
def served(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{PREFIX}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def take(base: str, failed_id: int, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for name, url in (
                ("dashboard-overview.png", f"{base}/"),
                ("dashboard-jobs.png", f"{base}/jobs?state=failed"),
                ("dashboard-job.png", f"{base}/jobs/{failed_id}"),
            ):
                page.goto(url)
                text = page.inner_text("body")
                leaks = [p for p in (str(ROOT), tempfile.gettempdir(), sys.prefix) if p in text]
                if leaks:
                    raise SystemExit(f"{url} shows a path of this machine: {leaks}")
                path = out / name
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)
        finally:
            browser.close()
    return shots


def main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bgq-shots-") as tmp:
        folder = Path(tmp)
        app = demo_app(folder)
        failed_id = fill(app, folder)
        with served(app) as base:
            shots = take(base, failed_id, out)
        engine = app.extensions["bgqueue"]._engine
        if engine is not None:
            engine.dispose()
    return shots


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request lines
    logging.getLogger("flask_bgqueue").setLevel(logging.CRITICAL + 1)  # the demo's failures
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "_static"
    for shot in main(target):
        print(shot)
