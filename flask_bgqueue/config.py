"""Defaults and validation of the ``BGQUEUE_*`` keys, read once into :class:`Settings`.

Each key is documented in ``docs/configuration.rst`` with its default and unit; this module
is the single place that knows the defaults.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from flask import Flask
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from werkzeug.utils import ImportStringError, import_string

from .broker import Broker
from .broker import settings as broker_settings
from .exceptions import ConfigurationError, ConfigurationWarning
from .schedule import Schedule, ScheduleError
from .specs import CallbackSpec

PARAMETERS_FORMATS = ("auto", "json", "pickle")

DEFAULTS: dict[str, Any] = {
    "BGQUEUE_BIND_KEY": "bgqueue",
    "BGQUEUE_DATABASE_URI": None,
    "BGQUEUE_ENGINE_OPTIONS": {},
    "BGQUEUE_TRANSACTION_POOLING": False,
    "BGQUEUE_LISTEN_DATABASE_URI": None,
    "BGQUEUE_TABLE_NAME": "background_job",
    "BGQUEUE_QUEUE": "default",
    "BGQUEUE_PRIORITIES": [1],
    "BGQUEUE_CALLBACKS": {},
    "BGQUEUE_SCHEDULE": {},
    "BGQUEUE_PARAMETERS_FORMAT": "auto",
    "BGQUEUE_SIGNING_KEY": None,
    "BGQUEUE_BULK_SIZE": 100,
    "BGQUEUE_PUBLISH_AFTER_APP_COMMIT": False,
    "BGQUEUE_AUTO_UPDATE_SCHEMA": True,
    "BGQUEUE_WAITING_JOB_EXPIRATION_MS": 1000,
    "BGQUEUE_NOTIFY_ON_NUMBER_OF_ATTEMPTS": 5,
    "BGQUEUE_MAX_ATTEMPTS": None,
    "BGQUEUE_LOCKS_DIR": None,
    "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 10,
    "BGQUEUE_WORKER_LOST_AFTER_SECONDS": 60,
    "BGQUEUE_NETWORK_TIMEOUT_SECONDS": 30,
    "BGQUEUE_DEFAULT_TIMEOUT_SECONDS": None,
    "BGQUEUE_TIMEOUT_GRACE_SECONDS": 10,
    "BGQUEUE_MAX_RESULT_BYTES": 65536,
    "BGQUEUE_CLAIM_BATCH_SIZE": 10,
    "BGQUEUE_POLL_INTERVAL_MS": 1000,
    "BGQUEUE_BROKER_URL": None,
    "BGQUEUE_BROKER_CLASS": None,
    "BGQUEUE_BROKER_RESEND_AFTER_SECONDS": 600,
    "BGQUEUE_BROKER_WAIT_FOR_CONFIRM": False,
    "BGQUEUE_AMQP_QUEUE_ARGUMENTS": {},
    "BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE": {},
    "BGQUEUE_DASHBOARD_URL_PREFIX": None,
    "BGQUEUE_DASHBOARD_AUTHORIZE": None,
    "BGQUEUE_DASHBOARD_REFRESH_SECONDS": 5,
    "BGQUEUE_EXACT_COUNT_LIMIT": 100_000,
    "BGQUEUE_SEARCH_WINDOW": 50_000,
    "BGQUEUE_METRICS": False,
}


@dataclass(frozen=True)
class Settings:
    """The validated ``BGQUEUE_*`` configuration of one application."""

    bind_key: str
    database_uri: str | None
    engine_options: Mapping[str, Any]
    table_name: str
    queue: str
    priorities: tuple[int, ...]
    callbacks: Mapping[str, CallbackSpec]
    parameters_format: str
    signing_keys: tuple[bytes, ...]
    bulk_size: int
    publish_after_app_commit: bool
    auto_update_schema: bool
    waiting_job_expiration_ms: int
    notify_on_number_of_attempts: int | None
    max_attempts: int | None
    locks_dir: str
    heartbeat_interval_seconds: float
    default_timeout_seconds: float | None
    timeout_grace_seconds: float
    max_result_bytes: int
    worker_lost_after_seconds: float
    #: How long a database connection waits on a silent network before it fails.
    network_timeout_seconds: float | None
    claim_batch_size: int
    poll_interval_ms: int
    #: The broker's node URLs, in the order tried (empty: no broker, unless a class).
    broker_urls: tuple[str, ...]
    broker_resend_after_seconds: float
    broker_wait_for_confirm: bool
    amqp_queue_arguments: Mapping[str, Any] = field(default_factory=dict)
    #: Arguments of the RabbitMQ queues of one job queue, by its full name.
    amqp_queue_arguments_by_queue: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    broker_class: type[Broker] | None = None
    dashboard_url_prefix: str | None = None
    dashboard_authorize: Callable[[], Any] | None = None
    dashboard_refresh_seconds: float = 5
    #: A state with more jobs is estimated on the overview and in ``stats`` (``None``:
    #: always counted exactly).
    exact_count_limit: int | None = 100_000
    #: How many ids one page of a text search reads (``None``: the whole table).
    search_window: int | None = 50_000
    metrics: bool = False
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    #: The queue's connections go through a pooler in transaction mode (PgBouncer).
    transaction_pooling: bool = False
    #: A direct PostgreSQL URL for the consumers' ``LISTEN`` connection only.
    listen_database_uri: str | None = None


def load_settings(app: Flask) -> Settings:
    """Set the defaults on ``app.config`` and return the validated settings."""
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    c = app.config
    _warn_unknown_keys(c)

    priorities = _priorities(c["BGQUEUE_PRIORITIES"])
    fmt = c["BGQUEUE_PARAMETERS_FORMAT"]
    if fmt not in PARAMETERS_FORMATS:
        raise ConfigurationError(
            f"BGQUEUE_PARAMETERS_FORMAT is {fmt!r}; use one of {', '.join(PARAMETERS_FORMATS)}.",
            "BGQUEUE_PARAMETERS_FORMAT",
        )
    signing_keys = _signing_keys(app)
    if fmt == "pickle" and not signing_keys:
        raise ConfigurationError(
            "BGQUEUE_PARAMETERS_FORMAT is 'pickle' but no key signs the payloads: set"
            " SECRET_KEY or BGQUEUE_SIGNING_KEY.",
            "BGQUEUE_PARAMETERS_FORMAT",
        )
    queue = _identifier(c, "BGQUEUE_QUEUE", 100)
    broker_class = broker_settings.broker_class(c["BGQUEUE_BROKER_CLASS"])
    return Settings(
        bind_key=_text(c, "BGQUEUE_BIND_KEY"),
        database_uri=_text(c, "BGQUEUE_DATABASE_URI", optional=True),
        engine_options=_mapping(c, "BGQUEUE_ENGINE_OPTIONS"),
        table_name=_identifier(c, "BGQUEUE_TABLE_NAME", 40),  # index names stay < 64
        queue=queue,
        priorities=priorities,
        callbacks=_callbacks(c["BGQUEUE_CALLBACKS"], priorities),
        parameters_format=fmt,
        signing_keys=signing_keys,
        bulk_size=_number(c, "BGQUEUE_BULK_SIZE", minimum=1),
        publish_after_app_commit=_flag(c, "BGQUEUE_PUBLISH_AFTER_APP_COMMIT"),
        auto_update_schema=_flag(c, "BGQUEUE_AUTO_UPDATE_SCHEMA"),
        waiting_job_expiration_ms=_number(c, "BGQUEUE_WAITING_JOB_EXPIRATION_MS", minimum=0),
        notify_on_number_of_attempts=_number(
            c, "BGQUEUE_NOTIFY_ON_NUMBER_OF_ATTEMPTS", minimum=1, optional=True
        ),
        max_attempts=_number(c, "BGQUEUE_MAX_ATTEMPTS", minimum=1, optional=True),
        locks_dir=_text(c, "BGQUEUE_LOCKS_DIR", optional=True) or app.instance_path,
        default_timeout_seconds=_number(
            c, "BGQUEUE_DEFAULT_TIMEOUT_SECONDS", minimum=0.01, optional=True, kind=(int, float)
        ),
        timeout_grace_seconds=_number(
            c, "BGQUEUE_TIMEOUT_GRACE_SECONDS", minimum=0.01, kind=(int, float)
        ),
        max_result_bytes=_number(c, "BGQUEUE_MAX_RESULT_BYTES", minimum=0),
        heartbeat_interval_seconds=_number(
            c, "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS", minimum=0.01, kind=(int, float)
        ),
        worker_lost_after_seconds=_number(
            c, "BGQUEUE_WORKER_LOST_AFTER_SECONDS", minimum=0.01, kind=(int, float)
        ),
        network_timeout_seconds=_number(
            c, "BGQUEUE_NETWORK_TIMEOUT_SECONDS", minimum=1, optional=True, kind=(int, float)
        ),
        claim_batch_size=_number(c, "BGQUEUE_CLAIM_BATCH_SIZE", minimum=1),
        poll_interval_ms=_number(c, "BGQUEUE_POLL_INTERVAL_MS", minimum=1),
        broker_urls=broker_settings.broker_urls(
            c["BGQUEUE_BROKER_URL"], custom=broker_class is not None
        ),
        broker_resend_after_seconds=_number(
            c, "BGQUEUE_BROKER_RESEND_AFTER_SECONDS", minimum=1, kind=(int, float)
        ),
        broker_wait_for_confirm=_flag(c, "BGQUEUE_BROKER_WAIT_FOR_CONFIRM"),
        amqp_queue_arguments=_mapping(c, "BGQUEUE_AMQP_QUEUE_ARGUMENTS"),
        amqp_queue_arguments_by_queue=broker_settings.arguments_by_queue(
            c["BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE"], queue
        ),
        broker_class=broker_class,
        dashboard_url_prefix=_url_prefix(c, "BGQUEUE_DASHBOARD_URL_PREFIX"),
        dashboard_authorize=_function(c, "BGQUEUE_DASHBOARD_AUTHORIZE"),
        dashboard_refresh_seconds=_number(
            c, "BGQUEUE_DASHBOARD_REFRESH_SECONDS", minimum=0, kind=(int, float)
        ),
        exact_count_limit=_number(c, "BGQUEUE_EXACT_COUNT_LIMIT", minimum=0, optional=True),
        search_window=_number(c, "BGQUEUE_SEARCH_WINDOW", minimum=1, optional=True),
        metrics=_metrics(c),
        schedules=_schedules(c["BGQUEUE_SCHEDULE"]),
        transaction_pooling=_flag(c, "BGQUEUE_TRANSACTION_POOLING"),
        listen_database_uri=_listen_uri(c),
    )


def _listen_uri(c: Mapping[str, Any]) -> str | None:
    """``BGQUEUE_LISTEN_DATABASE_URI``: a PostgreSQL URL (psycopg 3 is what can LISTEN)."""
    key = "BGQUEUE_LISTEN_DATABASE_URI"
    value = _text(c, key, optional=True)
    if value is None:
        return None
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ConfigurationError(f"{key} is not a database URL: {exc}", key) from None
    if url.drivername == "postgresql":  # psycopg 3 whatever SQLAlchemy's default driver
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        raise ConfigurationError(
            f"{key} must be a PostgreSQL URL for psycopg 3 (postgresql+psycopg://...), not"
            f" {url.render_as_string(hide_password=True)!r}: only PostgreSQL has LISTEN.",
            key,
        )
    return url.render_as_string(hide_password=False)


def _metrics(c: Mapping[str, Any]) -> bool:
    """``BGQUEUE_METRICS``: on only with prometheus_client installed (not imported here)."""
    on = _flag(c, "BGQUEUE_METRICS")
    if on and importlib.util.find_spec("prometheus_client") is None:
        raise ConfigurationError(
            "BGQUEUE_METRICS is True but prometheus_client is not installed: pip install"
            " 'Flask-BgQueue[metrics]', or set BGQUEUE_METRICS = False.",
            "BGQUEUE_METRICS",
        )
    return on


def _warn_unknown_keys(c: Mapping[str, Any]) -> None:
    """A ``BGQUEUE_*`` key no version of this module reads is most likely a typo."""
    for key in c:
        if not key.startswith("BGQUEUE_") or key in DEFAULTS:
            continue
        prefix = len("BGQUEUE_")  # compared without it, or every key would look close
        close = difflib.get_close_matches(key[prefix:], [k[prefix:] for k in DEFAULTS], n=1)
        hint = f"did you mean BGQUEUE_{close[0]}?" if close else "see the configuration docs."
        warnings.warn(
            f"{key} is not a Flask-BgQueue setting and is ignored; {hint}",
            ConfigurationWarning,
            stacklevel=_outside_the_package(),  # the app's init_app call
        )


def _outside_the_package() -> int:
    """The ``stacklevel`` of a warning raised here that points at the first caller outside
    this package (``init_app`` or ``BackgroundQueue(app)`` lie in between)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _not(value: Any, write: str | None = None) -> str:
    """The end of an error message: the value that was given.

    ``app.config.from_prefixed_env()`` parses each value as JSON and keeps the text when it
    is not valid JSON (``True``, ``1,2``): a string where another type is wanted most
    likely came from there, so the message says how to write it (``write``).
    """
    if isinstance(value, str) and write is not None:
        return f"; got the string {value!r} (environment values are JSON: write {write})."
    return f", not {value!r}."


