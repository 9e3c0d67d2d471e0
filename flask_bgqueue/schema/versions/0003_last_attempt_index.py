"""Index the time of each job's last attempt: the dashboard's workers, throughput and health.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    op.create_index(f"ix_{table}_last_attempt_at", table, ["last_attempt_at"])
