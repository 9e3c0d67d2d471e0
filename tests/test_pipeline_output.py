"""What the publisher thread leaves pika to send: one buffer (no RabbitMQ needed)."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

from flask_bgqueue.broker import pipeline


def test_join_output_leaves_one_buffer_in_the_same_order() -> None:
    buffers = deque([b"method", b"header", b"body"])
    connection = SimpleNamespace(_transport=SimpleNamespace(_tx_buffers=buffers))
    pipeline._join_output(connection)
    assert list(buffers) == [b"methodheaderbody"]


def test_join_output_does_nothing_where_pika_has_no_such_buffer() -> None:
    pipeline._join_output(SimpleNamespace(_transport=None))
    pipeline._join_output(SimpleNamespace())
    one = deque([b"only"])
    pipeline._join_output(SimpleNamespace(_transport=SimpleNamespace(_tx_buffers=one)))
    assert list(one) == [b"only"]
