"""The small interface every broker implements.

Only job ids travel. A producer sends an id to the queue of a (queue, priority), possibly
delayed. A consumer (:meth:`Broker.consumer`) hands out the ids of the queues of its
priorities a batch at a time, most urgent first, and acknowledges them when told; the
worker (:mod:`flask_bgqueue.worker`) claims and runs the jobs. Brokers run no jobs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import BrokerConnectionLost as BrokerConnectionLost
from ..exceptions import BrokerError as BrokerError


@dataclass(frozen=True)
class Delivery:
    """One message: the job id, the priority whose queue it came from, and the broker's tag
    for it (to acknowledge it)."""

    job_id: int
    priority: int
    tag: int = field(default=0, compare=False)


class Consumer(abc.ABC):
    """One subscription to the queues of a queue's priorities, used from one thread.

    Messages handed out stay unacknowledged until :meth:`ack` or :meth:`nack`. A lost
    connection raises :class:`BrokerConnectionLost` from any method but :meth:`close`.
    """

    @abc.abstractmethod
    def next_batch(self, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries of one priority, the most urgent one waiting, in the
        order they came; empty after ``timeout`` seconds of nothing, or when a reload was
        requested (see :meth:`take_reload_request`)."""

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge ``deliveries``: their jobs are claimed, the messages are done."""

    @abc.abstractmethod
    def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Give ``deliveries`` back to their queues, to be delivered again."""

    def pump(self) -> None:  # noqa: B027 - nothing to serve without a connection
        """Serve the connection (heartbeats) while a job runs in another thread."""

    def set_prefetch(self, count: int) -> None:  # noqa: B027 - most brokers hold no buffer
        """Hold up to ``count`` messages per queue from now on; when lower than before,
        the messages held beyond it go back to their queues for other consumers."""

    @abc.abstractmethod
    def take_reload_request(self) -> bool:
        """Whether a reload was requested of this consumer; a request is taken by one
        consumer only, so a true answer consumes it."""

    def describe(self) -> str:
        """Where this consumer is connected, for logs (never with a password): the node
        of a cluster; empty when the broker's :meth:`Broker.describe` says it all."""
        return ""

    def close(self) -> None:  # noqa: B027 - most consumers hold nothing to release
        """Release the connection; unacknowledged messages go back to their queues."""


class Broker(abc.ABC):
    """Producer and consumer sides of one broker connection configuration.

    A broker of your own is installed with ``BGQUEUE_BROKER_CLASS`` (the class or its
    import string); :meth:`from_config` makes it.
    """

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Broker:
        """The broker for an app's ``config`` (``app.config``), made once per app by
        ``init_app`` when ``BGQUEUE_BROKER_CLASS`` names this class. This one calls the
        class without arguments; override it to read settings of your own (under a
        prefix of your own: unknown ``BGQUEUE_*`` keys are warned of) or
        ``BGQUEUE_BROKER_URL``, which Flask-BgQueue then leaves to you.
        """
        return cls()

    @abc.abstractmethod
    def publish(self, queue: str, priority: int, job_id: int, delay_ms: int = 0) -> None:
        """Send ``job_id``, confirmed by the broker; raise :class:`BrokerError` on failure."""

    def announce(
        self,
        jobs: Sequence[tuple[str, int, int, int]],
        on_failed: Callable[[list[int], str], None],
    ) -> None:
        """Send the ids of ``jobs`` (``(queue, priority, job_id, delay_ms)``) without
        waiting for the broker where it can; the ids it did not take go to ``on_failed``
        with the reason (``"broker: ..."``), possibly later and from another thread.
        This one waits for each (:meth:`publish`)."""
        failed: list[int] = []
        error = ""
        for queue, priority, job_id, delay_ms in jobs:
            try:
                self.publish(queue, priority, job_id, delay_ms)
            except BrokerError as exc:
                failed.append(job_id)
                error = str(exc)
        if failed:
            on_failed(failed, f"broker: {error}")

    def flush(self, timeout: float) -> bool:
        """Wait until every id given to :meth:`announce` is confirmed or handed to ``on_failed``;
        ``False`` when ``timeout`` seconds were not enough."""
        return True

    @abc.abstractmethod
    def consumer(
        self, queue: str, priorities: Sequence[int], started: float | None = None
    ) -> Consumer:
        """Subscribe to the queues of ``queue``'s ``priorities``.

        Reload requests sent before ``started`` (``time.time()``, default now) were meant
        for consumers that ran earlier and are dropped. Raises
        :class:`BrokerConnectionLost` when the broker cannot be reached.
        """

    @abc.abstractmethod
    def request_reload(self, queue: str, number: int) -> None:
        """Ask ``number`` running consumers of ``queue`` to exit after their current job."""

    def describe(self) -> str:
        """Where the broker is, for logs (never with a password)."""
        return type(self).__name__

    def close(self) -> None:  # noqa: B027 - most brokers hold nothing to release
        """Release connections (the broker may be used again afterwards)."""
