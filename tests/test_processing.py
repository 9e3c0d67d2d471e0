"""The outcome of one attempt (SPEC §6), on every database."""

from __future__ import annotations

import logging
import os
import pickle
import socket
from datetime import timedelta
from typing import Any, cast

import pytest
from flask import Flask

from flask_bgqueue import (
    BackgroundQueue,
    DieException,
    JobState,
    PermanentError,
    SkipException,
    TemporaryError,
    WaitingException,
    signals,
)
from flask_bgqueue.clock import utcnow
from tests.conftest import AppFactory, StorePath
from tests.helpers import make_due, set_columns


@pytest.fixture
def qapp(make_app: AppFactory, store_path: StorePath) -> Any:
    # A sweep goes on while jobs are due: a waiting job due again before it ends is taken
    # again, so the wait is long enough that a slow machine's sweep ends first.
    app = store_path.apply(make_app(BGQUEUE_WAITING_JOB_EXPIRATION_MS=2000))
    with app.app_context():
        yield app


def run_one(app: Flask, func: Any, parameters: Any = None, **publish: Any) -> Any:
    """Register ``func``, publish one job for it, run the sweep, return the job."""
    bgq = app.bgq  # type: ignore[attr-defined]
    name = f"cb_{len(bgq._registry.callbacks)}"
    bgq.callback(name)(func)
    job_id = bgq.publish(name, parameters, **publish)
    bgq.process()
    return bgq.get_job(job_id)


def test_a_returning_callback_finishes_the_job_and_clears_the_error(qapp: Flask) -> None:
    seen = []
    job = run_one(qapp, lambda to, subject: seen.append((to, subject)), {"to": "a", "subject": "b"})
    assert seen == [("a", "b")]
    assert job.state is JobState.FINISHED and job.finished_at is not None
    assert job.error_message is None and job.number_of_attempts == 1


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [(None, ()), ([1, 2], (1, 2)), ((1, 2), (1, 2)), (7, (7,)), ({"a": 1}, ())],
)
def test_parameters_map_to_arguments(
    qapp: Flask, parameters: Any, expected: tuple[Any, ...]
) -> None:
    got = []
    run_one(qapp, lambda *args, **kw: got.append((args, kw)), parameters)
    assert got == [(expected, parameters if isinstance(parameters, dict) else {})]


