"""The watchdog process: ends a worker whose callback holds the GIL past its timeout.

Code that holds the GIL for the whole time (a loop inside one C call) stops every Python
thread of its process, so no thread of the worker can notice that a callback ran past its
timeout. A separate process can. The worker starts this file as a small process of its own
(``python -I …/flask_bgqueue/watchdog.py PARENT_PID``: a fresh interpreter, exec'd rather
than forked, so it shares no GIL, thread, lock or database connection with the worker) and tells
it through a pipe, one JSON line each, when an attempt with a timeout starts and when it
ends. An attempt still running at its limit is recorded as timed out (through the store's
fenced transition: it cannot overwrite a newer attempt) while the worker is stopped
(``SIGSTOP``), then the worker is killed with ``SIGKILL`` for its supervisor to start it
again.

It stays light: only the standard library is loaded until it must write; the database is
opened then, with an engine of its own. It ends when the worker closes the pipe or is gone
(it looks at its parent every second), so it is never left behind.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import IO, Any

#: How often the watchdog looks whether its worker is still there, at the most.
LOOK_SECONDS = 1.0


class Watchdog:
    """The worker's end of the pipe to its watchdog process."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._lock = threading.Lock()  # the job's thread and the timers' write here
        self.alive = True

    @classmethod
    def start(cls, url: str, table: str, queue: str, options: dict[str, Any]) -> Watchdog:
        """Start the watchdog process of this worker, for the job table at ``url``.

        The URL goes through the pipe, not the command line (``ps`` shows that). Engine
        options that are not plain JSON (objects in ``connect_args``) are left out.
        """
        process = subprocess.Popen(
            # -I: the package's folder is not put on sys.path (its modules would shadow
            # the standard library's); the worker's sys.path comes through the pipe.
            [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # it writes only to stderr, the worker's
            close_fds=True,
        )
        watchdog = cls(process)
        try:
            json.dumps(options)
        except (TypeError, ValueError):
            options = {}
        watchdog._send(
            {
                "url": url,
                "table": table,
                "queue": queue,
                "options": options,
                "path": [p for p in sys.path if isinstance(p, str)],
            }
        )
        return watchdog

    def watch(self, job_id: int, attempts: int, after: float, record: dict[str, Any]) -> bool:
        """Attempt ``attempts`` of job ``job_id`` started: unless :meth:`done` comes within
        ``after`` seconds, write ``record`` (see :func:`_record`) and kill this process.
        ``False`` when the watchdog is gone."""
        return self._send({"watch": job_id, "attempts": attempts, "after": after, **record})

    def done(self, job_id: int) -> None:
        """The attempt of ``job_id`` ended (or is being recorded by this process)."""
        self._send({"done": job_id})

    def close(self) -> None:
        """End the watchdog (it reads the end of the pipe) and wait for it."""
        with self._lock:
            self.alive = False
            if self.process.stdin is not None:
                try:
                    self.process.stdin.close()
                except OSError:  # it is gone already
                    pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _send(self, message: dict[str, Any]) -> bool:
        with self._lock:
            if not self.alive or self.process.stdin is None:
                return False
            try:
                self.process.stdin.write(json.dumps(message).encode() + b"\n")
                self.process.stdin.flush()
            except OSError:  # the watchdog died: the worker's own limits still hold
                self.alive = False
        return self.alive


# -- the watchdog process --------------------------------------------------------------


def main(parent: int, pipe: IO[bytes]) -> int:
    # Ctrl-C, a terminal hanging up, a supervisor's SIGTERM to the group: meant for the
    # worker, which may still finish its job gracefully; this process ends with it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    fd = pipe.fileno()
    config: dict[str, Any] = {}
    watching: dict[int, tuple[float, dict[str, Any]]] = {}
    pending = b""

    def read(wait: float) -> bool:
        """Take in what the worker wrote within ``wait`` seconds; ``False`` at its end."""
        nonlocal pending
        if not select.select([fd], [], [], wait)[0]:
            return True
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "watch" in message:
                watching[message["watch"]] = (time.monotonic() + message["after"], message)
            elif "done" in message:
                watching.pop(message["done"], None)
            else:
                config.update(message)
        return True

    while True:
        soonest = min((due for due, _ in watching.values()), default=None)
        wait = LOOK_SECONDS if soonest is None else soonest - time.monotonic()
        if not read(min(LOOK_SECONDS, max(0.0, wait))) or os.getppid() != parent:
            return 0  # the worker closed the pipe or is gone
        now = time.monotonic()
        late = [message for due, message in watching.values() if due <= now]
        if late and read(0):  # an end written just now still counts
            late = [m for m in late if m["watch"] in watching]
        if late:
            _end(parent, config, late[0])
            return 0


def _end(parent: int, config: dict[str, Any], watch: dict[str, Any]) -> None:
    """Stop the worker (``SIGSTOP``: nothing of it runs on, not even a late end of the
    callback), record the attempt as timed out, then kill the worker. Recorded before the
    kill: a supervisor that stops the worker's whole group when it dies would stop this
    process too."""
    ours = os.getppid() == parent  # not a stranger that got the same pid
    if ours:
        os.kill(parent, signal.SIGSTOP)
    try:
        written = _record(config, watch)
    except Exception as exc:  # the reaper takes the job back after the lost-worker delay
        written = f"could not record it ({type(exc).__name__}: {exc}); the reaper will"
    if ours:
        os.kill(parent, signal.SIGKILL)
        ended = f"killed pid {parent} (exit status -9) for its supervisor to restart it"
    else:
        ended = f"pid {parent} had ended already"
    sys.stderr.write(
        f"bgqueue watchdog: job {watch['watch']} ({watch['name']}) still ran"
        f" {watch['after']:g} s after it started, past its timeout; {written}; {ended}\n"
    )
    sys.stderr.flush()


def _record(config: dict[str, Any], watch: dict[str, Any]) -> str:
    """Write the attempt's timed-out outcome, guarded by the attempt; say what was done."""
    sys.path[:] = config["path"]  # the worker's, to find the same package
    from flask_bgqueue.store import open_store

    store = open_store(config["url"], config["table"], config["queue"], config["options"])
    try:
        now = datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC, as clock.utcnow
        values = {"error_message": watch["error_message"], "traceback": watch["traceback"]}
        if watch["retry_in"] is not None:
            values["available_at"] = now + timedelta(seconds=watch["retry_in"])
        state = store.time_out(watch["watch"], watch["attempts"], watch["state"], values, now)
    finally:
        store.engine.dispose()
    if state is None:
        return "it had ended meanwhile (not recorded)"
    return f"recorded as {state.name}"


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.stdin.buffer))
