"""The per-app runtime: what one application needs to publish and run jobs.

:class:`Runtime` lives in ``app.extensions["bgqueue"]``. It holds the validated settings,
the callback registry of the :class:`~flask_bgqueue.BackgroundQueue` it was made by, and
(created on first use) the engine, the store and the broker. Every module below the
extension's facade reaches the app's queue through :func:`current_runtime`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from flask.logging import default_handler, has_level_handler

from . import schema
from .broker import Broker, broker_for_url, custom_broker
from .clock import utcnow
from .config import Settings
from .exceptions import ConfigurationError, SchemaError
from .limits import Limits
from .schedule import Schedule
from .specs import CallbackSpec
from .store import Store
from .store.dialects import bound_network_waits, enable_wal, engine_options, prepare_engine
from .store.pooling import prepare_pooling

EXTENSION_KEY = "bgqueue"


@dataclass
class Registry:
    """The callbacks registered with ``@bgq.callback``, their ``@bgq.periodic`` schedules
    and the processing-metadata hook.

    One per :class:`~flask_bgqueue.BackgroundQueue`, shared by every app it is registered
    on; callbacks may still be added after ``init_app``.
    """

    callbacks: dict[str, CallbackSpec] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    metadata_func: Callable[[Any], dict[str, Any]] | None = None


class Runtime:
    """One application's queue: settings, callbacks and (lazily) engine, store, broker."""

    def __init__(self, owner: object, registry: Registry, app: Flask, settings: Settings) -> None:
        self.owner = owner  # the BackgroundQueue this runtime belongs to
        self.registry = registry
        self.settings = settings
        self.logger = logger()
        self._store: Store | None = None
        self._engine: sa.Engine | None = None
        self.broker: Broker | None = None
        if settings.broker_class is not None:
            self.broker = custom_broker(settings.broker_class, app.config)
        elif settings.broker_urls:  # checks that pika is installed
            self.broker = broker_for_url(
                settings.broker_urls,
                settings.amqp_queue_arguments,
                settings.amqp_queue_arguments_by_queue,
            )
        self._lock = threading.Lock()
        self._limits: tuple[int, dict[str, Limits]] | None = None
        #: Callbacks whose parameters held a SQLAlchemy model (warned of once each).
        self.noted_models: set[str] = set()
        #: Problems of schedules already logged by this process (each is logged once).
        self.schedule_warnings: set[str] = set()

    def callback(self, name: str) -> CallbackSpec | None:
        spec = self.settings.callbacks.get(name)
        return spec if spec is not None else self.registry.callbacks.get(name)

    def limits(self) -> dict[str, Limits]:
        """The concurrency and rate limits of the callbacks that have any, by name.

        Asked by every claim: built again only when a callback was registered since (a
        name is never registered twice, so the count tells).
        """
        registered = len(self.registry.callbacks)
        if self._limits is None or self._limits[0] != registered:
            specs = {**self.registry.callbacks, **self.settings.callbacks}
            limits = {n: spec.limits for n, spec in specs.items() if spec.limits is not None}
            self._limits = (registered, limits)
        return self._limits[1]

    def callback_names(self) -> list[str]:
        return sorted({*self.settings.callbacks, *self.registry.callbacks})

    def schedules(self) -> dict[str, Schedule]:
        """The periodic schedules: ``@bgq.periodic`` ones and ``BGQUEUE_SCHEDULE``'s."""
        if not self.settings.schedules:
            return self.registry.schedules
        return {**self.registry.schedules, **self.settings.schedules}

    @property
    def store(self) -> Store:
        """The store, created on first use, with the schema brought up to date."""
        if self._store is None:
            engine = self.engine
            with self._lock:
                if self._store is None:
                    self._store = self._open_store(engine)
        return self._store

    @property
    def engine(self) -> sa.Engine:
        """The queue's engine (private, or the bind's), created on first use."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = _engine(self.settings)
        return self._engine

    def _open_store(self, engine: sa.Engine) -> Store:
        s = self.settings
        enable_wal(engine, self.logger)
        if s.auto_update_schema:
            schema.upgrade(engine, s.table_name)
        else:
            with engine.connect() as conn:
                current = schema.current_revision(conn, s.table_name)
            if current != schema.head_revision():
                raise SchemaError(
                    f"The job table {s.table_name!r} is at revision {current or 'none'}, this"
                    f" version needs {schema.head_revision()}. Run 'flask bgq update-schema'"
                    " (BGQUEUE_AUTO_UPDATE_SCHEMA is off)."
                )
        store = Store(engine, s.table_name, s.queue)
        store.configure_pooling(s.transaction_pooling, s.listen_database_uri)
        return store

    def queues(self) -> list[str]:
        """The queues this app publishes to: ``BGQUEUE_QUEUE`` and its callbacks' sub-queues."""
        s = self.settings
        specs = [*s.callbacks.values(), *self.registry.callbacks.values()]
        return sorted({s.queue, *(f"{s.queue}_{c.queue}" for c in specs if c.queue)})

    def queue_name(self, name: str) -> tuple[str, bool]:
        """The full name of the queue a person names, and whether this app publishes to it.

        ``BGQUEUE_QUEUE`` and full sub-queue names (``default_mail``) stand for themselves;
        a callback's ``queue=`` (``mail``) stands for its sub-queue.
        """
        known = self.queues()
        if name in known:
            return name, True
        full = f"{self.settings.queue}_{name}"
        if full in known:
            return full, True
        return name, False

    # -- maintenance ----------------------------------------------------------------------

    def update_schema(self) -> bool:
        """Create or upgrade the job table; return whether anything changed."""
        return schema.upgrade(self.engine, self.settings.table_name)

    def cancel(self, job_ids: Iterable[int], by: str | None = None) -> list[int]:
        """Cancel jobs not running, ask running ones to stop (see :meth:`Store.cancel`)."""
        who = by or f"pid {os.getpid()} on {socket.gethostname()}"
        return self.store.cancel(job_ids, utcnow(), who)

    def clear_finished(self, days: float | None = None) -> int:
        """Delete FINISHED, REDUNDANT and CANCELLED jobs (finished more than ``days`` days
        ago)."""
        before = None if days is None else utcnow() - timedelta(days=days)
        return self.store.clear_finished(before)

    def reload_consumers(self, queue: str, number: int) -> None:
        """Make ``number`` consumers of ``queue`` exit after their current job."""
        if self.broker is None:
            raise RuntimeError(
                "reload-consumers needs a broker (BGQUEUE_BROKER_URL); without one, send"
                " SIGTERM to the consumers: each exits after its current job."
            )
        self.broker.request_reload(self.queue_name(queue)[0], number)


