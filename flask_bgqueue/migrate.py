"""Flask-Migrate leaves the job table alone.

``flask db migrate`` (Alembic's autogenerate) compares the app's models with the tables it
finds. When the job table is in a database it looks at (the queue's bind is the app's
database, or Flask-Migrate's multi-database setup iterates over the queue's bind too), it
finds a table no model declares and writes ``drop_table`` for it, its indexes and its
version table. The two hooks here tell Alembic to skip them: :func:`include_name` keeps
them from being reflected at all, :func:`include_object` filters what is compared.

:class:`~flask_bgqueue.BackgroundQueue` hands both to Flask-Migrate by itself when both
are on the app, whichever ``init_app`` runs first: they go into the keyword arguments
Flask-Migrate's ``env.py`` passes to ``context.configure()`` (``Migrate(app, db,
include_object=...)``), combined with hooks of the app's own. An ``env.py`` of your own
may pass them itself::

    from flask_bgqueue.migrate import include_name, include_object

    context.configure(..., include_name=include_name, include_object=include_object)

Both need the app context the ``flask db`` commands run in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, appcontext_pushed, current_app

from .models import owned_table_names
from .runtime import EXTENSION_KEY
from .schema import version_table

Hook = Callable[..., bool]


def queue_tables() -> frozenset[str]:
    """The tables Flask-BgQueue owns in the current app: the job table, its schedule and
    throughput tables and its version table."""
    runtime = current_app.extensions.get(EXTENSION_KEY)
    if runtime is None:
        return frozenset()
    table: str = runtime.settings.table_name
    return frozenset({*owned_table_names(table), version_table(table)})


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic's ``include_name`` hook: ``False`` for the queue's tables and what is in them.

    :param name: the name of the table, index, column or constraint.
    :param type_: ``"table"``, ``"index"``, ``"column"`` ... (``"schema"`` is kept).
    :param parent_names: for what lives in a table, ``table_name`` names it.
    """
    table = name if type_ == "table" else parent_names.get("table_name")
    return table not in queue_tables()


def include_object(
    object: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's ``include_object`` hook: ``False`` for the queue's tables, their indexes,
    columns and constraints (matched by their table: index names start with ``ix_``).

    :param object: the table, index, column or constraint.
    :param name: its name.
    :param type_: ``"table"``, ``"index"``, ``"column"`` ...
    :param reflected: whether it was found in the database rather than in the models.
    :param compare_to: what it is compared with, or ``None``.
    """
    if type_ == "table":
        table = name
    else:
        table = getattr(getattr(object, "table", None), "name", None)
    return table not in queue_tables()


include_name._bgqueue = True  # type: ignore[attr-defined]
include_object._bgqueue = True  # type: ignore[attr-defined]


def register(app: Flask) -> None:
    """Hand the hooks to Flask-Migrate on ``app``: now if it is there, else at the first
    app context once it is (``flask db …`` pushes one before Alembic runs)."""
    if not _hand_over(app):
        appcontext_pushed.connect(_when_pushed, app)


def settle(app: Flask) -> None:
    """Stop waiting for Flask-Migrate on ``app`` (a worker runs jobs, not migrations, and
    pushes an app context per job): hand the hooks over now if it is there."""
    _hand_over(app)
    appcontext_pushed.disconnect(_when_pushed, app)


def _when_pushed(app: Flask, **kwargs: Any) -> None:
    if _hand_over(app):
        appcontext_pushed.disconnect(_when_pushed, app)


def _hand_over(app: Flask) -> bool:
    """Put the hooks into Flask-Migrate's ``configure_args`` (``False`` when it is not on
    ``app`` yet), each combined with the app's own hook of that name."""
    config = app.extensions.get("migrate")
    args = getattr(config, "configure_args", None)
    if not isinstance(args, dict):
        return False
    for key, ours in (("include_name", include_name), ("include_object", include_object)):
        theirs = args.get(key)
        if theirs is None or getattr(theirs, "_bgqueue", False):
            args[key] = ours
        else:
            args[key] = _both(ours, theirs)
    return True


def _both(ours: Hook, theirs: Hook) -> Hook:
    def hook(*args: Any) -> bool:
        return ours(*args) and bool(theirs(*args))

    hook._bgqueue = True  # type: ignore[attr-defined]
    return hook
