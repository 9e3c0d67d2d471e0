"""RabbitMQ through pika (with :mod:`.pipeline` and :mod:`.nodes`, the only modules that import it).

Topology, all durable and declared with ``BGQUEUE_AMQP_QUEUE_ARGUMENTS``, and for the
queues of one job queue also with its ``BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE`` entry:

- ``bgq.<queue>.<priority>``: the ids of jobs due now, one queue per (queue, priority);
- ``bgq.<queue>.<priority>.delay.<ms>``: delay tiers of 100 ms * 2^n (n = 0 … 23, up to
  about 9 days) with that message TTL, dead-lettering into the work queue. A delay is sent
  to the longest tier that fits; a consumer that receives an id before its job is due sends
  it on for the rest. So delays of any length use at most 24 queues per priority, and a
  message needs about log2(delay / 100 ms) hops;
- ``bgq.<queue>.control``: ``reload`` requests, each taken by exactly one consumer.

Publishes are persistent and confirmed: :meth:`AmqpBroker.publish` waits for the confirm,
:meth:`AmqpBroker.announce` hands the ids to the process's publisher thread
(:mod:`.pipeline`), which tracks the confirms apart. A consumer (:class:`AmqpConsumer`) holds one
unacknowledged message per queue at first (prefetch 1), more when the worker asks for it,
and hands the held ids out most urgent first. A lost connection surfaces as
:class:`~flask_bgqueue.broker.BrokerConnectionLost`; the worker then opens a new consumer.
Every connection goes to the first node of ``BGQUEUE_BROKER_URL`` that answers
(:mod:`.nodes`).
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pika
import pika.exceptions

from .base import Broker, BrokerConnectionLost, BrokerError, Consumer, Delivery
from .nodes import connect, describe, explain
from .pipeline import Declarations, Item, PipelinedPublisher
from .settings import mask

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
    fitting = bisect.bisect_right(TIERS_MS, delay_ms)
    return TIERS_MS[fitting - 1] if fitting else None


def delay_arguments(tier_ms: int, target: str) -> dict[str, Any]:
    """The arguments of a delay queue: its messages go on to ``target`` after ``tier_ms``."""
    return {
        "x-message-ttl": tier_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": target,
    }


class _Channel:
    """A connection to the first node that answers, with one confirming channel, and the
    queues it declared."""

    def __init__(self, broker: AmqpBroker) -> None:
        self.connection, self.node = connect(broker.urls)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.arguments_for = broker.arguments_for
        self.route = broker._route
        self.declared: set[str] = set()

    def declare(self, name: str, queue: str) -> None:
        """Declare ``name``, one of job queue ``queue``'s RabbitMQ queues."""
        self._declare(name, self.arguments_for(queue))

    def _declare(self, name: str, arguments: dict[str, Any]) -> None:
        if name not in self.declared:
            self.channel.queue_declare(name, durable=True, arguments=arguments)
            self.declared.add(name)

    def send(self, routing_key: str, body: bytes, headers: dict[str, Any] | None = None) -> None:
        self.channel.basic_publish(
            exchange="",
            routing_key=routing_key,
            body=body,
            properties=pika.BasicProperties(delivery_mode=_PERSISTENT, headers=headers),
            mandatory=True,
        )

    def publish_job(self, queue: str, priority: int, job_id: int, delay_ms: int) -> None:
        """Send a job's id as the publisher thread would (see :meth:`AmqpBroker._route`)."""
        declarations, routing_key = self.route(queue, priority, tier_for(delay_ms))
        for name, arguments in declarations:
            self._declare(name, dict(arguments))
        self.send(routing_key, str(job_id).encode())

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except Exception:  # closing a broken connection: nothing left to release
            pass


