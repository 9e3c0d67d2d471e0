"""``flask bgq …``: the command group.

``commands.py`` runs and maintains jobs (process, consume, clear-finished, update-schema,
reload-consumers); ``inspect.py`` looks at them (list, show, retry, stats, health);
``schedules.py`` lists, pauses and resumes the periodic schedules.

A Flask-BgQueue error or a database error in any command is one ``Error: …`` line and exit
status 1; ``flask bgq --traceback …`` or ``FLASK_DEBUG=1`` shows the stack instead.
"""

from __future__ import annotations

from typing import Any

import click
import sqlalchemy as sa
from flask.helpers import get_debug_flag

from ..exceptions import BgQueueError, one_line
from . import commands, inspect, schedules


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BgQueueError, sa.exc.SQLAlchemyError) as exc:
            if ctx.params.get("traceback") or get_debug_flag():
                raise
            where = "the job table's database: " if isinstance(exc, sa.exc.SQLAlchemyError) else ""
            raise click.ClickException(where + one_line(exc)) from None


@click.group("bgq", cls=_Group)
@click.option("--traceback", is_flag=True, help="Show the stack of an error instead of one line.")
def bgq_command(traceback: bool) -> None:
    """Flask-BgQueue: process, inspect and maintain background jobs."""


for _command in (*commands.COMMANDS, *inspect.COMMANDS, *schedules.COMMANDS):
    bgq_command.add_command(_command)

__all__ = ["bgq_command"]
