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
   thread, the watchdog included: :func:`faulthandler.dump_traceback_later`, whose thread
   is C and needs no GIL, ends the process twice ``grace`` after the deadline; that attempt
   is recorded by the reaper, as a lost worker's.
"""

from __future__ import annotations

import ctypes
import faulthandler
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from .exceptions import JobTimeout

#: The exit status of a worker that stopped itself because a callback ran past its
#: timeout and could not be interrupted (``EX_TEMPFAIL``).
EXIT_TIMED_OUT = 75


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
    ) -> None:
        self.seconds, self.grace = seconds, grace
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
        faulthandler.dump_traceback_later(self.seconds + 2 * self.grace, exit=True)
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

    def _expire(self) -> bool:
        with self._lock:
            if self._done or self.expired:
                return False
            self.expired = True
        self._on_expired()
        return True

    def _raise_in_main(self, signum: int, frame: FrameType | None) -> None:
        if self._expire():
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
