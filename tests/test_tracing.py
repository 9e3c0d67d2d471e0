"""OpenTelemetry: a job carries its publisher's trace context, and a real ``flask bgq
process`` makes a span per attempt inside that trace (read with the SDK's in-memory
exporter, which the worker writes out at exit)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from tests.conftest import ProcEnv
from tests.helpers import set_columns

PUBLISHER_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
PUBLISHER_SPAN = 0xB7AD6B7169203331


def _tracer() -> tuple[Any, InMemorySpanExporter]:
    """An SDK tracer of this test only (the global provider stays untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("tests"), exporter


def _incoming() -> Any:
    """The context of a request that arrived with a traceparent and a tracestate."""
    remote = SpanContext(
        PUBLISHER_TRACE,
        PUBLISHER_SPAN,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "t61rcWkgMzE")]),
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


def _spans(procs: ProcEnv, tmp: Any) -> list[dict[str, Any]]:
    path = tmp / "spans.json"
    procs.env["PROCAPP_SPANS"] = str(path)
    done = procs.run("bgq", "process")
    assert done.returncode == 0, done.stderr
    return [s for s in json.loads(path.read_text()) if s["name"].startswith("bgqueue ")]


def test_publish_stores_the_trace_context_and_the_worker_span_continues_it(
    procs: ProcEnv, tmp_path: Any
) -> None:
    app = procs.app()
    tracer, exporter = _tracer()
    with app.app_context():
        with tracer.start_as_current_span("POST /orders", context=_incoming()) as request:
            ok_id = app.bgq.publish("noop")  # type: ignore[attr-defined]
            failing_id = app.bgq.publish("fail", {"kind": "temporary"})  # type: ignore[attr-defined]
        stored = json.loads(app.bgq.get_job(ok_id).trace_context)  # type: ignore[attr-defined]
    publisher = request.get_span_context()
    assert stored["traceparent"] == f"00-{publisher.trace_id:032x}-{publisher.span_id:016x}-01"
    assert stored["tracestate"] == "vendor=t61rcWkgMzE"

    spans = {s["attributes"]["bgqueue.job.id"]: s for s in _spans(procs, tmp_path)}
    assert set(spans) == {ok_id, failing_id}
    for span in spans.values():
        assert span["context"]["trace_id"] == f"0x{publisher.trace_id:032x}"
        assert span["parent_id"] == f"0x{publisher.span_id:016x}"
        assert [link["context"]["span_id"] for link in span["links"]] == [
            f"0x{publisher.span_id:016x}"
        ]
        assert span["kind"] == "SpanKind.CONSUMER"
        assert span["attributes"]["bgqueue.job.attempt"] == 1
        assert "vendor" in span["context"]["trace_state"]
    ok, failed = spans[ok_id], spans[failing_id]
    assert ok["name"] == "bgqueue process noop"
    assert ok["attributes"]["bgqueue.job.callback"] == "noop"
    assert ok["attributes"]["bgqueue.job.outcome"] == "finished"
    assert ok["status"]["status_code"] == "UNSET"
    assert failed["attributes"]["bgqueue.job.callback"] == "fail"
    assert failed["attributes"]["bgqueue.job.outcome"] == "temporarily_failed"
    assert failed["status"]["status_code"] == "ERROR"
    assert [e["name"] for e in failed["events"]] == ["exception"]
    assert exporter.get_finished_spans()[0].name == "POST /orders"


def test_a_job_published_outside_a_trace_keeps_no_context_and_runs_in_a_new_trace(
    procs: ProcEnv, tmp_path: Any
) -> None:
    app = procs.app()
    with app.app_context():
        job_id = app.bgq.publish("noop")  # type: ignore[attr-defined]
        assert app.bgq.get_job(job_id).trace_context is None  # type: ignore[attr-defined]
    [span] = _spans(procs, tmp_path)
    assert span["parent_id"] is None and span["links"] == []
    assert span["attributes"]["bgqueue.job.outcome"] == "finished"


def test_a_stored_context_that_is_not_json_never_fails_the_job(
    procs: ProcEnv, tmp_path: Any
) -> None:
    app = procs.app()
    with app.app_context():
        job_id = app.bgq.publish("noop")  # type: ignore[attr-defined]
        set_columns(app.bgq, job_id, trace_context="{not json")  # type: ignore[attr-defined]
    [span] = _spans(procs, tmp_path)
    assert span["parent_id"] is None
    with app.app_context():
        assert app.bgq.get_job(job_id).state.name == "FINISHED"  # type: ignore[attr-defined]


def test_without_opentelemetry_nothing_imports_it_and_no_context_is_stored(
    procs: ProcEnv,
) -> None:
    """A process that publishes and runs jobs imports neither OpenTelemetry nor
    prometheus_client unless the application does."""
    script = (
        "import sys\n"
        "from tests.procapp import bgq, create_app\n"
        "app = create_app()\n"
        "with app.app_context():\n"
        "    job_id = bgq.publish('noop')\n"
        "    bgq.process()\n"
        "    job = bgq.get_job(job_id)\n"
        "print(job.state.name, job.trace_context)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('opentelemetry', 'prometheus_client')))\n"
    )
    env = procs._env()
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["FINISHED None", "[]"]
