"""The job table, the job states and the read-only :class:`Job` snapshot."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql


class JobState(enum.IntEnum):
    """States of a job; the numbers are what the ``state`` column stores and never change."""

    BACK_TO_BROKER = -1
    READY = 1
    PROCESSING = 2
    FINISHED = 3
    TEMPORARILY_FAILED = 4
    PERMANENTLY_FAILED = 5
    WAITING = 6
    REDUNDANT = 7
    BROKER_FAILED = 8
    CANCELLED = 9

    @classmethod
    def _missing_(cls, value: object) -> JobState | None:
        """A number no member has (a newer version's row, an operator's edit): a stand-in
        named "unknown state N", so such a row can be read and shown, and is left alone
        (no claim, retry or cleanup picks a state it does not list)."""
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"unknown state {value}"
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        """Whether this version of Flask-BgQueue knows the state."""
        return self._name_ in type(self).__members__

    @property
    def label(self) -> str:
        """The state in a filter or a CSS class: ``ready``, or the number when unknown."""
        return self._name_.lower() if self.known else str(self._value_)


# Every set of states the package reasons with is defined here, once.

#: States a job never leaves by itself; everything else is "unfinished". A ``CANCELLED``
#: job never runs (again): no claim, retry or resend takes it; ``clear-finished`` removes
#: it with the finished ones.
DONE_STATES = (JobState.FINISHED, JobState.REDUNDANT, JobState.CANCELLED)
#: States from which a worker may claim a due job.
RUNNABLE_STATES = (
    JobState.READY,
    JobState.TEMPORARILY_FAILED,
    JobState.WAITING,
    JobState.BROKER_FAILED,
)
#: States of a job that still has to run before the next one of its serial group.
PENDING_STATES = (*RUNNABLE_STATES, JobState.BACK_TO_BROKER)
#: States from which a consumer may claim a job whose id the broker delivered.
DELIVERABLE_STATES = PENDING_STATES
#: Outcomes after which a job runs again by itself, later (broker mode sends its id again).
AGAIN_STATES = (JobState.TEMPORARILY_FAILED, JobState.WAITING)
#: The failed states ("failed" in filters, ``retry --failed``).
FAILED_STATES = (JobState.TEMPORARILY_FAILED, JobState.PERMANENTLY_FAILED)
#: Outcomes that end an attempt for good or for now (not a wait, not a duplicate).
ENDED_STATES = (JobState.FINISHED, *FAILED_STATES, JobState.CANCELLED)
#: States from which an operator may send a job to run now.
RETRYABLE_STATES = (*FAILED_STATES, JobState.WAITING, JobState.BROKER_FAILED)
#: States in which an operator may delete a job (never PROCESSING).
DISCARDABLE_STATES = (*DONE_STATES, JobState.PERMANENTLY_FAILED, JobState.TEMPORARILY_FAILED)
#: States of a job not running that ``cancel()`` ends ``CANCELLED`` at once (a
#: ``PROCESSING`` one is asked to stop instead).
CANCELLABLE_STATES = PENDING_STATES
#: States whose ids broker mode sends again once due (``READY`` ones only when lost).
RESEND_STATES = (JobState.BACK_TO_BROKER, JobState.TEMPORARILY_FAILED, JobState.WAITING)

#: How ``error_message`` begins when an attempt ended without an outcome: its worker was
#: lost (killed, host gone) or interrupted by a forced shutdown. The job runs again.
#: (After "gave up after N attempts: " when that was the last one allowed.)
LOST_ATTEMPT = re.compile(r"(gave up after \d+ attempts: )?(worker lost|interrupted):")


def attempt_was_lost(error_message: str | None) -> bool:
    """Whether a job's last attempt ended without an outcome (see ``current_job()``)."""
    return error_message is not None and LOST_ATTEMPT.match(error_message) is not None


