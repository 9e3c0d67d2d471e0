"""Where publishing and processing report to metrics and tracing (both optional).

Costs nothing when neither is in use: :func:`attempt` then hands back one shared no-op.
A failure in either is logged and never changes a job's outcome.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol, TypeVar

from . import metrics, tracing
from .models import Job, JobState
from .runtime import Runtime


class Outcome(Protocol):
    """What an attempt ended with (``processor.Outcome``)."""

    @property
    def state(self) -> JobState: ...
    @property
    def exception(self) -> BaseException | None: ...


OutcomeT = TypeVar("OutcomeT", bound=Outcome)


class Seen(Protocol):
    """Told an attempt's outcome and measurements, hands them back unchanged:
    ``outcome, measured = seen(outcome, measured)``."""

    def __call__(
        self, outcome: OutcomeT, measured: dict[str, Any]
    ) -> tuple[OutcomeT, dict[str, Any]]: ...


def _ignore(outcome: OutcomeT, measured: dict[str, Any]) -> tuple[OutcomeT, dict[str, Any]]:
    return outcome, measured


_NOTHING: AbstractContextManager[Seen] = nullcontext(_ignore)


def attempt(runtime: Runtime, job: Job) -> AbstractContextManager[Seen]:
    """Around one attempt: a span (with tracing), and a ``seen`` function to call with
    the outcome (which records it on the span and in the metrics)."""
    record = runtime.settings.metrics
    if not record and not tracing.enabled():
        return _NOTHING
    return _attempt(runtime, job, record)


@contextmanager
def _attempt(runtime: Runtime, job: Job, record: bool) -> Iterator[Seen]:
    with tracing.attempt_span(job) as span:

        def seen(outcome: OutcomeT, measured: dict[str, Any]) -> tuple[OutcomeT, dict[str, Any]]:
            try:
                if span is not None:
                    tracing.end_attempt(span, outcome.state, outcome.exception)
                if record:
                    ms = measured.get("execution_time")
                    metrics.record_attempt(job.callback_name, outcome.state, ms)
            except Exception:
                runtime.logger.exception("bgqueue: recording job %s's attempt failed", job.id)
            return outcome, measured

        yield seen


def published(runtime: Runtime, rows: list[dict[str, Any]]) -> None:
    """Count published rows (``BGQUEUE_METRICS``)."""
    if not runtime.settings.metrics:
        return
    try:
        metrics.record_published(row["callback_name"] for row in rows)
    except Exception:
        runtime.logger.exception("bgqueue: counting published jobs failed (they are stored)")
