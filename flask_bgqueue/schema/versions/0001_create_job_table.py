"""Create the job table.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Types are spelled out here, not imported from models.py: a migration is frozen in time.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    op.create_table(
        table,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("callback_name", sa.String(255), nullable=False),
        sa.Column("parameters", Blob),
        sa.Column("parameters_json", LongText),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("available_at", Timestamp, nullable=False),
        sa.Column("last_attempt_at", Timestamp),
        sa.Column("finished_at", Timestamp),
        sa.Column("number_of_attempts", sa.Integer, nullable=False),
        sa.Column("error_message", LongText),
        sa.Column("serial_group", sa.String(255)),
        sa.Column("identifier", sa.String(255)),
        sa.Column("is_unique", sa.Boolean, nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("hostname", sa.String(255)),
        sa.Column("memory", sa.JSON),
        sa.Column("metadata", sa.JSON),
        sa.Column("execution_time", sa.Integer),
        mysql_charset="utf8mb4",
    )
    op.create_index(f"ix_{table}_due", table, ["state", "available_at", "queue", "priority"])
    op.create_index(f"ix_{table}_identifier", table, ["identifier", "id"])
    op.create_index(f"ix_{table}_serial_group", table, ["serial_group", "priority", "id"])
    op.create_index(f"ix_{table}_finished_at", table, ["finished_at"])
