"""Exceptions: one root, a shallow tree.

Two families live here. Errors the library raises to a programmer (bad configuration,
a publish that cannot be stored) derive from :class:`BgQueueError`. Exceptions a callback
raises to steer its job's outcome (:class:`PermanentError`, :class:`WaitingException` ...)
derive from :class:`JobOutcome`, itself a :class:`BgQueueError`.
"""

from __future__ import annotations

from typing import Any


class BgQueueError(Exception):
    """Root of every exception defined by Flask-BgQueue."""


def one_line(exc: BaseException) -> str:
    """An error as one line for a log or a command's output.

    A SQLAlchemy error wrapping the driver's (its ``orig``) is told by the driver's own
    first line, without the SQL and the link SQLAlchemy adds.
    """
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        exc = orig
    lines = str(exc).strip().splitlines()
    name = type(exc).__name__
    return f"{name}: {lines[0]}" if lines else name


class ConfigurationError(BgQueueError, ValueError):
    """A ``BGQUEUE_*`` key (or a callback registration) is wrong.

    :attr:`key` names the offending configuration key when there is one.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ConfigurationWarning(UserWarning):
    """A ``BGQUEUE_*`` key looks wrong but does no harm (a key this version does not know,
    most likely a typo: the message names the closest known key)."""


class PublishError(BgQueueError, ValueError):
    """A job was refused by :meth:`BackgroundQueue.publish`; nothing was written."""


class UnknownCallbackError(PublishError, LookupError):
    """No callback is registered under :attr:`callback_name`."""

    def __init__(self, message: str, callback_name: str) -> None:
        super().__init__(message)
        self.callback_name = callback_name


class ArgumentsError(PublishError):
    """The parameters do not fit the callback's signature: the job would fail when it ran.

    :attr:`callback_name` names the callback, :attr:`argument` the argument at fault (an
    unknown or missing one; ``None`` when too many positional values were given).
    """

    def __init__(self, message: str, callback_name: str, argument: str | None) -> None:
        super().__init__(message)
        self.callback_name = callback_name
        self.argument = argument


class ParametersError(PublishError):
    """The parameters cannot be stored in the chosen format.

    :attr:`path` locates the value (``parameters['user'][2]``), :attr:`value` is it.
    """

    def __init__(self, message: str, path: str = "parameters", value: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.value = value


class SignatureError(BgQueueError):
    """A pickled payload's signature does not verify: it is never unpickled."""


class SchemaError(BgQueueError):
    """The job table is missing or older than this version and may not be upgraded here."""


class SchemaLockTimeout(SchemaError, TimeoutError):
    """Another process held the schema upgrade's lock for too long."""


class DatabaseUnavailable(BgQueueError):
    """The job table's database went away or refused a write the worker needed; what the
    worker could not write is kept and written once it answers again."""


class BrokerError(BgQueueError):
    """Sending to or talking with the broker failed."""


class BrokerConnectionLost(BrokerError):
    """A consumer's connection dropped: close the consumer and open a new one."""


# Outcomes a callback (or a signal receiver) raises to decide what happens to its job.


class JobOutcome(BgQueueError):
    """Base of the exceptions that steer a job's outcome."""


class PermanentError(JobOutcome):
    """The job can never succeed: ``PERMANENTLY_FAILED``, never retried automatically."""


class TemporaryError(JobOutcome):
    """The job failed this time: ``TEMPORARILY_FAILED``, retried with backoff."""


class WaitingException(JobOutcome):
    """Not yet: ``WAITING``, tried again after the waiting expiration; not an attempt."""


class SkipException(JobOutcome):
    """Nothing to do: ``FINISHED`` with the message kept in ``error_message``."""


class JobTimeout(TemporaryError):
    """Raised inside a callback that ran past its ``timeout``: a temporary failure
    ("timed out after N s"), retried with backoff and counted against ``MAX_ATTEMPTS``."""


class DieException(JobOutcome):
    """Handled as its ``__cause__`` (``PermanentError`` without one), then the worker exits.

    Raise it ``from`` the real error to choose the outcome::

        raise DieException("out of disk") from TemporaryError("disk full")
    """
