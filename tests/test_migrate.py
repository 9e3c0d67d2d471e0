"""Flask-Migrate's ``flask db migrate`` writes no operation for the queue's table.

Real ``flask db init`` and ``flask db migrate`` on PostgreSQL, in a database of the test's
own, with the job table in the app's database (the single-database template) or on a bind
of its own that the multi-database template iterates over; whichever of ``bgq.init_app``
and ``migrate.init_app`` runs first. Without the hooks, the same run writes drop
operations for the queue (the control).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import require_server

APP = """
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from flask_bgqueue import BackgroundQueue

db = SQLAlchemy()
migrate = Migrate()
bgq = BackgroundQueue()


class Order(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(200), index=True)


@bgq.callback
def ship(order_id):
    pass


def create_app():
    app = Flask(__name__, instance_path=os.path.join(os.getcwd(), "instance"))
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["APP_DB"]
    app.config["SQLALCHEMY_BINDS"] = {"bgqueue": os.environ["QUEUE_DB"]}
    db.init_app(app)
    if os.environ["ORDER"] == "bgq-first":
        bgq.init_app(app)
        migrate.init_app(app, db)
    else:
        migrate.init_app(app, db)
        bgq.init_app(app)
    if os.environ.get("NO_HOOKS"):  # the control: as before this version
        app.extensions["migrate"].configure_args.clear()
        from flask import appcontext_pushed
        from flask_bgqueue import migrate as hooks

        appcontext_pushed.disconnect(hooks._when_pushed, app)
    return app
"""


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL databases: the app's and a second one for a bind of its own."""
    server = require_server("postgresql")
    admin = sa.create_engine(server, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    names = [f"bgq_mig_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    base = sa.make_url(server)
    try:
        urls = [base.set(database=name).render_as_string(hide_password=False) for name in names]
        yield urls[0], urls[1]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def flask(folder: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "shop", *args],
        cwd=folder,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(folder), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def autogenerate(folder: Path, env: dict[str, str], multidb: bool) -> str:
    """``flask db init`` and ``flask db migrate`` on a database that holds the job table;
    the revision they write."""
    (folder / "shop.py").write_text(textwrap.dedent(APP))
    flask(folder, env, "bgq", "update-schema")  # the job table exists, as in production
    flask(folder, env, "db", "init", *(["--multidb"] if multidb else []))
    flask(folder, env, "db", "migrate", "-m", "orders")
    [revision] = (folder / "migrations" / "versions").glob("*.py")
    return revision.read_text()


@pytest.mark.parametrize("order", ["bgq-first", "migrate-first"])
@pytest.mark.parametrize("template", ["single", "multidb"])
def test_flask_db_migrate_writes_no_operation_for_the_queue(
    databases: tuple[str, str], tmp_path: Path, template: str, order: str
) -> None:
    app_db, own_db = databases
    queue_db = app_db if template == "single" else own_db
    env = {"APP_DB": app_db, "QUEUE_DB": queue_db, "ORDER": order}
    revision = autogenerate(tmp_path, env, multidb=template == "multidb")
    assert "op.create_table('order'" in revision  # autogenerate did compare the models
    assert "ix_order_email" in revision
    assert "background_job" not in revision and "bgq_claim" not in revision, revision
    upgrade = revision.split("def downgrade")[0]
    assert "drop_" not in upgrade, revision  # nothing of what the database holds goes


def test_without_the_hooks_the_same_run_would_drop_the_queue(
    databases: tuple[str, str], tmp_path: Path
) -> None:
    app_db, _ = databases
    env = {"APP_DB": app_db, "QUEUE_DB": app_db, "ORDER": "bgq-first", "NO_HOOKS": "1"}
    revision = autogenerate(tmp_path, env, multidb=False)
    assert "op.drop_table('background_job')" in revision
    assert "op.drop_table('background_job_alembic_version')" in revision


def test_a_worker_stops_waiting_for_flask_migrate_at_each_app_context(tmp_path: Path) -> None:
    """Flask-Migrate set up after the queue: the hooks wait for the first app context. A
    worker (one app context per job) hands them over when it starts, then nothing waits."""
    from flask import Flask, appcontext_pushed
    from flask_migrate import Migrate
    from flask_sqlalchemy import SQLAlchemy

    from flask_bgqueue import BackgroundQueue
    from flask_bgqueue import migrate as hooks
    from flask_bgqueue.processor import Processor
    from flask_bgqueue.runtime import current_runtime

    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    app.config["SQLALCHEMY_BINDS"] = {"bgqueue": f"sqlite:///{tmp_path / 'jobs.db'}"}
    db = SQLAlchemy(app)
    BackgroundQueue(app)
    waiting = list(appcontext_pushed.receivers_for(app))
    with app.app_context():  # pushed before Flask-Migrate is there: nothing handed over
        Migrate(app, db)
        Processor(current_runtime(), app)  # as a worker starts, before its first job
    assert hooks._when_pushed in waiting  # the control: it was waiting
    assert hooks._when_pushed not in list(appcontext_pushed.receivers_for(app))
    assert app.extensions["migrate"].configure_args["include_object"] is hooks.include_object
