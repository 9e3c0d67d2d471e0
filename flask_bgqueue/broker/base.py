"""The small interface every broker implements.

Only job ids travel. A producer sends an id to the queue of a (queue, priority), possibly
delayed; a consumer takes ids from the queues of its priorities, most urgent first, hands
them to a handler a batch at a time (ids of one priority), and acknowledges the messages
once the handler returns (the jobs' claims are committed by then). The handler may return
work to run after the acknowledgement; the broker runs it while keeping its connection
alive.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class BrokerError(Exception):
    """Sending to or talking with the broker failed."""


@dataclass(frozen=True)
class Delivery:
    """One message: the job id and the priority whose queue it came from."""

    job_id: int
    priority: int


#: Takes deliveries of one priority, in the order they came, and returns work to run after
#: their acknowledgement, or ``None``.
Handler = Callable[[Sequence[Delivery]], Callable[[], None] | None]


class Broker(abc.ABC):
    """Producer and consumer sides of one broker connection configuration."""

    @abc.abstractmethod
    def publish(self, queue: str, priority: int, job_id: int, delay_ms: int = 0) -> None:
        """Send ``job_id``, confirmed by the broker; raise :class:`BrokerError` on failure."""

    @abc.abstractmethod
    def consume(
        self,
        queue: str,
        priorities: Sequence[int],
        handler: Handler,
        should_stop: Callable[[], bool],
        idle: Callable[[], None] | None = None,
        batch_limit: Callable[[], int] | None = None,
    ) -> None:
        """Deliver ids of ``queue`` to ``handler``, most urgent priority first.

        Returns when ``should_stop()`` is true between two batches. ``idle`` is called
        about once a second while nothing arrives. ``batch_limit()`` caps the next batch
        (default: one delivery at a time); a broker may hand over fewer. Connection losses
        are survived.
        """

    @abc.abstractmethod
    def request_reload(self, queue: str, number: int) -> None:
        """Ask ``number`` running consumers of ``queue`` to exit after their current job."""

    def close(self) -> None:  # noqa: B027 - most brokers hold nothing to release
        """Release connections (the broker may be used again afterwards)."""
