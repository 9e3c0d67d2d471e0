"""Small helpers shared by the tests."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flask_bgqueue import BackgroundQueue
from flask_bgqueue.clock import utcnow


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler (its ``SigCgt`` mask in /proc): a
    consumer that is still starting up would die of the signal instead of stopping."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def terminate(proc: Any, timeout: float = 60) -> None:
    """SIGTERM to ``proc`` once it catches the signal (or has ended, or ``timeout``
    seconds passed): a worker asked to stop while it still starts up stops cleanly."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not catches_sigterm(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)


def stop(proc: Any, timeout: float = 60) -> tuple[str, str]:
    """SIGTERM ``proc`` once it is up (:func:`terminate`); its output once it exits."""
    terminate(proc)
    out, err = proc.communicate(timeout=timeout)
    return out, err


def stop_consumers(consumers: Sequence[Any]) -> None:
    """SIGTERM to every consumer process once it is up, then each must exit 0 within a
    minute."""
    for c in consumers:
        terminate(c)
    for c in consumers:
        _out, err = c.communicate(timeout=60)
        assert c.returncode == 0, err


def make_due(bgq: BackgroundQueue, *job_ids: int) -> None:
    """Move jobs' ``available_at`` into the past, as if their time had come."""
    store = bgq._state().store
    t = store.table
    stmt = t.update().values(available_at=utcnow() - timedelta(seconds=1))
    if job_ids:
        stmt = stmt.where(t.c.id.in_(job_ids))
    with store.engine.begin() as conn:
        conn.execute(stmt)


def set_columns(bgq: BackgroundQueue, job_id: int, **values: Any) -> None:
    store = bgq._state().store
    with store.engine.begin() as conn:
        conn.execute(store.table.update().where(store.table.c.id == job_id).values(**values))


def all_jobs(bgq: BackgroundQueue) -> list[Any]:
    store = bgq._state().store
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(store.table).order_by(store.table.c.id)))


#: A serial group's steps (name, priority); they run as "abdegcf" (by priority, then order).
CANONICAL = [("a", 1), ("b", 1), ("c", 2), ("d", 1), ("e", 1), ("f", 2), ("g", 1)]


def publish_serial_groups(bgq: BackgroundQueue, groups: Sequence[str], pause: float) -> None:
    """Every :data:`CANONICAL` step of every group, interleaved, as ``record`` jobs
    (``tests/procapp.py``: each run writes group, name, start, end and pid)."""
    for (name, priority), group in itertools.product(CANONICAL, groups):
        bgq.publish(
            "record",
            {"group": group, "name": name, "pause": pause},
            serial_group=group,
            priority=priority,
        )


def assert_groups_in_order_without_overlap(
    records: Sequence[Sequence[str]], groups: Sequence[str]
) -> None:
    """Each group ran its steps in canonical order, never two at once."""
    by_group: dict[str, list[tuple[str, float, float]]] = {}
    for group, name, start, end, _pid in records:
        by_group.setdefault(group, []).append((name, float(start), float(end)))
    for group in groups:
        runs = sorted(by_group[group], key=lambda r: r[1])
        assert [r[0] for r in runs] == list("abdegcf"), group
        for (_, _, ended), (_, began, _) in itertools.pairwise(runs):
            assert ended <= began, f"two jobs of {group} overlapped"


def kind(db_url: str) -> str:
    """``postgresql`` or ``mysql``: the key of a test's per-server SQL."""
    return "postgresql" if db_url.startswith("postgresql") else "mysql"


def execute(db_url: str, statements: list[str], table: str, **names: object) -> None:
    """Run ``statements`` in one transaction, ``{t}`` being the test's table (and any
    other ``{name}`` from ``names``)."""
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        for sql in statements:
            conn.exec_driver_sql(sql.format(t=table, **names))
    engine.dispose()
