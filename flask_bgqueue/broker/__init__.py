"""Brokers announce job ids to consumers; the row in the table stays the truth."""

from __future__ import annotations

from ..exceptions import BrokerConnectionLost, BrokerError, ConfigurationError
from .base import Broker, Consumer, Delivery

__all__ = [
    "Broker",
    "BrokerConnectionLost",
    "BrokerError",
    "Consumer",
    "Delivery",
    "broker_for_url",
]


def broker_for_url(url: str, queue_arguments: dict[str, object]) -> Broker:
    """The broker for ``BGQUEUE_BROKER_URL``: ``amqp://`` / ``amqps://`` (pika) or ``memory://``."""
    if url.startswith(("amqp://", "amqps://")):
        try:
            from .amqp import AmqpBroker
        except ImportError as exc:
            raise ConfigurationError(
                "BGQUEUE_BROKER_URL is an amqp:// URL, which needs pika: install"
                " 'Flask-BgQueue[amqp]' (pip install 'Flask-BgQueue[amqp]').",
                "BGQUEUE_BROKER_URL",
            ) from exc
        return AmqpBroker(url, queue_arguments)
    if url.startswith("memory://"):
        from .memory import MemoryBroker

        return MemoryBroker.named(url)
    raise ConfigurationError(
        f"BGQUEUE_BROKER_URL {url!r} has an unknown scheme; use amqp://user:pass@host:5672/vhost.",
        "BGQUEUE_BROKER_URL",
    )
