"""A database that goes away or refuses writes, with real servers and real processes.

Consumers (polling/LISTEN and RabbitMQ) ride out a restart of the real PostgreSQL or
MariaDB server: one log line, reconnection with backoff, their claimed jobs not started
given back at once, outcomes saved once the server is back; every job runs exactly once.
A worker whose outcomes cannot be saved takes no further job. ``process`` meets the same
fault with a one-line error and exit status 1.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_bgqueue import BackgroundQueue, JobState
from tests.conftest import AMQP_URL, SERVER_URLS, ProcEnv
from tests.helpers import all_jobs, execute, kind, stop
from tests.test_workers import wait_for

ROOT = Path(__file__).resolve().parent.parent
SERVERS = {"postgresql": "postgresql", "mysql": "mariadb"}


def restart(db: str) -> None:
    """Restart the real server (as a failover or an upgrade would)."""
    subprocess.run(
        [str(ROOT / "scripts" / "services.sh"), "restart", SERVERS[db]],
        check=True,
        capture_output=True,
        timeout=300,
    )


def runs(procs: ProcEnv) -> Counter[str]:
    """How many times each recorded job's callback ran."""
    return Counter(r[1] for r in procs.records())


def publish(procs: ProcEnv, app: Any, names: list[str], pause: float = 0.02) -> None:
    with app.app_context():
        store = app.bgq._state().store
        store.forget_connections()  # the test's own pool may hold connections of before
        for name in names:
            app.bgq.publish("record", {"group": "g", "name": name, "pause": pause})


@pytest.fixture
def quick(procs: ProcEnv) -> ProcEnv:
    procs.config = {
        "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.3,
        "BGQUEUE_POLL_INTERVAL_MS": 100,
    }
    return procs


def ride_out_a_restart(procs: ProcEnv, db_url: str) -> None:
    app = procs.app()
    worker = procs.start("bgq", "consume")
    try:
        first = [f"a{i}" for i in range(40)]
        publish(procs, app, first)
        wait_for(lambda: len(procs.records()) >= 5, what="the first jobs")
        restart(kind(db_url))  # while the consumer claims and runs jobs
        assert worker.poll() is None, "the consumer exited when the database went away"
        later = [f"b{i}" for i in range(20)]
        publish(procs, app, later)
        wait_for(lambda: set(runs(procs)) >= {*first, *later}, timeout=90, what="every job")
        time.sleep(0.5)  # a duplicate would show up now
        assert runs(procs) == Counter({name: 1 for name in [*first, *later]})
        with app.app_context():
            bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]
            jobs = all_jobs(bgq)
        assert {j.state for j in jobs} == {JobState.FINISHED}
        assert {j.number_of_attempts for j in jobs} == {1}  # none was lost or re-run
    finally:
        _out, err = stop(worker)
    assert worker.returncode == 0, err
    assert err.count("lost the database") == 1, err  # one line, not one per retry
    assert "database back" in err
    assert "Traceback" not in err


@pytest.mark.exclusive
@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_a_polling_consumer_rides_out_a_database_restart(quick: ProcEnv, db_url: str) -> None:
    ride_out_a_restart(quick, db_url)


@pytest.mark.exclusive
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_rabbitmq_consumer_rides_out_a_database_restart(
    quick: ProcEnv, db_url: str, amqp_queue: str
) -> None:
    quick.config.update(BGQUEUE_BROKER_URL=AMQP_URL, BGQUEUE_QUEUE=amqp_queue)
    ride_out_a_restart(quick, db_url)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_listening_consumer_survives_its_connections_being_killed(
    quick: ProcEnv, db_url: str
) -> None:
    """``pg_terminate_backend`` on every connection of the consumer (its LISTEN one too)."""
    quick.config["BGQUEUE_ENGINE_OPTIONS"] = {
        "connect_args": {"application_name": "bgq-fault-test"}
    }
    quick.config["BGQUEUE_POLL_INTERVAL_MS"] = 60_000  # only NOTIFY wakes it in time
    app = quick.app()
    worker = quick.start("bgq", "consume")
    try:
        publish(quick, app, ["before"])
        wait_for(lambda: "before" in runs(quick), what="the first job")
        admin = sa.create_engine(SERVER_URLS["postgresql"], poolclass=sa.NullPool)
        with admin.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'bgq-fault-test'"
                )
            ).scalar_one()
        admin.dispose()
        assert killed >= 1
        time.sleep(1)  # the consumer notices on its next wait, and reconnects
        publish(quick, app, ["after"])
        wait_for(lambda: "after" in runs(quick), timeout=20, what="a job after the kill")
        assert worker.poll() is None
    finally:
        _out, err = stop(worker)
    assert worker.returncode == 0, err
    assert runs(quick) == Counter({"before": 1, "after": 1})
    assert "Traceback" not in err


