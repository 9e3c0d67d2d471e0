"""Workers on several hosts: network namespaces as hosts (see tests/hosts.py), each with its
own hostname and locks folder, running real ``flask bgq consume`` and ``flask bgq process``
side by side against real PostgreSQL, MariaDB and RabbitMQ.

One host is cut off from the database and the broker mid-job by a DROP rule inside its
namespace: the other hosts take its job back after the lost-worker window and finish it;
once the cut heals, the cut-off worker's late outcome is refused (the fence), it says so,
and it goes on working. Serial groups stay exclusive across hosts throughout.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_bgqueue import JobState

from .conftest import AMQP_URL, ProcEnv, require_rabbitmq
from .hosts import Hosts

#: Short windows keep the tests quick: a beat every 0.5 s, lost after 3 s without one,
#: a silent network noticed within 3 s.
FAST = {
    "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.5,
    "BGQUEUE_WORKER_LOST_AFTER_SECONDS": 3,
    "BGQUEUE_NETWORK_TIMEOUT_SECONDS": 3,
    "BGQUEUE_POLL_INTERVAL_MS": 200,
    "BGQUEUE_WAITING_JOB_EXPIRATION_MS": 200,
}


@pytest.fixture
def hosts(procs: ProcEnv, tmp_path: Path) -> Iterator[Hosts]:
    made = Hosts(["host-a", "host-b", "host-c"], tmp_path / "hosts", procs.env)
    try:
        yield made
    finally:
        made.close()


def wait_until(what: str, check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def runs(procs: ProcEnv) -> list[dict[str, Any]]:
    """The ``held`` runs recorded so far."""
    return [
        {
            "group": r[0],
            "name": r[1],
            "start": float(r[2]),
            "end": float(r[3]),
            "host": r[5],
            "attempt": int(r[6]),
        }
        for r in procs.records()
        if len(r) == 7
    ]


def assert_exclusive(group_runs: list[dict[str, Any]]) -> None:
    """No two runs of one serial group overlap in time."""
    ordered = sorted(group_runs, key=lambda r: r["start"])
    for before, after in itertools.pairwise(ordered):
        assert before["end"] <= after["start"], f"{before} overlaps {after}"


#: database, with RabbitMQ, whether host-a's callback ends while it is still cut off
CASES = [
    pytest.param("postgresql", False, True, id="postgresql"),
    pytest.param("mysql", False, True, id="mysql"),
    pytest.param("postgresql", True, True, id="postgresql-rabbitmq"),
    pytest.param("mysql", True, False, id="mysql-rabbitmq-ends-after-heal"),
]


@pytest.mark.parametrize(("db_url", "broker", "ends_while_cut"), CASES, indirect=["db_url"])
def test_a_host_cut_off_mid_job_loses_it_to_the_others_and_its_late_outcome_is_refused(
    procs: ProcEnv,
    hosts: Hosts,
    db_url: str,
    broker: bool,
    ends_while_cut: bool,
    amqp_name: str | None,
) -> None:
    procs.config.update(FAST)
    if broker:
        procs.config.update(BGQUEUE_QUEUE=amqp_name, BGQUEUE_BROKER_URL=AMQP_URL)
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    a, b, c = hosts["host-a"], hosts["host-b"], hosts["host-c"]
    for host in hosts:
        host.config.update(procs.config)
        if broker:  # through the host's forwarder; heartbeats every 2 s notice a silence
            host.config["BGQUEUE_BROKER_URL"] = host.url(AMQP_URL) + "?heartbeat=2"

    (procs.dir / "cut.1.hold").touch()  # the first attempt waits; the next runs through
    with app.app_context():
        cut_id = bgq.publish("held", {"group": "g", "name": "cut"}, serial_group="g")
    consume_a = a.start("bgq", "consume")
    wait_until("host-a starts the job", lambda: "cut 1 host-a" in _started(procs))
    a.cut()

    # The rest of the group (it must wait for the cut job) and plain jobs, for the others.
    with app.app_context():
        group_ids = [
            bgq.publish("held", {"group": "g", "name": f"g{n}", "pause": 0.1}, serial_group="g")
            for n in range(4)
        ]
        plain_ids = [bgq.publish("held", {"group": f"p{n}", "name": f"p{n}"}) for n in range(4)]
    b.start("bgq", "consume")
    c.start("bgq", "consume")

    def state(job_id: int) -> Any:
        with app.app_context():
            return bgq.get_job(job_id)

    # After the lost-worker window, host-b or host-c takes the job back and runs it again.
    job = wait_until("the cut job finished elsewhere", lambda: _finished(state(cut_id)))
    assert job.number_of_attempts == 2  # the lost attempt is counted
    assert job.hostname in ("host-b", "host-c")
    for job_id in group_ids + plain_ids:
        assert wait_until(f"job {job_id}", lambda j=job_id: _finished(state(j))).hostname in (
            "host-b",
            "host-c",
        )

    if ends_while_cut:
        # Still cut off, host-a's callback ends: its outcome cannot reach the database,
        # and its calls fail in bounded time (BGQUEUE_NETWORK_TIMEOUT_SECONDS), not the
        # kernel's quarter of an hour. It owes the outcome and rides the outage out.
        (procs.dir / "cut.1.hold").unlink()
        a.wait_for_log(r"lost the database", timeout=60)
        a.heal()
        a.wait_for_log(r"database back after")
    else:
        # The heartbeat thread's calls fail in bounded time while the callback runs on;
        # the cut heals first, then the callback ends.
        a.wait_for_log(r"bgqueue heartbeat failed", timeout=60)
        a.heal()
        (procs.dir / "cut.1.hold").unlink()
    refused = a.wait_for_log(rf"job {cut_id} was taken from this worker while it ran", 90)
    assert "not saved" in refused
    assert state(cut_id).state is JobState.FINISHED  # host-a's FINISHED was not written
    assert state(cut_id).number_of_attempts == 2

    # host-a goes on working: with host-b and host-c gone, it runs new jobs.
    for host in (b, c):
        for proc, _ in host.procs:
            assert host.stop(proc) == 0
    with app.app_context():
        after = [bgq.publish("held", {"group": "h", "name": f"after{n}"}) for n in range(2)]
    for job_id in after:
        assert wait_until(
            "host-a runs a new job", lambda j=job_id: _finished(state(j))
        ).hostname == ("host-a")
    assert consume_a.poll() is None  # it kept running throughout
    assert a.stop(consume_a) == 0

    # The group never ran two jobs at once, except host-a's lost attempt of the cut job,
    # which went on while the job ran again elsewhere (at-least-once): shown as attempt 1
    # of a job that took 2.
    recorded = runs(procs)
    lost = [r for r in recorded if r["name"] == "cut" and r["host"] == "host-a"]
    assert [r["attempt"] for r in lost] == [1]
    group = [r for r in recorded if r["group"] == "g" and r not in lost]
    assert sorted(r["name"] for r in group) == ["cut", "g0", "g1", "g2", "g3"]
    assert_exclusive(group)
    order = [r["name"] for r in sorted(group, key=lambda r: r["start"])]
    assert order == ["cut", "g0", "g1", "g2", "g3"]


def _started(procs: ProcEnv) -> str:
    path = procs.dir / "started.txt"
    return path.read_text() if path.exists() else ""


def _finished(job: Any) -> Any:
    return job if job is not None and job.state is JobState.FINISHED else None


@pytest.fixture
def amqp_name(request: pytest.FixtureRequest, broker: bool) -> Iterator[str | None]:
    """A queue of the test's own on RabbitMQ when the case has a broker."""
    if not broker:
        yield None
        return
    require_rabbitmq()
    yield request.getfixturevalue("amqp_queue")


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_cron_sweeps_on_several_hosts_side_by_side_keep_serial_groups_exclusive(
    procs: ProcEnv, hosts: Hosts, db_url: str
) -> None:
    procs.config.update(FAST)
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    with app.app_context():
        ids = [
            bgq.publish(
                "held",
                {"group": f"s{n % 2}", "name": f"j{n}", "pause": 0.05},
                serial_group=f"s{n % 2}",
            )
            for n in range(12)
        ] + [
            bgq.publish("held", {"group": f"q{n}", "name": f"q{n}", "pause": 0.05})
            for n in range(6)
        ]
    started = []
    for host in hosts:
        host.config.update(procs.config)
        started.append((host, host.start("bgq", "process")))
    for host, proc in started:  # each host has its own lock: none of them is turned away
        assert proc.wait(120) == 0, host.log(proc)
    with app.app_context():
        jobs = [bgq.get_job(i) for i in ids]
    leftover = [j.id for j in jobs if j.state is not JobState.FINISHED]
    if leftover:  # a sweep leaves a job its group kept WAITING to a later sweep: run one
        assert hosts["host-a"].start("bgq", "process").wait(120) == 0
        with app.app_context():
            jobs = [bgq.get_job(i) for i in ids]
    assert all(j.state is JobState.FINISHED and j.number_of_attempts == 1 for j in jobs)
    recorded = runs(procs)
    assert sorted(r["name"] for r in recorded) == sorted(
        [f"j{n}" for n in range(12)] + [f"q{n}" for n in range(6)]
    )
    assert {j.hostname for j in jobs} <= {"host-a", "host-b", "host-c"}
    assert all(r["host"] == j.hostname for j in jobs for r in recorded if r["name"] == _name(j))
    for group in ("s0", "s1"):
        mine = [r for r in recorded if r["group"] == group]
        assert_exclusive(mine)
        # in publication order, whichever host ran each
        assert [r["name"] for r in sorted(mine, key=lambda r: r["start"])] == [
            f"j{n}" for n in range(12) if n % 2 == int(group[1])
        ]


