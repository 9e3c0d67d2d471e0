"""``flask bgq …``: thin click wrappers over :class:`BackgroundQueue` methods."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from .priorities import parse_priority_spec


def _state() -> Any:
    return current_app.extensions["bgqueue"]


def host_locked(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the command only when no other run of it holds the host lock; else exit 0."""

    def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from .locks import host_lock

            s = _state().settings
            with host_lock(s.locks_dir, f"bgqueue-{s.table_name}-{name}") as held:
                if not held:
                    click.echo(f"bgq {name} is already running on this host; nothing to do.")
                    return None
                return f(*args, **kwargs)

        return wrapper

    return decorator


def _priorities(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    configured = _state().settings.priorities
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


@click.group("bgq")
def bgq_command() -> None:
    """Flask-BgQueue: process, inspect and maintain background jobs."""


@bgq_command.command("process")
@priority_option
@with_appcontext
@host_locked("process")
def process_command(spec: Any) -> None:
    """Run every due job, by priority then id, until none is due (for cron)."""
    result = _state().queue.process(priorities=spec)
    summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.outcomes.items()))
    click.echo(f"processed {result.processed} job(s){': ' + summary if summary else ''}")
    if result.resent:
        click.echo(f"sent {result.resent} job(s) to the broker again")
    if result.reaped:
        click.echo(f"recovered {len(result.reaped)} job(s) of lost workers: {result.reaped}")


@bgq_command.command("clear-finished")
@click.argument("days", type=click.FloatRange(min=0), required=False)
@with_appcontext
@host_locked("clear-finished")
def clear_finished_command(days: float | None) -> None:
    """Delete FINISHED and REDUNDANT jobs (with DAYS: finished more than DAYS days ago)."""
    deleted = _state().queue.clear_finished(days)
    click.echo(f"deleted {deleted} finished job(s)")


@bgq_command.command("update-schema")
@with_appcontext
@host_locked("update-schema")
def update_schema_command() -> None:
    """Create the job table or upgrade it to this version."""
    changed = _state().queue.update_schema()
    click.echo("job table upgraded" if changed else "job table already up to date")


@bgq_command.command("consume")
@click.argument("queue", required=False)
@priority_option
@click.option(
    "-j",
    "--jobs",
    "max_jobs",
    type=click.IntRange(min=1),
    help="Exit after this many jobs (a supervisor starts a fresh process).",
)
@with_appcontext
def consume_command(queue: str | None, spec: Any, max_jobs: int | None) -> None:
    """Run jobs as they come until SIGTERM/SIGINT (the current job finishes first)."""
    import signal
    import threading

    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    result = _state().queue.consume(queue, spec, max_jobs, stop)
    why = "died" if result.died else "reload requested" if result.reloaded else "stopped"
    click.echo(f"consumed {result.jobs} job(s); {why}")


@bgq_command.command("reload-consumers")
@click.argument("queue")
@click.argument("number", type=click.IntRange(min=1))
@with_appcontext
@host_locked("reload-consumers")
def reload_consumers_command(queue: str, number: int) -> None:
    """Make NUMBER consumers of QUEUE exit after their current job."""
    from .broker import BrokerError

    try:
        _state().queue.reload_consumers(queue, number)
    except (RuntimeError, BrokerError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"asked {number} consumer(s) of {queue} to reload")


from . import cli_inspect as cli_inspect  # noqa: E402  (adds list, show, retry, stats, health)
