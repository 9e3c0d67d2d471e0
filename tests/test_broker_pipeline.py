"""Pipelined publishing in broker mode, against a real RabbitMQ: ``publish()`` does not
wait for confirms, and still no id is lost when RabbitMQ refuses ids, when the connection
drops with confirms outstanding, or when the publishing process is killed."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pika
import pytest
from pika.adapters.utils import io_services_utils

from flask_bgqueue import JobState
from flask_bgqueue.broker import pipeline
from flask_bgqueue.broker.amqp import work_queue
from tests.conftest import AMQP_URL, ProcEnv
from tests.helpers import all_jobs, stop
from tests.test_broker_amqp import collect_outage_sockets, outage_sockets, rabbit
from tests.test_broker_connect import Proxy, proxy

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
__all__ = ["collect_outage_sockets", "proxy", "rabbit"]  # fixtures used here


def queued_ids(queue: str, priority: int) -> list[int]:
    """The ids waiting in a work queue (taken and given back)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    ids = []
    while True:
        method, _props, body = channel.basic_get(work_queue(queue, priority))
        if method is None:
            break
        ids.append(int(body))
    connection.close()  # unacknowledged: back to the queue
    return ids


def run_everything(procs: ProcEnv, count: int, group: str) -> None:
    """A consumer runs what RabbitMQ holds, ``process`` what is BROKER_FAILED or resent;
    every job then ran exactly once."""
    consumer = procs.start("bgq", "consume")
    app = procs.app()
    try:
        with app.app_context():
            bgq = app.bgq  # type: ignore[attr-defined]
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                assert procs.run("bgq", "process").returncode == 0
                if all(r.state == JobState.FINISHED for r in all_jobs(bgq)):
                    break
                time.sleep(0.5)
            left = [(r.id, r.state) for r in all_jobs(bgq) if r.state != JobState.FINISHED]
            assert not left, left
    finally:
        _out, err = stop(consumer)
        assert consumer.returncode == 0, err
    names = [r[1] for r in procs.records() if r[0] == group]
    assert sorted(names, key=int) == [str(n) for n in range(count)]


def test_ids_rabbitmq_refuses_become_broker_failed_and_the_rest_are_queued(
    rabbit: ProcEnv, amqp_queue: str
) -> None:
    # a full queue refuses publishes with basic.nack
    rabbit.config["BGQUEUE_AMQP_QUEUE_ARGUMENTS"] = {
        "x-max-length": 5,
        "x-overflow": "reject-publish",
    }
    app = rabbit.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        ids = [bgq.publish("record", {"group": "full", "name": str(n)}) for n in range(15)]
        with bgq.bulk():
            for n in range(15, 30):
                bgq.publish("record", {"group": "full", "name": str(n)})
        assert app.extensions["bgqueue"].broker.flush(60)
        rows = all_jobs(bgq)
    assert len(rows) == 30 and ids == [r.id for r in rows[:15]]
    failed = {r.id for r in rows if r.state == JobState.BROKER_FAILED}
    ready = {r.id for r in rows if r.state == JobState.READY}
    assert failed | ready == {r.id for r in rows} and len(ready) == 5
    assert all("basic.nack" in r.error_message for r in rows if r.id in failed)
    assert sorted(queued_ids(amqp_queue, 10)) == sorted(ready)  # queued = READY, no more
    # the consumer and `process` declare the queues with the same arguments
    run_everything(rabbit, 30, "full")


@outage_sockets
def test_a_connection_cut_with_confirms_outstanding_loses_no_id(
    collect_outage_sockets: None, rabbit: ProcEnv, proxy: Proxy, amqp_queue: str
) -> None:
    rabbit.config["BGQUEUE_BROKER_URL"] = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", AMQP_URL)
    app = rabbit.app()
    count = 600
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        for n in range(count):
            bgq.publish("record", {"group": "cut", "name": str(n)})
            if n == 200:
                proxy.cut()  # mid-stream: ids in flight, and no broker for a while
            if n == 400:
                proxy.resume()
        assert app.extensions["bgqueue"].broker.flush(60)
        rows = all_jobs(bgq)
    failed = {r.id for r in rows if r.state == JobState.BROKER_FAILED}
    ready = {r.id for r in rows if r.state == JobState.READY}
    assert len(rows) == count and failed | ready == {r.id for r in rows}
    assert failed and ready  # the cut failed some, the others went through
    assert ready <= set(queued_ids(amqp_queue, 10))  # every READY id is in RabbitMQ
    rabbit.config["BGQUEUE_BROKER_URL"] = AMQP_URL
    run_everything(rabbit, count, "cut")


