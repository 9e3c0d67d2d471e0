"""Publishing: check and build a job's row, write it, announce its id to the broker.

Everything is checked before anything is written. Rows go in on the queue's own
connection (committed at once), or, with ``BGQUEUE_PUBLISH_AFTER_APP_COMMIT``, once the
app's Flask-SQLAlchemy session commits:

A job published while the app's session has a transaction open is kept on that session
(``session.info``) with the transaction it was published in. A rolled-back transaction or
savepoint drops the jobs published inside it; when the outermost transaction commits, the
rest is written on the queue's own connection. So a worker never sees a job for data that
was rolled back, or that is not committed yet. The queue's write happens just after the
app's commit, on another connection: if the process dies between the two, those jobs are
lost. Publish without this option (and tolerate jobs whose data may be missing) where that
window matters more.
"""

from __future__ import annotations

import difflib
import inspect
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import current_app

from . import instrumentation, serialization, signals, tracing
from .broker import Broker
from .clock import to_utc_naive, utcnow
from .exceptions import ArgumentsError, ConfigurationError, PublishError, UnknownCallbackError
from .models import Job, JobState
from .runtime import Runtime
from .specs import CallbackSpec

if TYPE_CHECKING:  # sqlalchemy.orm costs ~40 ms to import; only this option needs it
    from sqlalchemy.orm import Session, SessionTransaction

_PENDING = "bgqueue_pending"


def build_row(
    runtime: Runtime,
    callback_name: str,
    parameters: Any,
    *,
    serial_group: str | None,
    identifier: str | None,
    is_unique: bool,
    available_at: datetime | timedelta | None,
    priority: int | None,
    recurring: bool = False,
    coalesce_threshold: int | None = None,
    concurrency_key: str | None = None,
) -> dict[str, Any]:
    """The row of a new job, after checking every argument (see ``publish()``)."""
    s = runtime.settings
    if not callback_name or not isinstance(callback_name, str):
        raise UnknownCallbackError("callback_name must be a non-empty string.", str(callback_name))
    spec = runtime.callback(callback_name)
    if spec is None:
        raise UnknownCallbackError(
            f"no callback named {callback_name!r} is registered; known:"
            f" {', '.join(runtime.callback_names()) or 'none'}. Register it with"
            " @bgq.callback or BGQUEUE_CALLBACKS.",
            callback_name,
        )
    if is_unique and not identifier:
        raise PublishError("is_unique=True needs an identifier: only jobs with one can be unique.")
    for label, text in (
        ("serial_group", serial_group),
        ("identifier", identifier),
        ("concurrency_key", concurrency_key),
    ):
        if text is not None and (not isinstance(text, str) or len(text) > 255):
            raise PublishError(f"{label} must be a string of at most 255 characters.")
    if coalesce_threshold is not None and (
        type(coalesce_threshold) is not int or coalesce_threshold < 0 or serial_group is None
    ):
        raise PublishError(
            f"coalesce_threshold={coalesce_threshold!r}: give a whole number >= 0, with a"
            " serial_group (coalescing happens within a group)."
        )
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
    if spec.signature is not None:
        check_arguments(spec, spec.signature, parameters)
    stored = serialization.dump(parameters, s.parameters_format, s.signing_keys)
    if stored.parameters is not None and s.parameters_format == "auto":
        _note_models(runtime, callback_name, parameters)
    return {
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
        "trace_context": tracing.carrier(),  # the publisher's trace, when one is current
        "recurring": bool(recurring),
        "coalesce_threshold": coalesce_threshold,
        "concurrency_key": concurrency_key,
    }


def check_arguments(spec: CallbackSpec, signature: inspect.Signature, parameters: Any) -> None:
    """Raise :exc:`ArgumentsError` unless the callback can be called with ``parameters``,
    passed as a job passes them: a dict as keyword arguments, a list or tuple as positional
    ones, ``None`` as none, anything else as one (see ``processor._call``)."""
    if type(parameters) is dict and spec.keywords is not None and spec.keywords.fits(parameters):
        return  # a sure fit, decided without ``Signature.bind``
    if parameters is None:
        args: tuple[Any, ...] = ()
        kwargs: dict[Any, Any] = {}
    elif isinstance(parameters, dict):
        args, kwargs = (), parameters
    elif isinstance(parameters, (list, tuple)):
        args, kwargs = tuple(parameters), {}
    else:
        args, kwargs = (parameters,), {}
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        argument, problem = _misfit(signature, kwargs, exc)
        plain = signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise ArgumentsError(
            f"callback {spec.name!r}: {spec.name}{plain} {problem}, so the job would"
            " fail when it ran; nothing was stored. Fix the parameters, or register the"
            " callback with check_arguments=False if it takes what its signature does not"
            " tell.",
            spec.name,
            argument,
        ) from None


