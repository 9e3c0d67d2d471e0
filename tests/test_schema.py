"""Versioned migrations: an upgrade keeps rows, concurrent first use is safe."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa

from flask_bgqueue import JobState, SchemaError, schema
from tests.conftest import AppFactory

START_TOGETHER = """
import sys, time
import sqlalchemy as sa
from flask_bgqueue import schema
url, table, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
args = {"timeout": 60} if url.startswith("sqlite") else {}
engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args=args)
while time.time() < start_at:
    time.sleep(0.001)
ran = schema.upgrade(engine, table)
print("ran" if ran else "skipped")
"""


def test_two_processes_starting_on_an_empty_database_both_succeed(
    db_url: str, table_name: str, drop_tables: None
) -> None:
    import time

    start_at = f"{time.time() + 1.5:.3f}"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", START_TOGETHER, db_url, table_name, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [w.communicate(timeout=120) for w in workers]
    for w, (_out, err) in zip(workers, results, strict=True):
        assert w.returncode == 0, err
    assert sorted(out.strip() for out, _ in results) == ["ran", "skipped"]
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert schema.current_revision(conn, table_name) == schema.head_revision()
    engine.dispose()


def test_an_upgrade_from_the_first_revision_keeps_the_rows(
    make_app: AppFactory, db_url: str, table_name: str
) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    assert schema.upgrade(engine, table_name, revision="0001")
    old = sa.Table(table_name, sa.MetaData(), autoload_with=engine)
    assert "traceback" not in old.c and "heartbeat_at" not in old.c
    from flask_bgqueue.clock import utcnow

    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            old.insert(),
            [
                dict(
                    queue="default",
                    priority=1,
                    callback_name="noop",
                    parameters_json=f"[{n}]",
                    state=JobState.READY,
                    created_at=now,
                    updated_at=now,
                    available_at=now,
                    number_of_attempts=0,
                    is_unique=False,
                    identifier=f"id-{n}",
                )
                for n in range(3)
            ],
        )
    engine.dispose()

    app = make_app()
    ran = []
    app.bgq.callback("noop")(lambda n: ran.append(n))  # type: ignore[attr-defined]
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        assert bgq.get_unfinished_job_identifiers() == ["id-0", "id-1", "id-2"]  # upgraded on use
        job = bgq.get_job(1)
        assert job.traceback is None and job.heartbeat_at is None
        bgq.process()
    assert sorted(ran) == [0, 1, 2]


def test_without_auto_update_an_old_table_asks_for_update_schema(
    make_app: AppFactory, db_url: str, table_name: str
) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    schema.upgrade(engine, table_name, revision="0001")
    engine.dispose()
    app = make_app(BGQUEUE_AUTO_UPDATE_SCHEMA=False)
    with app.app_context():
        with pytest.raises(SchemaError, match="Run 'flask bgq update-schema'"):
            app.bgq.get_job(1)  # type: ignore[attr-defined]
        assert app.bgq.update_schema() is True  # type: ignore[attr-defined]
        app.extensions["bgqueue"]._store = None
        assert app.bgq.get_job(1) is None  # type: ignore[attr-defined]


def test_the_version_table_is_the_queues_own(
    db_url: str, table_name: str, drop_tables: None
) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    schema.upgrade(engine, table_name)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {table_name, f"{table_name}_alembic_version"} <= names
    assert "alembic_version" not in names or db_url.startswith(("postgresql", "mysql"))


def test_the_model_matches_the_migrations(db_url: str, table_name: str, drop_tables: None) -> None:
    """models.job_table() must describe exactly what the migrations create."""
    from flask_bgqueue.models import job_table, schedule_table

    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    schema.upgrade(engine, table_name)
    inspector = sa.inspect(engine)
    migrated = {c["name"] for c in inspector.get_columns(table_name)}
    indexes = {i["name"] for i in inspector.get_indexes(table_name)}
    schedule_columns = {c["name"] for c in inspector.get_columns(f"{table_name}_schedule")}
    engine.dispose()
    assert schedule_columns == {c.name for c in schedule_table(table_name).columns}
    model = job_table(table_name)
    expected_columns = {c.name for c in model.columns}
    if db_url.startswith("mysql"):  # no partial indexes: a virtual column serves the claim
        expected_columns.add("bgq_claim_priority")
    assert migrated == expected_columns
    assert indexes == {i.name for i in model.indexes}


def test_the_head_constant_is_alembic_s_head() -> None:
    """HEAD_REVISION spares an up-to-date process the import of Alembic; it must not lag."""
    assert schema.HEAD_REVISION == schema._scripts().get_current_head()


def test_an_up_to_date_process_does_not_import_alembic(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    schema.upgrade(engine, "jobs")
    engine.dispose()
    code = f"""
import sys
from flask import Flask
from flask_bgqueue import BackgroundQueue
app = Flask("x")
app.config.update(BGQUEUE_DATABASE_URI={url!r}, BGQUEUE_TABLE_NAME="jobs")
bgq = BackgroundQueue(app)
bgq.callback("f")(lambda: None)
with app.app_context():
    bgq.publish("f")
    bgq.process()
print("alembic" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("left", ["schedule", "throughput", "all"])
def test_tables_left_without_their_version_table_are_named_and_nothing_is_touched(
    db_url: str, table_name: str, drop_tables: None, left: str
) -> None:
    """A job table dropped by hand (with its version table) while its schedule or
    throughput table stayed, or all left without the version table: the upgrade says which
    tables are in the way and how to start afresh, instead of failing half-way in a
    migration."""
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    try:
        schema.upgrade(engine, table_name)
        with engine.begin() as conn:
            quote = engine.dialect.identifier_preparer.quote
            conn.execute(sa.text(f"DROP TABLE {quote(table_name + '_alembic_version')}"))
            kept = {"schedule": ["_schedule"], "throughput": ["_throughput"]}.get(
                left, ["", "_schedule", "_throughput"]
            )
            for suffix in {"", "_schedule", "_throughput"} - set(kept):
                conn.execute(sa.text(f"DROP TABLE {quote(table_name + suffix)}"))

        def own_tables() -> set[str]:  # other tests make and drop tables meanwhile
            return {t for t in sa.inspect(engine).get_table_names() if t.startswith(table_name)}

        before = own_tables()
        with pytest.raises(SchemaError) as refused:
            schema.upgrade(engine, table_name)
        message = str(refused.value)
        assert "to start afresh" in message
        named = message.split("yet ", 1)[1].split(": left from", 1)[0]
        for suffix in ("", "_schedule", "_throughput"):
            assert (f"'{table_name}{suffix}'" in named) is (suffix in kept), (suffix, named)
        assert own_tables() == before  # nothing created
    finally:
        engine.dispose()
