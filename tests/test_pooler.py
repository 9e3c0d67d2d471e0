"""Through a real PgBouncer in transaction-pooling mode (``scripts/pgbouncer.sh start``:
127.0.0.1:6432, a pool of 3 server connections shared by every client).

Publishing, ``process`` and ``consume`` in real processes, ``LISTEN`` on a direct
connection (``BGQUEUE_LISTEN_DATABASE_URI``) or polling, serial groups kept exclusive by
transaction advisory locks, and the schema upgrade racing in several processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_bgqueue import BackgroundQueue, ConfigurationError, JobState
from flask_bgqueue.schema import current_revision, head_revision
from flask_bgqueue.store import Listener, pooling
from tests.conftest import IN_CI, ProcEnv, StorePath, require_server
from tests.helpers import (
    CANONICAL,
    all_jobs,
    assert_groups_in_order_without_overlap,
    publish_serial_groups,
    stop_consumers,
)
from tests.test_limits import Sampler, drain
from tests.test_workers import wait_for

PGBOUNCER_URL = os.environ.get(
    "BGQUEUE_TEST_PGBOUNCER_URL",
    "postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:6432/bgqueue_test",
)
_reachable: list[str | None] = []


def require_pgbouncer() -> str:
    """The PgBouncer URL, or skip (fail in CI) when it cannot be reached."""
    if not _reachable:
        engine = sa.create_engine(PGBOUNCER_URL, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            _reachable.append(None)
        except Exception as exc:
            _reachable.append(f"PgBouncer at {PGBOUNCER_URL} is not reachable: {exc}")
        finally:
            engine.dispose()
    error = _reachable[0]
    if error is not None:
        if IN_CI:
            pytest.fail(error + " (CI=true: a missing service is a failure)")
        pytest.skip(error + " (run scripts/pgbouncer.sh start)")
    return PGBOUNCER_URL


@pytest.fixture
def direct_url() -> str:
    return require_server("postgresql")


@pytest.fixture
def pooled(direct_url: str, table_name: str, tmp_path: Any) -> Iterator[ProcEnv]:
    """Real processes and in-process apps whose queue connects through PgBouncer."""
    env = ProcEnv(require_pgbouncer(), table_name, tmp_path)
    env._apps = []
    env.config = {
        "BGQUEUE_TRANSACTION_POOLING": True,
        "BGQUEUE_POLL_INTERVAL_MS": 200,
        "BGQUEUE_WAITING_JOB_EXPIRATION_MS": 100,
        "BGQUEUE_PRIORITIES": [1, 2],
    }
    yield env
    for app in env._apps:
        app.extensions["bgqueue"]._engine.dispose()
    engine = sa.create_engine(direct_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        for name in (table_name, f"{table_name}_alembic_version", f"{table_name}_schedule"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        conn.execute(sa.text(f'DROP FUNCTION IF EXISTS "{table_name}_notify"()'))
    engine.dispose()


@contextmanager
def another_client_in_a_transaction() -> Iterator[None]:
    """Another PgBouncer client holding a transaction open: it takes the server connection
    the queue's client used last (PgBouncer hands out the most recently used), so the
    queue's next statement runs on another server connection."""
    url = sa.make_url(PGBOUNCER_URL).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        conn.execute("SELECT 1")
        yield
        conn.rollback()


def fresh_server_connections() -> None:
    """Make PgBouncer close its server connections (the admin console's ``RECONNECT``), so
    that none holds a statement an earlier test prepared."""
    url = sa.make_url(PGBOUNCER_URL)
    with psycopg.connect(
        host=url.host,
        port=url.port,
        dbname="pgbouncer",
        user=url.username,
        password=url.password,
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,  # the console speaks the simple protocol only
    ) as admin:
        admin.execute(f"RECONNECT {url.database}")
        wait_for(
            lambda: not [s for s in admin.execute("SHOW SERVERS").fetchall() if url.database in s],
            30,
            "PgBouncer to close its server connections",
        )


