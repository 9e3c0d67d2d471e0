"""Keep each attempt's traceback and the running worker's heartbeat.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    op.add_column(table, sa.Column("traceback", LongText))
    op.add_column(table, sa.Column("heartbeat_at", Timestamp))
