"""The event loop ``async def`` callbacks run on: one per worker process, reused.

A coroutine (or any awaitable a callback returns) is awaited on this loop in the thread
that runs the job, so its exceptions reach the same outcome table as a plain callback's.
A process that forks gets a loop of its own: a loop is never shared across processes.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import os
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .exceptions import PermanentError

_loops: dict[int, asyncio.AbstractEventLoop] = {}
_lock = threading.Lock()


def worker_loop() -> asyncio.AbstractEventLoop:
    """This process's loop for callbacks, created on first use."""
    pid = os.getpid()
    loop = _loops.get(pid)
    if loop is None or loop.is_closed():
        with _lock:
            loop = _loops.get(pid)
            if loop is None or loop.is_closed():
                loop = _loops[pid] = asyncio.new_event_loop()
    return loop


def resolve(result: Any, callback_name: str) -> Any:
    """The callback's result, awaited to its end on this process's loop when awaitable."""
    if not inspect.isawaitable(result):
        return result
    loop = worker_loop()
    if asyncio.isfuture(result) and result.get_loop() is not loop:
        raise PermanentError(
            f"callback {callback_name!r} returned a future bound to another event loop;"
            " it cannot be awaited by the worker. Make the callback an 'async def'."
        )
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: no loop runs in this thread
        return loop.run_until_complete(_await(result))
    # process() called from async code (an async view, a test): the worker's loop cannot
    # run inside another one, so it runs in a thread of its own for this job.
    with ThreadPoolExecutor(1, thread_name_prefix="bgqueue-async") as pool:
        return pool.submit(loop.run_until_complete, _await(result)).result()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


@atexit.register
def _close_loops() -> None:
    loop = _loops.pop(os.getpid(), None)
    if loop is not None and not loop.is_closed() and not loop.is_running():
        loop.close()