class AmqpBroker(Broker):
    """RabbitMQ, with one producer connection per thread (pika is not thread-safe).

    ``urls``: one node, or the nodes of a cluster in the order tried. ``queue_arguments``
    apply to every queue declared, ``arguments_by_queue`` (by full job queue name) on top
    of them to the queues of that job queue.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        queue_arguments: Mapping[str, Any],
        arguments_by_queue: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.urls = (urls,) if isinstance(urls, str) else tuple(urls)
        self.arguments = dict(queue_arguments)
        self.arguments_by_queue = {q: dict(a) for q, a in (arguments_by_queue or {}).items()}
        self._local = threading.local()
        self._publisher: PipelinedPublisher | None = None
        self._publisher_lock = threading.Lock()
        # (queue, priority, delay tier) -> what an announced id of it needs (see _route)
        self._routes: dict[tuple[str, int, int | None], tuple[Declarations, str]] = {}

    @property
    def url(self) -> str:
        """The first node's URL."""
        return self.urls[0]

    def arguments_for(self, queue: str) -> dict[str, Any]:
        """The arguments of job queue ``queue``'s RabbitMQ queues."""
        return {**self.arguments, **self.arguments_by_queue.get(queue, {})}

    def describe(self) -> str:
        """``amqp://user:***@host:port/vhost``: the URL with its password masked (several,
        comma-separated, for a cluster)."""
        return describe(self.urls)

    # -- producing ----------------------------------------------------------------------

    def _producer(self) -> _Channel:
        channel = getattr(self._local, "channel", None)
        if channel is None or not channel.connection.is_open:
            channel = self._local.channel = _Channel(self)
            if len(self.urls) > 1:
                log.info("bgqueue: publishing to RabbitMQ node %s", mask(channel.node))
        return channel

    def publish(self, queue: str, priority: int, job_id: int, delay_ms: int = 0) -> None:
        for attempt in (1, 2):  # a connection idle past its heartbeat is gone: reconnect once
            try:
                self._producer().publish_job(queue, priority, job_id, delay_ms)
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                node = self._drop_producer()
                if attempt == 1 and node and len(self.urls) > 1:
                    log.warning(
                        "bgqueue: lost RabbitMQ node %s (%s); sending job %d again through"
                        " the first node that answers",
                        mask(node),
                        explain(exc),
                        job_id,
                    )
                if attempt == 2:
                    where = f" (node {mask(node)})" if node and len(self.urls) > 1 else ""
                    raise BrokerError(
                        f"RabbitMQ did not take job {job_id}{where}: {explain(exc)}"
                    ) from exc

    def announce(
        self,
        jobs: Sequence[tuple[str, int, int, int]],
        on_failed: Callable[[list[int], str], None],
    ) -> None:
        """Hand the ids to the publisher thread (one per broker) and return at once."""
        route = self._route
        items: list[Item] = [
            (*route(queue, priority, tier_for(delay_ms)), job_id)
            for queue, priority, job_id, delay_ms in jobs
        ]
        publisher = self._publisher
        if publisher is None or publisher.pid != os.getpid():
            with self._publisher_lock:
                publisher = self._publisher
                if publisher is None or publisher.pid != os.getpid():
                    # none yet, or inherited through fork() (a pre-forking server): its
                    # thread is not in this process, so this process gets one of its own
                    publisher = self._publisher = PipelinedPublisher(self.urls, on_failed)
                    atexit.register(publisher.close)  # confirms in flight at exit
        publisher.submit(items)

    def _route(self, queue: str, priority: int, tier: int | None) -> tuple[Declarations, str]:
        """The queues to declare first and the routing key of an id of ``queue`` and
        ``priority`` delayed by ``tier`` ms (``None``: not delayed); built once for each."""
        key = (queue, priority, tier)
        route = self._routes.get(key)
        if route is None:
            target = work_queue(queue, priority)
            arguments = tuple(self.arguments_for(queue).items())
            if tier is None:
                route = (((target, arguments),), target)
            else:
                name = delay_queue(queue, priority, tier)
                extra = tuple(delay_arguments(tier, target).items())
                route = (((target, arguments), (name, arguments + extra)), name)
            self._routes[key] = route
        return route

    def flush(self, timeout: float) -> bool:
        publisher = self._publisher
        return publisher is None or publisher.pid != os.getpid() or publisher.flush(timeout)

    def request_reload(self, queue: str, number: int) -> None:
        try:
            channel = self._producer()
            channel.declare(control_queue(queue), queue)
            for _ in range(number):
                channel.send(
                    control_queue(queue), b"reload", {"sent_at_ms": int(time.time() * 1000)}
                )
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop_producer()
            raise BrokerError(f"RabbitMQ did not take the reload request: {exc!r}") from exc

    def _drop_producer(self) -> str | None:
        """Close this thread's producer connection; the node it was on (or ``None``)."""
        channel = getattr(self._local, "channel", None)
        if channel is not None:
            channel.close()
        self._local.channel = None
        return channel.node if channel is not None else None

    def close(self) -> None:
        with self._publisher_lock:
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()
            atexit.unregister(publisher.close)
        self._drop_producer()

    # -- consuming ----------------------------------------------------------------------

    def consumer(
        self, queue: str, priorities: Sequence[int], started: float | None = None
    ) -> AmqpConsumer:
        return AmqpConsumer(
            self, queue, sorted(priorities), time.time() if started is None else started
        )


@contextlib.contextmanager
def _connection_lost() -> Iterator[None]:
    """pika's (and the socket's) errors of a consumer as :class:`BrokerConnectionLost`,
    saying what went wrong in words (:func:`explain`)."""
    try:
        yield
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerConnectionLost(explain(exc)) from exc


