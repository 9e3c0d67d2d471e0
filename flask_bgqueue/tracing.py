"""OpenTelemetry: a job carries its publisher's trace, and each attempt is a span in it.

Nothing here imports OpenTelemetry by itself. Tracing is on in a process once the
application has imported ``opentelemetry.trace`` (setting up a tracer provider does): a
process that never did has no span whose context a job could carry, and no provider a
span could be reported to, so skipping the work there changes nothing it could observe.
Without OpenTelemetry installed, ``trace_context`` stays NULL and no span is made.

``publish()`` stores the propagation headers of the current context (W3C ``traceparent``
and ``tracestate``, and whatever else the configured propagators write) as JSON text in
the job's ``trace_context`` column. An attempt's span is a child of that context (so it
sits in the publisher's trace) and carries a link to it, as OpenTelemetry's messaging
conventions suggest for consumers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .models import FAILED_STATES, Job, JobState

TRACER_NAME = "flask_bgqueue"


def enabled() -> bool:
    """Whether the application has loaded OpenTelemetry's API in this process."""
    return "opentelemetry.trace" in sys.modules


def carrier() -> str | None:
    """The current trace context as JSON text for the ``trace_context`` column, or
    ``None`` when no valid span is current (or OpenTelemetry is not in use)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return json.dumps(headers, sort_keys=True) if headers else None


def _parent(job: Job) -> Any:
    """The publisher's context extracted from the job (``None`` when it has none or the
    stored text is not a JSON object: tracing never fails a job)."""
    if not job.trace_context:
        return None
    try:
        headers = json.loads(job.trace_context)
    except ValueError:
        return None
    if not isinstance(headers, dict):
        return None
    from opentelemetry import propagate

    return propagate.extract({str(k): str(v) for k, v in headers.items()})


@contextmanager
def attempt_span(job: Job) -> Iterator[Any]:
    """A current span around one attempt of ``job`` (``None`` when tracing is off)."""
    if not enabled():
        yield None
        return
    from opentelemetry import trace

    parent = _parent(job)
    links = []
    if parent is not None:
        context = trace.get_current_span(parent).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context))
    tracer = trace.get_tracer(TRACER_NAME)
    attributes: dict[str, Any] = {
        "messaging.system": "bgqueue",
        "messaging.operation.type": "process",
        "messaging.destination.name": job.queue,
        "messaging.message.id": str(job.id),
        "bgqueue.job.id": job.id,
        "bgqueue.job.callback": job.callback_name,
        "bgqueue.job.attempt": job.number_of_attempts,
        "bgqueue.job.queue": job.queue,
    }
    with tracer.start_as_current_span(
        f"bgqueue process {job.callback_name}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def end_attempt(span: Any, state: JobState, exception: BaseException | None) -> None:
    """Write the attempt's outcome on its span: ``bgqueue.job.outcome`` (the state's
    label), and an error status with the exception when the attempt failed."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("bgqueue.job.outcome", state.label)
    if state in FAILED_STATES:
        if exception is not None:
            span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, state.name))
