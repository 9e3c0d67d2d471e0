"""``flask bgq process|consume|clear-finished|update-schema|reload-consumers``.

Thin click wrappers over the runtime, the processor and the worker.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from functools import wraps
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from ..broker import BrokerError
from ..locks import host_lock
from ..priorities import parse_priority_spec
from ..processor import Processor
from ..runtime import current_runtime
from ..worker import Worker
from .stopping import StopOnSignals


def host_locked(
    name: str, quiet: Callable[[dict[str, Any]], bool] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the command only when no other run of it holds the host lock; else exit 0,
    saying so unless ``quiet(command arguments)``."""

    def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            s = current_runtime().settings
            with ExitStack() as stack:
                try:
                    lock = host_lock(s.locks_dir, f"bgqueue-{s.table_name}-{name}")
                    held = stack.enter_context(lock)
                except OSError as exc:
                    raise click.ClickException(
                        f"cannot take the host lock in {s.locks_dir} ({exc.strerror or exc}):"
                        " set BGQUEUE_LOCKS_DIR to a folder this user may write to."
                    ) from None
                if not held:
                    if quiet is None or not quiet(kwargs):
                        click.echo(f"bgq {name} is already running on this host; nothing to do.")
                    return None
                return f(*args, **kwargs)

        return wrapper

    return decorator


def _priorities(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    configured = current_runtime().settings.priorities
    try:
        return parse_priority_spec(value, configured)
    except ValueError as exc:
        raise click.BadParameter(
            f"{exc}; configured priorities: {', '.join(map(str, configured))}", ctx, param
        ) from None


#: ``-p SPEC``, shared by ``process`` and ``consume``.
priority_option = click.option(
    "-p",
    "--priorities",
    "spec",
    metavar="SPEC",
    callback=_priorities,
    help="Only these priorities: 10, 20-40, 25- or -20.",
)


@click.command("process")
@priority_option
@click.option(
    "-v",
    "--verbose",
    "verbosity",
    flag_value="verbose",
    help="Always print the summary, even when nothing was due (and when already running).",
)
@click.option("-q", "--quiet", "verbosity", flag_value="quiet", help="Print nothing but errors.")
@with_appcontext
@host_locked("process", quiet=lambda kwargs: kwargs.get("verbosity") != "verbose")
def process_command(spec: Any, verbosity: str | None) -> None:
    """Run every due job, by priority then id, until none is due (for cron).

    Prints what it did, and nothing when nothing was due, so cron mails only when there is
    something to read.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    processor = Processor(current_runtime(), app)
    with processor.limits.watching():  # this is a process of its own: it may be killed
        result = processor.sweep(spec)
    if verbosity == "quiet" or (verbosity is None and not result.did_anything):
        return
    click.echo(result.summary())
    if result.resent:
        click.echo(f"sent {result.resent} job(s) to the broker again")
    if result.reaped:
        click.echo(f"recovered {len(result.reaped)} job(s) of lost workers: {result.reaped}")


@click.command("clear-finished")
@click.argument("days", type=click.FloatRange(min=0), required=False)
@with_appcontext
@host_locked("clear-finished")
def clear_finished_command(days: float | None) -> None:
    """Delete FINISHED, REDUNDANT and CANCELLED jobs (with DAYS: those finished more than
    DAYS days ago)."""
    deleted = current_runtime().clear_finished(days)
    click.echo(f"deleted {deleted} finished job(s)")


@click.command("update-schema")
@with_appcontext
@host_locked("update-schema")
def update_schema_command() -> None:
    """Create the job table or upgrade it to this version."""
    changed = current_runtime().update_schema()
    click.echo("job table upgraded" if changed else "job table already up to date")


@click.command("consume")
@click.argument("queue", required=False)
@priority_option
@click.option(
    "-j",
    "--jobs",
    "max_jobs",
    type=click.IntRange(min=1),
    help="Exit after this many jobs (a supervisor starts a fresh process).",
)
@click.option(
    "--max-memory",
    "max_memory_mb",
    type=click.IntRange(min=1),
    metavar="MB",
    help="Exit after a job that leaves this process holding more than MB MiB (resident).",
)
@with_appcontext
def consume_command(
    queue: str | None, spec: Any, max_jobs: int | None, max_memory_mb: int | None
) -> None:
    """Run jobs as they come until SIGTERM/SIGINT (the current job finishes first).

    A second SIGINT (Ctrl-C twice) stops at once: the running job's attempt is recorded as
    interrupted and the job is due again at once.
    """
    stop = threading.Event()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    max_memory = None if max_memory_mb is None else max_memory_mb * 1024 * 1024
    worker = Worker(current_runtime(), app, queue, spec, max_jobs, stop, max_memory)

    def stop_now() -> None:
        click.echo("second SIGINT: stopping now, the running job is due again", err=True)
        where = f"pid {os.getpid()} on {worker.processor.hostname}"
        worker.force_stop(f"{where} was stopped by a second SIGINT while the job ran")
        os._exit(128 + signal.SIGINT)

    with StopOnSignals(stop, stop_now):
        click.echo(worker.describe(), err=True)
        result = worker.run()
    why = (
        "died"
        if result.died
        else "reload requested"
        if result.reloaded
        else f"over --max-memory {max_memory_mb} MiB"
        if result.over_memory
        else "stopped"
    )
    click.echo(f"consumed {result.jobs} job(s); {why}")


@click.command("reload-consumers")
@click.argument("queue")
@click.argument("number", type=click.IntRange(min=1))
@with_appcontext
@host_locked("reload-consumers")
def reload_consumers_command(queue: str, number: int) -> None:
    """Make NUMBER consumers of QUEUE exit after their current job."""
    try:
        current_runtime().reload_consumers(queue, number)
    except (RuntimeError, BrokerError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"asked {number} consumer(s) of {queue} to reload")


COMMANDS = (
    process_command,
    consume_command,
    clear_finished_command,
    update_schema_command,
    reload_consumers_command,
)
