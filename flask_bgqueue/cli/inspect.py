"""``flask bgq list|show|retry|cancel|stats|health``: thin click wrappers over
:class:`Inspector`."""

from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime
from typing import Any

import click
from flask.cli import with_appcontext

from .. import metrics
from ..explain import span
from ..inspection import Inspector
from ..models import FAILED_STATES, Job
from ..runtime import current_runtime
from ..selection import MAX_JOB_ID, JobFilter, parse_states

#: A job id argument: the id column is a signed 64-bit integer.
JOB_ID = click.IntRange(1, MAX_JOB_ID)


def _inspector() -> Inspector:
    return Inspector()


def _states(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    try:
        return parse_states(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _short(text: str | None, width: int) -> str:
    line = (text or "").splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


@click.command("list")
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    callback=_states,
    help="Only jobs in this state (a name, a number, or 'failed'); repeatable.",
)
@click.option("-c", "--callback", "callback_name", help="Only jobs of this callback.")
@click.option("-q", "--queue", help="Only jobs of this queue.")
@click.option("-g", "--serial-group", help="Only jobs of this serial group.")
@click.option("-i", "--identifier", help="Only jobs with this identifier.")
@click.option("-t", "--text", help="Only jobs whose error or JSON parameters contain TEXT.")
@click.option("--before", type=JOB_ID, help="Only jobs with a lower id (paging).")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Show at most this many jobs (then --before pages on).",
)
@with_appcontext
def list_command(
    states: Any,
    callback_name: str | None,
    queue: str | None,
    serial_group: str | None,
    identifier: str | None,
    text: str | None,
    before: int | None,
    limit: int,
) -> None:
    """List jobs, newest first."""
    try:
        flt = JobFilter(states, callback_name, queue, serial_group, identifier, text)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    page = _inspector().page(flt, before_id=before, limit=limit)
    if page.searched:
        low, high = page.searched
        click.echo(f"(the text was searched in jobs {low} to {high} only)")
    if not page.jobs:
        click.echo("no job matches")
        if page.has_older:
            click.echo(f"(more: --before {page.older_than})")
        return
    click.echo(f"{'id':>8}  {'state':<18} {'callback':<24} {'tries':>5}  {'due (UTC)':<19}  error")
    for job in page.jobs:
        click.echo(
            f"{job.id:>8}  {job.state.name:<18} {_short(job.callback_name, 24):<24}"
            f" {job.number_of_attempts:>5}  {_time(job.available_at):<19}"
            f"  {_short(job.error_message, 60)}"
        )
    if page.has_older:
        click.echo(f"(more: --before {page.older_than})")


@click.command("show")
@click.argument("job_id", type=JOB_ID)
@with_appcontext
def show_command(job_id: int) -> None:
    """Show one job: fields, parameters, why it is not running, error and traceback."""
    inspector = _inspector()
    job = inspector.job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id} in this queue")
    for label, value in _fields(job):
        click.echo(f"{label:>16}: {value}")
    params = inspector.parameters(job)
    click.echo(f"\nparameters ({params.note}):\n{params.text}")
    click.echo("\nwhy it is not running now:")
    for reason in inspector.why_not_running(job):
        click.echo(f"  - {reason.text}")
    if job.traceback:
        click.echo(f"\ntraceback:\n{job.traceback.rstrip()}")


def _fields(job: Job) -> list[tuple[str, Any]]:
    return [
        ("id", job.id),
        ("state", f"{job.state.name} ({int(job.state)})"),
        ("callback", job.callback_name),
        ("queue", job.queue),
        ("priority", job.priority),
        ("serial group", job.serial_group or "-"),
        ("identifier", (job.identifier or "-") + (" (unique)" if job.is_unique else "")),
        ("attempts", job.number_of_attempts),
        ("created", _time(job.created_at)),
        ("available", _time(job.available_at)),
        ("last attempt", _time(job.last_attempt_at)),
        ("finished", _time(job.finished_at)),
        ("worker", f"pid {job.pid} on {job.hostname}" if job.pid is not None else "-"),
        ("heartbeat", _time(job.heartbeat_at)),
        ("execution time", "-" if job.execution_time is None else f"{job.execution_time} ms"),
        ("memory", json.dumps(job.memory) if job.memory else "-"),
        ("metadata", json.dumps(job.metadata, default=str) if job.metadata else "-"),
        ("error", job.error_message or "-"),
        ("progress", _progress(job)),
        ("cancel asked", _cancel_asked(job)),
        ("result", "-" if job.result is None else json.dumps(job.result)[:2000]),
    ]


def _progress(job: Job) -> str:
    if job.progress is None:
        return "-"
    return f"{job.progress:.0%}" + (f" {job.progress_message}" if job.progress_message else "")


def _cancel_asked(job: Job) -> str:
    if job.cancel_requested_at is None:
        return "-"
    return f"{_time(job.cancel_requested_at)} by {job.cancelled_by}"