# Portable column types: microsecond times and large payloads on MySQL/MariaDB, and an
# INTEGER primary key on SQLite (only that type autoincrements there).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def job_table(name: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """The job table as the newest migration leaves it (see ``schema/versions``)."""
    state = sa.Column("state", sa.SmallInteger, nullable=False)
    runnable = state.in_(RUNNABLE_STATES)  # rendered "state IN (1, 4, 6, 8)", as in 0004
    return sa.Table(
        name,
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("callback_name", sa.String(255), nullable=False),
        sa.Column("parameters", Blob),
        sa.Column("parameters_json", LongText),
        state,
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("available_at", Timestamp, nullable=False),
        sa.Column("last_attempt_at", Timestamp),
        sa.Column("finished_at", Timestamp),
        sa.Column("number_of_attempts", sa.Integer, nullable=False, default=0),
        sa.Column("error_message", LongText),
        sa.Column("serial_group", sa.String(255)),
        sa.Column("identifier", sa.String(255)),
        sa.Column("is_unique", sa.Boolean, nullable=False, default=False),
        sa.Column("pid", sa.Integer),
        sa.Column("hostname", sa.String(255)),
        sa.Column("memory", sa.JSON),
        sa.Column("metadata", sa.JSON),
        sa.Column("execution_time", sa.Integer),
        sa.Column("traceback", LongText),
        sa.Column("heartbeat_at", Timestamp),
        sa.Column("trace_context", LongText),
        # migration 0008: the original's RECURRING mode and coalescing, and periodic ticks
        sa.Column(
            "recurring", sa.Boolean, nullable=False, default=False, server_default=sa.false()
        ),
        sa.Column("coalesce_threshold", sa.Integer),
        sa.Column("schedule", sa.String(255)),
        sa.Column("tick_at", Timestamp),
        # migration 0009: cancellation, results, progress, concurrency keys
        sa.Column("result", LongText),
        sa.Column("progress", sa.Float),
        sa.Column("progress_message", sa.String(255)),
        sa.Column("cancel_requested_at", Timestamp),
        sa.Column("cancelled_by", sa.String(255)),
        sa.Column("concurrency_key", sa.String(255)),
        # migration 0010: wider indexes, from which the overview reads without the rows
        sa.Index(
            f"ix_{name}_due",
            "state",
            "available_at",
            "queue",
            "priority",
            "callback_name",
            "last_attempt_at",
            "finished_at",
        ),
        sa.Index(f"ix_{name}_identifier", "identifier", "id"),
        sa.Index(f"ix_{name}_serial_group", "serial_group", "priority", "id"),
        sa.Index(f"ix_{name}_finished_at", "finished_at", "queue"),
        sa.Index(f"ix_{name}_last_attempt_at", "last_attempt_at", "queue", "hostname", "pid"),
        # One job per tick of a schedule, enforced by the database (NULLs never collide).
        sa.Index(f"ux_{name}_schedule_tick", "schedule", "tick_at", unique=True),
        # PostgreSQL and SQLite only (see migration 0004): the runnable jobs in claim order.
        sa.Index(
            f"ix_{name}_claim",
            "priority",
            "id",
            postgresql_where=runnable,
            sqlite_where=runnable,
        ),
    )


def schedule_table_name(job_table_name: str) -> str:
    """The name of the table that keeps the periodic schedules of a job table."""
    return f"{job_table_name}_schedule"


