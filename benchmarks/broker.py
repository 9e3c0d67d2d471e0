"""Broker mode (PostgreSQL + RabbitMQ) next to the broker-less consumer and plain pika loops.

    .venv/bin/python benchmarks/broker.py [--jobs 10000] [--procs 1,2] [--latency-jobs 200]
        [--memory-jobs 100000] [--sections publish,drain,latency,memory,steady]
        [--publish-loops a,b] [--traffic-rate N] [--steady-gaps-ms 20,5,2]
        [--steady-jobs 1000] > broker.json

Sections (see BROKER.md for what each figure means):

``publish``  ``--jobs`` ``bgq.publish()`` calls one by one in broker mode (INSERT + COMMIT,
             then a confirmed persistent AMQP publish of the id), next to a plain pika loop
             (BlockingConnection, ``confirm_delivery``, one persistent publish per message to
             a durable queue) and the same loop plus a plain ``INSERT ... RETURNING id`` +
             ``COMMIT`` per message on a raw DBAPI connection (the floor); and broker-less
             publishing while another process sends persistent messages to RabbitMQ at
             broker mode's rate of the same round (or ``--traffic-rate`` a second): what
             RabbitMQ's work alone, outside the publishing process, costs the publisher.
``drain``    ``--jobs`` due no-op jobs drained by 1 and 2 ``flask bgq consume -j N``
             subprocesses (the N add up to ``--jobs``): with RabbitMQ, and without a broker
             (table polling + LISTEN/NOTIFY); next to a plain pika consumer (``basic_consume``,
             prefetch 1, one ack per message) in 1 and 2 processes.
``latency``  one idle consumer; ``--latency-jobs`` jobs published one after the other, each
             recording ``time.time()`` when its callback starts; latency = start - publish.
             With RabbitMQ, also ``plain_floor``: the same sequence with no library (row
             committed, id published with a confirm, claimed by a committed UPDATE in a
             plain pika consumer, acknowledged, start), the least such a design pays; its
             jobs alternate with the library's, and ``library_minus_floor_p50_ms`` is the
             median of each library job's latency minus the next floor job's.
``memory``   one consumer runs ``--memory-jobs`` no-op jobs (published in bulk, broker mode);
             its VmRSS is sampled every 10 % of them.
``steady``   broker mode, one consumer; for each of ``--steady-gaps-ms``, ``--steady-jobs``
             jobs published at a steady rate (one every gap, on a fixed schedule, without
             waiting for any to start; the caller busy in between, keeping the interpreter
             lock), each recording when its callback starts; latency = start - publish
             call, p50/p90/p99. Not in the default sections.

Every run uses fresh tables (``bench_<random>``) and fresh ``BGQUEUE_QUEUE`` names
(``bb<run>_<trial>``); the tables, their NOTIFY trigger functions and every RabbitMQ queue of
those names are removed at the end, even when the run fails. Prints one JSON document on
stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import brokerapp
import pika
import sqlalchemy as sa
from common import (
    AMQP_URL,
    HERE,
    SERVER_URLS,
    check_not_test_database,
    drop_tables,
    environment,
    log,
    new_table_name,
)

from flask_bgqueue import schema
from flask_bgqueue.broker.amqp import TIERS_MS, control_queue, delay_queue, work_queue

PG_URL = check_not_test_database(SERVER_URLS["postgresql"])
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
PRIORITY = 1  # BGQUEUE_PRIORITIES is left at its default, [1]
FINISHED = 3
DEFAULT_SECTIONS = ("publish", "drain", "latency", "memory")
SECTIONS = (*DEFAULT_SECTIONS, "steady")

TARGETS = {
    "drain_2_consumers_jobs_per_s_min": 3000,
    "latency_p50_ms_rabbitmq_max": 2.5,  # 1.0 when BROKER.md's table of figures was measured
    "latency_p50_ms_listen_notify_max": 5.0,
    "memory_last_5_samples_spread_max": 0.05,
}
COLUMNS = (
    "queue, priority, callback_name, parameters, parameters_json, state, created_at,"
    " updated_at, available_at, number_of_attempts, serial_group, identifier, is_unique"
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# -- names, processes and clean-up ------------------------------------------------------


class Run:
    """What this run creates: tables, queue names, RabbitMQ queues, subprocesses."""

    def __init__(self, tmp: str) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.tables: list[str] = []
        self.queues: list[str] = []  # BGQUEUE_QUEUE names
        self.amqp_queues: list[str] = []  # plain RabbitMQ queues of the plain loops
        self.procs: list[subprocess.Popen[bytes]] = []

    def table(self) -> str:
        name = new_table_name()
        self.tables.append(name)
        return name

    def queue(self, tag: str) -> str:
        name = f"bb{self.id}_{tag}"
        self.queues.append(name)
        return name

    def amqp_queue(self, tag: str) -> str:
        name = f"bbplain.{self.id}.{tag}"
        self.amqp_queues.append(name)
        return name

    def env(self, table: str, queue: str, broker: bool, **extra: str) -> dict[str, str]:
        return {
            "BROKERBENCH_DB_URL": PG_URL,
            "BROKERBENCH_TABLE": table,
            "BROKERBENCH_QUEUE": queue,
            "BROKERBENCH_BROKER_URL": AMQP_URL if broker else "",
            "BROKERBENCH_DIR": os.path.join(self.tmp, "instance"),
            "BROKERBENCH_CONFIG": os.environ.get("BROKERBENCH_CONFIG", "{}"),
            **extra,
        }

    def consumer(self, env: dict[str, str], max_jobs: int | None, name: str) -> Any:
        """Start ``flask bgq consume [-j N]`` with ``env``; output goes to files."""
        full = dict(os.environ)
        full.update(env)
        full["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, full.get("PYTHONPATH")) if p)
        cmd = [FLASK, "--app", "brokerapp:create_app", "bgq", "consume"]
        if max_jobs is not None:
            cmd += ["-j", str(max_jobs)]
        out = open(os.path.join(self.tmp, f"{name}.out"), "wb")
        err = open(os.path.join(self.tmp, f"{name}.err"), "wb")
        proc = subprocess.Popen(cmd, env=full, stdout=out, stderr=err)
        proc.out_path, proc.err_path = out.name, err.name  # type: ignore[attr-defined]
        out.close()
        err.close()
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:  # only the processes this run started, by their own pid
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        try:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            channel = connection.channel()
            for q in self.queues:
                for name in (
                    work_queue(q, PRIORITY),
                    *(delay_queue(q, PRIORITY, t) for t in TIERS_MS),
                    control_queue(q),
                ):
                    channel.queue_delete(name)
            for name in self.amqp_queues:
                channel.queue_delete(name)
            connection.close()
        except Exception as exc:  # report, and still drop the tables
            log(f"could not delete the RabbitMQ queues of run {self.id}: {exc!r}")
        drop_tables(PG_URL, self.tables)


def wait_consumers(procs: list[Any], timeout: float) -> list[int]:
    """Wait for consumers to exit; return what each reports (``consumed N job(s)``)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"consumer {p.pid} still running after {timeout} s") from None
    counts = []
    for p in procs:
        with open(p.out_path) as f:
            out = f.read()
        with open(p.err_path) as f:
            err = f.read()
        m = re.search(r"consumed (\d+) job", out)
        if p.returncode != 0 or m is None:
            raise RuntimeError(f"consumer exited {p.returncode}: {out[-500:]!r} {err[-2000:]}")
        counts.append(int(m.group(1)))
    return counts


