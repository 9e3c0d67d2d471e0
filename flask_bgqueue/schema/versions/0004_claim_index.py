"""Serve the claim's ORDER BY priority, id from an index of the runnable jobs only.

PostgreSQL and SQLite get a partial index; MySQL/MariaDB have no partial indexes and keep
using ``ix_<table>_due``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# READY, TEMPORARILY_FAILED, WAITING, BROKER_FAILED, frozen here as the claim spells them.
RUNNABLE = sa.text("state IN (1, 4, 6, 8)")


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    if op.get_bind().dialect.name in ("postgresql", "sqlite"):
        op.create_index(
            f"ix_{table}_claim",
            table,
            ["priority", "id"],
            postgresql_where=RUNNABLE,
            sqlite_where=RUNNABLE,
        )
