"""A three-node RabbitMQ cluster with quorum queues: a node stops, work moves on.

The cluster is ``scripts/rabbitmq-cluster.sh`` (nodes bgq1..bgq3@localhost on
127.0.0.1:5681-5683, started once per CI run by scripts/test.sh; its URLs in
``BGQUEUE_TEST_AMQP_CLUSTER_URLS``). A test stops the node a consumer or a publisher is
connected to (the whole Erlang node) and starts it again afterwards.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import sqlalchemy as sa

from flask_bgqueue import JobState
from flask_bgqueue.broker.amqp import TIERS_MS, control_queue, delay_queue, work_queue
from tests.conftest import AMQP_URL, IN_CI, ProcEnv
from tests.helpers import stop
from tests.test_workers import wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "rabbitmq-cluster.sh")
CLUSTER_URLS = os.environ.get(
    "BGQUEUE_TEST_AMQP_CLUSTER_URLS",
    ",".join(f"amqp://bgqueue:bgqueue@127.0.0.1:{p}/%2F" for p in (5681, 5682, 5683)),
).split(",")
JOBS = 5000  # the number
QUORUM = {"x-queue-type": "quorum"}

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def masked(url: str) -> str:
    return url.replace("bgqueue:bgqueue@", "bgqueue:***@")


def node(action: str, number: int) -> None:
    """``stop-node`` / ``start-node`` node ``number`` (1-3) of the cluster."""
    subprocess.run([SCRIPT, action, str(number)], check=True, timeout=180, capture_output=True)


def _unreachable() -> str | None:
    for url in CLUSTER_URLS:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
        except Exception as exc:
            return f"RabbitMQ cluster node {url} is not reachable: {exc!r}"
    return None


@pytest.fixture
def cluster_queue() -> Iterator[str]:
    """A queue name of the test's own on a cluster whose three nodes answer; its RabbitMQ
    queues are deleted after (every node is started again first)."""
    error = _unreachable()
    if error is not None:
        if IN_CI:
            pytest.fail(error + " (CI=true: a missing service is a failure)")
        pytest.skip(error + " (run scripts/rabbitmq-cluster.sh start as root)")
    name = f"c{uuid.uuid4().hex[:10]}"
    yield name
    connection = pika.BlockingConnection([pika.URLParameters(u) for u in CLUSTER_URLS])
    channel = connection.channel()
    for q in (work_queue(name, 1), *(delay_queue(name, 1, t) for t in TIERS_MS)):
        channel.queue_delete(q)
    channel.queue_delete(control_queue(name))
    connection.close()


@pytest.fixture
def cluster(procs: ProcEnv, cluster_queue: str) -> ProcEnv:
    procs.config = {
        "BGQUEUE_BROKER_URL": CLUSTER_URLS,
        "BGQUEUE_QUEUE": cluster_queue,
        "BGQUEUE_AMQP_QUEUE_ARGUMENTS": QUORUM,
        "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.5,
    }
    return procs


def start_consumer(env: ProcEnv, *order: int) -> subprocess.Popen[str]:
    """A consumer whose BGQUEUE_BROKER_URL lists the nodes in ``order`` (1-3)."""
    config = env.config
    env.config = {**config, "BGQUEUE_BROKER_URL": [CLUSTER_URLS[n - 1] for n in order]}
    try:
        return env.start("bgq", "consume")  # type: ignore[no-any-return]
    finally:
        env.config = config


def runs(env: ProcEnv) -> list[tuple[int, int, int, float]]:
    """(job id, attempt, pid, time) of every run of a counted job."""
    path = env.dir / "counted.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(i), int(a), int(p), float(t)) for i, a, p, t in (line.split() for line in lines)]


def rows(engine: sa.Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql)).all())


def states(engine: sa.Engine, table: str) -> dict[JobState, int]:
    return {
        JobState(s): n
        for s, n in rows(engine, f"SELECT state, COUNT(*) FROM {table} GROUP BY state")
    }


def attempts(engine: sa.Engine, table: str) -> dict[int, int]:
    return {i: n for i, n in rows(engine, f"SELECT id, number_of_attempts FROM {table}")}


def broker_failed_errors(engine: sa.Engine, table: str) -> list[Any]:
    """(first id, last id, count, error) of the BROKER_FAILED rows, by error."""
    return rows(
        engine,
        f"SELECT MIN(id), MAX(id), COUNT(*), error_message FROM {table}"
        f" WHERE state = {JobState.BROKER_FAILED.value} GROUP BY error_message",
    )


def unsettled(engine: sa.Engine, table: str) -> list[Any]:
    """(id, state, error) of the first rows neither FINISHED nor BROKER_FAILED."""
    ended = (JobState.FINISHED.value, JobState.BROKER_FAILED.value)
    return rows(
        engine,
        f"SELECT id, state, error_message FROM {table}"
        f" WHERE state NOT IN {ended} ORDER BY id LIMIT 20",
    )


def check_each_ran_once(env: ProcEnv, engine: sa.Engine, table: str) -> None:
    """Every job ran; a job that ran twice has both attempts recorded (at-least-once)."""
    recorded = attempts(engine, table)
    done = runs(env)
    assert len(recorded) == JOBS
    assert {job_id for job_id, *_ in done} == set(recorded)
    seen: dict[int, list[int]] = collections.defaultdict(list)
    for job_id, attempt, _pid, _t in done:
        seen[job_id].append(attempt)
    for job_id, tries in seen.items():
        assert len(tries) == len(set(tries)), f"job {job_id} ran twice as attempt {tries}"
        assert max(tries) <= recorded[job_id]


def test_consumers_move_to_another_node_and_every_job_runs_once(cluster: ProcEnv) -> None:
    app = cluster.app()
    engine = sa.create_engine(cluster.env["PROCAPP_DB_URL"], poolclass=sa.NullPool)
    table = cluster.env["PROCAPP_TABLE"]
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        with bgq.bulk():
            for _ in range(JOBS):  # 4 ms each: the drain outlasts a node's stop
                bgq.publish("counted", {"pause": 0.004})
        assert app.extensions["bgqueue"].broker.flush(120)
    assert states(engine, table) == {JobState.READY: JOBS}

    first = start_consumer(cluster, 1, 2, 3)  # on bgq1, the node that is stopped
    second = start_consumer(cluster, 2, 3, 1)  # on bgq2
    try:
        wait_for(lambda: len(runs(cluster)) >= JOBS // 20, 120, "a twentieth of the jobs run")
        node("stop-node", 1)
        stopped_at = time.time()
        left = JOBS - states(engine, table).get(JobState.FINISHED, 0)
        try:
            wait_for(
                lambda: states(engine, table) == {JobState.FINISHED: JOBS},
                300,
                "every job FINISHED",
            )
        finally:
            node("start-node", 1)
    finally:
        first_err, second_err = stop(first, timeout=120)[1], stop(second, timeout=120)[1]

    assert left > 0  # the node stopped while jobs drained
    check_each_ran_once(cluster, engine, table)
    moved = [t for _, _, pid, t in runs(cluster) if pid == first.pid and t > stopped_at]
    assert moved, "the consumer of the stopped node ran no job afterwards"
    assert f"lost node {masked(CLUSTER_URLS[0])}" in first_err, first_err
    assert f"consuming from node {masked(CLUSTER_URLS[1])}" in first_err, first_err
    assert "lost node" not in second_err, second_err
    assert "bgqueue@" not in first_err + second_err  # passwords masked
    engine.dispose()


@pytest.mark.parametrize("wait_for_confirm", [False, True], ids=["pipelined", "confirmed"])
def test_a_publisher_moves_to_another_node_and_no_job_is_lost(
    cluster: ProcEnv, wait_for_confirm: bool
) -> None:
    cluster.config["BGQUEUE_BROKER_WAIT_FOR_CONFIRM"] = wait_for_confirm
    app = cluster.app()  # runs `process` below
    with app.app_context():
        app.bgq.update_schema()  # type: ignore[attr-defined]  # before the processes start
    engine = sa.create_engine(cluster.env["PROCAPP_DB_URL"], poolclass=sa.NullPool)
    table = cluster.env["PROCAPP_TABLE"]

    consumer = start_consumer(cluster, 2, 3, 1)  # on bgq2 throughout
    # on bgq1 first; paced so that stopping a node (a second or two) lands mid-stream, and
    # its last tenth waits until the node has stopped (however slow the stop)
    publisher = cluster.start(
        "publish-counted",
        str(JOBS),
        "--pause",
        "0.0005",
        "--wait-for",
        "node-stopped",
        "--at",
        str(JOBS - JOBS // 10),
    )
    try:
        wait_for(lambda: sum(states(engine, table).values()) >= JOBS // 10, 120, "publishes")
        node("stop-node", 1)
        try:
            published_at_stop = sum(states(engine, table).values())
            last_id_at_stop = max(attempts(engine, table))
            publishing = publisher.poll() is None
            (cluster.dir / "node-stopped").touch()
            _out, err = publisher.communicate(timeout=300)
        finally:
            node("start-node", 1)
        assert publisher.returncode == 0, err
        assert publishing and published_at_stop < JOBS  # the node stopped while publishing
        # Ids not confirmed when bgq1 went are BROKER_FAILED; the rest went through bgq2.
        try:
            wait_for(
                lambda: set(states(engine, table)) <= {JobState.FINISHED, JobState.BROKER_FAILED},
                120,
                "every job FINISHED or BROKER_FAILED",
            )
        except AssertionError as exc:
            left = unsettled(engine, table)
            try:
                said = stop(consumer, timeout=30)[1]
            except subprocess.TimeoutExpired:
                consumer.kill()
                said = "(did not stop within 30 s of SIGTERM) " + consumer.communicate()[1]
            raise AssertionError(
                f"{exc}; left: {left}; the publisher said: {err}; the consumer said: {said}"
            ) from None
        failed = broker_failed_errors(engine, table)  # said when an assertion fails
        with app.app_context():
            app.bgq.process()  # type: ignore[attr-defined]  # runs BROKER_FAILED jobs inline
    finally:
        # (stopped already when the wait above failed)
        consumer_err = stop(consumer, timeout=120)[1] if consumer.returncode is None else ""
    assert states(engine, table) == {JobState.FINISHED: JOBS}
    check_each_ran_once(cluster, engine, table)
    # ids published once bgq1 was down reached the consumer: through another node
    moved = [i for i, _, pid, _ in runs(cluster) if pid == consumer.pid and i > last_id_at_stop]
    assert moved, f"no id published after the stop reached the consumer; {failed}"
    assert "lost node" not in consumer_err, consumer_err
    assert masked(CLUSTER_URLS[0]) in err and "bgqueue@" not in err, err
    engine.dispose()


def test_a_consumer_reaches_the_first_node_that_answers(
    cluster: ProcEnv, cluster_queue: str
) -> None:
    cluster.config["BGQUEUE_BROKER_URL"] = ",".join(  # the environment's form
        ["amqp://bgqueue:secret@127.0.0.1:1/%2F", *CLUSTER_URLS[1:]]
    )
    app = cluster.app()
    with app.app_context():
        job_id = app.bgq.publish("counted")  # type: ignore[attr-defined]
        assert app.extensions["bgqueue"].broker.flush(60)
    result = cluster.run("bgq", "consume", "-j", "1", timeout=120)
    assert result.returncode == 0, result.stderr
    assert [r[0] for r in runs(cluster)] == [job_id]


def test_no_node_answering_ends_the_consumer_with_one_line_naming_each(
    procs: ProcEnv,
) -> None:
    urls = ["amqp://bgqueue:secret@127.0.0.1:1/%2F", "amqp://bgqueue:secret@127.0.0.1:2/%2F"]
    procs.config = {"BGQUEUE_BROKER_URL": urls}
    result = procs.run("bgq", "consume", timeout=120)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    a, b = (u.replace(":secret@", ":***@") for u in urls)
    assert error == (
        f"Error: BrokerError: cannot connect to the broker at {a}, {b}: no node answered"
        f" ({a}: nothing answers there (Connection refused);"
        f" {b}: nothing answers there (Connection refused))"
    )
    assert "secret" not in result.stderr + result.stdout


def test_after_a_refusal_the_publisher_thread_sends_the_next_ids_through_a_new_connection(
    procs: ProcEnv, amqp_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A channel may go on refusing a quorum queue after a node stopped (above); a full
    # queue refuses the same way, on the one node, on purpose.
    procs.config = {
        "BGQUEUE_BROKER_URL": AMQP_URL,
        "BGQUEUE_QUEUE": amqp_queue,
        "BGQUEUE_AMQP_QUEUE_ARGUMENTS": {"x-max-length": 1, "x-overflow": "reject-publish"},
    }
    app = procs.app()
    broker = app.extensions["bgqueue"].broker
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        taken = bgq.publish("counted")
        assert broker.flush(60)
        first = broker._publisher.session
        refused = bgq.publish("counted")  # the queue is full
        assert broker.flush(60)
        wait_for(lambda: first.ended, 60, "the refused session to end")
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        method, _, body = connection.channel().basic_get(work_queue(amqp_queue, 1), auto_ack=True)
        connection.close()
        assert method is not None and int(body) == taken  # room again
        sent = bgq.publish("counted")
        assert broker.flush(60)
        assert broker._publisher.session is not first
        assert bgq.get_job(refused).state is JobState.BROKER_FAILED
        assert bgq.get_job(sent).state is JobState.READY
    assert "refused a message; the next ones go through a new connection" in caplog.text
