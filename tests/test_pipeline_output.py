"""What the publisher thread leaves pika to send: the bytes of each message, in one buffer;
and when it sends ids together (no RabbitMQ needed)."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace
from typing import cast

import pika
import pika.callback
import pika.channel
import pika.connection
import pika.exceptions
import pytest

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


class _Capture:
    """pika's own message marshaling (``Connection._send_method``/``_send_message``),
    with what it would hand the socket kept instead, one entry per message."""

    _send_method = pika.connection.Connection._send_method
    _send_message = pika.connection.Connection._send_message
    _body_max_length = 131072 - 8  # pika's default frame_max less a frame's overhead
    is_closed = False

    def __init__(self) -> None:
        self.callbacks = pika.callback.CallbackManager()
        self.out: list[bytes] = []

    def _output_marshaled_frames(self, frames: list[bytes]) -> None:
        self.out.append(b"".join(frames))


def _session(connection: object, channel: object) -> pipeline._Session:
    """A session without its thread and connection: only what ``_send`` uses."""
    session = object.__new__(pipeline._Session)
    session.connection = connection
    session.channel = channel
    session.unconfirmed = {}
    session.next_tag = 1
    session.declared = set()
    session.waiting = {}
    session.heads = {}
    return session


def _open_channel(connection: _Capture, number: int) -> pika.channel.Channel:
    channel = pika.channel.Channel(connection, number, lambda _channel: None)
    channel._set_state(pika.channel.Channel.OPEN)
    return channel


def test_each_message_is_the_bytes_pikas_basic_publish_sends() -> None:
    ours, theirs = _Capture(), _Capture()
    channel = _open_channel(ours, 3)
    session = _session(ours, channel)
    reference = _open_channel(theirs, 3)

    def not_this_way(*args: object, **kwargs: object) -> None:
        raise AssertionError("basic_publish marshals every frame anew")

    channel.basic_publish = not_this_way
    sent = [
        ("bgqueue.default.p100", 7),
        ("bgqueue.default.p100", 8),  # the cached frames of the same key and length
        ("bgqueue.default.p100", 123456789),  # same key, another length
        ("bgqueue.mail.p50.delay.1000", 9),
        ("bgqueue.default.p100", 3),
    ]
    for routing_key, job_id in sent:
        session._send(((), routing_key, job_id))
        reference.basic_publish(
            "", routing_key, str(job_id).encode(), pika.BasicProperties(delivery_mode=2), True
        )
    assert ours.out == theirs.out
    assert list(session.unconfirmed.items()) == [(i + 1, j) for i, (_, j) in enumerate(sent)]
    assert len(session.heads) == 3  # one per (routing key, body length)


def test_without_pikas_output_hook_or_with_a_closed_channel_basic_publish_is_used() -> None:
    calls: list[dict[str, object]] = []
    channel = SimpleNamespace(
        is_open=True, channel_number=1, basic_publish=lambda **kw: calls.append(kw)
    )
    session = _session(SimpleNamespace(), channel)  # a pika without _output_marshaled_frames
    session._send(((), "bgqueue.default.p100", 42))
    assert len(calls) == 1
    assert calls[0]["routing_key"] == "bgqueue.default.p100"
    assert calls[0]["body"] == b"42"
    assert calls[0]["mandatory"] is True
    assert cast(pika.BasicProperties, calls[0]["properties"]).delivery_mode == 2

    closed = _Capture()
    channel = pika.channel.Channel(closed, 1, lambda _channel: None)  # never opened
    session = _session(closed, channel)
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        session._send(((), "bgqueue.default.p100", 43))
    assert closed.out == []


def test_the_average_gap_keeps_a_loop_a_burst_and_a_steady_stream_not() -> None:
    """The moving average of the gaps between hand-overs (``smoothed_gap``): a loop with an
    occasional slow commit stays a burst; ids 3 ms apart never become one, nor does a
    pause followed by a few quick ids."""
    burst = pipeline.BURST_SECONDS
    loop = pipeline.GAP_CAP_SECONDS
    for n in range(200):
        loop = pipeline.smoothed_gap(loop, 0.006 if n % 10 == 0 else 0.0005)
        if n >= 40:
            assert loop < burst, (n, loop)  # the slow commit does not end the burst
    steady = pipeline.GAP_CAP_SECONDS
    for n in range(200):
        steady = pipeline.smoothed_gap(steady, 0.003)
        assert steady >= burst, (n, steady)
    after_pause = pipeline.smoothed_gap(loop, 60.0)  # a minute without publishing
    assert after_pause >= burst
    for _ in range(3):
        after_pause = pipeline.smoothed_gap(after_pause, 0.0005)
        assert after_pause >= burst  # the first ids after a pause go out at once
    for _ in range(40):
        after_pause = pipeline.smoothed_gap(after_pause, 0.0005)
    assert after_pause < burst  # then the loop is a burst again