def schedule_table(job_table_name: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """``<table>_schedule``: one row per periodic schedule ever seen (migration 0008).

    ``last_tick_at`` is the newest tick (naive UTC) turned into a job or passed over; a
    worker moves it forward only from the value it read, in the transaction that inserts
    the tick's job, so two workers never both take a tick.
    """
    return sa.Table(
        schedule_table_name(job_table_name),
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("expression", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
        sa.Column("last_tick_at", Timestamp),
        sa.Column("last_job_id", sa.BigInteger),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )


def throughput_table_name(job_table_name: str) -> str:
    """The name of the table that keeps a job table's outcomes per minute."""
    return f"{job_table_name}_throughput"


def throughput_table(job_table_name: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """``<table>_throughput``: how many attempts finished and failed, per queue, minute
    and worker (migration 0011); the throughput chart reads it instead of the jobs.

    Each worker adds its own outcomes to its own rows (``hostname``, ``pid``), so workers
    never wait for each other's row; a reaped or interrupted attempt is added to the row
    of ``hostname`` ``""`` and ``pid`` 0. ``minute`` is naive UTC, its seconds zero; the
    primary key starts with it, so the chart's window and the deletion of old minutes
    are each a range of it.
    """
    return sa.Table(
        throughput_table_name(job_table_name),
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("minute", Timestamp, primary_key=True),
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("hostname", sa.String(255), primary_key=True),
        sa.Column("pid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("finished", sa.BigInteger, nullable=False, default=0),
        sa.Column("failed", sa.BigInteger, nullable=False, default=0),
    )


def owned_table_names(job_table_name: str) -> tuple[str, ...]:
    """The tables the migrations make beside the job table, and the job table (not the
    version table: see :func:`flask_bgqueue.schema.version_table`)."""
    return (
        job_table_name,
        schedule_table_name(job_table_name),
        throughput_table_name(job_table_name),
    )


@dataclass(frozen=True)
class Job:
    """A read-only snapshot of one row; attributes are the column names.

    ``parameters`` is the stored pickle (or ``None``) and ``parameters_json`` the stored
    JSON text; :meth:`BackgroundQueue.load_parameters` decodes them.
    """

    id: int
    queue: str
    priority: int
    callback_name: str
    parameters: bytes | None
    parameters_json: str | None
    state: JobState
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    last_attempt_at: datetime | None
    finished_at: datetime | None
    number_of_attempts: int
    error_message: str | None
    serial_group: str | None
    identifier: str | None
    is_unique: bool
    pid: int | None
    hostname: str | None
    memory: dict[str, Any] | None
    metadata: dict[str, Any] | None
    execution_time: int | None
    traceback: str | None
    heartbeat_at: datetime | None
    #: The publisher's trace propagation headers as JSON text (see :mod:`.tracing`).
    trace_context: str | None = None
    recurring: bool = False
    coalesce_threshold: int | None = None
    schedule: str | None = None
    tick_at: datetime | None = None
    #: The callback's return value (decoded from the stored JSON), or ``None``.
    result: Any = None
    #: What the callback last told :meth:`~BackgroundQueue.set_progress` (0.0 to 1.0).
    progress: float | None = None
    progress_message: str | None = None
    #: When and by whom :meth:`~BackgroundQueue.cancel` was asked for this job.
    cancel_requested_at: datetime | None = None
    cancelled_by: str | None = None
    concurrency_key: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Any) -> Job:
        """From a mapping of column names to values (a row's ``_mapping``, or a dict)."""
        values = {name: m[name] for name in _JOB_FIELDS}
        values["state"] = JobState(values["state"])
        values["is_unique"] = bool(values["is_unique"])
        values["recurring"] = bool(values["recurring"])
        if values["parameters"] is not None:
            values["parameters"] = bytes(values["parameters"])
        if values["result"] is not None:
            values["result"] = json.loads(values["result"])
        job = object.__new__(cls)  # every field is here: the generated __init__ adds nothing
        job.__dict__.update(values)
        return job

    def evolve(self, **changes: Any) -> Job:
        """A copy with ``changes``: :func:`dataclasses.replace` without its per-call
        introspection (each claimed job goes through here)."""
        unknown = changes.keys() - _JOB_FIELD_SET
        if unknown:
            raise TypeError(f"Job has no field {', '.join(sorted(unknown))}")
        job = object.__new__(Job)
        job.__dict__.update(self.__dict__, **changes)
        return job


_JOB_FIELDS = tuple(f.name for f in fields(Job))
_JOB_FIELD_SET = frozenset(_JOB_FIELDS)


def job_fields(job: Job, state: JobState | None = None) -> dict[str, Any]:
    """The ``extra`` of a log record about a job: attributes a JSON formatter can pick up
    (``record.job_id`` ...); ``state`` is the one the job has now, when it is known."""
    fields = {
        "job_id": job.id,
        "callback": job.callback_name,
        "queue": job.queue,
        "attempt": job.number_of_attempts,
    }
    if state is not None:
        fields["state"] = state.name
    return fields
