"""RabbitMQ through pika: the only module that imports pika.

Topology, all durable and declared with ``BGQUEUE_AMQP_QUEUE_ARGUMENTS``:

- ``bgq.<queue>.<priority>``: the ids of jobs due now, one queue per (queue, priority);
- ``bgq.<queue>.<priority>.delay.<ms>``: delay tiers of 100 ms * 2^n (n = 0 … 23, up to
  about 9 days) with that message TTL, dead-lettering into the work queue. A delay is sent
  to the longest tier that fits; a consumer that receives an id before its job is due sends
  it on for the rest. So delays of any length use at most 24 queues per priority, and a
  message needs about log2(delay / 100 ms) hops;
- ``bgq.<queue>.control``: ``reload`` requests, each taken by exactly one consumer.

Publishes are persistent and confirmed. A consumer has at most one unacknowledged message
per queue (prefetch 1), runs jobs in a thread while the connection keeps serving
heartbeats, and reconnects by itself after a broker restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions

from .base import Broker, BrokerError, Delivery, Handler

log = logging.getLogger("flask_bgqueue.broker")

TIERS_MS = tuple(100 * 2**n for n in range(24))
_PERSISTENT = 2


def work_queue(queue: str, priority: int) -> str:
    return f"bgq.{queue}.{priority}"


def delay_queue(queue: str, priority: int, tier_ms: int) -> str:
    return f"bgq.{queue}.{priority}.delay.{tier_ms}"


def control_queue(queue: str) -> str:
    return f"bgq.{queue}.control"


def tier_for(delay_ms: int) -> int | None:
    """The longest delay tier not longer than ``delay_ms``; ``None`` below the shortest."""
    fitting = [t for t in TIERS_MS if t <= delay_ms]
    return fitting[-1] if fitting else None


class _Channel:
    """A connection with one confirming channel, and the queues it declared."""

    def __init__(self, url: str, arguments: dict[str, Any]) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.arguments = arguments
        self.declared: set[str] = set()

    def declare(self, name: str, extra: dict[str, Any] | None = None) -> None:
        if name not in self.declared:
            self.channel.queue_declare(
                name, durable=True, arguments={**self.arguments, **(extra or {})}
            )
            self.declared.add(name)

    def declare_work(self, queue: str, priority: int) -> str:
        name = work_queue(queue, priority)
        self.declare(name)
        return name

    def send(self, routing_key: str, body: bytes, headers: dict[str, Any] | None = None) -> None:
        self.channel.basic_publish(
            exchange="",
            routing_key=routing_key,
            body=body,
            properties=pika.BasicProperties(delivery_mode=_PERSISTENT, headers=headers),
            mandatory=True,
        )

    def publish_job(self, queue: str, priority: int, job_id: int, delay_ms: int) -> None:
        target = self.declare_work(queue, priority)
        tier = tier_for(delay_ms)
        if tier is None:
            self.send(target, str(job_id).encode())
            return
        name = delay_queue(queue, priority, tier)
        self.declare(
            name,
            {
                "x-message-ttl": tier,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": target,
            },
        )
        self.send(name, str(job_id).encode())

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except Exception:  # closing a broken connection: nothing left to release
            pass


class AmqpBroker(Broker):
    """RabbitMQ, with one producer connection per thread (pika is not thread-safe)."""

    def __init__(self, url: str, queue_arguments: dict[str, Any]) -> None:
        self.url = url
        self.arguments = dict(queue_arguments)
        self._local = threading.local()

    # -- producing ----------------------------------------------------------------------

    def _producer(self) -> _Channel:
        channel = getattr(self._local, "channel", None)
        if channel is None or not channel.connection.is_open:
            channel = self._local.channel = _Channel(self.url, self.arguments)
        return channel

    def publish(self, queue: str, priority: int, job_id: int, delay_ms: int = 0) -> None:
        for attempt in (1, 2):  # a connection idle past its heartbeat is gone: reconnect once
            try:
                self._producer().publish_job(queue, priority, job_id, delay_ms)
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop_producer()
                if attempt == 2:
                    raise BrokerError(f"RabbitMQ did not take job {job_id}: {exc!r}") from exc

    def request_reload(self, queue: str, number: int) -> None:
        try:
            channel = self._producer()
            channel.declare(control_queue(queue))
            for _ in range(number):
                channel.send(
                    control_queue(queue), b"reload", {"sent_at_ms": int(time.time() * 1000)}
                )
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop_producer()
            raise BrokerError(f"RabbitMQ did not take the reload request: {exc!r}") from exc

    def _drop_producer(self) -> None:
        channel = getattr(self._local, "channel", None)
        if channel is not None:
            channel.close()
        self._local.channel = None

    def close(self) -> None:
        self._drop_producer()

    # -- consuming ----------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        priorities: Sequence[int],
        handler: Handler,
        should_stop: Callable[[], bool],
        idle: Callable[[], None] | None = None,
    ) -> None:
        started = time.time()
        while not should_stop():
            try:
                if _Consumer(self, queue, sorted(priorities), started).run(
                    handler, should_stop, idle
                ):
                    return
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.warning("bgqueue: lost RabbitMQ (%r); reconnecting in 1 s", exc)
                if should_stop():
                    return
                time.sleep(1)


class _Consumer:
    """One connection's worth of consuming; :meth:`run` raises when the connection drops."""

    def __init__(
        self, broker: AmqpBroker, queue: str, priorities: list[int], started: float
    ) -> None:
        self.ch = _Channel(broker.url, broker.arguments)
        self.queue, self.priorities, self.started = queue, priorities, started
        self.buffered: dict[int, tuple[int, int]] = {}  # priority -> (delivery tag, job id)
        self.reload_tag: int | None = None
        channel = self.ch.channel
        channel.basic_qos(prefetch_count=1)
        for p in priorities:
            name = self.ch.declare_work(queue, p)
            channel.basic_consume(name, self._on_message(p))
        self.ch.declare(control_queue(queue))
        channel.basic_consume(control_queue(queue), self._on_control)

    def _on_message(self, priority: int) -> Callable[..., None]:
        def callback(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            try:
                self.buffered[priority] = (method.delivery_tag, int(body))
            except ValueError:  # not a job id: nothing can come of it
                log.error("bgqueue: dropping a malformed message %r", body[:100])
                channel.basic_ack(method.delivery_tag)

        return callback

    def _on_control(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        sent_at_ms = (properties.headers or {}).get("sent_at_ms", 0)
        if sent_at_ms < self.started * 1000:  # meant for consumers that ran before this one
            channel.basic_ack(method.delivery_tag)
        else:
            self.reload_tag = method.delivery_tag

    def run(
        self, handler: Handler, should_stop: Callable[[], bool], idle: Callable[[], None] | None
    ) -> bool:
        """Consume until told to stop (``False``) or asked to reload (``True``)."""
        connection, channel = self.ch.connection, self.ch.channel
        try:
            while not should_stop():
                connection.process_data_events(time_limit=0)
                if self.reload_tag is not None:
                    channel.basic_ack(self.reload_tag)
                    return True
                if not self.buffered:
                    connection.process_data_events(time_limit=1)
                    if not self.buffered and idle is not None:
                        idle()
                    continue
                priority = min(self.buffered)
                if self._more_urgent_waiting(priority):
                    continue
                tag, job_id = self.buffered.pop(priority)
                try:
                    work = handler(Delivery(job_id, priority))
                except Exception:
                    log.exception(
                        "bgqueue: could not take job %s; it will be delivered again", job_id
                    )
                    channel.basic_nack(tag, requeue=True)
                    connection.sleep(1)
                    continue
                try:
                    channel.basic_ack(tag)
                except (pika.exceptions.AMQPError, OSError):
                    if work is not None:  # the claim is committed: the job runs all the same
                        work()
                    raise
                if work is not None:
                    self._run_alive(work)
            return False
        finally:
            self.ch.close()

    def _more_urgent_waiting(self, priority: int) -> bool:
        """Whether a more urgent queue holds messages not delivered to us yet."""
        for p in self.priorities:
            if p >= priority:
                return False
            if p not in self.buffered:
                declared = self.ch.channel.queue_declare(
                    work_queue(self.queue, p), durable=True, passive=True
                )
                if declared.method.message_count > 0:
                    self.ch.connection.process_data_events(time_limit=0.01)
                    return True
        return False

    def _run_alive(self, work: Callable[[], None]) -> None:
        """Run a job in a thread while this thread keeps the connection's heartbeats going."""
        failure: list[BaseException] = []
        done = threading.Event()

        def target() -> None:
            try:
                work()
            except BaseException as exc:  # surfaced in the consuming thread below
                failure.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=target, name="bgqueue-job", daemon=True)
        thread.start()
        try:
            while not done.wait(0.05):  # returns at once when a short job is done
                self.ch.connection.process_data_events(time_limit=0)
        finally:
            thread.join()  # even when the connection dropped: the job's outcome gets saved
        if failure:
            raise failure[0]