def _publish_on_two_server_connections(bgq: Any) -> list[int]:
    """Single and bulk publishes, each statement more often than psycopg's prepare
    threshold (5), then both again once the server connection changed."""
    fresh_server_connections()
    ids = [bgq.publish("noop") for _ in range(7)]
    for _ in range(7):
        with bgq.bulk():
            for _ in range(3):
                bgq.publish("noop")
    with another_client_in_a_transaction():
        ids.append(bgq.publish("noop"))
        with bgq.bulk():
            for _ in range(3):
                bgq.publish("noop")
    return ids


def test_publishing_through_the_pooler_survives_a_change_of_server_connection(
    pooled: ProcEnv, store_path: StorePath
) -> None:
    app = pooled.app()
    with app.app_context():
        store_path.apply(app)
        bgq = app.bgq  # type: ignore[attr-defined]
        ids = _publish_on_two_server_connections(bgq)
        assert all(bgq.get_job(i).state is JobState.READY for i in ids)
        assert len(all_jobs(bgq)) == 7 + 7 * 3 + 1 + 3


def test_a_bind_through_the_pooler_never_prepares_even_on_connections_it_already_had(
    pooled: ProcEnv, tmp_path: Any
) -> None:
    app = Flask("bind", root_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="s",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}",
        SQLALCHEMY_BINDS={"bgqueue": PGBOUNCER_URL},
        BGQUEUE_TABLE_NAME=pooled.env["PROCAPP_TABLE"],
        BGQUEUE_TRANSACTION_POOLING=True,
    )
    db = SQLAlchemy()
    db.init_app(app)
    bgq = BackgroundQueue(app)
    bgq.callback("noop")(lambda: None)
    with app.app_context():
        try:
            with db.engines["bgqueue"].connect() as conn:  # the app used the bind first
                conn.execute(sa.text("SELECT 1"))
            ids = _publish_on_two_server_connections(bgq)
            jobs = [bgq.get_job(i) for i in ids]
            assert all(j is not None and j.state is JobState.READY for j in jobs)
        finally:
            for engine in db.engines.values():
                engine.dispose()


def test_without_transaction_pooling_a_lost_prepared_statement_says_the_cure(
    pooled: ProcEnv,
    store_path: StorePath,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pooling, "_pooler_noted", False)
    pooled.config["BGQUEUE_TRANSACTION_POOLING"] = False
    app = pooled.app()
    with app.app_context(), caplog.at_level(logging.ERROR, "flask_bgqueue"):
        store_path.apply(app)
        with pytest.raises(sa.exc.DBAPIError, match="prepared statement") as raised:
            _publish_on_two_server_connections(app.bgq)  # type: ignore[attr-defined]
    assert "Set BGQUEUE_TRANSACTION_POOLING = True" in caplog.text, raised.value


def test_process_runs_every_job_once_in_several_processes_through_the_pooler(
    pooled: ProcEnv,
) -> None:
    app = pooled.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        for n in range(20):
            bgq.publish("record", {"group": "single", "name": str(n)})
        with bgq.bulk():
            for n in range(20):
                bgq.publish("record", {"group": "bulk", "name": str(n)})
    sweeps = [pooled.start("sweep") for _ in range(3)]
    cron = pooled.run("bgq", "process")
    assert cron.returncode == 0, cron.stderr
    for sweep in sweeps:
        _out, err = sweep.communicate(timeout=120)
        assert sweep.returncode == 0, err
    with app.app_context():
        assert {j.state for j in all_jobs(bgq)} == {JobState.FINISHED}
    done = sorted((group, name) for group, name, *_ in pooled.records())
    assert done == sorted((g, str(n)) for g in ("single", "bulk") for n in range(20))


