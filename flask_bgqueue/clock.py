"""The one clock: naive UTC datetimes, the form every time column holds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def utcnow() -> datetime:
    """Now in UTC as a naive datetime: the form every time column holds."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


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
