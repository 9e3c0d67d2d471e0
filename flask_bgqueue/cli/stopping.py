"""Stop requests by signal (SIGTERM, SIGINT) for the long-running commands.

A Python signal handler runs in the main thread, between two of its bytecodes. The
consumer's main thread spends its idle time in ``stop.wait(...)``, which holds the
event's lock for a few bytecodes on the way in and out: a handler calling ``stop.set()``
at that moment waits for a lock its own thread holds, and the process never stops (seen
as a consumer that ignored SIGTERM). So the handler takes no lock: it notes the request
and writes a byte to a pipe, and a thread of its own sets the event.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any


class StopOnSignals:
    """Set ``stop`` when SIGTERM or SIGINT arrives; a SIGINT once a stop is asked for calls
    ``at_once`` (``is_set`` reads a flag, no lock)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop: threading.Event, at_once: Callable[[], None]) -> None:
        self.stop, self.at_once = stop, at_once
        self.requested = False  # set by the handler; read without a lock
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._relay = threading.Thread(target=self._set_stop, name="bgqueue-stop", daemon=True)
        self._relay.start()
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}

    def __enter__(self) -> StopOnSignals:
        return self

    def __exit__(self, *exc: object) -> None:
        """Put the previous handlers back and end the relay thread (the pipe closes)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._write)
        self._relay.join(timeout=5)
        os.close(self._read)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and (self.requested or self.stop.is_set()):
            self.at_once()  # Ctrl-C twice: the caller decides how to end now
            return
        self.requested = True
        try:
            os.write(self._write, b"\0")
        except OSError:  # the pipe is full: a byte is waiting already
            pass

    def _set_stop(self) -> None:
        while os.read(self._read, 64):
            self.stop.set()
