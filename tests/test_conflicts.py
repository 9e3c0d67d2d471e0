"""A transaction the database ends as a deadlock's victim runs again (``Store.retrying``).

InnoDB picks such victims under concurrent claims and outcome saves; PostgreSQL can too. A
trigger here plays the database's part on the real servers: it ends the first outcome
saves with the error a deadlock gives (MariaDB 1213, PostgreSQL 40P01), counted by a
sequence, which a rollback does not undo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from flask_bgqueue import BackgroundQueue, JobState
from flask_bgqueue.store.base import CONFLICT_ATTEMPTS
from tests.conftest import AppFactory
from tests.helpers import all_jobs, execute, kind

CONFLICT = {
    "postgresql": [
        "CREATE SEQUENCE {t}_victims",
        "CREATE FUNCTION {t}_conflict() RETURNS trigger AS $$ BEGIN"
        " IF nextval('{t}_victims') <= {n} THEN"
        " RAISE EXCEPTION 'deadlock detected (made by this test)' USING ERRCODE = '40P01';"
        " END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER {t}_conflict BEFORE UPDATE ON {t} FOR EACH ROW"
        " WHEN (NEW.state = 3 AND OLD.state = 2) EXECUTE FUNCTION {t}_conflict()",
    ],
    "mysql": [
        "CREATE SEQUENCE {t}_victims NOCACHE",
        "CREATE TRIGGER {t}_conflict BEFORE UPDATE ON {t} FOR EACH ROW BEGIN"
        " IF NEW.state = 3 AND OLD.state = 2 THEN IF NEXTVAL({t}_victims) <= {n} THEN"
        " SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213,"
        " MESSAGE_TEXT = 'Deadlock found when trying to get lock (made by this test)';"
        " END IF; END IF; END",
    ],
}
CLEAN_UP = {
    "postgresql": [
        "DROP TRIGGER IF EXISTS {t}_conflict ON {t}",
        "DROP FUNCTION IF EXISTS {t}_conflict()",
        "DROP SEQUENCE IF EXISTS {t}_victims",
    ],
    "mysql": ["DROP TRIGGER IF EXISTS {t}_conflict", "DROP SEQUENCE IF EXISTS {t}_victims"],
}


def victims(db_url: str, table: str) -> int:
    """How many rows the trigger was asked about: each save it ended, then each row saved."""
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        if kind(db_url) == "postgresql":
            sql = f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {table}_victims"
        else:  # NOCACHE: the next value it would give
            sql = f"SELECT next_not_cached_value - 1 FROM {table}_victims"
        value = conn.exec_driver_sql(sql).scalar_one()
    engine.dispose()
    return int(value)


@pytest.fixture
def conflicts(db_url: str, table_name: str) -> Iterator[Callable[[int], None]]:
    """``conflicts(n)``: the next ``n`` outcome saves end as a deadlock's victims."""
    yield lambda n: execute(db_url, CONFLICT[kind(db_url)], table_name, n=n)
    execute(db_url, CLEAN_UP[kind(db_url)], table_name)


@pytest.fixture
def queue(make_app: AppFactory) -> Iterator[tuple[BackgroundQueue, list[str]]]:
    """The queue, inside its app's context, with a callback that notes each run."""
    app = make_app()
    bgq: BackgroundQueue = app.bgq  # type: ignore[attr-defined]
    ran: list[str] = []
    bgq.callback("work")(ran.append)
    with app.app_context():
        yield bgq, ran


def publish(bgq: BackgroundQueue, names: list[str]) -> None:
    with bgq.bulk():
        for name in names:
            bgq.publish("work", name)


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("jobs", [1, 3], ids=["one-outcome", "a-batch"])
def test_an_outcome_save_ended_as_a_deadlock_victim_is_saved_again_and_no_job_runs_twice(
    queue: tuple[BackgroundQueue, list[str]],
    conflicts: Callable[[int], None],
    db_url: str,
    table_name: str,
    jobs: int,
) -> None:
    bgq, ran = queue
    names = [f"j{n}" for n in range(jobs)]
    publish(bgq, names)
    conflicts(CONFLICT_ATTEMPTS - 1)  # the last attempt goes through
    bgq.process()  # no error: the store ran the save again
    assert victims(db_url, table_name) == CONFLICT_ATTEMPTS - 1 + jobs
    assert Counter(ran) == Counter(names)  # each ran once
    assert {(j.state, j.number_of_attempts) for j in all_jobs(bgq)} == {(JobState.FINISHED, 1)}


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_a_save_that_keeps_ending_in_a_deadlock_gives_up_with_the_databases_error(
    queue: tuple[BackgroundQueue, list[str]],
    conflicts: Callable[[int], None],
    db_url: str,
    table_name: str,
) -> None:
    bgq, ran = queue
    publish(bgq, ["j0"])
    conflicts(1000)
    with pytest.raises(sa.exc.DBAPIError) as raised:
        bgq.process()
    assert "made by this test" in str(raised.value)
    assert victims(db_url, table_name) == CONFLICT_ATTEMPTS  # tried that often, no more
    # owed by the worker: left PROCESSING for the lost-worker sweep (at-least-once)
    assert {j.state for j in all_jobs(bgq)} == {JobState.PROCESSING}
    assert ran == ["j0"]
