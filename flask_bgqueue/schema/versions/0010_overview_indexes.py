"""Indexes from which the overview reads its counts, chart and workers without the rows.

Each index gains columns that change only when the index changes anyway, so publishing
and every state change write no more index entries than before (only wider ones):

- ``ix_<table>_due`` (state, available_at, queue, priority) gains ``callback_name``,
  ``last_attempt_at`` and ``finished_at``: the counts per state, queue and callback, the
  failed half of the throughput chart, and the jobs finished in another state than
  FINISHED (a claim or an outcome sets those times with the state);
- ``ix_<table>_finished_at`` gains ``queue`` (the finished half of the chart);
- ``ix_<table>_last_attempt_at`` gains ``queue``, ``hostname`` and ``pid`` (the workers
  seen recently; a claim sets them with the time).

Each of those reads is then an index-only scan. The indexes keep their names and their
leading columns, so every query that used them still does.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WIDER = {
    "due": [
        "state",
        "available_at",
        "queue",
        "priority",
        "callback_name",
        "last_attempt_at",
        "finished_at",
    ],
    "finished_at": ["finished_at", "queue"],
    "last_attempt_at": ["last_attempt_at", "queue", "hostname", "pid"],
}


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    for name, columns in WIDER.items():
        op.drop_index(f"ix_{table}_{name}", table_name=table)
        op.create_index(f"ix_{table}_{name}", table, columns)
