"""Which jobs a person asks for: the filter shared by the dashboard and ``flask bgq list``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models import FAILED_STATES, JobState

#: The largest job id: the ``id`` column is a signed 64-bit integer.
MAX_JOB_ID = 2**63 - 1
#: The longest text a filter field takes (a LIKE pattern of 50,000 bytes fails on SQLite).
MAX_FILTER_TEXT = 1000


def check_job_id(value: int, label: str = "job id") -> int:
    """``value`` if it can be a job id; else a :exc:`ValueError` that says the range."""
    if not 1 <= value <= MAX_JOB_ID:
        raise ValueError(f"{label} {value} is out of range: job ids go from 1 to {MAX_JOB_ID}.")
    return value


def parse_states(values: list[str] | tuple[str, ...]) -> tuple[JobState, ...]:
    """``["failed", "ready", "3"]`` → states; names are case-insensitive, numbers work too.

    Raises :exc:`ValueError` naming the value that is not a state.
    """
    states: list[JobState] = []
    for raw in values:
        for part in str(raw).split(","):
            word = part.strip().upper().replace("-", "_")
            if not word:
                continue
            if word == "FAILED":
                states.extend(FAILED_STATES)
            elif word in JobState.__members__:
                states.append(JobState[word])
            elif word.lstrip("-").isdigit() and -32768 <= int(word) <= 32767:
                states.append(JobState(int(word)))  # a number: known or not (a newer version's)
            else:
                names = ", ".join(s.name.lower() for s in JobState)
                raise ValueError(f"{part.strip()!r} is not a state; use one of {names} or failed")
    return tuple(dict.fromkeys(states))


@dataclass(frozen=True)
class JobFilter:
    """A conjunction of conditions; ``None`` or empty means "any"."""

    states: tuple[JobState, ...] = ()
    callback_name: str | None = None
    queue: str | None = None
    serial_group: str | None = None
    identifier: str | None = None
    text: str | None = None  # a substring of the error message or the JSON parameters

    def __post_init__(self) -> None:
        """Refuse what no job can match and what a database cannot search: a NUL byte
        (PostgreSQL refuses it, SQLite's LIKE stops at it and then matches every job) and
        texts over :data:`MAX_FILTER_TEXT` characters."""
        for label, value in (
            ("callback", self.callback_name),
            ("queue", self.queue),
            ("serial group", self.serial_group),
            ("identifier", self.identifier),
            ("text", self.text),
        ):
            if value is None:
                continue
            if "\x00" in value:
                raise ValueError(f"the {label} filter holds a NUL character; no job has one.")
            if len(value) > MAX_FILTER_TEXT:
                raise ValueError(
                    f"the {label} filter is {len(value)} characters long; at most"
                    f" {MAX_FILTER_TEXT} are searched."
                )

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the store's inspection queries take."""
        return {
            "states": self.states,
            "callback_name": self.callback_name,
            "queue": self.queue,
            "serial_group": self.serial_group,
            "identifier": self.identifier,
            "text": self.text,
        }

    @property
    def is_empty(self) -> bool:
        return not any(self.as_kwargs().values())