def _name(job: Any) -> str:
    return str(json.loads(job.parameters_json)["name"])


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_a_cron_sweep_cut_off_mid_job_ends_in_bounded_time_and_the_others_run_the_job(
    procs: ProcEnv, hosts: Hosts, db_url: str
) -> None:
    procs.config.update(FAST)
    app = procs.app()
    bgq = app.bgq  # type: ignore[attr-defined]
    a, b = hosts["host-a"], hosts["host-b"]
    for host in hosts:
        host.config.update(procs.config)
    (procs.dir / "cut.1.hold").touch()
    with app.app_context():
        cut_id = bgq.publish("held", {"group": "g", "name": "cut"}, serial_group="g")
        group_ids = [
            bgq.publish("held", {"group": "g", "name": f"g{n}"}, serial_group="g") for n in range(2)
        ]
    sweep_a = a.start("bgq", "process")
    wait_until("host-a starts the job", lambda: "cut 1 host-a" in _started(procs))
    a.cut()

    def finished() -> bool:
        with app.app_context():
            jobs = [bgq.get_job(i) for i in [cut_id, *group_ids]]
        return all(j.state is JobState.FINISHED for j in jobs)

    def sweep_b() -> bool:  # cron on host-b, every second or so
        assert b.start("bgq", "process").wait(60) == 0, b.log()
        return finished()

    wait_until("host-b takes the job back and runs the group", sweep_b)
    with app.app_context():
        job = bgq.get_job(cut_id)
    assert (job.hostname, job.number_of_attempts) == ("host-b", 2)

    # host-a's callback ends while it is cut off: saving its outcome fails in bounded
    # time, and the sweep ends with the database's error (its next run starts afresh).
    (procs.dir / "cut.1.hold").unlink()
    assert sweep_a.wait(60) != 0
    assert "OperationalError" in a.log(sweep_a)
    a.heal()
    with app.app_context():
        after = bgq.publish("held", {"group": "h", "name": "after"})
    assert a.start("bgq", "process").wait(60) == 0, a.log()
    with app.app_context():
        assert bgq.get_job(after).hostname == "host-a"
        assert bgq.get_job(cut_id).number_of_attempts == 2  # host-a's outcome never landed

    recorded = runs(procs)
    group = [r for r in recorded if r["group"] == "g" and r["host"] != "host-a"]
    assert [r["name"] for r in sorted(group, key=lambda r: r["start"])] == ["cut", "g0", "g1"]
    assert_exclusive(group)