def test_a_publisher_killed_right_after_publish_returns_loses_no_id(rabbit: ProcEnv) -> None:
    rabbit.config["BGQUEUE_BROKER_RESEND_AFTER_SECONDS"] = 1
    result = rabbit.run("publish-then-die", "300")
    assert result.returncode == -9, result.stderr
    time.sleep(1.2)  # READY rows untouched this long are resent by `process`
    run_everything(rabbit, 300, "killed")


def test_a_process_forked_after_publishing_publishes_through_its_own_thread(
    rabbit: ProcEnv, amqp_queue: str
) -> None:
    """A pre-forking server: the parent published (its publisher thread runs), then forks;
    the child's ids must not wait on the parent's thread, which the child does not have."""
    app = rabbit.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        parent_id = bgq.publish("record", {"group": "fork", "name": "0"})
        assert app.extensions["bgqueue"].broker.flush(30)
        pid = os.fork()
        if pid == 0:  # the child: publish, wait for the confirms, report by exit code
            code = 1
            try:
                bgq.publish("record", {"group": "fork", "name": "1"})
                code = 0 if app.extensions["bgqueue"].broker.flush(30) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        rows = all_jobs(bgq)
    assert [r.state for r in rows] == [JobState.READY, JobState.READY]
    assert sorted(queued_ids(amqp_queue, 10)) == sorted([parent_id, rows[1].id])


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, static: bool) -> list[int]:
    """Wrap ``owner.name`` so that each call appends to the list returned."""
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(owner, name, staticmethod(counted) if static else counted)
    return calls


class HeldConfirms:
    """Confirms RabbitMQ sends, kept from the publisher thread while ``holding``, so that a
    message stays unconfirmed as long as a test needs (set up before the first publish:
    the channel binds its confirm callback when it opens)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.holding = False
        self.held: list[tuple[Any, Any]] = []
        self.original = pipeline._Session._on_confirm

        def on_confirm(session: Any, frame: Any) -> None:
            if self.holding:
                self.held.append((session, frame))
            else:
                self.original(session, frame)

        monkeypatch.setattr(pipeline._Session, "_on_confirm", on_confirm)

    def release(self, broker: Any) -> None:
        """Hand the kept confirms to the publisher thread, in the order they came."""
        self.holding = False

        def replay() -> None:
            for session, frame in self.held:
                self.original(session, frame)
            self.held.clear()

        broker._publisher.session.connection.ioloop.add_callback_threadsafe(replay)


def test_ids_published_in_a_burst_go_out_together_one_write_per_window(
    rabbit: ProcEnv, amqp_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One by one in a burst, the publisher thread sends the ids in batches (one per
    window), each batch in one socket write, not three writes per id; the confirms are
    held meanwhile, and no id is failed for it. (Ids come a publish's round trips apart
    here, about 1.5 ms: the burst's bound is raised so that the test does not depend on
    the machine.)"""
    monkeypatch.setattr(pipeline, "COALESCE_SECONDS", 0.5)
    monkeypatch.setattr(pipeline, "BURST_SECONDS", 0.1)
    confirms = HeldConfirms(monkeypatch)
    batches = count_calls(monkeypatch, pipeline._Session, "_send_pending", static=False)
    writes = count_calls(
        monkeypatch, io_services_utils._AsyncTransportBase, "_sigint_safe_send", static=True
    )
    app = rabbit.app()
    count = 300
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        broker = app.extensions["bgqueue"].broker
        bgq.publish("record", {"group": "batch", "name": "warm-up"})  # opens the connection
        assert broker.flush(30)
        confirms.holding = True
        batches.clear()
        writes.clear()
        started = time.monotonic()
        ids = [bgq.publish("record", {"group": "batch", "name": str(n)}) for n in range(count)]
        windows = (time.monotonic() - started) / pipeline.COALESCE_SECONDS
        time.sleep(pipeline.COALESCE_SECONDS * 2)  # the last window's batch is sent
        sends, written = len(batches), len(writes)  # before queued_ids' own connection
        confirms.release(broker)
        assert broker.flush(30)
        rows = all_jobs(bgq)
    assert all(r.state == JobState.READY for r in rows)
    assert set(ids) <= set(queued_ids(amqp_queue, 10))  # every id is in RabbitMQ
    assert sends <= windows + 3, f"{sends} sends for {count} ids in {windows:.1f} windows"
    assert written <= sends + 3, f"{written} socket writes for {sends} sends of {count} ids"