class AmqpConsumer(Consumer):
    """One connection's worth of consuming: the work queues of some priorities, and the
    control queue.

    Prefetch: one message per queue at first, so slow jobs spread over all consumers;
    :meth:`set_prefetch` raises it while jobs are quick (the ids held of the most urgent
    priority are then handed out together), and lowering it gives the ids held beyond the
    new count back to RabbitMQ for the other consumers.
    """

    def __init__(
        self, broker: AmqpBroker, queue: str, priorities: list[int], started: float
    ) -> None:
        self.cluster = len(broker.urls) > 1
        with _connection_lost():
            self.ch = _Channel(broker)
        self.queue, self.priorities, self.started = queue, priorities, started
        # priority -> [(delivery tag, job id)], in the order they came
        self.buffered: dict[int, list[tuple[int, int]]] = {p: [] for p in priorities}
        self.unacked: set[int] = set()  # delivery tags received and not yet acked
        self.reload_tag: int | None = None
        self.prefetch = 0  # per queue: the sum of the subscriptions' prefetch counts
        # (prefetch count, consumer tag of each work queue), oldest first
        self.subscriptions: list[tuple[int, list[str]]] = []
        try:
            with _connection_lost():
                for p in priorities:
                    self.ch.declare(work_queue(queue, p), queue)
                self._subscribe(1)
                self.ch.declare(control_queue(queue), queue)
                self.ch.channel.basic_consume(control_queue(queue), self._on_control)
        except BaseException:
            self.ch.close()
            raise

    def _subscribe(self, prefetch: int) -> None:
        """Subscribe once more to each work queue, for ``prefetch`` more messages.

        RabbitMQ applies a ``basic.qos`` (``global=False``: per consumer) only to the
        consumers started after it, so a larger prefetch takes one more consumer per queue
        rather than a new one in place of the old: cancelling would send the messages pika
        holds undelivered back behind those the new consumer already got. A queue hands
        its messages to the consumers of one channel in its own order, so they still come
        in the order of the queue. (``global=True``, one prefetch for the whole channel,
        applies at once but spans all queues, and quorum queues refuse it.)
        """
        channel = self.ch.channel
        channel.basic_qos(prefetch_count=prefetch)
        tags = [
            channel.basic_consume(work_queue(self.queue, p), self._on_message(p))
            for p in self.priorities
        ]
        self.subscriptions.append((prefetch, tags))
        self.prefetch += prefetch

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

    # -- the Consumer interface ---------------------------------------------------------

    def next_batch(self, limit: int, timeout: float) -> list[Delivery]:
        with _connection_lost():
            connection = self.ch.connection
            connection.process_data_events(time_limit=0)
            deadline = time.monotonic() + timeout
            while self.reload_tag is None:
                waiting = [p for p in self.priorities if self.buffered[p]]
                if waiting and not self._more_urgent_waiting(waiting[0]):
                    return self._take(waiting[0], limit)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not waiting:
                    connection.process_data_events(time_limit=left)
        return []

    def _take(self, priority: int, limit: int) -> list[Delivery]:
        """The first ``limit`` ids held of ``priority`` (no more than the prefetch)."""
        limit = max(1, min(self.prefetch, limit))
        batch = self.buffered[priority][:limit]
        del self.buffered[priority][:limit]
        return [Delivery(job_id, priority, tag) for tag, job_id in batch]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with _connection_lost():
            self._ack([d.tag for d in deliveries])

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        with _connection_lost():
            for d in deliveries:
                self.ch.channel.basic_nack(d.tag, requeue=True)
                self.unacked.discard(d.tag)

    def pump(self) -> None:
        with _connection_lost():
            self.ch.connection.process_data_events(time_limit=0)

    def set_prefetch(self, count: int) -> None:
        count = max(1, count)
        if count == self.prefetch:
            return
        with _connection_lost():
            channel = self.ch.channel
            if count < self.prefetch:
                while len(self.subscriptions) > 1 and self.prefetch > count:
                    prefetch, consumer_tags = self.subscriptions.pop()
                    for consumer_tag in consumer_tags:  # pika gives back what it holds for them
                        channel.basic_cancel(consumer_tag)
                    self.prefetch -= prefetch
                for p in self.priorities:  # keep `count` per queue; the others serve others
                    for tag, _ in self.buffered[p][count:]:
                        channel.basic_nack(tag, requeue=True)
                        self.unacked.discard(tag)
                    del self.buffered[p][count:]
            if count > self.prefetch:
                self._subscribe(count - self.prefetch)

    def take_reload_request(self) -> bool:
        if self.reload_tag is None:
            return False
        with _connection_lost():
            self._ack([self.reload_tag])
        self.reload_tag = None
        return True

    def describe(self) -> str:
        return mask(self.ch.node) if self.cluster else ""

    def close(self) -> None:
        self.ch.close()

    # -- helpers ------------------------------------------------------------------------

    def _ack(self, tags: list[int]) -> None:
        """Acknowledge ``tags``: in one frame when they are all the oldest unacknowledged."""
        last = max(tags)
        self.unacked.difference_update(tags)
        if len(tags) > 1 and not any(t < last for t in self.unacked):
            self.ch.channel.basic_ack(last, multiple=True)
        else:
            for tag in tags:
                self.ch.channel.basic_ack(tag)

    def _more_urgent_waiting(self, priority: int) -> bool:
        """Whether a more urgent queue holds messages not delivered to us yet."""
        for p in self.priorities:
            if p >= priority:
                return False
            if not self.buffered[p]:
                declared = self.ch.channel.queue_declare(
                    work_queue(self.queue, p), durable=True, passive=True
                )
                ready = declared.method.message_count > 0
                # Let the ready ones come (briefly); and a message RabbitMQ delivered to us
                # before answering is not counted, held by pika until events are processed.
                self.ch.connection.process_data_events(time_limit=0.01 if ready else 0)
                if ready or self.buffered[p]:
                    return True
        return False
