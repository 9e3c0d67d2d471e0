"""Keep the publisher's trace context (W3C ``traceparent``/``tracestate``) with each job.

The column holds the propagation headers OpenTelemetry wrote at publish time, as JSON
text (``{"traceparent": "00-…", "tracestate": "…"}``), or NULL when no trace was active.
A worker reads it to start the job's span inside the publisher's trace.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    op.add_column(table, sa.Column("trace_context", LongText))