def test_permanent_error_fails_for_good_and_logs_critical(
    qapp: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise PermanentError("the customer is gone")

    with caplog.at_level(logging.CRITICAL):
        job = run_one(qapp, broken)
    assert job.state is JobState.PERMANENTLY_FAILED
    assert job.error_message == "PermanentError: the customer is gone"
    assert "raise PermanentError" in job.traceback
    assert any(
        r.levelno == logging.CRITICAL and str(job.id) in r.getMessage() for r in caplog.records
    )


def test_wrong_arguments_fail_the_job_permanently(qapp: Flask) -> None:
    """Published with the check off (publish() refuses them otherwise), or by an older
    version of the callback: the job fails for good when it runs."""
    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("unchecked", check_arguments=False)(lambda to: None)
    job_id = bgq.publish("unchecked", {"recipient": "a"})
    bgq.process()
    job = bgq.get_job(job_id)
    assert job.state is JobState.PERMANENTLY_FAILED
    assert job.error_message.startswith("TypeError:")


def test_waiting_exception_waits_without_counting_the_attempt_then_runs(qapp: Flask) -> None:
    calls = []

    def not_yet() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise WaitingException("the invoice is not ready")

    job = run_one(qapp, not_yet)
    assert job.state is JobState.WAITING and job.number_of_attempts == 0
    assert job.error_message == "the invoice is not ready"
    assert (
        timedelta(milliseconds=1900) < job.available_at - job.last_attempt_at < timedelta(seconds=4)
    )
    qapp.bgq.process()  # type: ignore[attr-defined]
    assert qapp.bgq.get_job(job.id).state is JobState.WAITING  # type: ignore[attr-defined]
    make_due(qapp.bgq, job.id)  # type: ignore[attr-defined]
    qapp.bgq.process()  # type: ignore[attr-defined]
    job = qapp.bgq.get_job(job.id)  # type: ignore[attr-defined]
    assert job.state is JobState.FINISHED and job.number_of_attempts == 1 and len(calls) == 2


def test_skip_exception_finishes_keeping_the_message(qapp: Flask) -> None:
    def skip() -> None:
        raise SkipException("nothing to send")

    job = run_one(qapp, skip)
    assert job.state is JobState.FINISHED and job.error_message == "nothing to send"
    assert job.finished_at is not None


@pytest.mark.parametrize(
    ("cause", "state"),
    [
        (None, JobState.PERMANENTLY_FAILED),
        (TemporaryError("disk full"), JobState.TEMPORARILY_FAILED),
        (SkipException("nothing left"), JobState.FINISHED),
    ],
)
def test_die_exception_is_handled_as_its_cause_and_stops_the_sweep(
    qapp: Flask, cause: Any, state: JobState
) -> None:
    bgq: BackgroundQueue = qapp.bgq  # type: ignore[attr-defined]
    ran = []

    @bgq.callback("die")
    def die() -> None:
        ran.append("die")
        if cause is None:
            raise DieException("stop now")
        raise DieException("stop now") from cause

    bgq.callback("after")(lambda: ran.append("after"))
    die_id = bgq.publish("die")
    after_id = bgq.publish("after")
    assert die_id is not None and after_id is not None
    result = bgq.process()
    assert result.died and ran == ["die"]
    died = bgq.get_job(die_id)
    assert died is not None
    assert died.state is state
    after = bgq.get_job(after_id)
    assert after is not None
    assert after.state is JobState.READY and after.number_of_attempts == 0  # given back untouched
    bgq.process()
    after = bgq.get_job(after_id)
    assert after is not None
    assert after.state is JobState.FINISHED


def test_other_exceptions_retry_with_backoff_1_2_4_8_16_16_minutes(qapp: Flask) -> None:
    bgq: BackgroundQueue = qapp.bgq  # type: ignore[attr-defined]

    @bgq.callback("flaky")
    def flaky() -> None:
        raise ConnectionError("API down")

    job_id = bgq.publish("flaky")
    assert job_id is not None
    delays = []
    for _ in range(6):
        make_due(bgq, job_id)
        bgq.process()
        job = bgq.get_job(job_id)
        assert job is not None
        assert job.state is JobState.TEMPORARILY_FAILED
        assert job.error_message == "ConnectionError: API down"
        assert job.last_attempt_at is not None
        delays.append(round((job.available_at - job.last_attempt_at).total_seconds() / 60))
    assert delays == [1, 2, 4, 8, 16, 16]
    assert job is not None and job.number_of_attempts == 6


def test_temporary_error_is_retried_too(qapp: Flask) -> None:
    def again() -> None:
        raise TemporaryError("later")

    assert run_one(qapp, again).state is JobState.TEMPORARILY_FAILED


def test_max_attempts_stops_the_retries(make_app: AppFactory) -> None:
    app = make_app(BGQUEUE_MAX_ATTEMPTS=2)
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("flaky")(lambda: 1 / 0)
    with app.app_context():
        job_id = bgq.publish("flaky")
        bgq.process()
        assert bgq.get_job(job_id).state is JobState.TEMPORARILY_FAILED
        make_due(bgq, job_id)
        bgq.process()
        job = bgq.get_job(job_id)
    assert job.state is JobState.PERMANENTLY_FAILED
    assert job.error_message.startswith("gave up after 2 attempts: ZeroDivisionError")


def test_critical_notification_exactly_at_the_configured_attempt(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(BGQUEUE_NOTIFY_ON_NUMBER_OF_ATTEMPTS=3)
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("flaky")(lambda: 1 / 0)
    notified = []
    with (
        app.app_context(),
        signals.attempts_notification.connected_to(
            lambda s, job: notified.append(job.number_of_attempts)
        ),
    ):
        job_id = bgq.publish("flaky")
        critical_at = []
        for attempt in range(1, 6):
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                make_due(bgq, job_id)
                bgq.process()
            if any(r.levelno == logging.CRITICAL for r in caplog.records):
                critical_at.append(attempt)
    assert critical_at == [3] and notified == [3]


def test_each_attempt_records_worker_timing_memory_and_traceback(qapp: Flask) -> None:
    def fails() -> None:
        import time

        time.sleep(0.05)
        raise ValueError("bad row 7")

    job = run_one(qapp, fails)
    assert job.pid == os.getpid() and job.hostname == socket.gethostname()
    assert 40 <= job.execution_time < 5000
    assert set(job.memory) == {"before", "after", "peak"}
    assert (
        0 < job.memory["before"] <= job.memory["peak"] and job.memory["after"] <= job.memory["peak"]
    )
    assert job.error_message == "ValueError: bad row 7"
    assert 'raise ValueError("bad row 7")' in job.traceback
    assert job.last_attempt_at is not None and job.heartbeat_at is None


def test_processing_metadata_function_stores_its_dict(qapp: Flask) -> None:
    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.processing_metadata(lambda parameters: {"order": parameters["order_id"], "by": "test"})
    job = run_one(qapp, lambda order_id: None, {"order_id": 42})
    assert job.metadata == {"order": 42, "by": "test"}


def test_before_and_after_process_signals_receive_job_and_parameters(qapp: Flask) -> None:
    events: list[tuple[object, ...]] = []
    before = lambda sender, job, parameters: events.append(("before", sender, job.id, parameters))  # noqa: E731
    after = lambda sender, job, parameters: events.append(("after", sender, job.id, parameters))  # noqa: E731
    with signals.before_process.connected_to(before), signals.after_process.connected_to(after):
        job = run_one(qapp, lambda x: events.append(("run", x)), {"x": 1})
    assert events == [
        ("before", qapp, job.id, {"x": 1}),
        ("run", 1),
        ("after", qapp, job.id, {"x": 1}),
    ]


def test_a_process_error_receiver_that_raises_decides_the_outcome(qapp: Flask) -> None:
    def to_temporary(sender: Any, job: Any, parameters: Any, exception: BaseException) -> None:
        if isinstance(exception, PermanentError):
            raise TemporaryError("retry it after all") from exception

    def broken() -> None:
        raise PermanentError("looks permanent")

    with signals.process_error.connected_to(to_temporary):
        job = run_one(qapp, broken)
    assert job.state is JobState.TEMPORARILY_FAILED
    assert job.error_message == "TemporaryError: retry it after all"


def test_a_process_error_receiver_can_turn_an_error_into_die(qapp: Flask) -> None:
    def die(sender: Any, job: Any, parameters: Any, exception: BaseException) -> None:
        raise DieException("out of memory") from exception

    with signals.process_error.connected_to(die):
        bgq = qapp.bgq  # type: ignore[attr-defined]
        bgq.callback("oom")(lambda: 1 / 0)
        job_id = bgq.publish("oom")
        assert bgq.process().died
    assert bgq.get_job(job_id).state is JobState.TEMPORARILY_FAILED  # the cause decides


def test_a_failing_after_process_receiver_fails_the_job_but_keeps_its_figures(qapp: Flask) -> None:
    def fail(sender: Any, job: Any, parameters: Any) -> None:
        raise RuntimeError("audit log unavailable")

    with signals.after_process.connected_to(fail):
        job = run_one(qapp, lambda: None)
    assert job.state is JobState.TEMPORARILY_FAILED
    assert job.error_message == "RuntimeError: audit log unavailable"
    assert job.execution_time is not None and job.memory is not None


def test_a_failing_before_process_receiver_fails_the_job_without_running_it(qapp: Flask) -> None:
    ran = []

    def fail(sender: Any, job: Any, parameters: Any) -> None:
        raise PermanentError("not allowed")

    with signals.before_process.connected_to(fail):
        job = run_one(qapp, lambda: ran.append(1))
    assert ran == [] and job.state is JobState.PERMANENTLY_FAILED


def test_a_failing_observer_never_changes_the_outcome(qapp: Flask) -> None:
    def broken_observer(sender: Any, job: Any) -> None:
        raise RuntimeError("metrics down")

    with signals.job_finished.connected_to(broken_observer):
        assert run_one(qapp, lambda: None).state is JobState.FINISHED


def test_a_forged_pickle_is_never_unpickled_and_fails_the_job(qapp: Flask) -> None:
    bgq = qapp.bgq  # type: ignore[attr-defined]
    ran = []
    bgq.callback("obj")(lambda o: ran.append(o))
    job_id = bgq.publish("obj", [object.__new__(_Obj)])
    job = bgq.get_job(job_id)
    forged = job.parameters[:36] + pickle.dumps([_Obj(), "swapped"])  # signature kept, body swapped
    set_columns(bgq, job_id, parameters=forged)
    bgq.process()
    job = bgq.get_job(job_id)
    assert ran == [] and job.state is JobState.PERMANENTLY_FAILED
    assert "does not verify" in job.error_message


class _Obj:
    pass


def test_a_job_whose_callback_is_unknown_here_stays_as_it_is_with_a_note(
    qapp: Flask, make_app: AppFactory
) -> None:
    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("known")(lambda: None)
    other = make_app()  # another deployment that knows "elsewhere"
    other.bgq.callback("elsewhere")(lambda: None)  # type: ignore[attr-defined]
    with other.app_context():
        foreign_id = other.bgq.publish("elsewhere")  # type: ignore[attr-defined]
    known_id = bgq.publish("known")
    result = bgq.process()
    assert result.outcomes == {"FINISHED": 1}
    foreign = bgq.get_job(foreign_id)
    assert foreign.state is JobState.READY and foreign.number_of_attempts == 0
    assert "no callback of this name is registered" in foreign.error_message
    assert bgq.get_job(known_id).state is JobState.FINISHED
    assert bgq.process().processed == 0  # no loop on it either
    with other.app_context():
        other.bgq.process()  # type: ignore[attr-defined]
        assert other.bgq.get_job(foreign_id).state is JobState.FINISHED  # type: ignore[attr-defined]


def test_postponed_jobs_never_starve_a_newer_due_job(make_app: AppFactory) -> None:
    app = make_app(BGQUEUE_BULK_SIZE=500)
    bgq = app.bgq  # type: ignore[attr-defined]
    ran = []
    bgq.callback("later")(lambda: ran.append("later"))
    bgq.callback("now")(lambda: ran.append("now"))
    with app.app_context():
        with bgq.bulk():
            for _ in range(1000):
                bgq.publish("later", available_at=timedelta(hours=1))
        bgq.publish("now")
        bgq.process()
    assert ran == ["now"]


def test_due_jobs_run_by_priority_then_id(make_app: AppFactory) -> None:
    app = make_app(BGQUEUE_PRIORITIES=[10, 20, 30], BGQUEUE_CLAIM_BATCH_SIZE=2)
    bgq = app.bgq  # type: ignore[attr-defined]
    ran = []
    bgq.callback("f")(lambda n: ran.append(n))
    with app.app_context():
        for n, p in [("a", 30), ("b", 10), ("c", 20), ("d", 10), ("e", 30)]:
            bgq.publish("f", [n], priority=p)
        bgq.process()
        assert ran == ["b", "d", "c", "a", "e"]
        ran.clear()
        for n, p in [("x", 30), ("y", 10), ("z", 20)]:
            bgq.publish("f", [n], priority=p)
        bgq.process(priorities=(20, 30))
        assert ran == ["z", "x"]


def test_future_jobs_wait_for_their_time(qapp: Flask) -> None:
    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda: None)
    job_id = bgq.publish("f", available_at=utcnow() + timedelta(minutes=5))
    bgq.process()
    assert bgq.get_job(job_id).state is JobState.READY


def test_the_due_job_query_is_served_by_the_due_index(qapp: Flask) -> None:
    """The claim filters on state and available_at in SQL, through ix_<table>_due."""
    import sqlalchemy as sa

    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda: None)
    bgq.publish("f")
    store = bgq._state().store
    t = store.table
    query = (
        sa.select(t.c.id)
        .where(store._runnable(None, ["f"]), t.c.available_at <= utcnow())
        .order_by(t.c.priority, t.c.id)
        .limit(10)
    )
    with store.engine.connect() as conn:
        dialect = conn.dialect.name
        compiled = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        if dialect == "sqlite":
            plan = " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
        elif dialect == "postgresql":
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table would be scanned
            plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
        else:
            plan = " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert f"ix_{t.name}_due" in plan


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_a_claim_locks_only_the_jobs_it_takes(qapp: Flask) -> None:
    """While one worker's claim is open, another claims the next jobs: the first holds its
    own rows only, not the whole backlog (SQLite claims one at a time by design)."""
    import sqlalchemy as sa

    from flask_bgqueue.models import RUNNABLE_STATES

    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda: None)
    with bgq.bulk():
        for _ in range(300):
            bgq.publish("f")
    store = bgq._state().store
    with store.engine.connect() as conn:
        all_ids = [r[0] for r in conn.execute(sa.select(store.table.c.id).order_by("id"))]
    select, _ = store._claim_statements(True, True, RUNNABLE_STATES, False)
    with store._claim_transaction() as held_conn:
        params = {"bgq_callbacks": ["f"], "bgq_now": utcnow(), "bgq_limit": 10}
        held = [r.id for r in held_conn.execute(select, params)]
        claims = store.claim(
            now=utcnow(),
            limit=10,
            priorities=None,
            callbacks=["f"],
            pid=1,
            hostname="other worker",
            waiting_expiration=timedelta(seconds=1),
        )
        held_conn.rollback()
    assert held == all_ids[:10]
    assert sorted(c.job.id for c in claims) == all_ids[10:20]


