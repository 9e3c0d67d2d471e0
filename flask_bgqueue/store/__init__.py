"""The only package that speaks SQL.

Every state change is one conditional UPDATE that names the state it expects
(:meth:`~.base.StoreBase._transition`), so a job is claimed by one worker only and a late
worker can never overwrite a newer state. Each module has one job: :mod:`.inserts`
publishes, :mod:`.claims` claims (:mod:`.plain_claims`: plain jobs in one statement;
:mod:`.limits`: concurrency and rate limits), :mod:`.outcomes` saves attempts,
:mod:`.control` cancels and records progress, :mod:`.recovery` takes back what was lost,
:mod:`.queries` reads for people (:mod:`.counts`: the overview's counts), :mod:`.activity`
for monitoring, :mod:`.schedules` turns periodic ticks into jobs. Whatever differs between
databases sits in :mod:`.dialects`; the raw-DBAPI fast path in :mod:`.driver`; waiting for
new jobs, and what a pooler in transaction mode changes, in :mod:`.pooling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from .activity import Activity
from .base import Claim
from .claims import Claims
from .control import Control
from .counts import Counts, StateCounts
from .dialects import engine_options
from .inserts import Inserts
from .outcomes import Outcomes
from .plain_claims import PlainClaims
from .pooling import Listener
from .queries import Queries
from .recovery import Recovery
from .schedules import ScheduleRow, Schedules
from .throughput import Throughput

__all__ = ["Claim", "Listener", "ScheduleRow", "StateCounts", "Store", "open_store"]


class Store(
    Inserts,
    Claims,
    PlainClaims,
    Outcomes,
    Control,
    Recovery,
    Queries,
    Counts,
    Activity,
    Schedules,
    Throughput,
):
    """SQL for one application's job table, on the queue's own engine."""

    def listener(self, interval: float) -> Listener:
        """Something to wait on for new jobs (``with store.listener(s) as l: l.wait(stop)``).

        PostgreSQL: ``LISTEN`` on the channel the insert trigger NOTIFYs (migration 0005),
        on a connection of its own (to ``BGQUEUE_LISTEN_DATABASE_URI`` when set), for at
        most ``interval`` seconds a wait. Elsewhere, and behind a pooler in transaction mode
        without that URL: a plain wait of ``interval`` seconds.
        """
        return self.dialect.listener(
            self.channel, interval, self.listen_engine, self.transaction_pooling
        )

    @property
    def wakeup(self) -> str:
        """How a broker-less consumer learns of new jobs, in words."""
        return self.dialect.wakeup_mode(self.listen_engine, self.transaction_pooling)


def open_store(url: str, table_name: str, queue: str, options: Mapping[str, Any]) -> Store:
    """A store on an engine of its own for ``url`` (the watchdog process opens one only
    when it must write)."""
    parsed = sa.make_url(url)
    return Store(sa.create_engine(parsed, **engine_options(parsed, options)), table_name, queue)
