"""What an attempt ends as: the outcome table of the spec (§6), as row values.

Pure functions: :func:`classify` turns what the callback raised (or ``None``) into the
state and the columns its outcome writes; nothing here touches the database.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .clock import utcnow
from .config import Settings
from .exceptions import DieException, PermanentError, SkipException, WaitingException
from .models import Job, JobState
from .retry import backoff


@dataclass(frozen=True)
class Outcome:
    """The row values an attempt ends with, and whether the worker must stop."""

    state: JobState
    values: dict[str, Any]
    die: bool = False
    exception: BaseException | None = None


def classify(job: Job, error: BaseException | None, settings: Settings) -> Outcome:
    """The outcome table of the spec (§6), as row values."""
    now = utcnow()
    if error is None:
        return Outcome(
            JobState.FINISHED, {"finished_at": now, "error_message": None, "traceback": None}
        )
    die = isinstance(error, DieException)
    cause = error
    if die:
        cause = error.__cause__ or PermanentError(str(error) or "DieException")
    failure = {"error_message": _message(cause), "traceback": _traceback(error)}
    if isinstance(cause, SkipException):
        values = {"finished_at": now, "error_message": str(cause), "traceback": None}
        return Outcome(JobState.FINISHED, values, die, cause)
    if isinstance(cause, WaitingException):
        values = {
            **failure,
            "error_message": str(cause) or "waiting",
            "available_at": now + timedelta(milliseconds=settings.waiting_job_expiration_ms),
            "number_of_attempts": job.number_of_attempts - 1,  # waiting is not an attempt
        }
        return Outcome(JobState.WAITING, values, die, cause)
    if isinstance(cause, (PermanentError, TypeError)):
        return Outcome(JobState.PERMANENTLY_FAILED, failure, die, cause)
    limit = settings.max_attempts
    if limit is not None and job.number_of_attempts >= limit:
        failure["error_message"] = (
            f"gave up after {job.number_of_attempts} attempts: {failure['error_message']}"
        )
        return Outcome(JobState.PERMANENTLY_FAILED, failure, die, cause)
    values = {**failure, "available_at": now + backoff(job.number_of_attempts)}
    return Outcome(JobState.TEMPORARILY_FAILED, values, die, cause)


def cancelled(error: BaseException | None) -> Outcome:
    """A job asked to stop while it was claimed or ran (``bgq.cancel``): ``CANCELLED``,
    whatever the callback did; what it raised stays in ``traceback``."""
    values: dict[str, Any] = {
        "finished_at": utcnow(),
        "error_message": "cancelled while running",
        "traceback": _traceback(error) if error is not None else None,
    }
    return Outcome(JobState.CANCELLED, values, exception=error)


def kept_result(value: Any, job: Job, limit: int) -> dict[str, Any]:
    """The columns a finished callback's return value writes: ``result`` as JSON text.

    ``None`` keeps nothing. A value that is not plain JSON, or longer than ``limit`` bytes
    as JSON, is not kept: the job still finishes (its work is done; running it again to
    get a smaller result would repeat its side effects), with the reason in
    ``error_message``.
    """
    if value is None:
        return {}
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        why = f"it is not plain JSON ({exc})"
    else:
        size = len(text.encode())
        if size <= limit:
            return {"result": text}
        why = f"it is {size:,} bytes as JSON, over BGQUEUE_MAX_RESULT_BYTES ({limit:,})"
    return {
        "error_message": f"result not kept: {why}; return a smaller JSON value, or store the"
        " result elsewhere and return its id"
    }


def permanent(exc: BaseException, message: str) -> Outcome:
    """A job that cannot run at all (its parameters cannot be read): failed for good."""
    return Outcome(
        JobState.PERMANENTLY_FAILED,
        {"error_message": message, "traceback": _traceback(exc)},
        exception=exc,
    )


def _message(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