def test_consume_listens_on_the_direct_url_while_its_queries_go_through_the_pooler(
    pooled: ProcEnv, direct_url: str
) -> None:
    pooled.config.update(
        BGQUEUE_LISTEN_DATABASE_URI=direct_url,
        BGQUEUE_POLL_INTERVAL_MS=600_000,  # without a notification it would sleep 10 min
    )
    app = pooled.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        worker = pooled.start("bgq", "consume", "-j", "3")
        try:
            first = bgq.publish("noop")
            wait_for(lambda: bgq.get_job(first).state is JobState.FINISHED, 60, "the first")
            for _ in range(2):
                job = bgq.publish("noop")  # only a notification can wake the consumer now

                def finished(j: int = job) -> bool:
                    return bgq.get_job(j).state is JobState.FINISHED

                wait_for(finished, 60, "a wake-up")
            _out, err = worker.communicate(timeout=60)
        finally:
            if worker.returncode is None:  # it failed: show what it said
                worker.kill()
                print(worker.communicate()[1])
    assert worker.returncode == 0, err
    assert "LISTEN/NOTIFY on 127.0.0.1:5432/bgqueue_test" in err.splitlines()[0]
    assert "does not hear notifications" not in err


def test_consume_through_the_pooler_without_a_listen_url_polls(pooled: ProcEnv) -> None:
    app = pooled.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        worker = pooled.start("bgq", "consume", "-j", "12")
        try:
            for n in range(12):
                bgq.publish("record", {"group": "polled", "name": str(n)})
            wait_for(
                lambda: all(j.state == JobState.FINISHED for j in all_jobs(bgq)), 60, "the jobs"
            )
            _out, err = worker.communicate(timeout=60)
        finally:
            if worker.returncode is None:  # it failed: show what it said
                worker.kill()
                print(worker.communicate()[1])
    assert worker.returncode == 0, err
    first = err.splitlines()[0]
    assert "polling (transaction pooling, no BGQUEUE_LISTEN_DATABASE_URI)" in first, first
    assert len(pooled.records()) == 12