def stop_consumer(proc: Any) -> int:
    proc.send_signal(signal.SIGTERM)
    return wait_consumers([proc], 30)[0]


def open_app(env: dict[str, str]) -> Any:
    """A publishing app of its own, with its job table created (schema upgraded)."""
    app = brokerapp.create_app(env)
    with app.app_context():
        app.extensions["bgqueue"].store  # noqa: B018 - creates the table before any consumer
    return app


def close_app(app: Any) -> None:
    state = app.extensions["bgqueue"]
    if state.broker is not None:
        state.broker.close()
    state.engine.dispose()


def fill(app: Any, n: int) -> float:
    """Publish ``n`` no-op jobs in bulk (in broker mode each id is sent, confirmed)."""
    t0 = time.perf_counter()
    with app.app_context():
        with brokerapp.bgq.bulk():
            for _ in range(n):
                brokerapp.bgq.publish("noop")
    return time.perf_counter() - t0


def table_states(table: str) -> tuple[dict[int, int], datetime | None, datetime | None]:
    """Jobs per state, the first claim and the last finish the consumers wrote."""
    engine = sa.create_engine(PG_URL, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            states: dict[int, int] = dict(
                conn.exec_driver_sql(f'SELECT state, COUNT(*) FROM "{table}" GROUP BY state').all()
            )
            first, last = conn.exec_driver_sql(
                f'SELECT MIN(last_attempt_at), MAX(finished_at) FROM "{table}"'
            ).one()
    finally:
        engine.dispose()
    return states, first, last


def check_finished(table: str, n: int) -> tuple[datetime, datetime]:
    states, first, last = table_states(table)
    if states != {FINISHED: n}:
        raise AssertionError(f"{table}: expected {n} FINISHED jobs, found {states} by state")
    assert first is not None and last is not None
    return first, last


def claim_times(table: str, job_ids: list[int]) -> dict[int, float]:
    """Each job's ``last_attempt_at`` (naive UTC, written by the claim) as a Unix time."""
    engine = sa.create_engine(PG_URL, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f'SELECT id, last_attempt_at FROM "{table}" WHERE id = ANY(%(ids)s)',
                {"ids": job_ids},
            ).all()
    finally:
        engine.dispose()
    return {i: t.replace(tzinfo=timezone.utc).timestamp() for i, t in rows}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- 1. publishing ------------------------------------------------------------------------


def server_pids() -> dict[str, list[int]]:
    """The local PostgreSQL and RabbitMQ server processes (by their /proc names)."""
    found: dict[str, list[int]] = {"postgresql": [], "rabbitmq": []}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                name = f.read().strip()
        except OSError:  # gone, or not ours to read
            continue
        if name == "postgres":
            found["postgresql"].append(int(entry))
        elif name == "beam.smp":
            found["rabbitmq"].append(int(entry))
    return found


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process (all its threads) and by
    each group of ``pids``."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    spent = {"this_process": usage.ru_utime + usage.ru_stime}
    tick = os.sysconf("SC_CLK_TCK")
    for group, members in pids.items():
        total = 0
        for pid in members:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # ended since
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        spent[group] = total / tick
    return spent


#: The publish section's loops: one by one, then in bulk (``--publish-loops``).
ONE_BY_ONE_LOOPS = (
    "bgq_publish",
    "bgq_publish_wait_for_confirm",
    "bgq_publish_brokerless",
    "plain_pika",
    "plain_pika_plus_insert",
    "bgq_publish_brokerless_beside_traffic",
)
BULK_LOOPS = ("bgq_bulk", "bgq_bulk_brokerless")
#: ratio key -> (loop a, loop b): a's time over b's, i.e. b's throughput as a share of a's
RATIOS = {
    "ratio_bgq_to_plain_pika": ("plain_pika", "bgq_publish"),
    "ratio_bgq_to_plain_pika_plus_insert": ("plain_pika_plus_insert", "bgq_publish"),
    "ratio_bgq_to_brokerless": ("bgq_publish_brokerless", "bgq_publish"),
    "ratio_bulk_to_brokerless_bulk": ("bgq_bulk_brokerless", "bgq_bulk"),
    "ratio_brokerless_beside_traffic_to_brokerless": (
        "bgq_publish_brokerless",
        "bgq_publish_brokerless_beside_traffic",
    ),
}


def pika_traffic(queue: str, rate: Any, go: Any, stop: Any, sent: Any) -> None:
    """Another process's RabbitMQ traffic: persistent messages to a durable queue,
    ``rate.value`` a second in batches every 10 ms (as the publisher thread sends them),
    while ``go`` is set; ``sent`` counts them."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    props = pika.BasicProperties(delivery_mode=2)
    i = 0
    while not stop.is_set():
        if not go.wait(0.1):
            connection.process_data_events(0)
            continue
        t0 = time.monotonic()
        batch = max(1, round(rate.value / 100))
        for _ in range(batch):
            i += 1
            channel.basic_publish("", queue, str(i).encode(), props, mandatory=True)
        with sent.get_lock():
            sent.value += batch
        time.sleep(max(0.0, 0.01 - (time.monotonic() - t0)))
    connection.close()


class Traffic:
    """``pika_traffic`` in a process of its own, sending only around the timed slices of
    the loop it goes with (not during the others' or the warm-up)."""

    def __init__(self, queue: str) -> None:
        ctx = multiprocessing.get_context("fork")
        self.go, self.stop, self.sent = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
        self.rate = ctx.Value("q", 0)
        self.proc = ctx.Process(
            target=pika_traffic,
            args=(queue, self.rate, self.go, self.stop, self.sent),
            daemon=True,
        )
        self.proc.start()
        self.rates: list[int] = []  # asked, one per timed slice
        self.messages = 0
        self.seconds = 0.0

    @contextlib.contextmanager
    def sending(self, rate: int) -> Iterator[None]:
        self.rates.append(rate)
        self.rate.value = rate
        before = self.sent.value
        self.go.set()
        deadline = time.monotonic() + 10
        while self.sent.value == before:  # its first batch is out: it is sending
            if time.monotonic() > deadline or not self.proc.is_alive():
                raise RuntimeError("[publish] the RabbitMQ traffic process does not send")
            time.sleep(0.001)
        before = self.sent.value
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0
            self.messages += self.sent.value - before
            self.go.clear()

    def close(self) -> None:
        self.stop.set()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


def bench_publish(
    run: Run,
    n: int,
    rounds: int = 10,
    warmup: int = 200,
    only: Sequence[str] = ONE_BY_ONE_LOOPS + BULK_LOOPS,
    traffic_rate: int | None = None,
) -> dict[str, Any]:
    """bgq.publish (broker mode, pipelined and waiting for each confirm; broker-less) vs.
    plain pika vs. plain pika + INSERT, one by one; then in bulk; interleaved. ``only``:
    the loops to run (the others leave the server load they would add out of the run);
    a ratio is given when both its loops ran. ``traffic_rate``: messages a second that
    another process sends to RabbitMQ during ``bgq_publish_brokerless_beside_traffic``;
    ``None``: the rate ``bgq_publish`` reached in the same round (2,500 without it)."""
    queue = run.queue("pub")
    app = open_app(run.env(run.table(), queue, broker=True))
    wait_config = json.dumps(
        {
            **json.loads(os.environ.get("BROKERBENCH_CONFIG", "{}")),
            "BGQUEUE_BROKER_WAIT_FOR_CONFIRM": True,
        }
    )
    wait_app = open_app(
        run.env(run.table(), run.queue("pubwait"), broker=True, BROKERBENCH_CONFIG=wait_config)
    )
    plain_table = run.table()
    plain_app = open_app(run.env(plain_table, run.queue("pubsql"), broker=False))
    engine = plain_app.extensions["bgqueue"].engine  # same engine options as the library's
    raw = engine.raw_connection()
    cur = raw.cursor()
    insert = (
        f'INSERT INTO "{plain_table}" ({COLUMNS}) VALUES'
        " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
    )

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    q_pika, q_pika_sql = run.amqp_queue("pub"), run.amqp_queue("pubsql")
    for q in (q_pika, q_pika_sql):
        channel.queue_declare(q, durable=True)
    props = pika.BasicProperties(delivery_mode=2)
    counter = iter(range(10**9))

    def publisher(on: Any, bulk: bool = False) -> Any:
        def loop(k: int) -> None:
            with on.app_context():
                if bulk:
                    brokerapp.bgq.start_bulk()
                for _ in range(k):
                    i = next(counter)
                    brokerapp.bgq.publish("send_mail", {"n": i, "to": "user@example.com"})
                if bulk:
                    brokerapp.bgq.end_bulk()
            broker = on.extensions["bgqueue"].broker
            if broker is not None and not broker.flush(120):  # every confirm is in the time
                raise SystemExit("confirms still outstanding after 120 s")

        return loop

    def pika_loop(k: int) -> None:
        for _ in range(k):
            i = next(counter)
            channel.basic_publish("", q_pika, str(i).encode(), props, mandatory=True)

    def pika_sql_loop(k: int) -> None:
        for _ in range(k):
            i = next(counter)
            now = utcnow()
            cur.execute(
                insert,
                (
                    queue,
                    PRIORITY,
                    "send_mail",
                    None,
                    json.dumps({"n": i, "to": "user@example.com"}, separators=(",", ":")),
                    1,
                    now,
                    now,
                    now,
                    0,
                    None,
                    None,
                    False,
                ),
            )
            job_id = cur.fetchone()[0]
            raw.commit()
            channel.basic_publish("", q_pika_sql, str(job_id).encode(), props, mandatory=True)

    one_by_one = {
        "bgq_publish": publisher(app),
        "bgq_publish_wait_for_confirm": publisher(wait_app),
        "bgq_publish_brokerless": publisher(plain_app),
        "plain_pika": pika_loop,
        "plain_pika_plus_insert": pika_sql_loop,
        "bgq_publish_brokerless_beside_traffic": publisher(plain_app),
    }
    bulk = {
        "bgq_bulk": publisher(app, bulk=True),
        "bgq_bulk_brokerless": publisher(plain_app, bulk=True),
    }
    assert (tuple(one_by_one), tuple(bulk)) == (ONE_BY_ONE_LOOPS, BULK_LOOPS)  # the names
    one_by_one = {name: loop for name, loop in one_by_one.items() if name in only}
    bulk = {name: loop for name, loop in bulk.items() if name in only}
    traffic = None
    if "bgq_publish_brokerless_beside_traffic" in one_by_one:
        traffic = Traffic(run.amqp_queue("traffic"))
    spent = dict.fromkeys([*one_by_one, *bulk], 0.0)
    this_round: dict[str, float] = {}  # loop -> seconds of its slice in the current round
    cpu: dict[str, dict[str, float]] = {name: {} for name in spent}
    try:
        for group, loops, size in (("one by one", one_by_one, n), ("bulk", bulk, n * 5)):
            if not loops:
                continue
            log(f"[publish] {group}: warm-up: {warmup} of each")
            for loop in loops.values():
                loop(warmup)
            per_round = [size // rounds + (1 if r < size % rounds else 0) for r in range(rounds)]
            for r, k in enumerate(per_round):
                for name, loop in loops.items():
                    servers = server_pids()  # with the backends the warm-up connected
                    around: Any = contextlib.nullcontext()
                    if traffic is not None and name == "bgq_publish_brokerless_beside_traffic":
                        broker_mode = this_round.get("bgq_publish")  # its slice this round
                        rate = traffic_rate or (round(k / broker_mode) if broker_mode else 2500)
                        around = traffic.sending(rate)
                    with around:
                        c0 = cpu_seconds(servers)
                        t0 = time.perf_counter()
                        loop(k)
                        this_round[name] = time.perf_counter() - t0
                        spent[name] += this_round[name]
                        c1 = cpu_seconds(servers)
                    for who, seconds in c1.items():
                        cpu[name][who] = cpu[name].get(who, 0.0) + seconds - c0[who]
                log(
                    f"[publish] {group} round {r + 1}/{rounds}: "
                    + ", ".join(
                        f"{name} {round(size * (r + 1) / rounds / spent[name])}/s" for name in loops
                    )
                )
    finally:
        if traffic is not None:
            traffic.close()
        cur.close()
        raw.close()
        connection.close()
        close_app(app)
        close_app(wait_app)
        close_app(plain_app)
    result: dict[str, Any] = {
        name: {
            "jobs": (size := n * 5 if name in bulk else n),
            "jobs_per_s": round(size / s),
            "seconds": round(s, 3),
            "ms_per_job": ms(s / size),
            # CPU per job of this process (the publishing thread and the library's publisher
            # thread) and of the local servers, during the timed slices
            "cpu_ms_per_job": {who: ms(c / size) for who, c in cpu[name].items()},
        }
        for name, s in spent.items()
    }
    for key, (a, b) in RATIOS.items():
        if a in spent and b in spent:
            result[key] = round(spent[a] / spent[b], 3)
    if traffic is not None:  # what the other process really sent while the loop ran
        result["traffic"] = {
            "rates_asked": traffic.rates,
            "messages": traffic.messages,
            "messages_per_s": round(traffic.messages / traffic.seconds),
        }
    return result


# -- 2. draining --------------------------------------------------------------------------


def split(n: int, procs: int) -> list[int]:
    return [n // procs + (1 if i < n % procs else 0) for i in range(procs)]


def drain_bgq(run: Run, n: int, procs: int, broker: bool) -> dict[str, Any]:
    kind = "rabbitmq" if broker else "no_broker"
    tag = f"d{'r' if broker else 'n'}{procs}"
    table, queue = run.table(), run.queue(tag)
    env = run.env(table, queue, broker)
    app = open_app(env)
    log(f"[drain] {kind}, {procs} consumer(s): publishing {n} jobs in bulk")
    fill(app, n)
    close_app(app)
    log(f"[drain] {kind}, {procs} consumer(s): draining")
    started_wall = utcnow()
    t0 = time.perf_counter()
    consumers = [run.consumer(env, share, f"{tag}_{i}") for i, share in enumerate(split(n, procs))]
    counts = wait_consumers(consumers, 1800)
    until_exit = time.perf_counter() - t0
    if sum(counts) != n:
        raise AssertionError(f"consumers report {counts} jobs, expected {n} in all")
    first, last = check_finished(table, n)
    to_finished = (last - started_wall).total_seconds()
    after_claim = (last - first).total_seconds()
    figures: dict[str, Any] = {
        "jobs_per_s": round(n / to_finished),
        "seconds": round(to_finished, 3),
        "jobs_per_s_after_first_claim": round(n / after_claim),
        "startup_seconds": round((first - started_wall).total_seconds(), 3),
        "jobs_per_s_until_exit": round(n / until_exit),
        "jobs_per_consumer": counts,
    }
    log(
        f"[drain]     {figures['jobs_per_s']} jobs/s"
        f" ({figures['jobs_per_s_after_first_claim']} after the first claim)"
    )
    return figures


def plain_consumer(queue: str, share: int, out: Any) -> None:
    """basic_consume, prefetch 1, one ack per message, until ``share`` messages are acked."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    count = 0
    last = 0.0

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal count, last
        int(body)
        ch.basic_ack(method.delivery_tag)
        count += 1
        if count >= share:
            last = time.time()
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    connection.close()
    out.put((count, last))


def drain_plain(run: Run, n: int, procs: int) -> dict[str, Any]:
    queue = run.amqp_queue(f"drain{procs}")
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    props = pika.BasicProperties(delivery_mode=2)
    log(f"[drain] plain pika, {procs} process(es): publishing {n} messages")
    for i in range(n):
        channel.basic_publish("", queue, str(i).encode(), props)
    while channel.queue_declare(queue, durable=True, passive=True).method.message_count < n:
        connection.sleep(0.05)
    connection.close()
    log(f"[drain] plain pika, {procs} process(es): draining")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    started = time.time()
    t0 = time.perf_counter()
    workers = [ctx.Process(target=plain_consumer, args=(queue, s, out)) for s in split(n, procs)]
    for w in workers:
        w.start()
    reports = [out.get(timeout=1800) for _ in workers]
    for w in workers:
        w.join()
    until_exit = time.perf_counter() - t0
    if any(w.exitcode != 0 for w in workers):
        raise RuntimeError(f"a plain consumer failed: {[w.exitcode for w in workers]}")
    counts = [c for c, _ in reports]
    if sum(counts) != n:
        raise AssertionError(f"plain consumers report {counts}, expected {n} in all")
    to_last = max(t for _, t in reports) - started
    figures: dict[str, Any] = {
        "jobs_per_s": round(n / to_last),
        "seconds": round(to_last, 3),
        "jobs_per_s_until_exit": round(n / until_exit),
        "messages_per_process": counts,
    }
    log(f"[drain]     {figures['jobs_per_s']} messages/s")
    return figures


def bench_drain(run: Run, n: int, procs_list: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bgq_consume_rabbitmq": {},
        "bgq_consume_no_broker": {},
        "plain_pika": {},
    }
    for procs in procs_list:
        result["bgq_consume_rabbitmq"][str(procs)] = drain_bgq(run, n, procs, broker=True)
        result["bgq_consume_no_broker"][str(procs)] = drain_bgq(run, n, procs, broker=False)
        result["plain_pika"][str(procs)] = drain_plain(run, n, procs)
    target = TARGETS["drain_2_consumers_jobs_per_s_min"]
    result["target_2_consumers_jobs_per_s_min"] = target
    if "2" in result["bgq_consume_rabbitmq"]:
        result["target_met"] = {
            kind: result[kind]["2"]["jobs_per_s"] >= target
            for kind in ("bgq_consume_rabbitmq", "bgq_consume_no_broker")
        }
    return result


# -- 3. publish-to-start latency ----------------------------------------------------------


def plain_latency_consumer(queue: str, table: str, stamp: tuple[str, int], ready: Any) -> None:
    """The floor's consumer: per message, claim the row (one autocommit ``UPDATE``), ack,
    take ``time.time()`` and send it by UDP (with when the message came and how long the
    claim took), then mark the row finished."""
    engine = sa.create_engine(PG_URL, poolclass=sa.NullPool)
    raw: Any = engine.raw_connection()
    raw.driver_connection.autocommit = True
    cur = raw.cursor()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    claim = (
        f'UPDATE "{table}" SET state = 2, number_of_attempts = number_of_attempts + 1,'
        f" last_attempt_at = %s, heartbeat_at = %s, updated_at = %s, pid = %s, hostname = %s"
        f" WHERE id = %s AND state = 1 RETURNING id"
    )
    finish = f'UPDATE "{table}" SET state = {FINISHED}, finished_at = %s WHERE id = %s'
    pid, host = os.getpid(), socket.gethostname()
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        received = time.time()
        if body == b"stop":
            ch.basic_ack(method.delivery_tag)
            ch.stop_consuming()
            return
        job_id = int(body)
        now = utcnow()
        before_claim = time.perf_counter()
        cur.execute(claim, (now, now, now, pid, host, job_id))
        claimed = cur.fetchone() is not None
        claim_seconds = time.perf_counter() - before_claim
        ch.basic_ack(method.delivery_tag)
        if claimed:
            started = time.time()
            sock.sendto(f"{job_id} {started!r} {received!r} {claim_seconds!r}".encode(), stamp)
            cur.execute(finish, (utcnow(), job_id))

    channel.basic_consume(queue, on_message)
    ready.set()
    channel.start_consuming()
    connection.close()
    raw.close()
    engine.dispose()


class FloorJob(NamedTuple):
    """One job of the latency floor, in seconds: publish -> start, and three of its steps."""

    total: float
    insert: float  #: the autocommit INSERT (the row's commit)
    hop: float  #: from the INSERT's return to the consumer's receipt: RabbitMQ's trip
    claim: float  #: the consumer's autocommit UPDATE (the claim's commit)


@contextlib.contextmanager
def latency_floor(run: Run) -> Iterator[Callable[[int], FloorJob]]:
    """The least a job queue that keeps jobs in PostgreSQL and wakes consumers through
    RabbitMQ must do between publish and start, with no library: the job row committed
    (``INSERT ... RETURNING id`` in autocommit, one round trip), its id published
    (persistent, confirmed, durable queue), received by a consumer in another process,
    claimed by a committed ``UPDATE`` (autocommit), acknowledged; then the start time.

    Yields ``one(seq)``: one such job, as :class:`FloorJob` (publish -> start and its
    steps, in seconds). ``bench_latency`` runs it between the library's jobs, so that both
    see the machine in the same state (an idle virtual machine wakes its processes slowly,
    and how slowly changes within minutes)."""
    table, queue = run.table(), run.amqp_queue("latfloor")
    engine = sa.create_engine(PG_URL, poolclass=sa.NullPool)
    schema.upgrade(engine, table)  # the library's own table: same columns and indexes
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    consumer = ctx.Process(
        target=plain_latency_consumer, args=(queue, table, sock.getsockname(), ready)
    )
    consumer.start()
    raw: Any = engine.raw_connection()
    raw.driver_connection.autocommit = True
    cur = raw.cursor()
    insert = (
        f'INSERT INTO "{table}" (queue, priority, callback_name, parameters_json, state,'
        f" created_at, updated_at, available_at, number_of_attempts, is_unique)"
        f" VALUES (%s, %s, %s, %s, 1, %s, %s, %s, 0, false) RETURNING id"
    )

    def one(seq: int) -> FloorJob:
        t_call = time.time()
        now = utcnow()
        cur.execute(insert, ("floor", PRIORITY, "stamp", json.dumps({"seq": seq}), now, now, now))
        job_id = cur.fetchone()[0]
        inserted = time.time()
        channel.basic_publish("", queue, str(job_id).encode(), props)
        sock.settimeout(10)
        while True:
            got, started, received, claim = sock.recv(200).decode().split()
            if int(got) == job_id:
                return FloorJob(
                    total=float(started) - t_call,
                    insert=inserted - t_call,
                    hop=float(received) - inserted,
                    claim=float(claim),
                )

    try:
        if not ready.wait(60):
            raise RuntimeError("[latency floor] the plain consumer did not start")
        yield one
        channel.basic_publish("", queue, b"stop", props)
        consumer.join(30)
    finally:
        if consumer.is_alive():
            consumer.terminate()
            consumer.join()
        sock.close()
        raw.close()
        connection.close()
        engine.dispose()


def bench_steady(run: Run, n: int, gaps_ms: list[float]) -> dict[str, Any]:
    """Broker mode, one consumer: ``n`` jobs published one every ``gap`` ms on a fixed
    schedule (a steady stream, not waiting for any job to start), the caller busy between
    publishes; publish -> start."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    starts: dict[int, float] = {}

    def receive() -> None:
        while True:
            try:
                got, started = sock.recv(100).decode().split()
            except OSError:  # closed at the end
                return
            starts[int(got)] = float(started)

    threading.Thread(target=receive, name="steady-stamps", daemon=True).start()
    result: dict[str, Any] = {"jobs": n}
    try:
        for i, gap_ms in enumerate(gaps_ms):
            table, queue = run.table(), run.queue(f"st{i}")
            env = run.env(table, queue, True, BROKERBENCH_STAMP_ADDR=f"{host}:{port}")
            app = open_app(env)
            consumer = run.consumer(env, None, f"steady_{i}")
            starts.clear()
            calls: dict[int, float] = {}
            try:
                with app.app_context():
                    brokerapp.bgq.publish("stamp", {"seq": -1})
                    deadline = time.monotonic() + 120
                    while -1 not in starts:  # the consumer is up
                        if time.monotonic() > deadline:
                            raise RuntimeError("[steady] the consumer did not start")
                        time.sleep(0.01)
                    log(f"[steady] {n} jobs, one every {gap_ms:g} ms")
                    due = time.perf_counter()
                    for seq in range(n):
                        calls[seq] = time.time()
                        brokerapp.bgq.publish("stamp", {"seq": seq})
                        # busy until the next is due, as a request rendering a page is: the
                        # caller keeps the interpreter lock (a sleeping caller leaves it)
                        due += gap_ms / 1000
                        while time.perf_counter() < due:
                            pass
                    deadline = time.monotonic() + 60
                    while any(seq not in starts for seq in calls):
                        if time.monotonic() > deadline:
                            raise RuntimeError("[steady] not every job started in 60 s")
                        time.sleep(0.05)
                stop_consumer(consumer)
            finally:
                close_app(app)
            check_finished(table, n + 1)
            waits = [starts[seq] - t for seq, t in calls.items()]
            figures = {
                "jobs_per_s": round(1000 / gap_ms),
                "p50_ms": ms(percentile(waits, 50)),
                "p90_ms": ms(percentile(waits, 90)),
                "p99_ms": ms(percentile(waits, 99)),
            }
            result[f"gap_{gap_ms:g}_ms"] = figures
            log(f"[steady]     p50 {figures['p50_ms']} ms, p90 {figures['p90_ms']} ms")
    finally:
        sock.close()
    return result


def bench_latency(
    run: Run, n: int, broker: bool, gap: float = 0.02, warmup: int = 10
) -> dict[str, Any]:
    kind = "rabbitmq" if broker else "listen_notify"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    table, queue = run.table(), run.queue(f"lat{'r' if broker else 'n'}")
    env = run.env(table, queue, broker, BROKERBENCH_STAMP_ADDR=f"{host}:{port}")
    app = open_app(env)
    consumer = run.consumer(env, None, f"lat_{kind}")
    from_call: list[float] = []
    from_return: list[float] = []
    publish_call: list[float] = []
    job_ids: list[int] = []
    starts: list[float] = []

    def one(seq: int, timeout: float) -> tuple[float, float, float]:
        t_call = time.time()
        job_id = brokerapp.bgq.publish("stamp", {"seq": seq})
        t_return = time.time()
        assert job_id is not None  # published outside bulk(): the row is written
        if seq >= 0:
            job_ids.append(job_id)
        sock.settimeout(timeout)
        while True:
            try:
                data = sock.recv(100)
            except TimeoutError:
                raise RuntimeError(
                    f"[latency {kind}] job {seq} did not start within {timeout} s"
                ) from None
            got, started = data.decode().split()
            if int(got) == seq:
                return t_call, t_return, float(started)

    floor: list[FloorJob] = []
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(app.app_context())
            plain = stack.enter_context(latency_floor(run)) if broker else None
            log(f"[latency] {kind}: waiting for the consumer, {warmup} warm-up jobs")
            for i in range(warmup):
                one(-1 - i, 120 if i == 0 else 10)
                time.sleep(gap)
                if plain is not None:
                    plain(-1 - i)
                    time.sleep(gap)
            log(
                f"[latency] {kind}: {n} sequential jobs, {int(gap * 1000)} ms apart"
                + (", each followed by one of the plain floor" if plain else "")
            )
            for i in range(n):
                t_call, t_return, started = one(i, 10)
                starts.append(started)
                from_call.append(started - t_call)
                from_return.append(started - t_return)
                publish_call.append(t_return - t_call)
                time.sleep(gap)  # let the consumer save the outcome and go idle again
                if plain is not None:
                    floor.append(plain(i))
                    time.sleep(gap)
        stop_consumer(consumer)
    finally:
        sock.close()
        close_app(app)
    check_finished(table, n + warmup)
    # Where the time goes: the claim's clock reading (last_attempt_at, taken just before the
    # claim transaction) splits publish -> start into "reaching the consumer" and the rest.
    claimed_at = claim_times(table, job_ids)
    to_claim = [claimed_at[j] - (s - d) for j, s, d in zip(job_ids, starts, from_call, strict=True)]
    claim_to_start = [s - claimed_at[j] for j, s in zip(job_ids, starts, strict=True)]
    target = TARGETS[f"latency_p50_ms_{kind}_max"]
    figures: dict[str, Any] = {
        "p50_ms": ms(percentile(from_call, 50)),
        "p99_ms": ms(percentile(from_call, 99)),
        "mean_ms": ms(sum(from_call) / n),
        "max_ms": ms(max(from_call)),
        "p50_ms_from_publish_return": ms(percentile(from_return, 50)),
        "p99_ms_from_publish_return": ms(percentile(from_return, 99)),
        "publish_call_p50_ms": ms(percentile(publish_call, 50)),
        "publish_call_p99_ms": ms(percentile(publish_call, 99)),
        "publish_to_claim_p50_ms": ms(percentile(to_claim, 50)),
        "claim_to_start_p50_ms": ms(percentile(claim_to_start, 50)),
        "target_p50_ms_max": target,
        "target_met": percentile(from_call, 50) * 1000 <= target,
    }
    log(f"[latency]     p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")
    if floor:
        totals = [job.total for job in floor]
        above = [lib - bare for lib, bare in zip(from_call, totals, strict=True)]
        f = figures["plain_floor"] = {
            "p50_ms": ms(percentile(totals, 50)),
            "p99_ms": ms(percentile(totals, 99)),
            # each library job next to the floor's job that followed it
            "library_minus_floor_p50_ms": ms(percentile(above, 50)),
            # where the floor's own time goes: two commits and RabbitMQ's trip
            "insert_commit_p50_ms": ms(percentile([job.insert for job in floor], 50)),
            "rabbitmq_hop_p50_ms": ms(percentile([job.hop for job in floor], 50)),
            "claim_commit_p50_ms": ms(percentile([job.claim for job in floor], 50)),
        }
        log(
            f"[latency]     floor p50 {f['p50_ms']} ms (INSERT {f['insert_commit_p50_ms']},"
            f" RabbitMQ {f['rabbitmq_hop_p50_ms']}, claim {f['claim_commit_p50_ms']});"
            f" library - floor, job by job: p50 {f['library_minus_floor_p50_ms']} ms"
        )
    return figures


# -- 4. consumer memory -------------------------------------------------------------------


def bench_memory(run: Run, n: int, samples: int = 10) -> dict[str, Any]:
    table, queue = run.table(), run.queue("mem")
    env = run.env(table, queue, broker=True)
    app = open_app(env)
    log(f"[memory] publishing {n} jobs in bulk (broker mode)")
    publish_seconds = fill(app, n)
    close_app(app)
    log(f"[memory]     {round(n / publish_seconds)} jobs/s; starting one consumer")
    every = n // samples
    engine = sa.create_engine(PG_URL, poolclass=sa.NullPool)
    series: list[dict[str, int]] = []
    t0 = time.perf_counter()
    consumer = run.consumer(env, None, "memory")
    first_rss = None
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            count_sql = f'SELECT COUNT(*) FROM "{table}" WHERE state = {FINISHED}'
            deadline = time.monotonic() + 3600
            while len(series) < samples:
                if consumer.poll() is not None:
                    raise RuntimeError(f"the memory consumer exited {consumer.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the memory consumer did not finish within an hour")
                done = conn.exec_driver_sql(count_sql).scalar_one()
                if first_rss is None and done:
                    first_rss = {"finished": done, "rss_kb": rss_kb(consumer.pid)}
                if done >= every * (len(series) + 1):
                    series.append({"finished": done, "rss_kb": rss_kb(consumer.pid)})
                    log(f"[memory]     {done} finished: VmRSS {series[-1]['rss_kb']} kB")
                    continue
                time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        consumed = stop_consumer(consumer)
    finally:
        engine.dispose()
    check_finished(table, n)
    last5 = [s["rss_kb"] for s in series[-5:]]
    spread = max(last5) / min(last5) - 1
    growth = series[-1]["rss_kb"] - series[len(series) // 2 - 1]["rss_kb"]
    return {
        "jobs": n,
        "consumed": consumed,
        "bulk_publish_jobs_per_s": round(n / publish_seconds),
        "consume_jobs_per_s": round(n / elapsed),
        "rss_kb_at_first_job": first_rss,
        "samples": series,
        "last_5_spread": round(spread, 4),
        "rss_kb_growth_second_half": growth,
        "stops_growing": spread <= TARGETS["memory_last_5_samples_spread_max"],
        "target_last_5_spread_max": TARGETS["memory_last_5_samples_spread_max"],
    }


# -- main -----------------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    engine = sa.create_engine(PG_URL, poolclass=sa.NullPool)
    try:
        info = environment({"postgresql": engine})
    finally:
        engine.dispose()
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    props = connection._impl.server_properties
    connection.close()
    version = props.get("version", "?")
    info["rabbitmq"] = version.decode() if isinstance(version, bytes) else version
    info["pika"] = pika.__version__
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000, help="publish/drain jobs (10000)")
    parser.add_argument("--procs", default="1,2", help="consumer counts for drain (1,2)")
    parser.add_argument("--latency-jobs", type=int, default=200, help="latency jobs (200)")
    parser.add_argument("--memory-jobs", type=int, default=100000, help="memory jobs (100000)")
    parser.add_argument("--sections", default=",".join(DEFAULT_SECTIONS), help=",".join(SECTIONS))
    parser.add_argument(
        "--steady-gaps-ms", default="20,5,2", help="steady: ms between publishes (20,5,2)"
    )
    parser.add_argument("--steady-jobs", type=int, default=1000, help="steady: jobs per gap")
    loops = ONE_BY_ONE_LOOPS + BULK_LOOPS
    parser.add_argument(
        "--publish-loops",
        default=",".join(loops),
        help=f"the publish section's loops (all): {','.join(loops)}",
    )
    parser.add_argument(
        "--traffic-rate",
        type=int,
        default=None,
        help="messages/s another process sends to RabbitMQ during"
        " bgq_publish_brokerless_beside_traffic (default: bgq_publish's rate of the same"
        " round, or 2500 when it does not run)",
    )
    args = parser.parse_args()
    only = [s.strip() for s in args.publish_loops.split(",") if s.strip()]
    unknown_loops = sorted(set(only) - set(loops))
    if unknown_loops or not only:
        parser.error(
            f"unknown or no --publish-loops {unknown_loops}; choose from {', '.join(loops)}"
        )
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    procs_list = [int(p) for p in args.procs.split(",") if p.strip()]
    if args.traffic_rate is not None and args.traffic_rate < 1:
        parser.error("--traffic-rate must be at least 1 (messages a second)")
    if args.memory_jobs < 10 * 5 and "memory" in sections:
        parser.error("--memory-jobs must be at least 50")

    out: dict[str, Any] = {
        "benchmark": "broker",
        "jobs": args.jobs,
        "database": PG_URL.split("@")[-1],
        "broker": AMQP_URL.split("@")[-1],
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory(prefix="bgq-bench-broker-") as tmp:
        run = Run(tmp)
        out["run_id"] = run.id
        log(f"run {run.id}: queues bb{run.id}_*, temp folder {tmp}")
        try:
            if "publish" in sections:
                out["publish"] = bench_publish(
                    run, args.jobs, only=only, traffic_rate=args.traffic_rate
                )
            if "drain" in sections:
                out["drain"] = bench_drain(run, args.jobs, procs_list)
            if "latency" in sections:
                out["latency"] = {
                    "jobs": args.latency_jobs,
                    "rabbitmq": bench_latency(run, args.latency_jobs, broker=True),
                    "listen_notify": bench_latency(run, args.latency_jobs, broker=False),
                }
            if "memory" in sections:
                out["memory"] = bench_memory(run, args.memory_jobs)
            if "steady" in sections:
                gaps = [float(g) for g in args.steady_gaps_ms.split(",") if g.strip()]
                out["steady"] = bench_steady(run, args.steady_jobs, gaps)
        finally:
            log(
                f"cleaning up run {run.id}: {len(run.tables)} table(s),"
                f" {len(run.queues)} queue name(s)"
            )
            run.cleanup()
    met: dict[str, bool] = {}
    if "drain" in out and "target_met" in out["drain"]:
        met["drain_2_consumers_rabbitmq"] = out["drain"]["target_met"]["bgq_consume_rabbitmq"]
        met["drain_2_consumers_no_broker"] = out["drain"]["target_met"]["bgq_consume_no_broker"]
    if "latency" in out:
        met["latency_p50_rabbitmq"] = out["latency"]["rabbitmq"]["target_met"]
        met["latency_p50_listen_notify"] = out["latency"]["listen_notify"]["target_met"]
    if "memory" in out:
        met["memory_stops_growing"] = out["memory"]["stops_growing"]
    out["target_met"] = met
    out["environment"] = versions()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
