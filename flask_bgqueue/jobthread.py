"""The thread a broker consumer runs jobs on, so that its own thread can keep serving the
broker's connection (heartbeats, deliveries) while a job runs."""

from __future__ import annotations

import threading
from collections.abc import Callable


class JobThread:
    """The one thread that runs jobs, so the consuming thread can serve the connection.

    pika is not thread-safe: the consuming thread alone touches the connection, pumping its
    events (heartbeats, deliveries) while a job runs here. One long-lived thread rather than
    one per job: handing work over costs a wake-up, not a thread start.
    """

    def __init__(self) -> None:
        self._work: Callable[[], None] | None = None
        self._failure: BaseException | None = None
        self._ready = threading.Condition()
        self._done = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="bgqueue-job", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while self._work is None and not self._closed:
                    self._ready.wait()
                if self._work is None:
                    return
                work, self._work = self._work, None
            try:
                work()
            except BaseException as exc:  # surfaced in the consuming thread by run()
                self._failure = exc
            finally:
                self._done.set()

    def run(
        self,
        work: Callable[[], None],
        pump: Callable[[], None],
        first: Callable[[], None] | None = None,
    ) -> None:
        """Run ``work`` in the job thread, calling ``pump`` every 50 ms until it is done.

        ``first`` is called once, at the first of those 50 ms or when the work is done if
        sooner (the consumer acknowledges the batch's messages there: a short batch runs
        to its end without waiting for it). If it or ``pump`` raises (the connection
        dropped), the job still runs to its end (its claim is committed and its outcome
        must be saved) before the error goes up.
        """
        self._done.clear()
        self._failure = None
        with self._ready:
            self._work = work
            self._ready.notify()
        try:
            while not self._done.wait(0.05):  # returns at once when a short job is done
                if first is not None:
                    call: Callable[[], None] = first
                    first = None
                    call()
                pump()
        finally:
            self._done.wait()
        failure, self._failure = self._failure, None
        try:
            if first is not None:  # the work was done within 50 ms
                first()
        finally:
            if failure is not None:
                raise failure

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
