"""An in-memory broker for tests of logic in one process (``memory://name``)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from .base import Broker, BrokerError, Delivery, Handler


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

    def consume(
        self,
        queue: str,
        priorities: Sequence[int],
        handler: Handler,
        should_stop: Callable[[], bool],
        idle: Callable[[], None] | None = None,
        batch_limit: Callable[[], int] | None = None,
    ) -> None:
        while not should_stop():
            with self._cond:
                if self.reloads.get(queue, 0) > 0:
                    self.reloads[queue] -= 1
                    return
                self._release_due()
                batch: list[Delivery] = []
                for p in sorted(priorities):
                    ids = self.queues.get(self.queue_name(queue, p))
                    if ids:
                        n = batch_limit() if batch_limit is not None else 1
                        batch = [Delivery(job_id, p) for job_id in ids[:n]]
                        del ids[:n]
                        break
                if not batch:
                    self._cond.wait(0.05)
            if not batch:
                if idle is not None:
                    idle()
                continue
            work = handler(batch)
            if work is not None:
                work()

    def request_reload(self, queue: str, number: int) -> None:
        with self._cond:
            self.reloads[queue] = self.reloads.get(queue, 0) + number
            self._cond.notify_all()

    def pending(self, queue: str, priority: int) -> list[int]:
        with self._cond:
            self._release_due()
            return list(self.queues.get(self.queue_name(queue, priority), []))