def test_a_sweep_analyzes_a_job_table_that_never_was(qapp: Flask) -> None:
    """PostgreSQL: without statistics each claim would read and sort every runnable job."""
    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda: None)
    for _ in range(30):
        bgq.publish("f")
    store = bgq._state().store

    def reltuples() -> float:
        with store.engine.connect() as conn:
            return cast(
                float,
                conn.exec_driver_sql(
                    f"SELECT reltuples FROM pg_class WHERE oid = '{store.table.name}'::regclass"
                ).scalar(),
            )

    if store.engine.dialect.name != "postgresql":
        assert bgq.process().processed == 30
        assert store.ensure_statistics() is False  # nothing to do elsewhere
        return
    assert reltuples() < 0  # never analyzed
    assert bgq.process().processed == 30
    assert reltuples() == 30  # analyzed before the first claim, with the 30 jobs in it
    assert store.ensure_statistics() is False  # once is enough; autovacuum keeps it fresh


def test_a_delivered_claim_reads_the_same_job_through_the_driver_and_through_sqlalchemy(
    qapp: Flask,
) -> None:
    """PostgreSQL claims delivered jobs with one statement, sent straight to the driver, or
    through SQLAlchemy when the engine has cursor listeners; both give the row as stored."""
    import sqlalchemy as sa

    from flask_bgqueue.models import RUNNABLE_STATES
    from flask_bgqueue.store import Claim, Store

    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("f")(lambda n=None: None)
    store: Store = bgq._state().store
    plain = [bgq.publish("f", {"n": n}) for n in range(2)]
    grouped = bgq.publish("f", serial_group="g")
    for job_id in plain:
        set_columns(bgq, job_id, metadata={"tag": job_id}, parameters=b"\x00\xff")

    def claim(job_ids: list[int]) -> list[Claim] | None:
        return store.claim_delivered(
            now=utcnow(),
            job_ids=job_ids,
            callbacks=["f"],
            pid=4242,
            hostname="claimer",
            states=RUNNABLE_STATES,
        )

    if store.engine.dialect.name != "postgresql":
        assert claim(plain) is None  # the other databases use claim()
        return
    direct = claim([plain[0], grouped])  # a serial group is left for claim() to check
    statements: list[str] = []
    sa.event.listen(
        store.engine, "before_cursor_execute", lambda c, cur, sql, *a: statements.append(sql)
    )
    recorded = claim([plain[1]])
    assert any("bgq_claimable" in sql for sql in statements)
    for claims, job_id in ((direct, plain[0]), (recorded, plain[1])):
        assert claims is not None and len(claims) == 1
        [c] = claims
        assert c.previous_state is JobState.READY
        assert c.job == bgq.get_job(job_id)
        assert c.job.state is JobState.PROCESSING and c.job.pid == 4242
        assert c.job.metadata == {"tag": job_id} and c.job.parameters == b"\x00\xff"
    assert bgq.get_job(grouped).state is JobState.READY


