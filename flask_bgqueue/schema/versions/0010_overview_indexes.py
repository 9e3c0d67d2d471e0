"""Indexes from which the overview reads its counts, chart and workers without the rows.

``ix_<table>_state_counts`` (state, queue, callback_name, last_attempt_at) holds every
column the counts per state, queue and callback need, and the failed half of the
throughput chart (failed jobs by the start of their attempt); ``ix_<table>_finished_at``
gains ``state`` and ``queue`` (the finished half of the chart), and
``ix_<table>_last_attempt_at`` gains ``state``, ``queue``, ``hostname`` and ``pid`` (the
workers seen recently), so each of these reads is an index-only scan. The two widened
indexes keep their names and their leading column, so every query that used them still
does.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    op.create_index(
        f"ix_{table}_state_counts", table, ["state", "queue", "callback_name", "last_attempt_at"]
    )
    op.drop_index(f"ix_{table}_finished_at", table_name=table)
    op.create_index(f"ix_{table}_finished_at", table, ["finished_at", "state", "queue"])
    op.drop_index(f"ix_{table}_last_attempt_at", table_name=table)
    op.create_index(
        f"ix_{table}_last_attempt_at",
        table,
        ["last_attempt_at", "state", "queue", "hostname", "pid"],
    )
