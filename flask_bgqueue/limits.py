"""How many jobs of a callback may run at once, and how many may start per time window.

``@bgq.callback(concurrency=2, rate="10/s")``: the claim enforces both, across every
process and host, under a database lock per callback (and per ``concurrency_key`` when a
job has one), counting the jobs ``PROCESSING`` and the attempts started in the window. A
job over a limit is not failed: it waits (``WAITING``, its attempt not counted) and is
tried again, like a job of a busy serial group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: How the claim words the ``error_message`` of a job it holds back (see store/limits.py).
LIMITED = re.compile(r"^(rate limited|at its concurrency limit): ")
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts in any ``seconds``-long window."""

    count: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.count} per {self.seconds:g} s"


def parse_rate(text: str) -> Rate:
    """``"10/s"``, ``"100/m"``, ``"1000/h"``, ``"5/10s"`` → :class:`Rate`; a
    :exc:`ValueError` that shows the form otherwise."""
    match = _RATE.match(text.lower()) if isinstance(text, str) else None
    unit = None
    if match is not None:
        word = match.group(3)
        unit = _UNITS.get(word) or _UNITS.get(word.rstrip("s"))  # "seconds", "minutes"
    if match is None or unit is None or int(match.group(1)) < 1:
        raise ValueError(
            f"rate {text!r} is not of the form N/s, N/m, N/h or N/10s (at least 1 start)."
        )
    return Rate(int(match.group(1)), unit * int(match.group(2) or 1))


@dataclass(frozen=True)
class Limits:
    """A callback's limits; ``None`` where it has none."""

    concurrency: int | None = None
    rate: Rate | None = None