def _priorities(value: Any) -> tuple[int, ...]:
    key = "BGQUEUE_PRIORITIES"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigurationError(
            f"{key} must be a non-empty list of integers" + _not(value, "a list such as [10, 20]"),
            key,
        )
    for p in value:
        if type(p) is not int or not 0 <= p <= 999:
            raise ConfigurationError(
                f"{key} holds {p!r}; every priority is an integer from 0 to 999.", key
            )
    if len(set(value)) != len(value):
        dupes = sorted({p for p in value if list(value).count(p) > 1})
        raise ConfigurationError(f"{key} lists {dupes} more than once; list each once.", key)
    return tuple(sorted(value))


def _callbacks(value: Any, priorities: tuple[int, ...]) -> dict[str, CallbackSpec]:
    key = "BGQUEUE_CALLBACKS"
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{key} must map callback names to import strings"
            + _not(value, '{"name": "package.module:function"}'),
            key,
        )
    specs = {}
    for name, entry in value.items():
        options = dict(entry) if isinstance(entry, Mapping) else {"callback": entry}
        target = options.pop("callback", None)
        queue = options.pop("queue", None)
        priority = options.pop("priority", None)
        check_arguments = options.pop("check_arguments", True)
        if options:
            raise ConfigurationError(
                f"{key}[{name!r}] has unknown options {sorted(options)}; allowed:"
                " callback, queue, priority, check_arguments.",
                key,
            )
        if not isinstance(check_arguments, bool):
            raise ConfigurationError(
                f"{key}[{name!r}] has check_arguments {check_arguments!r}; use True or False.",
                key,
            )
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{key} holds an empty or non-text name {name!r}.", key)
        func = target
        if isinstance(target, str):
            try:
                func = import_string(target)
            except ImportStringError as exc:
                raise ConfigurationError(
                    f"{key}[{name!r}] = {target!r} does not import: {exc.exception}. Use"
                    " 'package.module:function'.",
                    key,
                ) from exc
        if not callable(func):
            raise ConfigurationError(f"{key}[{name!r}] is not callable: {target!r}.", key)
        if priority is not None and priority not in priorities:
            raise ConfigurationError(
                f"{key}[{name!r}] has priority {priority!r}, which is not in"
                f" BGQUEUE_PRIORITIES {list(priorities)}.",
                key,
            )
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ConfigurationError(f"{key}[{name!r}] has an invalid queue {queue!r}.", key)
        specs[name] = CallbackSpec.of(name, func, queue, priority, check_arguments)
    return specs


