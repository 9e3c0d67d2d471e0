"""RabbitMQ through pika: the only module that imports pika.

Topology, all durable and declared with ``BGQUEUE_AMQP_QUEUE_ARGUMENTS``:

- ``bgq.<queue>.<priority>``: the ids of jobs due now, one queue per (queue, priority);
- ``bgq.<queue>.<priority>.delay.<ms>``: delay tiers of 100 ms * 2^n (n = 0 … 23, up to
  about 9 days) with that message TTL, dead-lettering into the work queue. A delay is sent
  to the longest tier that fits; a consumer that receives an id before its job is due sends
  it on for the rest. So delays of any length use at most 24 queues per priority, and a
  message needs about log2(delay / 100 ms) hops;
- ``bgq.<queue>.control``: ``reload`` requests, each taken by exactly one consumer.

Publishes are persistent and confirmed. A consumer starts with one unacknowledged message
per queue (prefetch 1) and takes more at once while jobs are quick (see :class:`_Consumer`),
runs jobs in a thread of its own while the connection keeps serving heartbeats, and
reconnects by itself after a broker restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions

from ..pacing import QUICK_JOB_SECONDS, SLOW_JOB_SECONDS
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
        batch_limit: Callable[[], int] | None = None,
    ) -> None:
        started = time.time()
        runner = _JobThread()
        try:
            while not should_stop():
                try:
                    consumer = _Consumer(self, queue, sorted(priorities), started, runner)
                    if consumer.run(handler, should_stop, idle, batch_limit or (lambda: 1)):
                        return
                except (pika.exceptions.AMQPError, OSError) as exc:
                    log.warning("bgqueue: lost RabbitMQ (%r); reconnecting in 1 s", exc)
                    if should_stop():
                        return
                    time.sleep(1)
        finally:
            runner.close()


class _JobThread:
    """The one thread that runs jobs, so the consuming thread can serve the connection.

    pika is not thread-safe: the consuming thread alone touches the connection, pumping its
    events (heartbeats, deliveries) while a job runs here. One long-lived thread rather than
    one per job: handing work over costs a wake-up, not a thread start.
    """

    def __init__(self) -> None:
        self._work: Callable[[], None] | None = None
        self._failure: BaseException | None = None
        self._ready = threading.Condition()
        self._done = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="bgqueue-job", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while self._work is None and not self._closed:
                    self._ready.wait()
                if self._work is None:
                    return
                work, self._work = self._work, None
            try:
                work()
            except BaseException as exc:  # surfaced in the consuming thread by run()
                self._failure = exc
            finally:
                self._done.set()

    def run(self, work: Callable[[], None], pump: Callable[[], None]) -> None:
        """Run ``work`` in the job thread, calling ``pump`` every 50 ms until it is done.

        If ``pump`` raises (the connection dropped), the job still runs to its end (its
        claim is committed and its outcome must be saved) before the error goes up.
        """
        self._done.clear()
        self._failure = None
        with self._ready:
            self._work = work
            self._ready.notify()
        try:
            while not self._done.wait(0.05):  # returns at once when a short job is done
                pump()
        finally:
            self._done.wait()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()


#: The prefetch (per queue) grows while jobs are quick, up to this many messages.
MAX_PREFETCH = 128


class _Consumer:
    """One connection's worth of consuming; :meth:`run` raises when the connection drops.

    Prefetch: one message per queue at first, so slow jobs spread over all consumers. While
    jobs take under :data:`QUICK_JOB_SECONDS` each and the buffer of a queue fills up, the
    prefetch doubles (up to :data:`MAX_PREFETCH`) and the buffered ids of the most urgent
    priority are handed over together (claimed in one transaction, acknowledged at once).
    A slow batch brings it back to one, and the ids held beyond one per queue go back to
    RabbitMQ for the other consumers.
    """

    def __init__(
        self,
        broker: AmqpBroker,
        queue: str,
        priorities: list[int],
        started: float,
        runner: _JobThread,
    ) -> None:
        self.ch = _Channel(broker.url, broker.arguments)
        self.queue, self.priorities, self.started = queue, priorities, started
        self.runner = runner
        # priority -> [(delivery tag, job id)], in the order they came
        self.buffered: dict[int, list[tuple[int, int]]] = {p: [] for p in priorities}
        self.unacked: set[int] = set()  # delivery tags received and not yet acked
        self.reload_tag: int | None = None
        self.prefetch = 0
        self.consumer_tags: list[str] = []
        try:
            for p in priorities:
                self.ch.declare_work(queue, p)
            self._subscribe(1)
            self.ch.declare(control_queue(queue))
            self.ch.channel.basic_consume(control_queue(queue), self._on_control)
        except BaseException:
            self.ch.close()
            raise

    def _subscribe(self, prefetch: int) -> None:
        """(Re)subscribe to the work queues with ``prefetch`` messages each.

        RabbitMQ applies a ``basic.qos`` to consumers started after it, so the new
        subscriptions start before the old ones are cancelled; messages already delivered
        stay buffered here, those pika holds undelivered go back to the queue.
        """
        channel = self.ch.channel
        channel.basic_qos(prefetch_count=prefetch)
        old, self.consumer_tags = (
            self.consumer_tags,
            [
                channel.basic_consume(work_queue(self.queue, p), self._on_message(p))
                for p in self.priorities
            ],
        )
        for tag in old:
            channel.basic_cancel(tag)
        self.prefetch = prefetch

    def _on_message(self, priority: int) -> Callable[..., None]:
        def callback(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            try:
                job_id = int(body)
            except ValueError:  # not a job id: nothing can come of it
                log.error("bgqueue: dropping a malformed message %r", body[:100])
                channel.basic_ack(method.delivery_tag)
                return
            self.buffered[priority].append((method.delivery_tag, job_id))
            self.unacked.add(method.delivery_tag)

        return callback

    def _on_control(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        sent_at_ms = (properties.headers or {}).get("sent_at_ms", 0)
        if sent_at_ms < self.started * 1000:  # meant for consumers that ran before this one
            channel.basic_ack(method.delivery_tag)
        else:
            self.reload_tag = method.delivery_tag
            self.unacked.add(method.delivery_tag)

    def run(
        self,
        handler: Handler,
        should_stop: Callable[[], bool],
        idle: Callable[[], None] | None,
        batch_limit: Callable[[], int],
    ) -> bool:
        """Consume until told to stop (``False``) or asked to reload (``True``)."""
        connection, channel = self.ch.connection, self.ch.channel
        try:
            while not should_stop():
                connection.process_data_events(time_limit=0)
                if self.reload_tag is not None:
                    self._ack([self.reload_tag])
                    return True
                waiting = [p for p in self.priorities if self.buffered[p]]
                if not waiting:
                    connection.process_data_events(time_limit=1)
                    if not any(self.buffered.values()) and idle is not None:
                        idle()
                    continue
                priority = waiting[0]
                if self._more_urgent_waiting(priority):
                    continue
                limit = max(1, min(self.prefetch, batch_limit()))
                batch = self.buffered[priority][:limit]
                del self.buffered[priority][:limit]
                tags = [tag for tag, _ in batch]
                try:
                    work = handler([Delivery(job_id, priority) for _, job_id in batch])
                except Exception:
                    log.exception(
                        "bgqueue: could not take jobs %s; they will be delivered again",
                        [job_id for _, job_id in batch],
                    )
                    for tag in tags:
                        channel.basic_nack(tag, requeue=True)
                        self.unacked.discard(tag)
                    connection.sleep(1)
                    continue
                try:
                    self._ack(tags)
                except (pika.exceptions.AMQPError, OSError):
                    if work is not None:  # the claims are committed: the jobs run all the same
                        work()
                    raise
                if work is not None:
                    began = time.perf_counter()
                    self.runner.run(work, self._pump)
                    self._adapt(len(batch), full=len(batch) == self.prefetch, began=began)
            return False
        finally:
            self.ch.close()

    def _pump(self) -> None:
        self.ch.connection.process_data_events(time_limit=0)

    def _ack(self, tags: list[int]) -> None:
        """Acknowledge ``tags``: in one frame when they are all the oldest unacknowledged."""
        last = max(tags)
        self.unacked.difference_update(tags)
        if len(tags) > 1 and not any(t < last for t in self.unacked):
            self.ch.channel.basic_ack(last, multiple=True)
        else:
            for tag in tags:
                self.ch.channel.basic_ack(tag)

    def _adapt(self, jobs: int, full: bool, began: float) -> None:
        """Grow the prefetch while jobs are quick; back to one after a slow batch."""
        per_job = (time.perf_counter() - began) / jobs
        if per_job >= SLOW_JOB_SECONDS and self.prefetch > 1:
            self._subscribe(1)
            for p in self.priorities:  # keep one per queue; the others serve other consumers
                for tag, _ in self.buffered[p][1:]:
                    self.ch.channel.basic_nack(tag, requeue=True)
                    self.unacked.discard(tag)
                del self.buffered[p][1:]
        elif per_job < QUICK_JOB_SECONDS and full and self.prefetch < MAX_PREFETCH:
            self._subscribe(min(self.prefetch * 2, MAX_PREFETCH))

    def _more_urgent_waiting(self, priority: int) -> bool:
        """Whether a more urgent queue holds messages not delivered to us yet."""
        for p in self.priorities:
            if p >= priority:
                return False
            if not self.buffered[p]:
                declared = self.ch.channel.queue_declare(
                    work_queue(self.queue, p), durable=True, passive=True
                )
                if declared.method.message_count > 0:
                    self.ch.connection.process_data_events(time_limit=0.01)
                    return True
        return False
