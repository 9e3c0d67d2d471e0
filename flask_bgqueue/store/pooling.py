"""Waiting for new jobs, and what a connection pooler in transaction mode changes.

Behind PgBouncer in transaction mode each transaction may run on another server
connection: nothing may rely on session state. Two things did: psycopg's automatic
server-side prepared statements (:func:`prepare_pooling` turns them off), and ``LISTEN``
(a consumer listens on a direct connection, or polls; :func:`listen` checks that a
connection really hears notifications before it relies on them).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

import sqlalchemy as sa

#: How long a new PostgreSQL listener waits for its own test notification before deciding
#: that its ``LISTEN`` connection cannot hear any (a pooler in transaction mode), in seconds.
#: A direct connection hears it within milliseconds.
LISTEN_PROBE_SECONDS = 5

_log = logging.getLogger("flask_bgqueue")


class Listener:
    """Wait for new jobs: a plain timed wait (no database can say when jobs arrive)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def wait(self, stop: threading.Event) -> None:
        """Return after ``interval`` seconds, or as soon as ``stop`` is set."""
        stop.wait(self.interval)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def listen(engine: sa.Engine, notifier: sa.Engine, channel: str, interval: float) -> Listener:
    """``LISTEN`` on ``channel`` on a connection of ``engine``, once that connection heard
    a test notification sent on ``notifier``; else, with a warning, a plain timed wait."""
    listener = _PostgreSQLListener(engine, channel, interval)
    try:
        heard = listener.probe(notifier, LISTEN_PROBE_SECONDS)
    except BaseException:
        listener.close()
        raise
    if heard:
        return listener
    listener.close()
    _log.warning(
        "bgqueue: LISTEN on %s does not hear notifications (its own test notification did"
        " not arrive in %d s): the connection goes through a pooler in transaction mode"
        " (PgBouncer?). Polling every BGQUEUE_POLL_INTERVAL_MS instead; set"
        " BGQUEUE_LISTEN_DATABASE_URI to a direct PostgreSQL URL for LISTEN, and"
        " BGQUEUE_TRANSACTION_POOLING = True.",
        engine.url.render_as_string(hide_password=True),
        LISTEN_PROBE_SECONDS,
    )
    return Listener(interval)


class _PostgreSQLListener(Listener):
    """``LISTEN`` on a connection of its own, thrown away afterwards."""

    def __init__(self, engine: sa.Engine, channel: str, interval: float) -> None:
        super().__init__(interval)
        self.channel = channel
        self.raw: Any = engine.raw_connection()
        conn: Any = self.raw.driver_connection
        conn.autocommit = True
        self.listening = False

    def probe(self, notifier: sa.Engine, seconds: float) -> bool:
        """Whether this connection hears a notification sent on ``notifier``; if it does,
        ``LISTEN`` on the jobs' channel. The test channel is this listener's own, so no
        other consumer wakes up for it."""
        conn: Any = self.raw.driver_connection
        probe = f"bgq_probe_{secrets.token_hex(8)}"
        conn.execute(f'LISTEN "{probe}"')
        with notifier.connect() as sender:
            sender.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": probe})
            sender.commit()
        heard = any(n.channel == probe for n in conn.notifies(timeout=seconds, stop_after=1))
        conn.execute(f'UNLISTEN "{probe}"')
        if heard:
            conn.execute(f'LISTEN "{self.channel}"')
            self.listening = True
        return heard

    def wait(self, stop: threading.Event) -> None:
        deadline = time.monotonic() + self.interval
        while not stop.is_set() and time.monotonic() < deadline:
            # Short slices so that a stop request is seen quickly.
            for _ in self.raw.driver_connection.notifies(
                timeout=min(0.25, self.interval), stop_after=1
            ):
                return

    def close(self) -> None:
        if self.raw is None:
            return
        raw, self.raw = self.raw, None
        try:
            if self.listening:
                raw.driver_connection.execute(f'UNLISTEN "{self.channel}"')
        finally:
            raw.invalidate()  # never hand a LISTENing connection back to the pool


def prepare_pooling(engine: sa.Engine, transaction_pooling: bool) -> None:
    """Settings for a PostgreSQL engine that may go through a pooler (PgBouncer).

    ``transaction_pooling``: psycopg 3 prepares a statement on the server once it ran five
    times on a connection (``prepare_threshold``), and uses it by name afterwards. Behind a
    pooler in transaction mode the next transaction may run on another server connection,
    which does not know that name ("prepared statement "_pg3_0" does not exist"; PgBouncer
    before 1.21, or without ``max_prepared_statements``). So the queue's connections never
    prepare: set on checkout, the engine may be a bind whose pool already holds
    connections. Either way, such an error is logged once with the setting that cures it.
    """
    if engine.dialect.name != "postgresql":
        return
    if transaction_pooling:
        sa.event.listen(engine, "checkout", _never_prepare)
    sa.event.listen(engine, "handle_error", _note_pooler_error)


def _never_prepare(dbapi_connection: Any, *_: Any) -> None:
    if hasattr(dbapi_connection, "prepare_threshold"):  # psycopg 3 (psycopg2 never prepares)
        dbapi_connection.prepare_threshold = None


_POOLER_CODES = ("26000", "42P05")  # prepared statement does not exist / already exists
_pooler_noted = False


def note_pooler_error(exc: BaseException) -> None:
    """Log, once per process, what cures a prepared statement lost behind a pooler."""
    global _pooler_noted
    if _pooler_noted or getattr(exc, "sqlstate", None) not in _POOLER_CODES:
        return
    if "_pg3_" not in str(exc):  # only psycopg's own automatic prepared statements
        return
    _pooler_noted = True
    _log.error(
        "bgqueue: PostgreSQL says %s: the queue's connections go through a pooler in"
        " transaction mode (PgBouncer before 1.21, or without max_prepared_statements), where"
        " the next transaction may run on another server connection. Set"
        " BGQUEUE_TRANSACTION_POOLING = True (no server-side prepared statements then).",
        str(exc).strip().splitlines()[0],
    )


def _note_pooler_error(context: Any) -> None:
    note_pooler_error(context.original_exception)