SCHEDULE_OPTIONS = ("cron", "callback", "parameters", "timezone", "catch_up")


def _schedules(value: Any) -> dict[str, Schedule]:
    """``{"name": "*/5 * * * *"}`` or ``{"name": {"cron": ..., "callback": ...,
    "parameters": ..., "timezone": ..., "catch_up": ...}}``; the callback defaults to the
    name. Whether the callback exists is checked when a worker looks at the schedule (a
    ``@bgq.callback`` may be registered after ``init_app``)."""
    key = "BGQUEUE_SCHEDULE"
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{key} must map schedule names to cron expressions or dicts, not {value!r}.", key
        )
    schedules = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not name or len(name) > 255:
            raise ConfigurationError(f"{key} holds an invalid schedule name {name!r}.", key)
        options = dict(entry) if isinstance(entry, Mapping) else {"cron": entry}
        unknown = sorted(set(options) - set(SCHEDULE_OPTIONS))
        if unknown or "cron" not in options:
            raise ConfigurationError(
                f"{key}[{name!r}] needs 'cron' and allows only {', '.join(SCHEDULE_OPTIONS)}"
                f"{f'; unknown: {unknown}' if unknown else ''}.",
                key,
            )
        callback = options.get("callback", name)
        if not isinstance(callback, str) or not callback:
            raise ConfigurationError(f"{key}[{name!r}]: callback must be a callback's name.", key)
        try:
            schedules[name] = Schedule(
                name,
                options["cron"],
                options.get("parameters"),
                options.get("timezone", "UTC"),
                options.get("catch_up", "one"),
                callback,
            )
        except ScheduleError as exc:
            raise ConfigurationError(f"{key}: {exc}", key) from None
    return schedules


