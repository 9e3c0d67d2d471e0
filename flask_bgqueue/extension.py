"""The :class:`BackgroundQueue` extension: the facade a Flask app talks to.

It registers callbacks and the app (``init_app``), and hands each call to the room that
does the work: :mod:`.publishing`, :mod:`.processor`, :mod:`.worker`, the store. The
per-app state lives in :class:`~flask_bgqueue.runtime.Runtime`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from flask import Flask, current_app, g

from . import migrate, publishing, serialization
from .cli import bgq_command
from .config import load_settings
from .context import current_job
from .exceptions import ConfigurationError
from .limits import Limits, parse_rate
from .models import Job
from .periodic import ScheduleView, overview, set_paused
from .processor import Processor, SweepResult
from .runtime import EXTENSION_KEY, Registry, Runtime, current_runtime
from .schedule import Schedule, ScheduleError
from .specs import CallbackSpec
from .store import Claim
from .worker import ConsumeResult, Worker

F = TypeVar("F", bound=Callable[..., Any])


class BackgroundQueue:
    """Flask extension: background jobs stored in a table on their own database bind.

    ``bgq = BackgroundQueue(); bgq.init_app(app)``, or ``BackgroundQueue(app)``.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._registry = Registry()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and check the ``BGQUEUE_*`` keys, and add the ``flask bgq`` commands.

        :param app: the application; its ``BGQUEUE_*`` keys are read now, once.
        :raises ConfigurationError: a key's value, or a callback's priority, is wrong.
        """
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
        for spec in self._registry.callbacks.values():
            if spec.priority is not None and spec.priority not in settings.priorities:
                raise ConfigurationError(
                    f"callback {spec.name!r} has priority {spec.priority!r}, which is not in"
                    f" BGQUEUE_PRIORITIES {list(settings.priorities)}: add it there, or give"
                    " @bgq.callback another priority.",
                    "BGQUEUE_PRIORITIES",
                )
        clash = sorted(set(settings.callbacks) & set(self._registry.callbacks))
        if clash:
            raise ConfigurationError(
                f"callback {clash[0]!r} is registered both in BGQUEUE_CALLBACKS and with"
                " @bgq.callback; give one of them another name.",
                "BGQUEUE_CALLBACKS",
            )
        clash = sorted(set(settings.schedules) & set(self._registry.schedules))
        if clash:
            raise ConfigurationError(
                f"schedule {clash[0]!r} is defined both in BGQUEUE_SCHEDULE and with"
                " @bgq.periodic; keep one of them.",
                "BGQUEUE_SCHEDULE",
            )
        app.extensions[EXTENSION_KEY] = Runtime(self, self._registry, app, settings)
        app.cli.add_command(bgq_command)
        migrate.register(app)  # Flask-Migrate's autogenerate leaves the job table alone
        if settings.dashboard_url_prefix is not None:
            # Off by default: its views and templates are loaded only when it is mounted.
            from .dashboard import register

            register(app, settings.dashboard_url_prefix)

    # -- registration -------------------------------------------------------------------

    @overload
    def callback(self, name: F) -> F: ...
    @overload
    def callback(
        self,
        name: str | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        check_arguments: bool = True,
        timeout: float | None = None,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> Callable[[F], F]: ...

    def callback(
        self,
        name: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        check_arguments: bool = True,
        timeout: float | None = None,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> Any:
        """Register a function as a callback: ``@bgq.callback`` or ``@bgq.callback("name")``.

        :param name: the name jobs are published under; the function's name by default.
        :param queue: send its jobs to the sub-queue ``<BGQUEUE_QUEUE>_<queue>``.
        :param priority: its jobs' default priority, one of ``BGQUEUE_PRIORITIES`` (checked
            by ``init_app``, or by ``publish()`` for a callback registered after it).
        :param check_arguments: check at ``publish()`` that the parameters fit the
            function's signature, and raise :exc:`~flask_bgqueue.ArgumentsError` when they
            do not, instead of storing a job that fails when it runs. ``False`` turns the
            check off (for a function that takes what its signature does not tell).

        :param timeout: seconds an attempt may run before it is interrupted and fails as
            a temporary error (default ``BGQUEUE_DEFAULT_TIMEOUT_SECONDS``); see
            :ref:`timeouts`.
        :param concurrency: at most this many of its jobs run at once, across every
            worker and host (per ``concurrency_key`` when jobs are published with one).
        :param rate: at most this many of its jobs start per window: ``"10/s"``,
            ``"100/m"``, ``"1000/h"``, ``"5/10s"`` (per ``concurrency_key`` likewise).
            Jobs over a limit wait; they are not failed. See :ref:`limits`.
        """
        if callable(name):
            return self.callback()(name)

        def decorator(func: F) -> F:
            key = name or func.__name__
            callbacks = self._registry.callbacks
            if key in callbacks:
                raise ConfigurationError(
                    f"a callback named {key!r} is already registered"
                    f" ({callbacks[key].func!r}); give this one another name."
                )
            if queue is not None and (not isinstance(queue, str) or not queue):
                raise ConfigurationError(f"callback {key!r}: queue must be a non-empty string.")
            if timeout is not None and (
                isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
            ):
                raise ConfigurationError(
                    f"callback {key!r}: timeout must be a number of seconds above 0, not"
                    f" {timeout!r}."
                )
            limits = None
            if concurrency is not None or rate is not None:
                if concurrency is not None and (
                    isinstance(concurrency, bool)
                    or not isinstance(concurrency, int)
                    or concurrency < 1
                ):
                    raise ConfigurationError(
                        f"callback {key!r}: concurrency must be an integer of at least 1,"
                        f" not {concurrency!r}."
                    )
                try:
                    parsed = None if rate is None else parse_rate(rate)
                except ValueError as exc:
                    raise ConfigurationError(f"callback {key!r}: {exc}") from None
                limits = Limits(concurrency, parsed)
            callbacks[key] = CallbackSpec.of(
                key, func, queue, priority, check_arguments, timeout, limits
            )
            return func

        return decorator

    def periodic(
        self,
        expression: str,
        *,
        parameters: Any = None,
        timezone: str = "UTC",
        catch_up: str = "one",
    ) -> Callable[[F], F]:
        """Publish the callback below at every tick of a cron ``expression``.

        Put it above ``@bgq.callback``; the schedule is named after the callback. Five
        fields (``"*/5 * * * *"``), or six with the seconds first (``"*/10 * * * * *"``),
        in the time zone ``timezone`` (an IANA name). ``catch_up`` says what happens to the
        ticks no worker saw: ``"one"`` job for all of them (default), ``"all"`` of them, or
        ``"none"``. See :doc:`/periodic`.
        """

        def decorator(func: F) -> F:
            spec = next((c for c in self._registry.callbacks.values() if c.func is func), None)
            if spec is None:
                raise ConfigurationError(
                    f"@bgq.periodic({expression!r}) found no callback for {func!r}: put it"
                    " above @bgq.callback (decorators apply bottom-up)."
                )
            if spec.name in self._registry.schedules:
                raise ConfigurationError(
                    f"callback {spec.name!r} already has a schedule; a callback has one"
                    " (use BGQUEUE_SCHEDULE entries with other names for more)."
                )
            try:
                schedule = Schedule(spec.name, expression, parameters, timezone, catch_up)
            except ScheduleError as exc:
                raise ConfigurationError(str(exc)) from None
            self._registry.schedules[spec.name] = schedule
            return func

        return decorator

    def processing_metadata(
        self, func: Callable[[Any], dict[str, Any]]
    ) -> Callable[[Any], dict[str, Any]]:
        """Register the function whose dict is stored as a claimed job's ``metadata``.

        :param func: called with the job's parameters when a worker claims it.
        """
        self._registry.metadata_func = func
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
        recurring: bool = False,
        coalesce_threshold: int | None = None,
        concurrency_key: str | None = None,
    ) -> int | None:
        """Store a job and return its id.

        ``recurring``: once the job has finished, a copy is published to run
        ``BGQUEUE_WAITING_JOB_EXPIRATION_MS`` later, unless an unfinished job with the same
        identifier exists (a failure makes no copy). ``coalesce_threshold`` (with
        ``serial_group``): when this job is claimed, the group's pending jobs whose
        threshold is at least this one's become ``REDUNDANT``: this run covers them.
        ``concurrency_key`` (e.g. a tenant): the callback's ``concurrency`` and ``rate``
        limits count the jobs of each key apart.

        Returns ``None`` when the row is written later: inside :meth:`bulk`, or with
        ``BGQUEUE_PUBLISH_AFTER_APP_COMMIT`` while the app's session has a transaction open.
        Everything is checked before anything is written.

        :param callback_name: a registered callback.
        :param parameters: a dict (keyword arguments), a list or tuple (positional ones),
            ``None`` (none) or one value (one argument); checked against the callback's
            signature unless it was registered with ``check_arguments=False``.
        :param serial_group: jobs of one group run one at a time, in (priority, id) order.
        :param identifier: a tag of your own (at most 255 characters).
        :param is_unique: run only the oldest job with this ``identifier``.
        :param available_at: not before this time (aware, or naive UTC) or delay.
        :param priority: one of ``BGQUEUE_PRIORITIES``; default: the callback's, else the
            first configured.
        :raises PublishError: the job cannot be stored as asked (its subclasses
            :exc:`UnknownCallbackError`, :exc:`ArgumentsError` and :exc:`ParametersError`
            say more); nothing was written.
        """
        runtime = self._state()
        row = publishing.build_row(
            runtime,
            callback_name,
            parameters,
            serial_group=serial_group,
            identifier=identifier,
            is_unique=is_unique,
            available_at=available_at,
            priority=priority,
            recurring=recurring,
            coalesce_threshold=coalesce_threshold,
            concurrency_key=concurrency_key,
        )
        bulk = g.get("_bgqueue_bulk")
        if bulk is not None:
            bulk.append(row)
            if len(bulk) >= runtime.settings.bulk_size:
                publishing.write(runtime, bulk[:])
                bulk.clear()
            return None
        ids = publishing.write(runtime, [row])
        return ids[0] if ids else None

    def start_bulk(self) -> None:
        """Collect published jobs and write them in multi-row INSERTs until :meth:`end_bulk`."""
        self._state()
        if g.get("_bgqueue_bulk") is not None:
            raise RuntimeError("a bulk is already open in this app context; end it first.")
        g._bgqueue_bulk = []

    def end_bulk(self) -> list[int]:
        """Write what is left of the bulk and close it; return the ids written at the end."""
        runtime = self._state()
        rows = g.pop("_bgqueue_bulk", None)
        if rows is None:
            raise RuntimeError("end_bulk() without start_bulk(): no bulk is open.")
        return publishing.write(runtime, rows) if rows else []

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
        """A snapshot of a job of this queue, or ``None``.

        :param job_id: the id ``publish`` returned.
        """
        return self._state().store.get(job_id)

    def load_parameters(self, job: Job) -> Any:
        """The job's parameters, decoded (a pickle only after its signature verifies).

        :param job: a snapshot from :meth:`get_job`.
        :raises SignatureError: a pickle whose signature does not verify.
        """
        s = self._state().settings
        return serialization.load(
            serialization.Stored(job.parameters, job.parameters_json), s.signing_keys
        )

    def get_unfinished_job_identifiers(
        self, identifiers: Iterable[str] | None = None, exclude_processing: bool = False
    ) -> list[str]:
        """Identifiers (of those given, or all) that have a job not done yet (done:
        FINISHED, REDUNDANT, CANCELLED).

        :param identifiers: the identifiers to ask about; ``None`` for all.
        :param exclude_processing: leave out identifiers whose only such job runs now.
        """
        return self._state().store.unfinished_identifiers(identifiers, exclude_processing)

    # -- processing and maintenance -----------------------------------------------------

    def process(self, priorities: Sequence[int] | None = None) -> SweepResult:
        """Run every due job until none is due, as ``flask bgq process`` does (without the
        host lock).

        :param priorities: only jobs of these priorities; default all.
        :returns: what it did (:class:`SweepResult`).
        """
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        return Processor(self._state(), app).sweep(priorities)

    def consume(
        self,
        queue: str | None = None,
        priorities: Sequence[int] | None = None,
        max_jobs: int | None = None,
        stop: threading.Event | None = None,
        max_memory: int | None = None,
    ) -> ConsumeResult:
        """Run jobs as they come until ``stop`` is set, ``max_jobs`` ran, or a reload.

        With a broker, ids come from it; without one the table is polled (and, on
        PostgreSQL, ``LISTEN``/``NOTIFY`` wakes the consumer at once).

        :param queue: one queue, named by a callback's ``queue=`` or in full; default:
            ``BGQUEUE_QUEUE`` with a broker, every queue without.
        :param priorities: only jobs of these priorities; default all.
        :param max_jobs: return after this many jobs.
        :param stop: set it (from another thread or a signal handler) to stop after the
            current job.
        :param max_memory: return after a job that leaves the process holding more than
            this many bytes (resident), for a fresh process to take over.
        :raises BrokerError: the broker cannot be reached when it starts.
        """
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        return Worker(
            self._state(), app, queue, priorities, max_jobs, stop or threading.Event(), max_memory
        ).run()

    def reload_consumers(self, queue: str, number: int) -> None:
        """Make consumers exit after their current job (broker mode).

        :param queue: the queue they consume.
        :param number: how many of them.
        """
        self._state().reload_consumers(queue, number)

    def cancel(self, job_ids: Iterable[int], *, by: str | None = None) -> list[int]:
        """Cancel jobs: those not running (``READY``, ``WAITING``, ``TEMPORARILY_FAILED``,
        ``BROKER_FAILED``) become ``CANCELLED`` at once and never run, even when a broker
        message for them is in flight; a ``PROCESSING`` one is asked to stop: its callback
        sees ``current_job().cancel_requested`` within a heartbeat interval, and its
        attempt ends ``CANCELLED``. Returns the ids cancelled or asked to stop; jobs in
        other states are left alone.

        :param job_ids: the jobs' ids.
        :param by: who asks, recorded in ``cancelled_by``; default this process
            (``pid N on HOST``).
        """
        return self._state().cancel(job_ids, by)

    def set_progress(self, fraction: float, message: str | None = None) -> None:
        """Inside a callback: record how far its job got, visible at once to other
        processes (``get_job(id).progress``, ``flask bgq show``, the dashboard).

        :param fraction: from 0.0 (nothing done) to 1.0 (all done).
        :param message: a short note for people (at most 255 characters).
        """
        job = current_job()
        if job is None:
            raise RuntimeError(
                "set_progress() tells the job whose callback is running; call it from inside"
                " a callback."
            )
        if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"progress must be a number from 0.0 to 1.0, not {fraction!r}.")
        if message is not None and (not isinstance(message, str) or len(message) > 255):
            raise ValueError("the progress message must be a string of at most 255 characters.")
        self._state().store.set_progress(Claim(job.job, job.job.state), float(fraction), message)

    def clear_finished(self, days: float | None = None) -> int:
        """Delete FINISHED, REDUNDANT and CANCELLED jobs; return how many.

        :param days: only those finished more than this many days ago; default all.
        """
        return self._state().clear_finished(days)

    def schedules(self) -> list[ScheduleView]:
        """Every schedule, with its last and next tick and its last job's state; those the
        database remembers but this app no longer defines are ``orphaned``."""
        return overview(self._state())

    def pause_schedule(self, name: str) -> None:
        """Stop a schedule making jobs, for every worker, until :meth:`resume_schedule`."""
        set_paused(self._state(), name, True)

    def resume_schedule(self, name: str) -> None:
        """Let a paused schedule make jobs again (its ``catch_up`` rule covers the pause)."""
        set_paused(self._state(), name, False)

    def update_schema(self) -> bool:
        """Create or upgrade the job table; return whether anything changed."""
        return self._state().update_schema()

    # -- plumbing -----------------------------------------------------------------------

    def _state(self) -> Runtime:
        return current_runtime(self)
