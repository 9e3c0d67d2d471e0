"""The memory figures stored with each attempt."""

from __future__ import annotations

import os

import pytest

from flask_bgqueue.resources import memory_usage

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")

MIB = 1024 * 1024


def test_memory_usage_follows_what_this_process_holds() -> None:
    before = memory_usage()
    block = bytearray(64 * MIB)  # zero-filled: touched, so resident
    after = memory_usage()
    assert after.rss - before.rss >= 60 * MIB
    assert after.peak >= after.rss
    del block


def test_a_forked_child_measures_itself_not_its_parent() -> None:
    memory_usage()  # the parent has read /proc/self/statm before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: grow, measure, report, leave at once
        try:
            base = memory_usage().rss
            block = bytearray(128 * MIB)
            grown = memory_usage().rss - base
            os.write(write, str(grown).encode())
            del block
        finally:
            os._exit(0)
    os.close(write)
    grown = int(os.read(read, 100) or b"0")
    os.close(read)
    os.waitpid(pid, 0)
    assert grown >= 120 * MIB, grown