def logger() -> logging.Logger:
    """The ``flask_bgqueue`` logger, set apart from the app's so its level can differ.

    As Flask does for ``app.logger``: when no handler would show its warnings, it gets
    Flask's default handler (standard error), so a consumer or a cron run still says what
    went wrong. Configure logging (``logging.config.dictConfig``) before ``init_app`` and
    that handler is not added.
    """
    log = logging.getLogger("flask_bgqueue")
    if not has_level_handler(log) and default_handler not in log.handlers:
        log.addHandler(default_handler)
    return log


def current_runtime(owner: object | None = None) -> Runtime:
    """The runtime of the current app (of ``owner``'s registration when given).

    Raises a :exc:`RuntimeError` that says what to do outside an app context, or when
    ``owner`` is not registered on the current app.
    """
    try:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    except RuntimeError:
        raise RuntimeError(
            "Working outside of application context: Flask-BgQueue needs the app. Use"
            " 'with app.app_context():' around the call (request handlers and"
            " 'flask' commands already have one)."
        ) from None
    runtime = app.extensions.get(EXTENSION_KEY)
    if runtime is None or (owner is not None and runtime.owner is not owner):
        raise RuntimeError(
            "This BackgroundQueue is not registered on the current app. Did you forget"
            " to call bgq.init_app(app)?"
        )
    return runtime  # type: ignore[no-any-return]


def _engine(settings: Settings) -> sa.Engine:
    """The queue's engine: a private one for ``BGQUEUE_DATABASE_URI``, else the bind's."""
    if settings.database_uri is not None:
        url = sa.make_url(settings.database_uri)
        timeout = settings.network_timeout_seconds
        private = sa.create_engine(url, **engine_options(url, settings.engine_options, timeout))
        bound_network_waits(private, timeout)
        prepare_pooling(private, settings.transaction_pooling)
        return private
    db = current_app.extensions.get("sqlalchemy")
    if db is None:
        raise ConfigurationError(
            f"Flask-BgQueue stores jobs on the SQLAlchemy bind {settings.bind_key!r}, but"
            " Flask-SQLAlchemy is not initialised on this app. Call db.init_app(app), or set"
            " BGQUEUE_DATABASE_URI to give the queue its own database.",
            "BGQUEUE_BIND_KEY",
        )
    engine: sa.Engine = db.engines[settings.bind_key]
    prepare_engine(engine, settings.network_timeout_seconds)
    prepare_pooling(engine, settings.transaction_pooling)
    return engine
