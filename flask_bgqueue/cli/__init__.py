"""``flask bgq …``: the command group.

``commands.py`` runs and maintains jobs (process, consume, clear-finished, update-schema,
reload-consumers); ``inspect.py`` looks at them (list, show, retry, stats, health).
"""

from __future__ import annotations

import click

from . import commands, inspect


@click.group("bgq")
def bgq_command() -> None:
    """Flask-BgQueue: process, inspect and maintain background jobs."""


for _command in (*commands.COMMANDS, *inspect.COMMANDS):
    bgq_command.add_command(_command)

__all__ = ["bgq_command"]
