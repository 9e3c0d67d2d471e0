"""How a RabbitMQ consumer picks the most urgent priority (the logic, with a stand-in for
pika's channel; tests/test_broker_amqp.py runs it against RabbitMQ)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flask_bgqueue.broker.amqp import AmqpConsumer


class HeldDelivery:
    """pika's BlockingConnection, as far as priorities go: a message RabbitMQ delivers
    while the consumer waits for a ``queue.declare`` answer is held until events are
    processed; the answer's count leaves it out (it is delivered, not ready)."""

    def __init__(self, consumer: AmqpConsumer, priority: int, job_id: int) -> None:
        self.consumer, self.priority, self.job_id = consumer, priority, job_id
        self.held: list[tuple[int, int]] = []
        self.channel = SimpleNamespace(queue_declare=self.queue_declare)
        self.connection = SimpleNamespace(process_data_events=self.process_data_events)

    def queue_declare(self, name: str, durable: bool, passive: bool) -> Any:
        if self.job_id:
            self.held.append((self.priority, self.job_id))  # it came in meanwhile
            self.job_id = 0
        return SimpleNamespace(method=SimpleNamespace(message_count=0))

    def process_data_events(self, time_limit: float) -> None:
        for priority, job_id in self.held:
            callback = self.consumer._on_message(priority)
            callback(None, SimpleNamespace(delivery_tag=job_id), None, str(job_id).encode())
        self.held.clear()


def consumer_holding(priorities: list[int], buffered: dict[int, list[int]]) -> AmqpConsumer:
    consumer = AmqpConsumer.__new__(AmqpConsumer)  # no connection: the stand-in below
    consumer.queue, consumer.priorities = "q", priorities
    consumer.buffered = {p: [(i, i) for i in buffered.get(p, [])] for p in priorities}
    consumer.unacked = {i for ids in buffered.values() for i in ids}
    consumer.reload_tag, consumer.prefetch = None, 1
    return consumer


def test_an_urgent_message_that_arrives_while_asking_is_taken_before_a_less_urgent_one() -> None:
    consumer = consumer_holding([10, 30], {30: [2]})
    consumer.ch = HeldDelivery(consumer, 10, 1)  # type: ignore[assignment]
    batch = consumer.next_batch(5, 1.0)
    assert [(d.priority, d.job_id) for d in batch] == [(10, 1)]
    assert consumer.buffered[30] == [(2, 2)]  # still held for the next batch


def test_with_nothing_more_urgent_the_less_urgent_batch_is_taken() -> None:
    consumer = consumer_holding([10, 30], {30: [2]})
    consumer.ch = HeldDelivery(consumer, 10, 0)  # type: ignore[assignment]
    batch = consumer.next_batch(5, 1.0)
    assert [(d.priority, d.job_id) for d in batch] == [(30, 2)]