def test_an_outcome_is_saved_at_once_even_while_a_later_job_of_its_batch_runs(qapp: Flask) -> None:
    """Outcomes of a batch are saved together, but never wait for a slow job after them."""
    import threading

    from tests.test_workers import wait_for

    bgq = qapp.bgq  # type: ignore[attr-defined]
    release = threading.Event()
    bgq.callback("fast")(lambda: None)
    bgq.callback("slow")(lambda: release.wait(30))
    fast = bgq.publish("fast")
    slow = bgq.publish("slow")

    def sweep_in_app_context() -> None:
        qapp.app_context().push()
        bgq.process()

    sweep = threading.Thread(target=sweep_in_app_context)
    sweep.start()
    try:
        wait_for(
            lambda: bgq.get_job(fast).state is JobState.FINISHED, timeout=5, what="the fast one"
        )
        assert bgq.get_job(slow).state is JobState.PROCESSING
    finally:
        release.set()
        sweep.join(30)
    assert bgq.get_job(slow).state is JobState.FINISHED


def test_the_sweep_claims_more_at_once_only_while_jobs_are_quick(qapp: Flask) -> None:
    from flask_bgqueue.processor import Processor

    processor = Processor(qapp.extensions["bgqueue"], qapp)

    def after(size: int, claimed: int, seconds: float) -> int:
        """The sweep's next claim size after ``claimed`` jobs of a claim of ``size`` ran."""
        pacer = processor.claim_pacer()
        pacer.size = size
        return pacer.record(claimed, seconds)

    assert after(10, 10, 0.005) == 20  # a full batch of 0.5 ms jobs
    assert after(80, 80, 0.01) == 100  # at most ten times the setting
    assert after(40, 7, 0.001) == 40  # not full: the queue is draining
    assert after(40, 40, 1.0) == 10  # 25 ms a job: back to the setting