@click.command("cancel")
@click.argument("job_ids", nargs=-1, type=JOB_ID, required=True)
@with_appcontext
def cancel_command(job_ids: tuple[int, ...]) -> None:
    """Cancel jobs: those not running never run; running ones are asked to stop.

    A READY, WAITING, TEMPORARILY_FAILED or BROKER_FAILED job becomes CANCELLED; a
    PROCESSING one sees current_job().cancel_requested and ends CANCELLED.
    """
    done = _inspector().cancel(job_ids, by=f"flask bgq cancel ({_operator()})")
    click.echo(f"cancelled {len(done)} job(s){': ' + ', '.join(map(str, done)) if done else ''}")
    skipped = [i for i in job_ids if i not in done]
    if skipped:
        raise click.ClickException(
            "not cancelled (unknown, already over, or asked before): "
            + ", ".join(map(str, skipped))
        )


def _operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


@click.command("retry")
@click.argument("job_ids", nargs=-1, type=JOB_ID)
@click.option("--failed", is_flag=True, help="Retry every TEMPORARILY/PERMANENTLY_FAILED job.")
@with_appcontext
def retry_command(job_ids: tuple[int, ...], failed: bool) -> None:
    """Run jobs again now, skipping their backoff (state READY, due now).

    Only jobs that failed, wait, or could not be sent to the broker change.
    """
    if failed == bool(job_ids):
        raise click.UsageError("give job ids or --failed (one of the two).")
    inspector = _inspector()
    if failed:
        done = inspector.retry_matching(JobFilter(states=FAILED_STATES))
        click.echo(f"retried {len(done)} failed job(s)")
        return
    done = inspector.retry(job_ids)
    click.echo(f"retried {len(done)} job(s){': ' + ', '.join(map(str, done)) if done else ''}")
    skipped = [i for i in job_ids if i not in done]
    if skipped:
        raise click.ClickException(
            f"not retried (unknown, or not failed/waiting): {', '.join(map(str, skipped))}"
        )


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--prometheus",
    is_flag=True,
    help="Print the metrics in Prometheus' text format (needs prometheus_client).",
)
@with_appcontext
def stats_command(as_json: bool, prometheus: bool) -> None:
    """Counts per state and callback, the oldest due job and the workers seen recently."""
    if as_json and prometheus:
        raise click.UsageError("give --json or --prometheus, not both.")
    if prometheus:
        if not metrics.available():
            raise click.ClickException(metrics.MISSING)
        click.echo(metrics.exposition(current_runtime())[0].decode(), nl=False)
        return
    stats = _inspector().stats(hours=1)
    finished = sum(m.finished for m in stats.throughput)
    failed = sum(m.failed for m in stats.throughput)
    if as_json:
        doc = {
            "states": {s.name: n for s, n in stats.by_state.items()},
            "queues": {q: {s.name: n for s, n in c.items()} for q, c in stats.by_queue.items()},
            "callbacks": {
                k: {s.name: n for s, n in c.items()} for k, c in stats.by_callback.items()
            },
            # states whose counts (here and above) are estimates, not exact
            "estimated_states": sorted(s.name for s in stats.estimated),
            "due": stats.due_count,
            "oldest_due_at": None if stats.oldest_due_at is None else str(stats.oldest_due_at),
            "last_hour": {"finished": finished, "failed": failed},
            "workers": [
                {
                    "hostname": w.hostname,
                    "pid": w.pid,
                    "last_attempt_at": str(w.last_attempt_at),
                    "jobs": [i for i, _ in w.current_jobs],
                    "queues": w.queues,
                    "jobs_done": w.jobs_done,
                }
                for w in stats.workers
            ],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    about = "≈" if stats.estimated else ""
    click.echo(f"{about}{stats.total} job(s)")
    for state, n in stats.by_state.items():
        if n:
            click.echo(f"  {state.name:<20} {'≈' if state in stats.estimated else '':>1}{n:>8}")
    click.echo("per callback:")
    for name, counts in stats.by_callback.items():
        parts = ", ".join(
            f"{'≈' if s in stats.estimated else ''}{n} {s.name.lower()}"
            for s, n in sorted(counts.items())
        )
        click.echo(f"  {name}: {parts}")
    age = stats.oldest_due_age
    oldest = "" if age is None else f", the oldest due for {span(age)}"
    click.echo(f"due now: {stats.due_count}{oldest}")
    click.echo(f"last hour: {finished} finished, {failed} failed")
    if stats.estimated:
        click.echo("(≈: an estimate from the database's statistics; see --json)")
    click.echo(f"workers seen in the last 15 min: {len(stats.workers)}")
    for w in stats.workers:
        jobs = ", ".join(f"job {i} ({c})" for i, c in w.current_jobs) or "idle"
        click.echo(f"  pid {w.pid} on {w.hostname}, last claim {_time(w.last_attempt_at)}: {jobs}")


@click.command("health")
@click.option(
    "--max-age",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Also unhealthy when the oldest due job has waited longer than this.",
)
@with_appcontext
def health_command(max_age: float | None) -> None:
    """Exit 1 when due jobs wait but no worker runs them (or they wait too long), else 0."""
    health = _inspector().health(max_age_seconds=max_age)
    if health.ok:
        click.echo(f"ok: {health.summary}")
        return
    for problem in health.problems:
        click.echo(f"unhealthy: {problem}", err=True)
    raise click.exceptions.Exit(1)


COMMANDS = (
    list_command,
    show_command,
    retry_command,
    cancel_command,
    stats_command,
    health_command,
)
