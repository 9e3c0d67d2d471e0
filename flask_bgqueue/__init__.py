"""Flask-BgQueue: background jobs for Flask, stored in SQL on their own bind."""

from __future__ import annotations

from . import signals as signals
from .context import CurrentJob, current_job
from .exceptions import (
    ArgumentsError,
    BgQueueError,
    ConfigurationError,
    ConfigurationWarning,
    DieException,
    JobOutcome,
    JobTimeout,
    ParametersError,
    PermanentError,
    PublishError,
    SchemaError,
    SignatureError,
    SkipException,
    TemporaryError,
    UnknownCallbackError,
    WaitingException,
)
from .extension import BackgroundQueue
from .models import Job, JobState
from .processor import SweepResult

__version__ = "0.1.0"

__all__ = [
    "ArgumentsError",
    "BackgroundQueue",
    "BgQueueError",
    "ConfigurationError",
    "ConfigurationWarning",
    "CurrentJob",
    "DieException",
    "Job",
    "JobOutcome",
    "JobState",
    "JobTimeout",
    "ParametersError",
    "PermanentError",
    "PublishError",
    "SchemaError",
    "SignatureError",
    "SkipException",
    "SweepResult",
    "TemporaryError",
    "UnknownCallbackError",
    "WaitingException",
    "current_job",
]