def test_a_batch_of_different_outcomes_is_saved_together_each_with_its_own_values(
    qapp: Flask,
) -> None:
    """One UPDATE (or one pipeline) for the batch, yet every row gets its own outcome."""
    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("ok")(lambda n: None)
    bgq.callback("permanent")(lambda n: (_ for _ in ()).throw(PermanentError(f"no {n}")))
    bgq.callback("temporary")(lambda n: (_ for _ in ()).throw(RuntimeError(f"later {n}")))
    bgq.callback("waits")(lambda n: (_ for _ in ()).throw(WaitingException(f"wait {n}")))
    names = ["ok", "permanent", "temporary", "waits"] * 3
    ids = [bgq.publish(name, {"n": i}) for i, name in enumerate(names)]
    started = utcnow()
    result = bgq.process()
    assert result.outcomes == {  # each job once, though a waiting one may come round again
        "FINISHED": 3,
        "PERMANENTLY_FAILED": 3,
        "TEMPORARILY_FAILED": 3,
        "WAITING": 3,
    }
    assert result.processed == 12 and result.runs >= 12
    for i, (name, job_id) in enumerate(zip(names, ids, strict=True)):
        job = bgq.get_job(job_id)
        assert job.pid == os.getpid() and job.memory["after"] > 0
        if name == "ok":
            assert job.state is JobState.FINISHED and job.error_message is None
            assert job.finished_at is not None and job.number_of_attempts == 1
        elif name == "permanent":
            assert job.state is JobState.PERMANENTLY_FAILED
            assert job.error_message == f"PermanentError: no {i}"
        elif name == "temporary":
            assert job.state is JobState.TEMPORARILY_FAILED and job.number_of_attempts == 1
            assert job.error_message == f"RuntimeError: later {i}"
            assert job.available_at >= started + timedelta(seconds=59)
        else:
            assert job.state is JobState.WAITING and job.number_of_attempts == 0
            assert job.error_message == f"wait {i}"
        if name in ("permanent", "temporary"):
            assert f"{job.error_message.split(':')[0]}:" in job.traceback