def _signing_keys(app: Flask) -> tuple[bytes, ...]:
    """The current signing key first, then Flask's ``SECRET_KEY_FALLBACKS`` (rotation)."""
    own = app.config["BGQUEUE_SIGNING_KEY"]
    keys = (
        [own]
        if own
        else [app.config.get("SECRET_KEY"), *(app.config.get("SECRET_KEY_FALLBACKS") or [])]
    )
    result = []
    for k in keys:
        if not k:
            continue
        if not isinstance(k, (str, bytes)):
            raise ConfigurationError(
                "BGQUEUE_SIGNING_KEY must be text or bytes.", "BGQUEUE_SIGNING_KEY"
            )
        result.append(k.encode() if isinstance(k, str) else k)
    return tuple(result)


def _text(c: Mapping[str, Any], key: str, optional: bool = False) -> Any:
    value = c[key]
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        hint = ""
        if isinstance(value, (int, float)):
            # from_prefixed_env() read 123 or true as JSON: text needs its quotes there
            hint = f" (environment values are JSON: write {json.dumps(str(value))} for text)"
        raise ConfigurationError(f"{key} must be a non-empty string, not {value!r}{hint}.", key)
    return value


def _identifier(c: Mapping[str, Any], key: str, max_length: int) -> str:
    value: str = _text(c, key)
    if not all(ch.isalnum() or ch in "_-." for ch in value) or len(value) > max_length:
        raise ConfigurationError(
            f"{key} is {value!r}; use at most {max_length} letters, digits, '_', '-' or '.'.",
            key,
        )
    return value


