"""Fixtures: an app factory parametrized over real databases.

SQLite runs on a file in the test's temporary folder. PostgreSQL and MariaDB come from
``BGQUEUE_TEST_POSTGRES_URL`` / ``BGQUEUE_TEST_MYSQL_URL`` (``scripts/services.sh start``
provides them); each test gets a table of its own, dropped afterwards. When a server cannot
be reached the test is skipped locally and fails under ``CI=true``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_bgqueue import BackgroundQueue
from flask_bgqueue.models import owned_table_names

SERVER_URLS = {
    "postgresql": os.environ.get(
        "BGQUEUE_TEST_POSTGRES_URL",
        "postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:5432/bgqueue_test",
    ),
    "mysql": os.environ.get(
        "BGQUEUE_TEST_MYSQL_URL", "mysql+pymysql://bgqueue:bgqueue@127.0.0.1:3306/bgqueue_test"
    ),
}
IN_CI = os.environ.get("CI", "").lower() == "true"
_reachable: dict[str, str | None] = {}


def require_server(name: str) -> str:
    """The server's URL, or skip (fail in CI) with the reason it cannot be reached."""
    url = SERVER_URLS[name]
    if name not in _reachable:
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            _reachable[name] = None
        except Exception as exc:
            _reachable[name] = f"{name} at {url} is not reachable: {exc}"
        finally:
            engine.dispose()
    error = _reachable[name]
    if error is not None:
        if IN_CI:
            pytest.fail(error + " (CI=true: a missing service is a failure)")
        pytest.skip(error + " (run scripts/services.sh start)")
    return url


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A test that changes a logger must put it back: the app's logger (``tests``) is the
    parent of the tests' own loggers, and a level left on it silences them in every later
    test of the same process (``caplog`` then sees nothing, and a check that a message is
    absent passes for the wrong reason)."""
    loggers = [logging.root, *(logging.getLogger(n) for n in ("tests", "flask_bgqueue"))]
    before = [(lg.name, lg.level, lg.disabled, lg.propagate) for lg in loggers]
    yield
    after = [(lg.name, lg.level, lg.disabled, lg.propagate) for lg in loggers]
    assert after == before, "the test left a logger changed: (name, level, disabled, propagate)"


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database URL for each supported database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return require_server(request.param)


@pytest.fixture
def table_name() -> str:
    return f"bgq_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def drop_tables(db_url: str, table_name: str) -> Iterator[None]:
    yield
    if db_url.startswith("sqlite"):
        return
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        for name in (*owned_table_names(table_name), f"{table_name}_alembic_version"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        if db_url.startswith("postgresql"):
            conn.execute(sa.text(f'DROP FUNCTION IF EXISTS "{table_name}_notify"()'))
    engine.dispose()


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(
    db_url: str, table_name: str, tmp_path: Any, drop_tables: None
) -> Iterator[AppFactory]:
    """Build an app with a :class:`BackgroundQueue` on the test's database.

    ``make_app(bgq=None, **config)`` returns the app; ``app.bgq`` is the extension.
    """
    apps: list[Flask] = []

    def factory(bgq: BackgroundQueue | None = None, **config: Any) -> Flask:
        app = Flask("tests", root_path=str(tmp_path), instance_path=str(tmp_path / "instance"))
        app.config.update(
            TESTING=True,
            SECRET_KEY="test secret",
            BGQUEUE_DATABASE_URI=db_url,
            BGQUEUE_TABLE_NAME=table_name,
            BGQUEUE_ENGINE_OPTIONS={"poolclass": sa.NullPool}
            if db_url.startswith("sqlite")
            else {},
        )
        app.config.update(config)
        bgq = bgq or BackgroundQueue()
        bgq.init_app(app)
        app.bgq = bgq  # type: ignore[attr-defined]
        apps.append(app)
        return app

    yield factory
    for app in apps:
        state = app.extensions["bgqueue"]
        if state.broker is not None:
            state.broker.close()
        if state._engine is not None and state.settings.database_uri is not None:
            state._engine.dispose()


class StorePath:
    """Which way the store's fast-path statements go, and proof that they went that way.

    ``driver``: straight to the DBAPI cursor (the engine has no cursor listener).
    ``sqlalchemy``: through SQLAlchemy, because a ``before_cursor_execute`` listener (which
    records the statements) is attached to the engine, as query recording or tracing would.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.statements: list[str] = []
        # fast-path calls while the engine had no cursor listener, and raw transactions
        self.calls = {"transaction": 0, "execute_one": 0, "raw": 0}

    def apply(self, app: Flask) -> Flask:
        """Send the app's store statements this way (and count them); returns the app."""
        store = app.extensions["bgqueue"].store
        driver = store.driver
        if self.name == "sqlalchemy":
            sa.event.listen(store.engine, "before_cursor_execute", self._record)
        for method in self.calls:
            attribute = "_raw_transaction" if method == "raw" else method
            setattr(driver, attribute, self._counted(driver, method, getattr(driver, attribute)))
        return app

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def _counted(self, driver: Any, method: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            # A test may attach listeners of its own: the driver path counts calls without.
            if method == "raw" or self.name == "sqlalchemy" or not driver.instrumented():
                self.calls[method] += 1
            return func(*args, **kwargs)

        return counted

    def check(self) -> None:
        """Every fast-path statement went the chosen way."""
        fast = self.calls["transaction"] + self.calls["execute_one"]
        if self.name == "driver":
            assert self.statements == []  # no listener of ours
            assert self.calls["raw"] == fast  # each one on a DBAPI cursor of its own
            return
        assert self.calls["raw"] == 0
        inserts = [s for s in self.statements if s.lstrip().upper().startswith("INSERT INTO")]
        assert len(inserts) >= self.calls["transaction"]  # each publish writes >= 1 INSERT
        # one statement each: claim_delivered's, or claim_plain's
        one = [s for s in self.statements if "bgq_claimable" in s or "bgq_candidates" in s]
        assert len(one) == self.calls["execute_one"]


@pytest.fixture(params=["driver", "sqlalchemy"])
def store_path(request: pytest.FixtureRequest) -> Iterator[StorePath]:
    """Run a store test once on the driver fast path and once through SQLAlchemy."""
    path = StorePath(request.param)
    yield path
    path.check()


@pytest.fixture
def app(make_app: AppFactory) -> Iterator[Flask]:
    app = make_app()
    with app.app_context():
        yield app


@pytest.fixture
def bgq(app: Flask) -> BackgroundQueue:
    return app.bgq  # type: ignore[attr-defined,no-any-return]


class ProcEnv:
    """Runs ``flask --app tests.procapp …`` as real processes against the test's table."""

    def __init__(self, db_url: str, table_name: str, directory: Any) -> None:
        self.dir = directory
        self.env = {
            **os.environ,
            "PROCAPP_DB_URL": db_url,
            "PROCAPP_TABLE": table_name,
            "PROCAPP_DIR": str(directory),
            "FLASK_APP": "tests.procapp:create_app",
            "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        }
        self.config: dict[str, Any] = {}

    def _env(self) -> dict[str, str]:
        import json

        return {**self.env, "PROCAPP_CONFIG": json.dumps(self.config)}

    def start(self, *args: str) -> Any:
        import subprocess
        import sys

        return subprocess.Popen(
            [sys.executable, "-m", "flask", *args],
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, timeout: float = 120) -> Any:
        import subprocess
        import sys

        return subprocess.run(
            [sys.executable, "-m", "flask", *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def app(self) -> Flask:
        """An in-process app on the same table (to publish and inspect)."""
        import importlib
        import json

        os.environ.update({k: v for k, v in self.env.items() if k.startswith("PROCAPP_")})
        os.environ["PROCAPP_CONFIG"] = json.dumps(self.config)
        procapp = importlib.import_module("tests.procapp")
        app = Flask("inproc", root_path=str(self.dir), instance_path=str(self.dir))
        app.config.update(
            SECRET_KEY="procapp",
            BGQUEUE_DATABASE_URI=self.env["PROCAPP_DB_URL"],
            BGQUEUE_TABLE_NAME=self.env["PROCAPP_TABLE"],
            BGQUEUE_LOCKS_DIR=str(self.dir),
        )
        app.config.update(self.config)
        bgq = BackgroundQueue()
        for name, spec in procapp.bgq._registry.callbacks.items():
            bgq.callback(name)(spec.func)
        bgq.init_app(app)
        app.bgq = bgq  # type: ignore[attr-defined]
        self._apps.append(app)
        return app

    def records(self) -> list[list[str]]:
        path = self.dir / "record.txt"
        if not path.exists():
            return []
        return [line.split() for line in path.read_text().splitlines()]

    _apps: list[Flask]


@pytest.fixture
def procs(db_url: str, table_name: str, tmp_path: Any, drop_tables: None) -> Iterator[ProcEnv]:
    env = ProcEnv(db_url, table_name, tmp_path)
    env._apps = []
    yield env
    for app in env._apps:
        state = app.extensions["bgqueue"]
        if state.broker is not None:
            state.broker.close()
        if state._engine is not None:
            state._engine.dispose()


AMQP_URL = os.environ.get("BGQUEUE_TEST_AMQP_URL", "amqp://bgqueue:bgqueue@127.0.0.1:5672/%2F")


def require_rabbitmq() -> str:
    """The RabbitMQ URL, or skip (fail in CI) when it cannot be reached."""
    if "rabbitmq" not in _reachable:
        import pika

        try:
            pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
            _reachable["rabbitmq"] = None
        except Exception as exc:
            _reachable["rabbitmq"] = f"RabbitMQ at {AMQP_URL} is not reachable: {exc!r}"
    error = _reachable["rabbitmq"]
    if error is not None:
        if IN_CI:
            pytest.fail(error + " (CI=true: a missing service is a failure)")
        pytest.skip(error + " (run scripts/services.sh start)")
    return AMQP_URL


@pytest.fixture
def amqp_queue() -> Iterator[str]:
    """A RabbitMQ-backed queue name of the test's own; its RabbitMQ queues are deleted after."""
    require_rabbitmq()
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    import pika

    from flask_bgqueue.broker.amqp import TIERS_MS, control_queue, delay_queue, work_queue

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    for p in (1, 2, 10, 20, 30, 50):  # every priority the tests configure
        for q in (work_queue(name, p), *(delay_queue(name, p, t) for t in TIERS_MS)):
            channel.queue_delete(q)
    channel.queue_delete(control_queue(name))
    connection.close()
