"""``flask bgq …``: the command group.

``commands.py`` runs and maintains jobs (process, consume, clear-finished, update-schema,
reload-consumers); ``inspect.py`` looks at them (list, show, retry, stats, health);
``schedules.py`` lists, pauses and resumes the periodic schedules.

A Flask-BgQueue error or a database error in any command is one ``Error: …`` line and exit
status 1; ``flask bgq --traceback …`` or ``FLASK_DEBUG=1`` shows the stack instead. That
holds for a bad ``BGQUEUE_*`` value too: the group is also a ``flask.commands`` plugin, so
``flask`` finds it without loading the app, and the group loads the app itself, where it
can report what ``init_app`` raised.
"""

from __future__ import annotations

from typing import Any

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import ScriptInfo
from flask.helpers import get_debug_flag

from ..exceptions import BgQueueError, one_line
from ..runtime import EXTENSION_KEY
from . import commands, inspect, schedules


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            self._push_app_context(ctx)
            return super().invoke(ctx)
        except (BgQueueError, sa.exc.SQLAlchemyError) as exc:
            if ctx.params.get("traceback") or get_debug_flag():
                raise
            where = "the job table's database: " if isinstance(exc, sa.exc.SQLAlchemyError) else ""
            raise click.ClickException(where + one_line(exc)) from None

    @staticmethod
    def _push_app_context(ctx: click.Context) -> None:
        """Load the app (when ``flask`` found the group as a plugin) before the command's
        options are read: their checks need the app's settings."""
        if current_app:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        else:
            app = ctx.ensure_object(ScriptInfo).load_app()
            ctx.with_resource(app.app_context())
        if EXTENSION_KEY not in app.extensions:
            raise click.ClickException(
                f"the app {app.name!r} does not use Flask-BgQueue: call bgq.init_app(app)"
                " in it (or point --app / FLASK_APP at the app that does)."
            )


@click.group("bgq", cls=_Group)
@click.option("--traceback", is_flag=True, help="Show the stack of an error instead of one line.")
def bgq_command(traceback: bool) -> None:
    """Flask-BgQueue: process, inspect and maintain background jobs."""


for _command in (*commands.COMMANDS, *inspect.COMMANDS, *schedules.COMMANDS):
    bgq_command.add_command(_command)

__all__ = ["bgq_command"]
