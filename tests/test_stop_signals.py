"""A signal handler never waits for a lock the interrupted main thread holds: a stop
asked for by signal, and a time limit's alarm."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The main thread holds the stop event's lock, as it does for a few bytecodes each time it
# enters or leaves ``stop.wait()``, when SIGTERM arrives: the handler runs right there.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from flask_bgqueue.cli.stopping import StopOnSignals

    stop = threading.Event()
    with StopOnSignals(stop, lambda: os._exit(3)):
        with stop._cond:  # the lock Event.wait and Event.set take
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs at one of these bytecodes
                time.sleep(0.001)
            print("handler returned", flush=True)
        print("stopped" if stop.wait(5) else "not stopped", flush=True)
    print("restored" if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else "kept")
    print(len([t for t in threading.enumerate() if t.name == "bgqueue-stop"]), "relay")
    """
)


def run_script(script: str) -> list[str]:
    """Run ``script`` in a fresh interpreter (a hang fails on the timeout); its words."""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_sigterm_while_the_main_thread_holds_the_stop_event_s_lock_still_stops() -> None:
    assert run_script(SCRIPT) == ["handler", "returned", "stopped", "restored", "0", "relay"]


# The alarm of a callback's time limit fires as the callback returns, while Deadline's
# __exit__ (the main thread) holds the lock that the alarm's handler takes.
ALARM_SCRIPT = textwrap.dedent(
    """
    import time
    from flask_bgqueue.timeouts import Deadline

    deadline = Deadline(0.05, 30, expired=lambda: None, stuck=lambda: None)
    deadline.__enter__()
    with deadline._lock:  # as __exit__ holds it
        time.sleep(0.3)  # SIGALRM arrives here; its handler runs in this thread
    print("handler returned", flush=True)
    deadline.__exit__(None, None, None)
    print("expired" if deadline.expired else "ended in time", flush=True)
    """
)


def test_a_time_limit_s_alarm_as_the_block_ends_does_not_hang_the_worker() -> None:
    assert run_script(ALARM_SCRIPT) == ["handler", "returned", "ended", "in", "time"]
