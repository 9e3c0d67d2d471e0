"""Flask-BgQueue: background jobs for Flask, stored in SQL on their own bind."""

from __future__ import annotations

from .exceptions import (
    BgQueueError,
    ConfigurationError,
    DieException,
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

__version__ = "0.1.0"

__all__ = [
    "BackgroundQueue",
    "BgQueueError",
    "ConfigurationError",
    "DieException",
    "Job",
    "JobState",
    "ParametersError",
    "PermanentError",
    "PublishError",
    "SchemaError",
    "SignatureError",
    "SkipException",
    "TemporaryError",
    "UnknownCallbackError",
    "WaitingException",
]