def _misfit(
    signature: inspect.Signature, kwargs: dict[Any, Any], exc: TypeError
) -> tuple[str | None, str]:
    """The argument at fault and what is wrong with it, from ``bind``'s refusal."""
    params = signature.parameters
    takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_any_keyword:
        for key in kwargs:
            if key in params and params[key].kind is inspect.Parameter.POSITIONAL_ONLY:
                return str(key), f"takes {key!r} only by position (publish a list)"
            if key not in named:
                close = difflib.get_close_matches(str(key), named, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return str(key), f"takes no argument {key!r}{hint}"
    missing = re.search(r"missing a required (?:keyword-only )?argument: '(\w+)'", str(exc))
    if missing:
        return missing.group(1), f"needs the argument {missing.group(1)!r}"
    return None, f"cannot take these parameters ({exc})"


def _note_models(runtime: Runtime, callback_name: str, parameters: Any) -> None:
    """Warn, once per callback, of SQLAlchemy model instances stored as a pickle."""
    found = serialization.find_models(parameters)
    if not found or callback_name in runtime.noted_models:
        return
    runtime.noted_models.add(callback_name)
    path, model = found[0]
    runtime.logger.warning(
        "bgqueue: publish(%r): %s is a SQLAlchemy %s instance, stored as a pickle; the job"
        " gets a detached copy of the row as it was when published (and a pickle a later"
        " version of the model may not load). Pass its id and load it in the callback.",
        callback_name,
        path,
        type(model).__name__,
        extra={"callback": callback_name},
    )


def write(runtime: Runtime, rows: list[dict[str, Any]]) -> list[int]:
    """Insert now and return the ids, or hold the rows until the app's transaction commits
    (``BGQUEUE_PUBLISH_AFTER_APP_COMMIT``; then no id is known yet: ``[]``)."""
    if runtime.settings.publish_after_app_commit and _defer(runtime, rows):
        return []
    return write_rows(runtime, rows)


def write_rows(runtime: Runtime, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows on the queue's own connection (committed at once) and announce them.

    In broker mode each id is sent once its row is committed; when that fails the row
    becomes ``BROKER_FAILED`` with the error and ``flask bgq process`` runs it later.
    """
    ids = runtime.store.insert(rows)
    instrumentation.published(runtime, rows)
    if runtime.broker is not None:
        send_to_broker(runtime, [(job_id, row) for job_id, row in zip(ids, rows, strict=True)])
    if signals.job_published.receivers:  # observers: they cannot undo the publish
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        for job_id, row in zip(ids, rows, strict=True):
            try:
                signals.job_published.send(app, job_id=job_id, callback_name=row["callback_name"])
            except Exception:
                runtime.logger.exception("a job_published receiver failed (the job is stored)")
    return ids


def send_to_broker(
    runtime: Runtime, jobs: list[tuple[int, dict[str, Any]]], *, wait: bool | None = None
) -> None:
    """Send committed jobs' ids, delayed until their ``available_at``.

    Unless ``wait`` (default: ``BGQUEUE_BROKER_WAIT_FOR_CONFIRM``), the broker's publisher
    sends them without this thread waiting for the confirms; the ids it could not deliver
    become ``BROKER_FAILED`` when it learns so (see :mod:`flask_bgqueue.broker.pipeline`).
    """
    broker = runtime.broker
    assert broker is not None
    now = utcnow()
    store, logger = runtime.store, runtime.logger

    def failed(job_ids: list[int], error: str) -> None:
        logger.error("bgqueue: %d job(s) saved as BROKER_FAILED: %s", len(job_ids), error)
        store.mark_broker_failed(job_ids, utcnow(), error)

    announced = [
        (
            row["queue"],
            row["priority"],
            job_id,
            max(0, int((row["available_at"] - now).total_seconds() * 1000)),
        )
        for job_id, row in jobs
    ]
    if wait if wait is not None else runtime.settings.broker_wait_for_confirm:
        Broker.announce(broker, announced, failed)  # one by one, each confirmed
    else:
        broker.announce(announced, failed)


def send_jobs_to_broker(runtime: Runtime, jobs: list[Job]) -> None:
    """Send the ids of jobs already in the table (resent by ``process``, retried by a
    person), waiting for each confirm."""
    columns = ("queue", "priority", "available_at")
    send_to_broker(runtime, [(j.id, {c: getattr(j, c) for c in columns}) for j in jobs], wait=True)


# -- BGQUEUE_PUBLISH_AFTER_APP_COMMIT ---------------------------------------------------


def _defer(runtime: Runtime, rows: list[dict[str, Any]]) -> bool:
    """Hold ``rows`` on the app session's open transaction; ``False`` when none is open."""
    db = current_app.extensions.get("sqlalchemy")
    if db is None:
        raise ConfigurationError(
            "BGQUEUE_PUBLISH_AFTER_APP_COMMIT waits for the app's Flask-SQLAlchemy session,"
            " but Flask-SQLAlchemy is not initialised on this app: call db.init_app(app) or"
            " turn the option off.",
            "BGQUEUE_PUBLISH_AFTER_APP_COMMIT",
        )
    session: Session = db.session()
    if not session.in_transaction():
        return False
    transaction = session.get_nested_transaction() or session.get_transaction()
    if "bgqueue_listening" not in session.info:
        session.info["bgqueue_listening"] = True
        _listen(session, runtime)
    session.info.setdefault(_PENDING, []).extend((transaction, row) for row in rows)
    return True


def _listen(session: Session, runtime: Runtime) -> None:
    def after_commit(sess: Session) -> None:
        if sess.get_nested_transaction() is not None:
            return  # a savepoint was released: its jobs now belong to the outer transaction
        pending = sess.info.pop(_PENDING, [])
        if pending:
            write_rows(runtime, [row for _, row in pending])

    def after_soft_rollback(sess: Session, rolled_back: SessionTransaction) -> None:
        pending = sess.info.get(_PENDING)
        if pending:
            pending[:] = [(t, row) for t, row in pending if not _inside(t, rolled_back)]

    def after_transaction_end(sess: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # the outermost transaction ended without a commit
            sess.info.pop(_PENDING, None)

    sa.event.listen(session, "after_commit", after_commit)
    sa.event.listen(session, "after_soft_rollback", after_soft_rollback)
    sa.event.listen(session, "after_transaction_end", after_transaction_end)


def _inside(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False
