"""PostgreSQL: announce new jobs to LISTENing consumers from a trigger.

Each INSERT statement into the job table sends ``NOTIFY bgq_<table>`` when its transaction
commits, without a round trip of its own for the publisher. Other databases: nothing.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION "{table}_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('bgq_{table}', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        f'CREATE TRIGGER "{table}_notify" AFTER INSERT ON "{table}"'
        f' FOR EACH STATEMENT EXECUTE FUNCTION "{table}_notify"()'
    )
