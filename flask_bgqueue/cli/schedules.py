"""``flask bgq schedules``: the periodic schedules, and pausing them without a deploy."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from ..clock import utcnow
from ..explain import explain_schedule
from ..periodic import forget, overview, set_paused
from ..runtime import current_runtime


@click.command("schedules")
@click.option("--pause", metavar="NAME", help="Pause this schedule (for every worker).")
@click.option("--resume", metavar="NAME", help="Resume this paused schedule.")
@click.option("--forget", "forget_name", metavar="NAME", help="Delete an orphaned schedule's row.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def schedules_command(
    pause: str | None, resume: str | None, forget_name: str | None, as_json: bool
) -> None:
    """List the schedules: expression, time zone, last and next tick, last job's state."""
    runtime = current_runtime()
    for name, paused in ((pause, True), (resume, False)):
        if name is not None:
            set_paused(runtime, name, paused)
            click.echo(f"schedule {name!r} {'paused' if paused else 'resumed'}")
    if forget_name is not None:
        forget(runtime, forget_name)
        click.echo(f"schedule {forget_name!r} forgotten")
    now = utcnow()
    views = overview(runtime, now)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": v.name,
                        "status": v.status,
                        "expression": v.expression,
                        "timezone": v.timezone,
                        "catch_up": v.catch_up,
                        "callback": v.callback_name,
                        "last_tick_at": _time(v.last_tick_at),
                        "next_tick_at": _time(v.next_tick_at),
                        "last_job_id": v.last_job_id,
                        "last_job_state": v.last_job_state.name if v.last_job_state else None,
                        "why": explain_schedule(v, now)[0].text,
                    }
                    for v in views
                ],
                indent=2,
            )
        )
        return
    if not views:
        click.echo("no schedules (add @bgq.periodic above a callback, or BGQUEUE_SCHEDULE)")
        return
    click.echo(
        f"{'NAME':20} {'STATUS':9} {'EXPRESSION':16} {'TIME ZONE':16} {'LAST TICK (UTC)':19}"
        f"  {'NEXT TICK (UTC)':19}  LAST JOB"
    )
    for v in views:
        job = f"{v.last_job_id} {v.last_job_state.name}" if v.last_job_state else "-"
        click.echo(
            f"{v.name:20} {v.status:9} {v.expression:16} {v.timezone:16}"
            f" {_time(v.last_tick_at) or '-':19}  {_time(v.next_tick_at) or '-':19}  {job}"
        )
        if v.status != "active":
            click.echo(f"  {explain_schedule(v, now)[0].text}")


def _time(moment: object) -> str | None:
    return None if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


COMMANDS = [schedules_command]
