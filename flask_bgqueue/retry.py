"""When a failed or waiting job runs again: pure functions, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

#: The longest pause between two attempts of a temporarily failed job.
MAX_BACKOFF_MINUTES = 16


def utcnow() -> datetime:
    """Now in UTC as a naive datetime: the form every time column holds."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def backoff(attempt: int) -> timedelta:
    """Pause after failed attempt number ``attempt`` (1-based): 1, 2, 4, 8, 16, 16 ... min."""
    return timedelta(minutes=min(MAX_BACKOFF_MINUTES, 2 ** max(0, attempt - 1)))


def to_utc_naive(value: datetime | timedelta | None, now: datetime) -> datetime:
    """Resolve ``available_at`` to a naive UTC datetime.

    A naive datetime is taken to be UTC already; an aware one is converted; a
    ``timedelta`` counts from ``now``.
    """
    if value is None:
        return now
    if isinstance(value, timedelta):
        return now + value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    raise TypeError(f"available_at must be a datetime or a timedelta, not {type(value).__name__}")
