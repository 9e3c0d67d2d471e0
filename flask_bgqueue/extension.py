"""The :class:`BackgroundQueue` extension: registration, publishing, reading."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

import sqlalchemy as sa
from flask import Flask, current_app, g

from . import serialization, signals
from .broker import Broker, BrokerError, broker_for_url
from .config import CallbackSpec, Settings, load_settings
from .exceptions import ConfigurationError, PublishError, SchemaError, UnknownCallbackError
from .models import Job, JobState
from .retry import to_utc_naive, utcnow
from .store import Store
from .store.dialects import enable_wal, engine_options, prepare_engine

if TYPE_CHECKING:
    from .processor import SweepResult
    from .worker import ConsumeResult

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION_KEY = "bgqueue"


class _AppState:
    """What one application needs: its settings, its callbacks and (lazily) its store."""

    def __init__(self, queue: BackgroundQueue, app: Flask, settings: Settings) -> None:
        self.queue = queue
        self.settings = settings
        self.logger = app.logger
        self._store: Store | None = None
        self._engine: sa.Engine | None = None
        self.broker: Broker | None = None
        if settings.broker_url is not None:  # checks the scheme and that pika is installed
            self.broker = broker_for_url(settings.broker_url, dict(settings.amqp_queue_arguments))
        self._lock = threading.Lock()

    def callback(self, name: str) -> CallbackSpec | None:
        spec = self.settings.callbacks.get(name)
        return spec if spec is not None else self.queue._callbacks.get(name)

    def callback_names(self) -> list[str]:
        return sorted({*self.settings.callbacks, *self.queue._callbacks})

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
        from . import schema

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
        return Store(engine, s.table_name, s.queue)


def _engine(settings: Settings) -> sa.Engine:
    """The queue's engine: a private one for ``BGQUEUE_DATABASE_URI``, else the bind's."""
    if settings.database_uri is not None:
        url = sa.make_url(settings.database_uri)
        return sa.create_engine(url, **engine_options(url, settings.engine_options))
    db = current_app.extensions.get("sqlalchemy")
    if db is None:
        raise ConfigurationError(
            f"Flask-BgQueue stores jobs on the SQLAlchemy bind {settings.bind_key!r}, but"
            " Flask-SQLAlchemy is not initialised on this app. Call db.init_app(app), or set"
            " BGQUEUE_DATABASE_URI to give the queue its own database.",
            "BGQUEUE_BIND_KEY",
        )
    engine: sa.Engine = db.engines[settings.bind_key]
    prepare_engine(engine)
    return engine


class BackgroundQueue:
    """Flask extension: background jobs stored in a table on their own database bind.

    ``bgq = BackgroundQueue(); bgq.init_app(app)``, or ``BackgroundQueue(app)``.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._callbacks: dict[str, CallbackSpec] = {}
        self._metadata_func: Callable[[Any], dict[str, Any]] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and check the ``BGQUEUE_*`` keys, and add the ``flask bgq`` commands."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "Flask-BgQueue is already registered on this app: call init_app(app) once"
                " per app (with BackgroundQueue(app), do not call init_app again)."
            )
        settings = load_settings(app)
        if settings.database_uri is None and settings.bind_key not in app.config.get(
            "SQLALCHEMY_BINDS", {}
        ):
            raise ConfigurationError(
                "Flask-BgQueue needs a database for its job table. Either add the bind"
                f" SQLALCHEMY_BINDS[{settings.bind_key!r}] = 'sqlite:///jobs.db' (and set"
                " BGQUEUE_BIND_KEY if you name it otherwise), or set BGQUEUE_DATABASE_URI.",
                "BGQUEUE_BIND_KEY",
            )
        clash = sorted(set(settings.callbacks) & set(self._callbacks))
        if clash:
            raise ConfigurationError(
                f"callback {clash[0]!r} is registered both in BGQUEUE_CALLBACKS and with"
                " @bgq.callback; give one of them another name.",
                "BGQUEUE_CALLBACKS",
            )
        app.extensions[EXTENSION_KEY] = _AppState(self, app, settings)
        from .cli import bgq_command

        app.cli.add_command(bgq_command)
        if settings.dashboard_url_prefix is not None:
            from .dashboard import register

            register(app, settings.dashboard_url_prefix)

    # -- registration -------------------------------------------------------------------

    @overload
    def callback(self, name: F) -> F: ...
    @overload
    def callback(
        self, name: str | None = None, *, queue: str | None = None, priority: int | None = None
    ) -> Callable[[F], F]: ...

    def callback(
        self, name: Any = None, *, queue: str | None = None, priority: int | None = None
    ) -> Any:
        """Register a function as a callback: ``@bgq.callback`` or ``@bgq.callback("name")``.

        ``queue`` sends its jobs to the sub-queue ``<BGQUEUE_QUEUE>_<queue>``; ``priority``
        is its default priority (it must be one of ``BGQUEUE_PRIORITIES``).
        """
        if callable(name):
            return self.callback()(name)

        def decorator(func: F) -> F:
            key = name or func.__name__
            if key in self._callbacks:
                raise ConfigurationError(
                    f"a callback named {key!r} is already registered"
                    f" ({self._callbacks[key].func!r}); give this one another name."
                )
            if queue is not None and (not isinstance(queue, str) or not queue):
                raise ConfigurationError(f"callback {key!r}: queue must be a non-empty string.")
            self._callbacks[key] = CallbackSpec(key, func, queue, priority)
            return func

        return decorator

    def processing_metadata(
        self, func: Callable[[Any], dict[str, Any]]
    ) -> Callable[[Any], dict[str, Any]]:
        """Register the function whose dict is stored as a claimed job's ``metadata``.

        It receives the job's parameters.
        """
        self._metadata_func = func
        return func

    # -- publishing ---------------------------------------------------------------------

    def publish(
        self,
        callback_name: str,
        parameters: Any = None,
        *,
        serial_group: str | None = None,
        identifier: str | None = None,
        is_unique: bool = False,
        available_at: datetime | timedelta | None = None,
        priority: int | None = None,
    ) -> int | None:
        """Store a job and return its id.

        Returns ``None`` when the row is written later: inside :meth:`bulk`, or with
        ``BGQUEUE_PUBLISH_AFTER_APP_COMMIT`` while the app's session has a transaction open.
        Everything is checked before anything is written.
        """
        state = self._state()
        s = state.settings
        if not callback_name or not isinstance(callback_name, str):
            raise UnknownCallbackError(
                "callback_name must be a non-empty string.", str(callback_name)
            )
        spec = state.callback(callback_name)
        if spec is None:
            raise UnknownCallbackError(
                f"no callback named {callback_name!r} is registered; known:"
                f" {', '.join(state.callback_names()) or 'none'}. Register it with"
                " @bgq.callback or BGQUEUE_CALLBACKS.",
                callback_name,
            )
        if is_unique and not identifier:
            raise PublishError(
                "is_unique=True needs an identifier: only jobs with one can be unique."
            )
        for label, text in (("serial_group", serial_group), ("identifier", identifier)):
            if text is not None and (not isinstance(text, str) or len(text) > 255):
                raise PublishError(f"{label} must be a string of at most 255 characters.")
        if priority is None:
            priority = spec.priority if spec.priority is not None else s.priorities[0]
        if priority not in s.priorities:
            raise PublishError(
                f"priority {priority!r} is not one of BGQUEUE_PRIORITIES {list(s.priorities)}."
            )
        now = utcnow()
        try:
            due = to_utc_naive(available_at, now)
        except TypeError as exc:
            raise PublishError(str(exc)) from None
        stored = serialization.dump(parameters, s.parameters_format, s.signing_keys)
        row = {
            "queue": s.queue if spec.queue is None else f"{s.queue}_{spec.queue}",
            "priority": priority,
            "callback_name": callback_name,
            "parameters": stored.parameters,
            "parameters_json": stored.parameters_json,
            "state": JobState.READY,
            "created_at": now,
            "updated_at": now,
            "available_at": due,
            "number_of_attempts": 0,
            "serial_group": serial_group,
            "identifier": identifier,
            "is_unique": bool(is_unique),
        }
        bulk = g.get("_bgqueue_bulk")
        if bulk is not None:
            bulk.append(row)
            if len(bulk) >= s.bulk_size:
                self._write(state, bulk[:])
                bulk.clear()
            return None
        ids = self._write(state, [row])
        return ids[0] if ids else None

    def _write(self, state: _AppState, rows: list[dict[str, Any]]) -> list[int]:
        """Insert now, or hold the rows until the app's transaction commits."""
        if state.settings.publish_after_app_commit:
            from .deferral import defer

            if defer(state, rows):
                return []
        return write_rows(state, rows)

    def start_bulk(self) -> None:
        """Collect published jobs and write them in multi-row INSERTs until :meth:`end_bulk`."""
        self._state()
        if g.get("_bgqueue_bulk") is not None:
            raise RuntimeError("a bulk is already open in this app context; end it first.")
        g._bgqueue_bulk = []

    def end_bulk(self) -> list[int]:
        """Write what is left of the bulk and close it; return the ids written at the end."""
        state = self._state()
        rows = g.pop("_bgqueue_bulk", None)
        if rows is None:
            raise RuntimeError("end_bulk() without start_bulk(): no bulk is open.")
        return self._write(state, rows) if rows else []

    def discard_bulk(self) -> int:
        """Close the bulk without writing what it still holds; return how many were dropped."""
        self._state()
        rows = g.pop("_bgqueue_bulk", None)
        return len(rows) if rows else 0

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """``with bgq.bulk():`` publish many jobs in multi-row INSERTs.

        If the block raises, jobs not yet written (at most ``BGQUEUE_BULK_SIZE - 1``) are
        discarded; full chunks already written stay.
        """
        self.start_bulk()
        try:
            yield
        except BaseException:
            self.discard_bulk()
            raise
        self.end_bulk()

    # -- reading ------------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job | None:
        """A snapshot of job ``job_id`` of this queue, or ``None``."""
        return self._state().store.get(job_id)

    def load_parameters(self, job: Job) -> Any:
        """The job's parameters, decoded (a pickle only after its signature verifies)."""
        s = self._state().settings
        return serialization.load(
            serialization.Stored(job.parameters, job.parameters_json), s.signing_keys
        )

    def get_unfinished_job_identifiers(
        self, identifiers: Iterable[str] | None = None, exclude_processing: bool = False
    ) -> list[str]:
        """Identifiers (of those given, or all) that have a job not FINISHED nor REDUNDANT."""
        return self._state().store.unfinished_identifiers(identifiers, exclude_processing)

    # -- processing and maintenance -----------------------------------------------------

    def process(self, priorities: Sequence[int] | None = None) -> SweepResult:
        """Run every due job (of ``priorities``, default all) until none is due."""
        from .processor import Processor

        return Processor(self._state(), current_app._get_current_object()).sweep(priorities)  # type: ignore[attr-defined]

    def consume(
        self,
        queue: str | None = None,
        priorities: Sequence[int] | None = None,
        max_jobs: int | None = None,
        stop: threading.Event | None = None,
    ) -> ConsumeResult:
        """Run jobs as they come until ``stop`` is set, ``max_jobs`` ran, or a reload.

        With a broker, ids come from it; without one the table is polled (and, on
        PostgreSQL, ``LISTEN``/``NOTIFY`` wakes the consumer at once).
        """
        from .worker import Worker

        app = current_app._get_current_object()  # type: ignore[attr-defined]
        return Worker(
            self._state(), app, queue, priorities, max_jobs, stop or threading.Event()
        ).run()

    def reload_consumers(self, queue: str, number: int) -> None:
        """Make ``number`` consumers of ``queue`` exit after their current job."""
        state = self._state()
        if state.broker is None:
            raise RuntimeError(
                "reload-consumers needs a broker (BGQUEUE_BROKER_URL); without one, send"
                " SIGTERM to the consumers: each exits after its current job."
            )
        state.broker.request_reload(queue, number)

    def clear_finished(self, days: float | None = None) -> int:
        """Delete FINISHED and REDUNDANT jobs (finished more than ``days`` days ago)."""
        before = None if days is None else utcnow() - timedelta(days=days)
        return self._state().store.clear_finished(before)

    def update_schema(self) -> bool:
        """Create or upgrade the job table; return whether anything changed."""
        from . import schema

        state = self._state()
        return schema.upgrade(state.engine, state.settings.table_name)

    # -- plumbing -----------------------------------------------------------------------

    def _state(self) -> _AppState:
        try:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:
            raise RuntimeError(
                "Working outside of application context: Flask-BgQueue needs the app. Use"
                " 'with app.app_context():' around the call (request handlers and"
                " 'flask' commands already have one)."
            ) from None
        state = app.extensions.get(EXTENSION_KEY)
        if state is None or state.queue is not self:
            raise RuntimeError(
                "This BackgroundQueue is not registered on the current app. Did you forget"
                " to call bgq.init_app(app)?"
            )
        return state


