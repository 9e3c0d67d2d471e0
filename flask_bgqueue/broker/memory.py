"""An in-memory broker for tests of logic in one process (``memory://name``)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from typing import ClassVar

from .base import Broker, BrokerError, Consumer, Delivery


class MemoryBroker(Broker):
    """Queues in a dict; delays kept in a heap. ``fail`` simulates an outage."""

    _named: ClassVar[dict[str, MemoryBroker]] = {}

    def __init__(self) -> None:
        self.queues: dict[str, list[int]] = {}
        self.delayed: list[tuple[float, int, str, int]] = []
        self.reloads: dict[str, int] = {}
        self.sent: list[tuple[str, int, int]] = []
        self.fail = False
        self._seq = itertools.count()
        self._cond = threading.Condition()

    @classmethod
    def named(cls, url: str) -> MemoryBroker:
        return cls._named.setdefault(url, cls())

    @staticmethod
    def queue_name(queue: str, priority: int) -> str:
        return f"{queue}.{priority}"

    def publish(self, queue: str, priority: int, job_id: int, delay_ms: int = 0) -> None:
        if self.fail:
            raise BrokerError("memory broker is down")
        name = self.queue_name(queue, priority)
        with self._cond:
            self.sent.append((name, job_id, delay_ms))
            if delay_ms > 0:
                heapq.heappush(
                    self.delayed,
                    (time.monotonic() + delay_ms / 1000, next(self._seq), name, job_id),
                )
            else:
                self.queues.setdefault(name, []).append(job_id)
            self._cond.notify_all()

    def _release_due(self) -> None:
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, name, job_id = heapq.heappop(self.delayed)
            self.queues.setdefault(name, []).append(job_id)

    def consumer(
        self, queue: str, priorities: Sequence[int], started: float | None = None
    ) -> MemoryConsumer:
        return MemoryConsumer(self, queue, sorted(priorities))

    def request_reload(self, queue: str, number: int) -> None:
        with self._cond:
            self.reloads[queue] = self.reloads.get(queue, 0) + number
            self._cond.notify_all()

    def pending(self, queue: str, priority: int) -> list[int]:
        with self._cond:
            self._release_due()
            return list(self.queues.get(self.queue_name(queue, priority), []))


class MemoryConsumer(Consumer):
    """Takes ids straight from the broker's lists: nothing is held, so a prefetch does not
    apply and acknowledging is a no-op."""

    def __init__(self, broker: MemoryBroker, queue: str, priorities: list[int]) -> None:
        self.broker, self.queue, self.priorities = broker, queue, priorities
        self._tags = itertools.count(1)

    def next_batch(self, limit: int, timeout: float) -> list[Delivery]:
        b = self.broker
        deadline = time.monotonic() + timeout
        with b._cond:
            while not b.reloads.get(self.queue):
                b._release_due()
                for p in self.priorities:
                    ids = b.queues.get(b.queue_name(self.queue, p))
                    if ids:
                        batch = [Delivery(i, p, next(self._tags)) for i in ids[:limit]]
                        del ids[:limit]
                        return batch
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if b.delayed:  # wake up for the next delayed id
                    left = min(left, max(0.0, b.delayed[0][0] - time.monotonic()))
                b._cond.wait(left)
        return []

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        pass

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        b = self.broker
        with b._cond:
            for d in reversed(deliveries):  # back to the front, in their order
                b.queues.setdefault(b.queue_name(self.queue, d.priority), []).insert(0, d.job_id)
            b._cond.notify_all()

    def take_reload_request(self) -> bool:
        b = self.broker
        with b._cond:
            if b.reloads.get(self.queue, 0) > 0:
                b.reloads[self.queue] -= 1
                return True
            return False
