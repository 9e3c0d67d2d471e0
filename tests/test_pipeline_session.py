"""The publisher thread's account of a lost connection, on a session without its thread:
the real lost connections are in ``test_broker_pipeline.py`` and ``test_amqp_cluster.py``."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from flask_bgqueue.broker.pipeline import PipelinedPublisher, _Session


class Loop:
    def add_callback_threadsafe(self, callback: Any) -> None:
        pass

    def stop(self) -> None:
        pass


class Closed:
    is_open = False
    ioloop = Loop()


def test_a_broker_that_closes_the_channel_then_the_connection_is_logged_with_the_ids_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed: list[tuple[list[int], str]] = []
    publisher = PipelinedPublisher(
        ("amqp://u:p@node1/%2F",), lambda ids, why: failed.append((ids, why))
    )
    session = object.__new__(_Session)  # its state, without the thread that connects
    session.__dict__.update(
        publisher=publisher,
        connection=Closed(),
        node="amqp://u:p@node1/%2F",
        closing=False,
        renewing=False,
        ended=False,
        failed=0,
        unconfirmed={1: 11, 2: 12},
        waiting={},
    )
    publisher.session = session
    publisher.outstanding = 2
    shutdown = RuntimeError("CONNECTION_FORCED - broker forced connection closure")
    caplog.set_level(logging.WARNING, "flask_bgqueue.broker")

    session._on_channel_closed(None, shutdown)  # a shutting-down broker closes it first
    session._on_closed(Closed(), shutdown)

    assert [ids for ids, _ in failed] == [[11, 12]]
    assert "channel to RabbitMQ closed before confirming" in failed[0][1]
    [warning] = [r.getMessage() for r in caplog.records if "lost RabbitMQ" in r.getMessage()]
    assert "2 job(s) not confirmed became BROKER_FAILED" in warning, warning
    assert "u:p@" not in warning  # the password is masked
    assert publisher.outstanding == 0 and publisher.session is None