def write_rows(state: _AppState, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows on the queue's own connection (committed at once) and announce them.

    In broker mode each id is sent once its row is committed; when that fails the row
    becomes ``BROKER_FAILED`` with the error and ``flask bgq process`` runs it later.
    """
    ids = state.store.insert(rows)
    if state.broker is not None:
        send_to_broker(state, [(job_id, row) for job_id, row in zip(ids, rows, strict=True)])
    if signals.job_published.receivers:  # observers: they cannot undo the publish
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        for job_id, row in zip(ids, rows, strict=True):
            try:
                signals.job_published.send(app, job_id=job_id, callback_name=row["callback_name"])
            except Exception:
                state.logger.exception("a job_published receiver failed (the job is stored)")
    return ids


def send_to_broker(state: _AppState, jobs: list[tuple[int, dict[str, Any]]]) -> None:
    """Send committed jobs' ids, delayed until their ``available_at``."""
    assert state.broker is not None
    now = utcnow()
    failed: list[int] = []
    error = ""
    for job_id, row in jobs:
        delay_ms = max(0, int((row["available_at"] - now).total_seconds() * 1000))
        try:
            state.broker.publish(row["queue"], row["priority"], job_id, delay_ms)
        except BrokerError as exc:
            failed.append(job_id)
            error = str(exc)
    if failed:
        state.logger.error("bgqueue: %d job(s) saved as BROKER_FAILED: %s", len(failed), error)
        state.store.mark_broker_failed(failed, now, f"broker: {error}")


def send_jobs_to_broker(state: _AppState, jobs: list[Job]) -> None:
    """Send the ids of jobs already in the table (resent by ``process``, retried by a person)."""
    columns = ("queue", "priority", "available_at")
    send_to_broker(state, [(j.id, {c: getattr(j, c) for c in columns}) for j in jobs])
