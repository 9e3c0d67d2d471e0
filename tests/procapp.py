"""An app for tests that run real ``flask bgq …`` processes.

Configured from the environment: ``PROCAPP_DB_URL``, ``PROCAPP_TABLE``, ``PROCAPP_DIR`` (a
folder for the locks and the record file), ``PROCAPP_CONFIG`` (JSON of extra config).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import click
from flask import Flask

from flask_bgqueue import BackgroundQueue, PermanentError, current_job

bgq = BackgroundQueue()


def _record(line: str, file: str = "record.txt") -> None:
    path = os.path.join(os.environ["PROCAPP_DIR"], file)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@bgq.callback("record")
def record(group: str, name: str, pause: float = 0.0, meet: int = 0) -> None:
    """Write "group name start end pid" so tests can check order and overlap.

    Every run first writes its pid to ``starts.txt``; with ``meet`` set, the run then waits
    (30 s at most) until that many processes have started a ``record`` job, so a test of
    several workers shares its work however late the others start.
    """
    start = time.time()
    _record(str(os.getpid()), "starts.txt")
    starts = os.path.join(os.environ["PROCAPP_DIR"], "starts.txt")
    while meet and time.time() < start + 30:
        with open(starts) as f:
            if len(set(f.read().split())) >= meet:
                break
        time.sleep(0.02)
    time.sleep(pause)
    _record(f"{group} {name} {start:.6f} {time.time():.6f} {os.getpid()}")


@bgq.callback("slow")
def slow(name: str, seconds: float) -> None:
    """Sleep while the file ``<PROCAPP_DIR>/<name>.hold`` exists (at most ``seconds``)."""
    _record(f"slow {name} start {os.getpid()}")
    job = current_job()
    assert job is not None
    _record(f"{name} {job.attempt} {job.previous_attempt_lost}", "attempts.txt")
    hold = os.path.join(os.environ["PROCAPP_DIR"], f"{name}.hold")
    deadline = time.time() + seconds
    while os.path.exists(hold) and time.time() < deadline:
        time.sleep(0.05)
    _record(f"slow {name} end {os.getpid()}")


@bgq.callback("held")
def held(group: str, name: str, pause: float = 0.0) -> None:
    """Like ``record`` ("group name start end pid host attempt"), but first wait while the
    file ``<PROCAPP_DIR>/<name>.<attempt>.hold`` exists (60 s at most): a test holds one
    attempt of a job and lets the next one run through."""
    job = current_job()
    assert job is not None
    start = time.time()
    _record(f"{name} {job.attempt} {socket.gethostname()} {os.getpid()}", "started.txt")
    hold = os.path.join(os.environ["PROCAPP_DIR"], f"{name}.{job.attempt}.hold")
    deadline = start + 60
    while os.path.exists(hold) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(pause)
    _record(
        f"{group} {name} {start:.6f} {time.time():.6f} {os.getpid()} {socket.gethostname()}"
        f" {job.attempt}"
    )


@bgq.callback("until_cancelled")
def until_cancelled(name: str, seconds: float) -> str:
    """Loop until asked to stop (at most ``seconds``); write "name seen-at" to
    cancelled.txt when ``current_job().cancel_requested`` turns true."""
    job = current_job()
    assert job is not None
    _record(f"{name} start {time.time():.6f} {os.getpid()}", "cancelled.txt")
    deadline = time.time() + seconds
    while time.time() < deadline:
        if job.cancel_requested:
            _record(f"{name} seen {time.time():.6f}", "cancelled.txt")
            return "stopped early"
        time.sleep(0.01)
    return "ran to the end"


@bgq.callback("loops_too_long", timeout=0.5)
def loops_too_long() -> None:
    """Python code past its timeout: interrupted (a signal or an async exception)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.01)
    _record("loops_too_long ran to its end")


@bgq.callback("sleeps_too_long", timeout=0.5)
def sleeps_too_long() -> None:
    """One blocking C call past its timeout: a job thread cannot interrupt it."""
    time.sleep(60)
    _record("sleeps_too_long ran to its end")


@bgq.callback("holds_the_gil", timeout=0.5)
def holds_the_gil() -> None:
    """One C call that holds the GIL and never checks for signals: no thread of this
    process runs again, neither ``SIGALRM`` nor an async exception interrupts it."""
    _record(f"holds_the_gil start {os.getpid()}")
    sum(range(10**15))
    _record("holds_the_gil ran to its end")


@bgq.callback("tick")
def tick() -> None:
    """A periodic job: write "job_id pid" to ticks.txt."""
    job = current_job()
    assert job is not None
    _record(f"{job.id} {os.getpid()}", "ticks.txt")


