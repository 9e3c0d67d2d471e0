"""The nodes of ``BGQUEUE_BROKER_URL``: connecting to the first that answers, and saying
in words why none did. Imports pika (with :mod:`.amqp` and :mod:`.pipeline`).

Several URLs are the nodes of one RabbitMQ cluster. Each connection (a consumer's, a
thread's producer, the publisher thread's) tries them in the order given and keeps the
first that answers; when it is lost, the next connection starts again from the first, so
work comes back to the preferred node once it is up. A connection is never moved silently:
what it lost is handled as on one node (messages not acknowledged go back to their queues,
publishes not confirmed make their rows ``BROKER_FAILED``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import pika
import pika.exceptions

from .settings import mask


class NoNodeAnswered(ConnectionError):
    """None of several nodes could be reached; ``errors`` holds each node's error. (An
    :class:`OSError`, so it is caught where a connection's errors are.)"""

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        super().__init__(errors)
        self.errors = errors


def connect(urls: Sequence[str]) -> tuple[pika.BlockingConnection, str]:
    """A connection to the first of ``urls`` that answers, and that node's URL.

    One URL: its error as pika raised it. Several: :class:`NoNodeAnswered` when none did.
    """
    errors: list[tuple[str, BaseException]] = []
    for url in urls:
        try:
            return pika.BlockingConnection(pika.URLParameters(url)), url
        except (pika.exceptions.AMQPError, OSError) as exc:
            if len(urls) == 1:
                raise
            errors.append((url, exc))
    raise NoNodeAnswered(errors)


def describe(urls: Sequence[str]) -> str:
    """The nodes for a person: their URLs with the passwords masked, comma-separated."""
    return ", ".join(mask(url) for url in urls)


def explain(exc: BaseException) -> str:
    """Why a connection to RabbitMQ failed or dropped, for a person (never the password)."""
    if isinstance(exc, NoNodeAnswered):
        why = "; ".join(f"{mask(url)}: {explain(error)}" for url, error in exc.errors)
        return f"no node answered ({why})"
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return "RabbitMQ refused the user name or password (ACCESS_REFUSED)"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "the virtual host does not exist, or the user may not use it (NOT_ALLOWED)"
    if isinstance(exc, socket.gaierror):
        return f"the host name is not known ({exc.strerror})"
    if isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args:
        cause = exc.args[0]
        socket_error = getattr(cause, "exception", None)  # AMQPConnectorSocketConnectError
        if isinstance(socket_error, OSError):
            # strerror, or pika's own text (its args hold the errno's text quoted)
            text = socket_error.strerror or os.strerror(socket_error.errno or 0)
            return f"nothing answers there ({text})"
        if isinstance(cause, pika.exceptions.ConnectionClosedByBroker):
            return f"RabbitMQ closed the connection ({cause.reply_code} {cause.reply_text})"
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return f"RabbitMQ closed the connection ({exc.reply_code} {exc.reply_text})"
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return f"RabbitMQ closed the channel ({exc.reply_code} {exc.reply_text})"
    return f"{type(exc).__name__}: {exc}"
