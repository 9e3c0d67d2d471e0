"""Control over work in flight: cancellation, results, progress and concurrency keys.

``cancel_requested_at`` and ``cancelled_by`` record who asked a job to stop and when (a job
not yet running becomes ``CANCELLED``, state 9, at once; a running one is asked to stop);
``result`` keeps a callback's return value as JSON text, ``progress`` and
``progress_message`` what :meth:`set_progress` last said, and ``concurrency_key`` the key
``publish(concurrency_key=...)`` counts concurrency and rate limits per.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    op.add_column(table, sa.Column("result", LongText))
    op.add_column(table, sa.Column("progress", sa.Float))
    op.add_column(table, sa.Column("progress_message", sa.String(255)))
    op.add_column(table, sa.Column("cancel_requested_at", Timestamp))
    op.add_column(table, sa.Column("cancelled_by", sa.String(255)))
    op.add_column(table, sa.Column("concurrency_key", sa.String(255)))