#: Outcomes (FINISHED) refused, each refusal taking 0.2 s to come: several jobs' time, as
#: a database under load may take, so a worker that went on while waiting for it would
#: start more jobs that must run again.
REFUSE = {
    "postgresql": [
        "CREATE FUNCTION {t}_refuse() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(0.2);"
        " RAISE EXCEPTION 'outcomes refused for this test'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER {t}_refuse BEFORE UPDATE ON {t} FOR EACH ROW"
        " WHEN (NEW.state = 3) EXECUTE FUNCTION {t}_refuse()",
    ],
    "mysql": [
        "CREATE TRIGGER {t}_refuse BEFORE UPDATE ON {t} FOR EACH ROW BEGIN"
        " IF NEW.state = 3 THEN DO SLEEP(0.2); SIGNAL SQLSTATE '45000'"
        " SET MESSAGE_TEXT = 'outcomes refused for this test'; END IF; END",
    ],
}
ALLOW = {
    "postgresql": ["DROP TRIGGER {t}_refuse ON {t}", "DROP FUNCTION {t}_refuse()"],
    "mysql": ["DROP TRIGGER {t}_refuse"],
}


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_a_consumer_whose_outcomes_are_refused_takes_no_more_jobs_and_saves_them_later(
    quick: ProcEnv, db_url: str, table_name: str
) -> None:
    app = quick.app()
    bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]
    names = [f"j{i}" for i in range(30)]
    with app.app_context():
        bgq.update_schema()  # the table exists before the trigger goes on it
    execute(db_url, REFUSE[kind(db_url)], table_name)
    worker = quick.start("bgq", "consume")
    try:
        publish(quick, app, names, pause=0.05)
        wait_for(lambda: len(quick.records()) >= 1, what="a first job")
        time.sleep(2)  # the worker retries the save meanwhile, and starts nothing new
        ran_while_refused = len(quick.records())
        # The first outcome's save begins within 20 ms, while the next job runs, and no job
        # starts before it ends: at most that one more job ran. Nothing else runs, so
        # nothing runs twice later.
        assert ran_while_refused <= 2, quick.records()
        execute(db_url, ALLOW[kind(db_url)], table_name)
        wait_for(lambda: set(runs(quick)) == set(names), timeout=60, what="every job")
        time.sleep(0.5)
        assert runs(quick) == Counter(dict.fromkeys(names, 1))
        with app.app_context():
            bgq._state().store.forget_connections()
            assert {j.state for j in all_jobs(bgq)} == {JobState.FINISHED}
    finally:
        _out, err = stop(worker)
    assert worker.returncode == 0, err
    assert "outcomes refused for this test" in err


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_process_with_its_outcomes_refused_stops_with_one_line_and_status_1(
    quick: ProcEnv, db_url: str, table_name: str
) -> None:
    app = quick.app()
    bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        bgq.update_schema()
    execute(db_url, REFUSE[kind(db_url)], table_name)
    publish(quick, app, [f"j{i}" for i in range(20)], pause=0.05)
    result = quick.run("bgq", "process")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert len(quick.records()) <= 2  # no job started after the first refused outcome
    with app.app_context():
        states = Counter(j.state for j in all_jobs(bgq))
    # Those not started went back; at most the ones that ran wait for the lost-worker sweep.
    assert states[JobState.READY] >= 18 and states[JobState.PROCESSING] <= 2


def test_process_without_its_database_says_so_in_one_line(tmp_path: Path) -> None:
    env = ProcEnv("postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:1/none", "t", tmp_path)
    result = env.run("bgq", "process")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("Error: the job table's database:")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    shown = env.run("bgq", "--traceback", "process")
    assert "Traceback" in shown.stderr


class _BeatStore:
    """A stand-in store whose heartbeats follow a script: ``None`` succeeds, an exception
    is raised (the real restart is ``test_a_polling_consumer_rides_out_a_database_restart``)."""

    def __init__(self, script: list[BaseException | None]) -> None:
        self.script = script
        self.done = threading.Event()

    def heartbeat(self, claims: Any, now: Any) -> None:
        if not self.script:
            self.done.set()
            return
        step = self.script.pop(0)
        if step is not None:
            raise step

    def is_database_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sa.exc.DBAPIError)


def test_the_heartbeat_says_a_lost_database_once_per_outage_and_a_bug_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flask_bgqueue.holding import Heartbeat

    def lost() -> BaseException:
        return sa.exc.OperationalError("UPDATE ...", {}, ConnectionError("server closed it"))

    store = _BeatStore([lost(), lost(), lost(), None, lost(), RuntimeError("a bug")])
    logger = logging.getLogger("tests.heartbeat")
    heartbeat = Heartbeat(store, 0.005, logger)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="tests.heartbeat"):
        heartbeat.start()
        assert store.done.wait(10)
        heartbeat.stop()
        heartbeat.join(10)
    said = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    once = (
        logging.WARNING,
        "bgqueue heartbeat failed: ConnectionError: server closed it; trying again at each beat",
        False,
    )
    assert said[:2] == [once, once]  # one line per outage, without a traceback
    assert said[2:] == [(logging.ERROR, "bgqueue heartbeat failed", True)]  # a bug: traced
