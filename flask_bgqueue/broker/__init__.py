"""Brokers announce job ids to consumers; the row in the table stays the truth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..exceptions import BrokerConnectionLost, BrokerError, ConfigurationError
from .base import Broker, Consumer, Delivery

__all__ = [
    "Broker",
    "BrokerConnectionLost",
    "BrokerError",
    "Consumer",
    "Delivery",
    "broker_for_url",
    "custom_broker",
]


def broker_for_url(
    url: str | tuple[str, ...],
    queue_arguments: Mapping[str, Any],
    arguments_by_queue: Mapping[str, Mapping[str, Any]] | None = None,
) -> Broker:
    """The broker for ``BGQUEUE_BROKER_URL``: ``amqp://`` / ``amqps://`` (pika; several
    URLs are the nodes of one cluster) or ``memory://``."""
    urls = (url,) if isinstance(url, str) else url
    if urls[0].startswith(("amqp://", "amqps://")):
        try:
            from .amqp import AmqpBroker
        except ImportError as exc:
            raise ConfigurationError(
                "BGQUEUE_BROKER_URL is an amqp:// URL, which needs pika: install"
                " 'Flask-BgQueue[amqp]' (pip install 'Flask-BgQueue[amqp]').",
                "BGQUEUE_BROKER_URL",
            ) from exc
        return AmqpBroker(urls, queue_arguments, arguments_by_queue or {})
    if urls[0].startswith("memory://"):
        from .memory import MemoryBroker

        return MemoryBroker.named(urls[0])
    raise ConfigurationError(
        f"BGQUEUE_BROKER_URL {urls[0]!r} has an unknown scheme; use"
        " amqp://user:pass@host:5672/vhost.",
        "BGQUEUE_BROKER_URL",
    )


def custom_broker(cls: type[Broker], config: Mapping[str, Any]) -> Broker:
    """The broker of ``BGQUEUE_BROKER_CLASS``: ``cls.from_config(app.config)``."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        broker = cls.from_config(config)
    except TypeError as exc:  # abstract methods left, or a constructor that wants more
        raise ConfigurationError(
            f"BGQUEUE_BROKER_CLASS {name} cannot be made by {name}.from_config(app.config):"
            f" {exc}. Implement the abstract methods of flask_bgqueue.broker.Broker, and"
            " override from_config() when the constructor takes arguments.",
            "BGQUEUE_BROKER_CLASS",
        ) from exc
    if not isinstance(broker, Broker):
        raise ConfigurationError(
            f"BGQUEUE_BROKER_CLASS {name}.from_config() returned {broker!r}, not a Broker.",
            "BGQUEUE_BROKER_CLASS",
        )
    return broker
