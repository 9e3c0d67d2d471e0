"""Outcomes per minute, kept as jobs end, for the throughput chart.

``<table>_throughput`` holds, per queue, minute and worker (``hostname``, ``pid``), how
many attempts finished and how many failed. Each worker adds its own outcomes to its own
rows, once a second at most, so workers never wait for one another; the chart
then reads a few hundred small rows instead of every job ended in its window (430,000
index entries for a queue finishing 40 jobs a second, at 1,000,000 jobs).

The last day's outcomes are filled in from the jobs as they are now: the FINISHED jobs
by ``finished_at`` and the failed ones by ``last_attempt_at``, on the row of
``hostname`` ``""`` and ``pid`` 0.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
FINISHED, FAILED = 3, (4, 5)  # JobState.FINISHED, TEMPORARILY_ and PERMANENTLY_FAILED
FILLED = timedelta(days=1)


def upgrade() -> None:
    table = op.get_context().opts["bgqueue_table"]
    throughput = op.create_table(
        f"{table}_throughput",
        sa.Column("minute", Timestamp, primary_key=True),
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("hostname", sa.String(255), primary_key=True),
        sa.Column("pid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("finished", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
        mysql_charset="utf8mb4",
    )
    assert throughput is not None
    jobs = sa.table(
        table,
        sa.column("queue"),
        sa.column("state"),
        sa.column("finished_at", Timestamp),
        sa.column("last_attempt_at", Timestamp),
    )
    since = datetime.now(timezone.utc).replace(tzinfo=None) - FILLED
    counts: dict[tuple[str, datetime], dict[str, int]] = {}
    conn = op.get_bind()
    for kind, column, states in (
        ("finished", jobs.c.finished_at, (FINISHED,)),
        ("failed", jobs.c.last_attempt_at, FAILED),
    ):
        minute = _minute(conn.dialect.name, column)
        rows = conn.execute(
            sa.select(jobs.c.queue, minute, sa.func.count())
            .where(jobs.c.state.in_(states), column >= since)
            .group_by(jobs.c.queue, minute)
        )
        for queue, at, n in rows:
            slot = counts.setdefault((queue, _minute_of(at)), {"finished": 0, "failed": 0})
            slot[kind] += int(n)
    if counts:
        op.bulk_insert(
            throughput,
            [
                {"queue": q, "minute": m, "hostname": "", "pid": 0, **c}
                for (q, m), c in counts.items()
            ],
        )


def _minute(dialect: str, column: sa.ColumnElement[datetime]) -> sa.ColumnElement[Any]:
    """The column cut to its minute, as each database does it best."""
    if dialect == "postgresql":
        return sa.func.date_trunc("minute", column)
    if dialect in ("mysql", "mariadb"):  # YYYYMMDDhhmm: a DATETIME in a numeric context
        return column.op("DIV", return_type=sa.BigInteger)(100)
    return sa.func.substr(column, 1, 16)  # SQLite's text: YYYY-MM-DD hh:mm


def _minute_of(value: object) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    n = int(value)  # type: ignore[call-overload]
    return datetime(n // 10**8, n // 10**6 % 100, n // 10**4 % 100, n // 100 % 100, n % 100)