def test_a_batch_saves_the_outcomes_still_ours_and_not_the_one_taken_away(qapp: Flask) -> None:
    """A job taken from the worker mid-batch keeps its new state; the others are saved."""
    bgq = qapp.bgq  # type: ignore[attr-defined]
    ids: list[int] = []

    def taken(n: int) -> None:
        if n == 1:  # what the reaper does to a job it thinks lost (due in an hour)
            set_columns(
                bgq,
                ids[1],
                state=JobState.TEMPORARILY_FAILED,
                number_of_attempts=2,
                error_message="worker lost",
                available_at=utcnow() + timedelta(hours=1),
            )

    bgq.callback("taken")(taken)
    ids.extend(bgq.publish("taken", {"n": i}) for i in range(4))
    finished: list[int] = []
    with signals.job_finished.connected_to(lambda app, job: finished.append(job.id)):
        bgq.process()
    assert finished == [ids[0], ids[2], ids[3]]  # the worker knows which were still its own
    states = [bgq.get_job(i).state for i in ids]
    assert states == [
        JobState.FINISHED,
        JobState.TEMPORARILY_FAILED,
        JobState.FINISHED,
        JobState.FINISHED,
    ]
    lost = bgq.get_job(ids[1])
    assert lost.error_message == "worker lost" and lost.finished_at is None


# -- async callbacks and current_job() ------------------------------------------------------


