"""When a failed or waiting job runs again: pure functions, no I/O."""

from __future__ import annotations

from datetime import timedelta

#: The longest pause between two attempts of a temporarily failed job.
MAX_BACKOFF_MINUTES = 16


def backoff(attempt: int) -> timedelta:
    """Pause after failed attempt number ``attempt`` (1-based): 1, 2, 4, 8, 16, 16 ... min."""
    return timedelta(minutes=min(MAX_BACKOFF_MINUTES, 2 ** max(0, attempt - 1)))