def test_a_listener_that_cannot_hear_through_the_pooler_falls_back_to_polling(
    pooled: ProcEnv,
    direct_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BGQUEUE_TRANSACTION_POOLING forgotten: LISTEN through the pooler would never wake
    the consumer; its own test notification does not come back, so it polls and says why.
    On a direct connection the same listener listens."""
    monkeypatch.setattr(pooling, "LISTEN_PROBE_SECONDS", 1)  # the wait for what never comes
    pooled.config["BGQUEUE_TRANSACTION_POOLING"] = False
    app = pooled.app()
    with app.app_context(), caplog.at_level(logging.WARNING, "flask_bgqueue"):
        store = app.extensions["bgqueue"].store
        with store.listener(0.1) as listener:
            assert type(listener) is Listener
        assert "does not hear notifications" in caplog.text
        assert "BGQUEUE_LISTEN_DATABASE_URI" in caplog.text
        caplog.clear()
        pooled.config["BGQUEUE_LISTEN_DATABASE_URI"] = direct_url
    monkeypatch.undo()  # a direct connection hears it at once, however loaded the machine
    app = pooled.app()
    with app.app_context(), caplog.at_level(logging.WARNING, "flask_bgqueue"):
        with app.extensions["bgqueue"].store.listener(0.1) as listener:
            assert type(listener) is not Listener
            assert listener.listening
    assert "does not hear" not in caplog.text


def test_serial_groups_stay_exclusive_with_three_consumers_through_the_pooler(
    pooled: ProcEnv,
) -> None:
    app = pooled.app()
    groups = [f"g{n}" for n in range(4)]
    consumers = [pooled.start("bgq", "consume") for _ in range(3)]
    try:
        with app.app_context():
            bgq = app.bgq  # type: ignore[attr-defined]
            with bgq.bulk():  # all at once, as in test_consume.py
                publish_serial_groups(bgq, groups, pause=0.02)
            wait_for(
                lambda: all(j.state == JobState.FINISHED for j in all_jobs(bgq)),
                timeout=120,
                what="every job",
            )
    finally:
        stop_consumers(consumers)
    records = pooled.records()
    assert len(records) == len(CANONICAL) * len(groups)
    assert_groups_in_order_without_overlap(records, groups)


def test_a_concurrency_limit_holds_across_four_consumers_through_the_pooler(
    pooled: ProcEnv, direct_url: str
) -> None:
    """The limit's lock (a transaction advisory lock) and its count are one decision."""
    pooled.config["BGQUEUE_POLL_INTERVAL_MS"] = 50
    app = pooled.app()
    with app.app_context():
        for n in range(12):
            app.bgq.publish("limited", {"name": f"l{n}"})  # type: ignore[attr-defined]
    sampler = Sampler(app, "limited")
    sampler.engine.dispose()
    sampler.engine = sa.create_engine(direct_url, poolclass=sa.NullPool)  # not the pooler
    jobs = drain(pooled, app, sampler)
    assert sampler.samples > 20
    assert sampler.most[None] == 2  # reached, never passed
    assert len(jobs) == 12 and all(j.number_of_attempts == 1 for j in jobs)


def test_the_schema_upgrade_runs_once_when_processes_race_through_the_pooler(
    pooled: ProcEnv, direct_url: str, tmp_path: Any
) -> None:
    runs = []
    for n in range(4):  # each its own host-lock folder: only the database lock serializes
        locks = tmp_path / f"locks{n}"
        locks.mkdir()
        pooled.config["BGQUEUE_LOCKS_DIR"] = str(locks)
        runs.append(pooled.start("bgq", "update-schema"))
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        outputs.append(out.strip())
    assert sorted(outputs) == ["job table already up to date"] * 3 + ["job table upgraded"]
    engine = sa.create_engine(direct_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert current_revision(conn, pooled.env["PROCAPP_TABLE"]) == head_revision()
    engine.dispose()


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("mysql+pymysql://u:p@h/db", "must be a PostgreSQL URL for psycopg 3"),
        ("postgresql+psycopg2://u:p@h/db", "must be a PostgreSQL URL for psycopg 3"),
        ("not a url", "is not a database URL"),
        (5432, "must be a non-empty string"),
    ],
)
def test_a_wrong_listen_url_is_refused_at_init_app(uri: Any, fragment: str) -> None:
    app = Flask("t")
    app.config.update(BGQUEUE_DATABASE_URI="sqlite://", BGQUEUE_LISTEN_DATABASE_URI=uri)
    with pytest.raises(ConfigurationError, match=fragment) as info:
        BackgroundQueue(app)
    assert info.value.key == "BGQUEUE_LISTEN_DATABASE_URI"
    assert ":p@" not in str(info.value)


def test_a_listen_url_without_a_driver_means_psycopg_3() -> None:
    app = Flask("t")
    app.config.update(
        BGQUEUE_DATABASE_URI="sqlite://", BGQUEUE_LISTEN_DATABASE_URI="postgresql://u:p@h/db"
    )
    BackgroundQueue(app)
    assert app.extensions["bgqueue"].settings.listen_database_uri == (
        "postgresql+psycopg://u:p@h/db"
    )


def test_a_listen_url_for_a_job_table_not_on_postgresql_is_refused(tmp_path: Any) -> None:
    app = Flask("t", instance_path=str(tmp_path))
    app.config.update(
        BGQUEUE_DATABASE_URI=f"sqlite:///{tmp_path / 'jobs.db'}",
        BGQUEUE_LISTEN_DATABASE_URI="postgresql+psycopg://u:p@h/db",
    )
    BackgroundQueue(app)
    with app.app_context(), pytest.raises(ConfigurationError, match="which has no LISTEN"):
        app.extensions["bgqueue"].store  # noqa: B018
    app.extensions["bgqueue"].engine.dispose()
