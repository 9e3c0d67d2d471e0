"""Periodic schedules, the original's RECURRING mode and coalescing.

The job table gets ``recurring`` and ``coalesce_threshold`` (remembered from ``publish()``),
and ``schedule`` and ``tick_at`` for the jobs a periodic schedule makes, with a unique index
on the two: the database itself refuses a second job for a tick. (NULLs never collide, so
every other job is free of it.) ``<table>_schedule`` keeps each schedule's last tick, its
pause switch and its last job.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    op.add_column(
        table, sa.Column("recurring", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column(table, sa.Column("coalesce_threshold", sa.Integer))
    op.add_column(table, sa.Column("schedule", sa.String(255)))
    op.add_column(table, sa.Column("tick_at", Timestamp))
    op.create_index(f"ux_{table}_schedule_tick", table, ["schedule", "tick_at"], unique=True)
    op.create_table(
        f"{table}_schedule",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("expression", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("last_tick_at", Timestamp),
        sa.Column("last_job_id", sa.BigInteger),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        mysql_charset="utf8mb4",
    )