def test_an_async_callback_runs_to_its_end_before_the_job_finishes(qapp: Flask) -> None:
    import asyncio

    seen = []

    async def fetch(url: str) -> None:
        await asyncio.sleep(0.01)
        seen.append(url)

    job = run_one(qapp, fetch, {"url": "https://example.test/"})
    assert seen == ["https://example.test/"]
    assert job.state is JobState.FINISHED and job.execution_time >= 10


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (TemporaryError("later"), JobState.TEMPORARILY_FAILED),
        (PermanentError("never"), JobState.PERMANENTLY_FAILED),
        (ValueError("boom"), JobState.TEMPORARILY_FAILED),
        (SkipException("nothing to do"), JobState.FINISHED),
    ],
)
def test_an_async_callbacks_exception_goes_through_the_outcome_table(
    qapp: Flask, error: Exception, state: JobState
) -> None:
    async def fail() -> None:
        raise error

    job = run_one(qapp, fail)
    assert job.state is state
    assert job.error_message.endswith(str(error))


def test_async_callbacks_share_one_event_loop_per_process_and_signals_wrap_them(
    qapp: Flask,
) -> None:
    import asyncio

    loops, order = [], []

    async def note() -> None:
        order.append("callback")
        loops.append(asyncio.get_running_loop())

    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("note")(note)
    first, second = bgq.publish("note"), bgq.publish("note")
    with signals.before_process.connected_to(lambda app, **kw: order.append("before")):
        with signals.after_process.connected_to(lambda app, **kw: order.append("after")):
            bgq.process()
    assert {bgq.get_job(first).state, bgq.get_job(second).state} == {JobState.FINISHED}
    assert order == ["before", "callback", "after"] * 2
    assert len(loops) == 2 and loops[0] is loops[1] and not loops[0].is_running()


def test_a_plain_callback_returning_a_coroutine_has_it_awaited(qapp: Flask) -> None:
    seen = []

    async def later() -> None:
        seen.append("ran")

    job = run_one(qapp, lambda: later())
    assert seen == ["ran"] and job.state is JobState.FINISHED


def test_a_callback_returning_a_future_of_another_loop_never_counts_as_finished(
    qapp: Flask,
) -> None:
    import asyncio

    other = asyncio.new_event_loop()
    try:
        job = run_one(qapp, lambda: other.create_future())
    finally:
        other.close()
    assert job.state is JobState.PERMANENTLY_FAILED
    assert "another event loop" in job.error_message


def test_async_callbacks_also_run_when_process_is_called_from_async_code(qapp: Flask) -> None:
    import asyncio

    seen = []

    async def work() -> None:
        await asyncio.sleep(0)
        seen.append("ran")

    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("work")(work)
    job_id = bgq.publish("work")

    async def view() -> None:
        bgq.process()

    asyncio.run(view())
    assert seen == ["ran"] and bgq.get_job(job_id).state is JobState.FINISHED


def test_current_job_tells_the_callback_its_id_and_attempt_and_is_none_outside(
    qapp: Flask,
) -> None:
    from flask_bgqueue import current_job

    seen = []

    def look() -> None:
        job = current_job()
        assert job is not None
        seen.append((job.id, job.attempt, job.previous_attempt_lost))
        raise TemporaryError("again")

    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("look")(look)
    job_id = bgq.publish("look")
    bgq.process()
    make_due(bgq, job_id)
    bgq.process()
    assert seen == [(job_id, 1, False), (job_id, 2, False)]
    assert current_job() is None


def test_current_job_says_when_the_previous_attempt_was_lost_with_its_worker(
    qapp: Flask,
) -> None:
    from flask_bgqueue import current_job

    seen = []

    def look() -> None:
        job = current_job()
        assert job is not None
        seen.append((job.attempt, job.previous_attempt_lost))

    bgq = qapp.bgq  # type: ignore[attr-defined]
    bgq.callback("look")(look)
    job_id = bgq.publish("look")
    past = utcnow() - timedelta(hours=1)
    # As a worker killed mid-job leaves it: PROCESSING, attempt 1, heartbeat long stopped.
    set_columns(
        bgq,
        job_id,
        state=JobState.PROCESSING,
        number_of_attempts=1,
        heartbeat_at=past,
        last_attempt_at=past,
        pid=999999,
        hostname="gone",
    )
    result = bgq.process()  # reaps it (due at once), then runs it again
    assert result.reaped == [job_id]
    assert seen == [(2, True)]
    assert bgq.get_job(job_id).state is JobState.FINISHED
