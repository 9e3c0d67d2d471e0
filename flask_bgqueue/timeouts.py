"""Time limits on a running callback: interrupt it at its deadline, and stop the worker
when it cannot be interrupted.

Python cannot stop running code from outside safely, so there are three levels:

1. At the deadline, :exc:`~flask_bgqueue.JobTimeout` is raised inside the callback: by a
   ``SIGALRM`` timer when the callback runs in the main thread (this interrupts
   ``time.sleep`` and most blocking calls too), else with ``PyThreadState_SetAsyncExc``,
   which takes effect at the next Python bytecode the callback's thread runs (not during a
   blocking C call such as ``time.sleep`` or a socket read).
2. ``grace`` seconds later, if the callback still runs, a watchdog thread records the
   attempt as timed out and ends the process with :data:`EXIT_TIMED_OUT`, for its
   supervisor to restart it.
3. Code that holds the GIL the whole time (a loop inside one C call) stops every Python
   thread, that watchdog included. A consumer has a watchdog *process* (:mod:`.watchdog`)
   that records the attempt and kills the worker twice ``grace`` after the deadline.
   Without one (or if it is gone), :func:`faulthandler.dump_traceback_later`, whose thread
   is C and needs no GIL, ends the process, printing the stacks, at twice ``grace`` (and
   :data:`LAST_RESORT_AFTER_WATCHDOG_SECONDS` more with a watchdog process); the attempt
   is then recorded by the reaper, as a lost worker's.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import FrameType, TracebackType
from typing import Any

from .clock import utcnow
from .exceptions import JobTimeout
from .holding import Heartbeat
from .models import job_fields
from .outcome import Outcome, classify
from .runtime import Runtime
from .store import Claim
from .store.dialects import engine_options, shareable_url
from .watchdog import Watchdog

#: How long after the watchdog process's turn :mod:`faulthandler` ends the process anyway
#: (at least; or the grace if longer), in case the watchdog process is gone.
LAST_RESORT_AFTER_WATCHDOG_SECONDS = 10.0

#: The exit status of a worker that stopped itself because a callback ran past its
#: timeout and could not be interrupted (``EX_TEMPFAIL``).
EXIT_TIMED_OUT = 75

_NO_LIMIT: AbstractContextManager[None] = nullcontext()


class Deadline:
    """A context manager that interrupts the block (run by this thread) after ``seconds``.

    ``expired()`` is called once the deadline passes (before the interruption),
    ``stuck()`` when the block still runs ``grace`` seconds later (it should not return).
    ``expired`` tells afterwards whether the deadline passed, even when the callback
    caught the exception.
    """

    def __init__(
        self,
        seconds: float,
        grace: float,
        expired: Callable[[], None],
        stuck: Callable[[], None],
        watched: bool = False,
    ) -> None:
        self.seconds, self.grace = seconds, grace
        self.watched = watched  # a watchdog process ends the worker if all else fails
        self._on_expired, self._on_stuck = expired, stuck
        self.expired = False
        self._done = False
        self._lock = threading.Lock()
        self._thread_id = threading.get_ident()
        self._timers: list[threading.Timer] = []
        self._previous_handler: Any = None
        self._alarm = (
            threading.current_thread() is threading.main_thread()
            and hasattr(signal, "setitimer")
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0  # the app's own alarm wins
        )

    def __enter__(self) -> Deadline:
        if self._alarm:
            self._previous_handler = signal.signal(signal.SIGALRM, self._raise_in_main)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            self._start(self.seconds, self._raise_in_thread)
        self._start(self.seconds + self.grace, self._stuck)
        # The last resort when the GIL is held; well after the watchdog process's turn, if
        # there is one (it stops this process at once when it acts).
        last = self.seconds + 2 * self.grace
        if self.watched:
            last += max(self.grace, LAST_RESORT_AFTER_WATCHDOG_SECONDS)
        faulthandler.dump_traceback_later(last, exit=True)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            self._done = True
        faulthandler.cancel_dump_traceback_later()
        for timer in self._timers:
            timer.cancel()
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous_handler)

    def _start(self, after: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(after, action)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def _expire(self, wait: bool = True) -> bool:
        if not self._lock.acquire(blocking=wait):
            return False  # held by the main thread's __exit__: the block has ended
        try:
            if self._done or self.expired:
                return False
            self.expired = True
        finally:
            self._lock.release()
        self._on_expired()
        return True

    def _raise_in_main(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs in the main thread between two bytecodes: waiting for
        # the lock there would wait forever if __exit__, in the same thread, holds it
        # (the alarm fired as the block ended).
        if self._expire(wait=False):
            raise JobTimeout(f"timed out after {self.seconds:g} s")

    def _raise_in_thread(self) -> None:
        if self._expire():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(JobTimeout)
            )

    def _stuck(self) -> None:
        with self._lock:
            if self._done:
                return
        self._on_stuck()


class TimeLimits:
    """The time limits of one worker's callbacks, and its watchdog process if it has one."""

    def __init__(self, state: Runtime, pid: int, hostname: str) -> None:
        self.state, self.settings = state, state.settings
        self.pid, self.hostname = pid, hostname
        #: The heartbeat of the batch running now (a timed-out job leaves it).
        self.heartbeat: Heartbeat | None = None
        self.watchdog: Watchdog | None = None

    def any(self) -> bool:
        """Whether some callback has a time limit (else no watchdog process is needed)."""
        specs = self.state.registry.callbacks.values()
        return self.settings.default_timeout_seconds is not None or any(
            spec.timeout is not None for spec in specs
        )

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Run a watchdog process (:mod:`.watchdog`) meanwhile, if some callback has a time
        limit and other processes can reach the database (not an in-memory SQLite)."""
        engine = self.state.store.engine
        url = shareable_url(engine)
        if url is None or not self.any():
            yield
            return
        s = self.settings
        # Its connection fails on a silent network like the worker's (connect_timeout).
        options = engine_options(engine.url, s.engine_options, s.network_timeout_seconds)
        try:
            self.watchdog = Watchdog.start(url, s.table_name, s.queue, options)
        except OSError as exc:  # no interpreter to run it (sys.executable is not Python?)
            self.state.logger.warning(
                "bgqueue: no watchdog process (%s); a callback holding the GIL past its"
                " timeout is recorded by the reaper",
                exc,
            )
            yield
            return
        try:
            yield
        finally:
            watchdog, self.watchdog = self.watchdog, None
            watchdog.close()

    def limit(self, claim: Claim, timeout: float | None) -> AbstractContextManager[Deadline | None]:
        """The callback's time limit (see :class:`Deadline`), or none."""
        seconds = timeout if timeout is not None else self.settings.default_timeout_seconds
        if seconds is None:
            return _NO_LIMIT
        return self._limited(claim, seconds)

    @contextmanager
    def _limited(self, claim: Claim, seconds: float) -> Iterator[Deadline]:
        grace = self.settings.timeout_grace_seconds
        watchdog = self.watchdog
        watched = watchdog is not None and watchdog.watch(
            claim.job.id,
            claim.job.number_of_attempts,
            seconds + 2 * grace,
            self._watchdog_record(claim, seconds),
        )

        def expired() -> None:  # no heartbeat keeps a timed-out job alive any more
            if self.heartbeat is not None:
                self.heartbeat.drop(claim)

        def stuck() -> None:
            self.give_up_on(claim, seconds)

        try:
            with Deadline(seconds, grace, expired, stuck, watched) as d:
                yield d
        finally:
            if watched and watchdog is not None:
                watchdog.done(claim.job.id)

    def _watchdog_record(self, claim: Claim, seconds: float) -> dict[str, Any]:
        """What the watchdog process writes if it must end this attempt: the outcome a
        timed-out attempt gets here (its retry counted from when it is written)."""
        why = f"timed out after {seconds:g} s; pid {self.pid} on {self.hostname} could not"
        outcome = self.timed_out(claim, why + " interrupt it and was killed by its watchdog")
        available_at = outcome.values.get("available_at")
        return {
            "name": claim.job.callback_name,
            "state": int(outcome.state),
            "error_message": outcome.values["error_message"],
            "traceback": outcome.values["traceback"],
            "retry_in": (available_at - utcnow()).total_seconds() if available_at else None,
        }

    def timed_out(self, claim: Claim, why: str) -> Outcome:
        """The outcome of an attempt past its timeout that could not be interrupted."""
        return classify(claim.job, JobTimeout(why), self.settings)

    def give_up_on(self, claim: Claim, seconds: float) -> None:
        """A callback past its deadline that cannot be interrupted: record the attempt as
        timed out now and end this process, for its supervisor to restart it."""
        if self.watchdog is not None:
            self.watchdog.done(claim.job.id)  # recorded here: the watchdog need not
        why = (
            f"timed out after {seconds:g} s; pid {self.pid} on {self.hostname} could not"
            " interrupt it and exited"
        )
        outcome = self.timed_out(claim, why)
        logger = self.state.logger
        try:
            self.state.store.time_out(
                claim.job.id, claim.job.number_of_attempts, outcome.state, outcome.values, utcnow()
            )
        except Exception:
            logger.exception("bgqueue: could not record job %s as timed out", claim.job.id)
        logger.critical(
            "bgqueue: job %s (%s) %s (exit status %s)",
            claim.job.id,
            claim.job.callback_name,
            why,
            EXIT_TIMED_OUT,
            extra=job_fields(claim.job, outcome.state),
        )
        for handler in logging.getLogger().handlers + logger.handlers:
            handler.flush()
        os._exit(EXIT_TIMED_OUT)