def test_in_a_burst_an_id_waits_for_the_window_even_with_every_message_confirmed(
    rabbit: ProcEnv, amqp_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop's ids go out together even when RabbitMQ has confirmed everything sent
    before them (it confirms quickly when it is not busy): the burst alone decides."""
    monkeypatch.setattr(pipeline, "COALESCE_SECONDS", 4.0)
    # one by one here is a burst, even after a confirm slowed down by a busy machine
    monkeypatch.setattr(pipeline, "BURST_SECONDS", 2.0)
    monkeypatch.setattr(pipeline, "GAP_CAP_SECONDS", 10.0)
    monkeypatch.setattr(pipeline, "GAP_SMOOTHING", 1.0)  # the last gap decides
    app = rabbit.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        broker = app.extensions["bgqueue"].broker
        first = bgq.publish("record", {"group": "window", "name": "0"})
        assert broker.flush(1.5)  # sent once the connection is open, and confirmed
        more = [bgq.publish("record", {"group": "window", "name": str(n)}) for n in range(1, 40)]
        started = time.monotonic()
        assert queued_ids(amqp_queue, 10) == [first]
        assert not broker.flush(1.0)
        assert broker.flush(10)
        assert time.monotonic() - started > 1.0
    assert sorted(queued_ids(amqp_queue, 10)) == sorted([first, *more])


def test_ids_a_few_milliseconds_apart_go_out_at_once_while_a_message_is_unconfirmed(
    rabbit: ProcEnv, amqp_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a burst (``BURST_SECONDS``): under a steady stream RabbitMQ's confirms lag (a
    persistent message is confirmed once written), yet each id goes out at once rather
    than wait for the window."""
    monkeypatch.setattr(pipeline, "COALESCE_SECONDS", 1.0)
    confirms = HeldConfirms(monkeypatch)
    batches = count_calls(monkeypatch, pipeline._Session, "_send_pending", static=False)
    app = rabbit.app()
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        broker = app.extensions["bgqueue"].broker
        bgq.publish("record", {"group": "steady", "name": "warm-up"})
        assert broker.flush(10)
        confirms.holding = True  # every message from here on stays unconfirmed
        batches.clear()
        ids = []
        assert pipeline.BURST_SECONDS < 0.005 <= pipeline.GAP_CAP_SECONDS
        for n in range(8):
            time.sleep(0.005)
            ids.append(bgq.publish("record", {"group": "steady", "name": str(n)}))
        time.sleep(0.2)  # a fifth of the window: only ids sent at once are in RabbitMQ
        queued = queued_ids(amqp_queue, 10)
        sends = len(batches)
        confirms.release(broker)
        assert broker.flush(10)
    assert set(ids) <= set(queued), f"{sorted(set(ids) - set(queued))} waited for the window"
    assert sends == len(ids)


def test_a_caller_that_computes_after_publish_does_not_hold_the_send_back(
    rabbit: ProcEnv, amqp_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publisher thread needs the interpreter lock to send; a caller busy computing
    right after ``publish()`` would keep it until Python switches threads (5 ms). With
    nothing unconfirmed the id goes out at once, so ``publish()`` waits for the thread to
    take it: it is taken before ``publish()`` returns."""
    taken: list[float] = []
    original = pipeline.PipelinedPublisher.take_pending

    def take_pending(publisher: Any) -> Any:
        items = original(publisher)
        if items:
            taken.append(time.monotonic())
        return items

    monkeypatch.setattr(pipeline.PipelinedPublisher, "take_pending", take_pending)
    app = rabbit.app()
    before_return = 0
    ids = []
    with app.app_context():
        bgq = app.bgq  # type: ignore[attr-defined]
        broker = app.extensions["bgqueue"].broker
        ids.append(bgq.publish("record", {"group": "busy", "name": "warm-up"}))
        assert broker.flush(30)
        for n in range(10):
            taken.clear()
            ids.append(bgq.publish("record", {"group": "busy", "name": str(n)}))
            returned = time.monotonic()
            busy_until = returned + 0.03
            while time.monotonic() < busy_until:  # computing, holding the interpreter lock
                pass
            assert broker.flush(30)
            before_return += len(taken) == 1 and taken[0] <= returned
    assert before_return >= 8, f"taken before publish() returned {before_return} times of 10"
    assert sorted(queued_ids(amqp_queue, 10)) == sorted(ids)
