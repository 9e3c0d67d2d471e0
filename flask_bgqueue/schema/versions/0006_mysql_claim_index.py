"""MySQL/MariaDB: an index of the runnable jobs in claim order, through a virtual column.

They have no partial indexes (migration 0004 gave PostgreSQL and SQLite one), so the claim
read every due job through ``ix_<table>_due`` and sorted them; its ``FOR UPDATE`` then
locked every row it read, and a second worker's claim found them all locked. The virtual
column ``bgq_claim_priority`` holds the priority of a runnable job and NULL otherwise; its
index ``(bgq_claim_priority, id)`` gives the claim its jobs in order, so it reads and
locks only those it takes. The column is computed, never written.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# READY, TEMPORARILY_FAILED, WAITING, BROKER_FAILED, frozen here as the claim spells them.
RUNNABLE = "1, 4, 6, 8"


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    op.execute(
        f"ALTER TABLE `{table}`"
        f" ADD COLUMN bgq_claim_priority INTEGER GENERATED ALWAYS AS"
        f" (CASE WHEN state IN ({RUNNABLE}) THEN priority END) VIRTUAL,"
        f" ADD INDEX `ix_{table}_claim` (bgq_claim_priority, id)"
    )
