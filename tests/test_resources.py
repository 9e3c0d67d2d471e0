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


def test_the_peak_after_a_reset_is_this_jobs_not_the_processs() -> None:
    from flask_bgqueue.resources import reset_peak

    block = bytearray(256 * MIB)  # a big earlier job
    del block
    assert reset_peak()
    small = memory_usage()
    assert small.peak < small.rss + 64 * MIB  # the 256 MiB of before are forgotten


def test_a_job_that_grows_gets_its_peak_from_one_system_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flask_bgqueue import resources

    mark = resources.start_job()
    block = bytearray(128 * MIB)
    reads: list[int] = []
    status = resources._status_figures

    def counted() -> tuple[int, int] | None:
        reads.append(1)
        return status()

    monkeypatch.setattr(resources, "_status_figures", counted)
    measured = resources.job_memory(mark)
    monkeypatch.undo()
    kernel = resources.memory_usage()  # VmHWM, read right after
    del block
    assert reads == []  # the peak rose during the job: getrusage's figure is the job's
    assert mark.before is not None and measured.peak >= mark.before + 120 * MIB
    assert abs(kernel.peak - measured.peak) < MIB


def test_a_big_program_this_process_was_before_exec_does_not_lend_its_mark() -> None:
    """``getrusage`` keeps the peak of the program a process was before ``exec`` for good;
    a job measured after that must still get its own."""
    import subprocess
    import sys

    measure = (
        "from flask_bgqueue import resources; mark = resources.start_job(); "
        "m = resources.job_memory(mark); print(mark.lifetime, m.rss, m.peak)"
    )
    grow_then_exec = (
        "import os, sys; block = bytearray(300 * 1024 * 1024); "
        f"os.execv(sys.executable, [sys.executable, '-c', {measure!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", grow_then_exec], capture_output=True, text=True, check=True
    ).stdout
    lifetime, rss, peak = map(int, out.split())
    assert lifetime > 290 * MIB  # the kernel's lifetime figure remembers the big program
    assert peak < rss + 64 * MIB, (lifetime, rss, peak)


def test_a_small_job_after_a_big_one_records_its_own_peak(make_app: object) -> None:
    app = make_app()  # type: ignore[operator]
    bgq = app.bgq
    bgq.callback("big")(lambda: len(bytearray(300 * MIB)))
    bgq.callback("small")(lambda: None)
    with app.app_context():
        big, small = bgq.publish("big"), bgq.publish("small")
        bgq.process()
        peaks = [bgq.get_job(i).memory["peak"] for i in (big, small)]
    assert peaks[0] > peaks[1] + 250 * MIB


def test_consume_max_memory_exits_after_the_job_that_went_over(procs: object) -> None:
    from flask_bgqueue import JobState

    app = procs.app()  # type: ignore[attr-defined]
    with app.app_context():
        first = app.bgq.publish("hog", {"mib": 200})
        second = app.bgq.publish("hog", {"mib": 200})
        result = procs.run("bgq", "consume", "--max-memory", "150")  # type: ignore[attr-defined]
        assert result.returncode == 0, result.stderr
        assert "consumed 1 job(s); over --max-memory 150 MiB" in result.stdout
        assert app.bgq.get_job(first).state is JobState.FINISHED
        assert app.bgq.get_job(second).state is JobState.READY  # for a fresh process