def _flag(c: Mapping[str, Any], key: str) -> bool:
    value = c[key]
    if not isinstance(value, bool):
        raise ConfigurationError(f"{key} must be True or False" + _not(value, "true or false"), key)
    return value


def _number(
    c: Mapping[str, Any],
    key: str,
    minimum: float,
    optional: bool = False,
    kind: tuple[type, ...] = (int,),
) -> Any:
    value: Any = c[key]
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not math.isfinite(cast(float, value))  # NaN compares false with every minimum
        or cast(float, value) < minimum
    ):
        what = "an integer" if kind == (int,) else "a finite number"
        example = f"a number such as {max(minimum, 1)!r}" + (", or null" if optional else "")
        raise ConfigurationError(f"{key} must be {what} >= {minimum}" + _not(value, example), key)
    return value


def _mapping(c: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = c[key]
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{key} must be a dict" + _not(value, 'an object such as {"key": "value"}'), key
        )
    return dict(value)


def _url_prefix(c: Mapping[str, Any], key: str) -> str | None:
    value = _text(c, key, optional=True)
    if value is None:
        return None
    if not value.startswith("/") or not value.rstrip("/"):
        raise ConfigurationError(
            f"{key} is {value!r}; use a path such as '/bgqueue' (None turns the dashboard off).",
            key,
        )
    return str(value.rstrip("/"))


def _function(c: Mapping[str, Any], key: str) -> Callable[[], Any] | None:
    value = c[key]
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportStringError as exc:
            raise ConfigurationError(
                f"{key} = {c[key]!r} does not import: {exc.exception}. Use"
                " 'package.module:function'.",
                key,
            ) from exc
    if value is not None and not callable(value):
        raise ConfigurationError(f"{key} must be a function or an import string.", key)
    return cast("Callable[[], Any] | None", value)