@bgq.callback("progress")
def progress(name: str) -> dict[str, str | bool]:
    """Say it is half done, then wait while ``<PROCAPP_DIR>/<name>.hold`` exists (60 s at most)."""
    bgq.set_progress(0.5, f"{name} half done")
    hold = os.path.join(os.environ["PROCAPP_DIR"], f"{name}.hold")
    deadline = time.time() + 60
    while os.path.exists(hold) and time.time() < deadline:
        time.sleep(0.05)
    return {"name": name, "done": True}


_KEPT: list[bytearray] = []


@bgq.callback("hog")
def hog(mib: int) -> None:
    """Keep ``mib`` MiB resident for the life of the process (a leak)."""
    _KEPT.append(bytearray(mib * 1024 * 1024))


@bgq.callback("limited", concurrency=2)
def limited(name: str, seconds: float = 0.2) -> None:
    """At most two at once, however many workers run."""
    time.sleep(seconds)


@bgq.callback("limited_per_key", concurrency=1)
def limited_per_key(name: str, seconds: float = 0.2) -> None:
    """One at a time per concurrency_key."""
    time.sleep(seconds)


@bgq.callback("rated", rate="5/s")
def rated(name: str) -> None:
    """At most five starts in any second."""


@bgq.callback("noop")
def noop() -> None:
    pass


@bgq.callback("fail")
def fail(kind: str) -> None:
    """Fails for ever: permanently when ``kind`` is "permanent", else temporarily."""
    if kind == "permanent":
        raise PermanentError("gave up on purpose")
    raise RuntimeError("failed on purpose")


@bgq.callback("counted")
def counted(pause: float = 0.0) -> None:
    """Write "job_id attempt pid time" to counted.txt: how often, and where, each job ran
    (after ``pause`` seconds)."""
    time.sleep(pause)
    job = current_job()
    assert job is not None
    _record(f"{job.id} {job.attempt} {os.getpid()} {time.time():.6f}", "counted.txt")


def _export_spans(path: str) -> None:
    """Trace with OpenTelemetry's SDK into memory; write the spans to ``path`` (JSON) at
    exit, for a test to read."""
    import atexit

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    def dump() -> None:
        spans = [json.loads(span.to_json()) for span in exporter.get_finished_spans()]
        with open(path, "w") as f:
            json.dump(spans, f)

    atexit.register(dump)


def create_app() -> Flask:
    app = Flask(__name__, instance_path=os.environ["PROCAPP_DIR"])
    app.config.update(
        SECRET_KEY="procapp",
        BGQUEUE_DATABASE_URI=os.environ["PROCAPP_DB_URL"],
        BGQUEUE_TABLE_NAME=os.environ["PROCAPP_TABLE"],
        BGQUEUE_LOCKS_DIR=os.environ["PROCAPP_DIR"],
    )
    app.config.update(json.loads(os.environ.get("PROCAPP_CONFIG", "{}")))
    bgq.init_app(app)
    if os.environ.get("PROCAPP_SPANS"):
        _export_spans(os.environ["PROCAPP_SPANS"])

    @app.cli.command("publish-jobs")
    @click.argument("jobs")
    def publish_jobs(jobs: str) -> None:
        """Publish ``[[callback, parameters], ...]`` (JSON) from this process."""
        for name, parameters in json.loads(jobs):
            bgq.publish(name, parameters)

    @app.cli.command("publish-then-die")
    @click.argument("count", type=int)
    def publish_then_die(count: int) -> None:
        """Publish ``count`` record jobs, then die by SIGKILL the moment the last returns."""
        for n in range(count):
            bgq.publish("record", {"group": "killed", "name": str(n)})
        os.kill(os.getpid(), signal.SIGKILL)

    @app.cli.command("publish-counted")
    @click.argument("count", type=int)
    @click.option("--pause", type=float, default=0.0, help="seconds between publishes")
    @click.option("--wait-for", default="", help="a file of PROCAPP_DIR to wait for ...")
    @click.option("--at", type=int, default=0, help="... before the job of this number")
    def publish_counted(count: int, pause: float, wait_for: str, at: int) -> None:
        """Publish ``count`` counted jobs one by one, as a web app would; with
        ``--wait-for``, wait (120 s at most) before job ``--at`` until that file exists."""
        gate = os.path.join(os.environ["PROCAPP_DIR"], wait_for)
        for n in range(count):
            if wait_for and n == at:
                deadline = time.time() + 120
                while not os.path.exists(gate) and time.time() < deadline:
                    time.sleep(0.01)
            bgq.publish("counted")
            if pause:
                time.sleep(pause)

    @app.cli.command("sweep")
    def sweep() -> None:
        """bgq.process() without the host lock: several may run at once on one host."""
        print(bgq.process())

    return app
