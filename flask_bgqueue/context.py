"""What a running callback may ask about its own job: :func:`current_job`.

The processor sets the context around the callback (a :mod:`contextvars` variable, so it
is right in threads and in ``async def`` callbacks alike) and clears it afterwards.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from .models import Job, attempt_was_lost


@dataclass(frozen=True)
class CurrentJob:
    """The job the running callback belongs to.

    ``attempt`` counts from 1 and includes attempts lost with their worker;
    ``previous_attempt_lost`` is true when the attempt before this one ended without an
    outcome (its worker was killed or lost, or interrupted by a forced shutdown): the
    callback may have done part or all of its work already, so it should check before it
    repeats a side effect (at-least-once delivery).
    """

    id: int
    callback_name: str
    attempt: int
    previous_attempt_lost: bool
    job: Job

    @property
    def cancel_requested(self) -> bool:
        """Whether someone asked this job to stop (``bgq.cancel``) since it was claimed.

        Re-read while the callback runs: the worker's heartbeat thread asks the database
        each ``BGQUEUE_HEARTBEAT_INTERVAL_SECONDS``. A callback that checks it and returns
        (or raises) early ends its job ``CANCELLED``; one that never checks it runs to its
        end, and its job ends ``CANCELLED`` all the same (its result is kept).
        """
        return self.id in _cancel_requested


#: The job (as claimed for this attempt) whose callback runs in this context.
_current: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "bgqueue_current_job", default=None
)


#: Ids of the jobs running in this process that someone asked to stop (set by the
#: heartbeat thread, read by the callback's; a set's add and lookup are atomic).
_cancel_requested: set[int] = set()


def note_cancel_requested(job_ids: list[int]) -> None:
    """The heartbeat read that these running jobs were asked to stop."""
    _cancel_requested.update(job_ids)


def take_cancel_request(job_id: int) -> bool:
    """Whether ``job_id`` was asked to stop while it ran here; forgets it (its attempt
    is over)."""
    if not _cancel_requested:  # the usual case: no raise and catch
        return False
    try:
        _cancel_requested.remove(job_id)
    except KeyError:
        return False
    return True


def current_job() -> CurrentJob | None:
    """The job whose callback is running here, or ``None`` outside a callback."""
    job = _current.get()
    if job is None:
        return None
    return CurrentJob(
        id=job.id,
        callback_name=job.callback_name,
        attempt=job.number_of_attempts,
        previous_attempt_lost=attempt_was_lost(job.error_message),
        job=job,
    )


class running:
    """Make ``job`` (as claimed for this attempt) the current job while the block runs.

    A class rather than a generator: it wraps every attempt, and :func:`current_job`
    builds its answer only when a callback asks.
    """

    __slots__ = ("job", "token")

    def __init__(self, job: Job) -> None:
        self.job = job

    def __enter__(self) -> None:
        self.token = _current.set(self.job)

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self.token)
