"""The broker's ``BGQUEUE_*`` keys, checked: node URLs, per-queue arguments, a broker class.

Pure functions called by :func:`flask_bgqueue.config.load_settings`; nothing here imports
pika, so a wrong value is reported the same with or without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from werkzeug.utils import ImportStringError, import_string

from ..exceptions import ConfigurationError
from .base import Broker

URL_KEY = "BGQUEUE_BROKER_URL"
CLASS_KEY = "BGQUEUE_BROKER_CLASS"
BY_QUEUE_KEY = "BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE"
SCHEMES = ("amqp://", "amqps://", "memory://")


def broker_urls(value: Any, custom: bool = False) -> tuple[str, ...]:
    """``BGQUEUE_BROKER_URL``: ``None``, one URL, several comma-separated in one string (as
    an environment variable gives them), or a list of URLs: the nodes of one RabbitMQ
    cluster, tried in this order. With a ``BGQUEUE_BROKER_CLASS`` (``custom``) the value
    is that class's to read and only its form is checked here."""
    if value is None:
        return ()
    if isinstance(value, str):
        urls = [u.strip() for u in value.split(",")]
    elif isinstance(value, (list, tuple)) and value:
        urls = list(value)
    else:
        raise ConfigurationError(
            f"{URL_KEY} must be a URL, several URLs separated by commas, or a non-empty list"
            f" of URLs, not {value!r}.",
            URL_KEY,
        )
    for url in urls:
        if not isinstance(url, str) or not url.strip():
            raise ConfigurationError(
                f"{URL_KEY} holds an empty or non-text URL {url!r} (in"
                f" {[mask(u) if isinstance(u, str) else u for u in urls]}); give each"
                " node as amqp://user:pass@host:5672/vhost, separated by commas.",
                URL_KEY,
            )
    if custom:
        return tuple(urls)
    for url in urls:
        if not url.startswith(SCHEMES):
            raise ConfigurationError(
                f"{URL_KEY} {mask(url)!r} has an unknown scheme; use"
                " amqp://user:pass@host:5672/vhost (or set BGQUEUE_BROKER_CLASS for a"
                " broker of your own).",
                URL_KEY,
            )
    schemes = {url.split("://", 1)[0] for url in urls}
    if len(urls) > 1 and not schemes <= {"amqp", "amqps"}:
        raise ConfigurationError(
            f"{URL_KEY} lists several URLs, which only RabbitMQ nodes (amqp:// or amqps://)"
            f" may do; got {[mask(u) for u in urls]}.",
            URL_KEY,
        )
    if len(set(urls)) != len(urls):
        raise ConfigurationError(
            f"{URL_KEY} lists a node more than once: {[mask(u) for u in urls]}; list each once.",
            URL_KEY,
        )
    return tuple(urls)


def arguments_by_queue(value: Any, base_queue: str) -> dict[str, dict[str, Any]]:
    """``BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE``: ``{queue: {argument: value}}``.

    A queue is named as ``flask bgq consume QUEUE`` names it: in full (``default_emails``,
    ``BGQUEUE_QUEUE`` itself) or by a callback's ``queue=`` (``emails``, which stands for
    ``<BGQUEUE_QUEUE>_emails``). The result is keyed by full names; a full name given
    explicitly wins over the same queue named short.
    """
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{BY_QUEUE_KEY} must map queue names to dicts of arguments, such as"
            f' {{"emails": {{"x-queue-type": "quorum"}}}}, not {value!r}.',
            BY_QUEUE_KEY,
        )
    short: dict[str, dict[str, Any]] = {}
    full: dict[str, dict[str, Any]] = {}
    for name, arguments in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{BY_QUEUE_KEY} holds an empty or non-text queue name {name!r}.", BY_QUEUE_KEY
            )
        if not isinstance(arguments, Mapping) or not all(isinstance(k, str) for k in arguments):
            raise ConfigurationError(
                f"{BY_QUEUE_KEY}[{name!r}] must be a dict of AMQP arguments such as"
                f' {{"x-queue-type": "quorum"}}, not {arguments!r}.',
                BY_QUEUE_KEY,
            )
        full[name] = dict(arguments)
        if name != base_queue:
            short[f"{base_queue}_{name}"] = dict(arguments)
    return {**short, **full}


def broker_class(value: Any) -> type[Broker] | None:
    """``BGQUEUE_BROKER_CLASS``: a :class:`Broker` subclass, or its import string."""
    if value is None:
        return None
    cls = value
    if isinstance(value, str):
        try:
            cls = import_string(value)
        except ImportStringError as exc:
            raise ConfigurationError(
                f"{CLASS_KEY} = {value!r} does not import: {exc.exception}. Use"
                " 'package.module:ClassName'.",
                CLASS_KEY,
            ) from exc
    if not isinstance(cls, type) or not issubclass(cls, Broker):
        raise ConfigurationError(
            f"{CLASS_KEY} = {value!r} is not a broker: it must name a subclass of"
            " flask_bgqueue.broker.Broker (see the broker docs for what it implements).",
            CLASS_KEY,
        )
    return cls


def mask(url: str) -> str:
    """``url`` with its password (between ``user:`` and ``@``) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    user, at, host = authority.rpartition("@")
    if not at or ":" not in user:
        return url
    return f"{scheme}://{user.split(':', 1)[0]}:***@{host}{slash}{path}"
