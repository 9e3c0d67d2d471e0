"""The benchmark scripts' setup: their own databases, never the test suite's, and a
README a newcomer can follow without running the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import sqlalchemy as sa

from tests.conftest import require_rabbitmq, require_server

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _common(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BGQUEUE_")}
    return subprocess.run(
        [sys.executable, "-c", f"import common\n{code}"],
        cwd=BENCH,
        env={**clean, "PYTHONPATH": f"{BENCH}{os.pathsep}{ROOT}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_default_urls_never_name_the_test_suite_s_database() -> None:
    result = _common({}, "print(sorted(common.SERVER_URLS.values()), common.AMQP_URL)")
    assert result.returncode == 0, result.stderr
    assert "bgqueue_test" not in result.stdout and result.stdout.count("bgqueue_bench") == 2
    # the test suite's URLs in the environment do not move the benchmarks there
    test_url = "postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:5432/bgqueue_test"
    result = _common({"BGQUEUE_TEST_POSTGRES_URL": test_url}, "print(common.SERVER_URLS)")
    assert "bgqueue_test" not in result.stdout


def test_a_benchmark_url_naming_the_test_database_is_refused_with_what_to_do() -> None:
    result = _common(
        {
            "BGQUEUE_BENCH_POSTGRES_URL": "postgresql+psycopg://u:secret@127.0.0.1/mytests",
            "BGQUEUE_TEST_POSTGRES_URL": "postgresql+psycopg://u:secret@127.0.0.1/mytests",
        },
        "with common.database('postgresql') as url: print(url)",
    )
    assert result.returncode == 1 and "secret" not in result.stderr
    assert "the test suite's database" in result.stderr
    assert "BGQUEUE_BENCH_POSTGRES_URL" in result.stderr


def test_the_readme_says_how_to_get_the_venv_without_running_the_tests() -> None:
    readme = (BENCH / "README.md").read_text()
    assert "python3 -m venv .venv" in readme
    assert ".venv/bin/python -m pip install -e '.[amqp]' -r requirements-dev.txt" in readme
    for script in ("publish.py", "drain.py", "broker.py", "dashboard.py"):
        assert f"benchmarks/{script}" in readme, script
    assert "bgqueue_test" not in (BENCH / "common.py").read_text().split("TEST_DATABASES")[0]


@pytest.mark.parametrize("database", ["postgresql", "mysql", "sqlite"])
def test_a_benchmark_s_tables_are_dropped_with_all_the_library_made_for_them(
    database: str, tmp_path: Path
) -> None:
    from flask_bgqueue import schema
    from flask_bgqueue.models import owned_table_names

    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'bench.db'}"
    else:
        url = require_server(database)
    table = f"bench_{uuid.uuid4().hex[:10]}"
    made = [*owned_table_names(table), schema.version_table(table)]
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    functions = sa.text("SELECT count(*) FROM pg_proc WHERE proname = :name")
    try:
        schema.upgrade(engine, table)  # the job table as the library makes it
        with engine.connect() as conn:
            assert all(sa.inspect(conn).has_table(t) for t in made)
            if database == "postgresql":
                assert conn.execute(functions, {"name": f"{table}_notify"}).scalar() == 1
        result = _common(
            {"BENCH_DROP_URL": url},
            f"common.drop_tables(__import__('os').environ['BENCH_DROP_URL'], [{table!r}])",
        )
        assert result.returncode == 0, result.stderr
        with engine.connect() as conn:
            assert [t for t in made if sa.inspect(conn).has_table(t)] == []
            if database == "postgresql":
                assert conn.execute(functions, {"name": f"{table}_notify"}).scalar() == 0
    finally:
        engine.dispose()


def test_broker_py_refuses_an_unknown_publish_loop_and_names_the_known_ones() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BGQUEUE_")}
    result = subprocess.run(
        [
            sys.executable,
            "broker.py",
            "--sections",
            "publish",
            "--publish-loops",
            "bgq_publish,nope",
        ],
        cwd=BENCH,
        env={**clean, "PYTHONPATH": f"{BENCH}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "unknown or no --publish-loops ['nope']" in result.stderr
    assert "bgq_publish_brokerless" in result.stderr  # what to choose from


def run_broker_py(*args: str) -> tuple[dict[str, Any], str]:
    """Run ``benchmarks/broker.py`` for real on the bench database and RabbitMQ; its JSON
    and the AMQP URL it used."""
    pg = sa.engine.make_url(require_server("postgresql")).set(database="bgqueue_bench")
    amqp = require_rabbitmq()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BGQUEUE_")}
    result = subprocess.run(
        [sys.executable, "broker.py", *args],
        cwd=BENCH,
        env={
            **clean,
            "PYTHONPATH": f"{BENCH}{os.pathsep}{ROOT}",
            "BGQUEUE_BENCH_POSTGRES_URL": pg.render_as_string(hide_password=False),
            "BGQUEUE_BENCH_AMQP_URL": amqp,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, Any] = json.loads(result.stdout)
    return out, amqp


def test_broker_py_publishes_beside_another_process_s_rabbitmq_traffic() -> None:
    loops = "bgq_publish_brokerless,bgq_publish_brokerless_beside_traffic"
    out, amqp = run_broker_py(
        "--sections", "publish", "--jobs", "1000", "--publish-loops", loops,
        "--traffic-rate", "500",
    )  # fmt: skip
    publish = out["publish"]
    for loop in loops.split(","):
        assert publish[loop]["jobs"] == 1000 and publish[loop]["jobs_per_s"] > 0, loop
    assert publish["ratio_brokerless_beside_traffic_to_brokerless"] > 0
    traffic = publish["traffic"]
    assert traffic["rates_asked"] == [500] * 10  # one per round, as asked
    assert traffic["messages"] > 0  # the other process sent while the loop ran
    connection = pika.BlockingConnection(pika.URLParameters(amqp))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # 404: deleted at the end
            connection.channel().queue_declare(f"bbplain.{out['run_id']}.traffic", passive=True)
    finally:
        connection.close()


def test_broker_py_steady_measures_publish_to_start_at_a_steady_rate() -> None:
    out, _amqp = run_broker_py(
        "--sections", "steady", "--steady-jobs", "60", "--steady-gaps-ms", "10,4"
    )
    steady = out["steady"]
    assert steady["jobs"] == 60
    assert [steady[k]["jobs_per_s"] for k in ("gap_10_ms", "gap_4_ms")] == [100, 250]
    for key in ("gap_10_ms", "gap_4_ms"):
        figures = steady[key]
        assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"], figures
