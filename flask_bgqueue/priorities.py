"""Parsing of the ``-p`` option: ``10``, ``20-40``, ``25-``, ``-20``."""

from __future__ import annotations

from collections.abc import Sequence


def parse_priority_spec(spec: str, configured: Sequence[int]) -> tuple[int, ...]:
    """The configured priorities ``spec`` selects; ``ValueError`` saying why when none."""
    text = spec.strip()
    try:
        if "-" in text:
            low_text, high_text = text.split("-", 1)
            low = int(low_text) if low_text.strip() else 0
            high = int(high_text) if high_text.strip() else 999
        else:
            low = high = int(text)
    except ValueError:
        raise ValueError(f"{spec!r} is not a priority or a range (10, 20-40, 25-, -20)") from None
    if low > high:
        raise ValueError(f"{spec!r} is an empty range: {low} is above {high}")
    chosen = tuple(p for p in configured if low <= p <= high)
    if not chosen:
        what = f"priority {low}" if low == high else f"range {spec!r}"
        raise ValueError(f"{what} matches no configured priority")
    return chosen
