"""Helpers for an application's own tests.

Run the jobs your code published, inline and at once, and assert what was published::

    from flask_bgqueue.testing import assert_published, run_jobs

    def test_signup_sends_the_welcome_email(app, client):
        client.post("/signup", data={"email": "a@b.c"})
        with app.app_context():
            assert_published(bgq, "send_welcome", {"to": "a@b.c"})
            result = run_jobs(bgq)
        assert result.outcomes == {"FINISHED": 1}

Every helper needs an app context, like the extension itself.
"""

from __future__ import annotations

from typing import Any

from .clock import utcnow
from .extension import BackgroundQueue
from .models import Job, JobState
from .processor import SweepResult

_UNSET: Any = object()


def published_jobs(
    bgq: BackgroundQueue, callback_name: str | None = None, state: JobState | None = None
) -> list[Job]:
    """The jobs in the table, oldest first.

    :param bgq: the extension.
    :param callback_name: only jobs of this callback.
    :param state: only jobs in this state.
    """
    return bgq._state().store.jobs(callback_name, None if state is None else [state])


def assert_published(
    bgq: BackgroundQueue,
    callback_name: str,
    parameters: Any = _UNSET,
    *,
    count: int | None = None,
    **columns: Any,
) -> list[Job]:
    """Assert that jobs of ``callback_name`` with these parameters and columns were published.

    Returns the matching jobs.

    :param bgq: the extension.
    :param callback_name: the callback the jobs were published for.
    :param parameters: the parameters they must have (decoded); any when left out.
    :param count: how many must match exactly; at least one when ``None``.
    :param columns: job attributes to compare (``serial_group="invoice-42"``,
        ``priority=10`` ...).
    """
    jobs = published_jobs(bgq, callback_name)
    matching = [
        job
        for job in jobs
        if (parameters is _UNSET or bgq.load_parameters(job) == parameters)
        and all(getattr(job, name) == value for name, value in columns.items())
    ]
    wanted = f"{count} job(s)" if count is not None else "a job"
    if (count is None and not matching) or (count is not None and len(matching) != count):
        seen = [(job.id, bgq.load_parameters(job)) for job in jobs]
        raise AssertionError(
            f"expected {wanted} of {callback_name!r}"
            f"{'' if parameters is _UNSET else f' with parameters {parameters!r}'}"
            f"{f' and {columns}' if columns else ''}; found {len(matching)}. Published jobs of"
            f" this callback (id, parameters): {seen}"
        )
    return matching


def assert_not_published(bgq: BackgroundQueue, callback_name: str | None = None) -> None:
    """Assert that no job is in the table.

    :param bgq: the extension.
    :param callback_name: only jobs of this callback count.
    """
    jobs = published_jobs(bgq, callback_name)
    if jobs:
        raise AssertionError(
            f"expected no job{'' if callback_name is None else f' of {callback_name!r}'}; found"
            f" {[(job.id, job.callback_name) for job in jobs]}"
        )


def run_jobs(bgq: BackgroundQueue, *, include_future: bool = False) -> SweepResult:
    """Run due jobs inline, as ``flask bgq process`` would, and return what happened.

    :param bgq: the extension.
    :param include_future: run delayed jobs and jobs waiting for a retry too.
    :returns: a :class:`~flask_bgqueue.SweepResult`; its ``outcomes`` counts each job once,
        by the state it ended in.
    """
    if include_future:
        bgq._state().store.make_due(utcnow())
    return bgq.process()
