"""What the commands print and how they fail: quiet for cron, one line for an error.

``process`` prints nothing when nothing was due (cron mails only when there is something to
read) and counts jobs once however often they ran. A Flask-BgQueue or database error in
any command (a table not up to date with ``BGQUEUE_AUTO_UPDATE_SCHEMA`` off, a database
that does not answer, a bad ``BGQUEUE_*`` value met while loading the app) is one
``Error:`` line and exit status 1; ``--traceback`` or ``FLASK_DEBUG=1`` shows the stack.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import Result
from flask import Flask

from flask_bgqueue import BackgroundQueue, SchemaError, WaitingException
from tests.conftest import AppFactory


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: what is tested here is the same on every database."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def invoke(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["bgq", *args])


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    bgq = BackgroundQueue()
    waited: set[int] = set()

    @bgq.callback
    def ok(n: int) -> None:
        pass

    @bgq.callback
    def wait_once(n: int) -> None:
        if n not in waited:
            waited.add(n)
            raise WaitingException("not yet")

    return make_app(bgq, BGQUEUE_WAITING_JOB_EXPIRATION_MS=50)


def publish(app: Flask, callback: str, *numbers: int) -> None:
    with app.app_context():
        for n in numbers:
            app.bgq.publish(callback, {"n": n})  # type: ignore[attr-defined]


# -- process: quiet for cron ------------------------------------------------------------


def test_process_prints_nothing_when_nothing_was_due(app: Flask) -> None:
    result = invoke(app, "process")
    assert result.exit_code == 0 and result.output == ""


def test_process_verbose_prints_the_summary_even_when_nothing_was_due(app: Flask) -> None:
    result = invoke(app, "process", "-v")
    assert result.exit_code == 0 and result.output == "processed 0 job(s)\n"


def test_process_prints_its_summary_when_jobs_ran_and_nothing_when_quiet(app: Flask) -> None:
    publish(app, "ok", 1, 2)
    assert invoke(app, "process").output == "processed 2 job(s): 2 finished\n"
    publish(app, "ok", 3)
    quiet = invoke(app, "process", "-q")
    assert quiet.exit_code == 0 and quiet.output == ""


def test_process_counts_a_job_that_waited_and_ran_again_once(app: Flask) -> None:
    """5 jobs, one of which waits once and runs again in the same sweep: 5 jobs, 6 runs."""
    publish(app, "ok", 1, 2, 3, 4)
    publish(app, "wait_once", 5)
    result = invoke(app, "process")
    assert result.output == "processed 5 job(s) in 6 runs: 5 finished\n"
    with app.app_context():
        publish(app, "wait_once", 6)
        publish(app, "ok", 7)
        swept = app.bgq.process()  # type: ignore[attr-defined]
    assert swept.outcomes == {"FINISHED": 2} and swept.processed == 2 and swept.runs == 3


def test_process_says_it_is_already_running_only_when_verbose(app: Flask) -> None:
    from flask_bgqueue.locks import host_lock

    with app.app_context():
        s = app.extensions["bgqueue"].settings
    with host_lock(s.locks_dir, f"bgqueue-{s.table_name}-process") as held:
        assert held
        assert invoke(app, "process").output == ""
        assert "already running" in invoke(app, "process", "-v").output


def test_a_lock_folder_that_cannot_be_written_is_one_error_line(
    make_app: AppFactory, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "locks"
    not_a_folder.write_text("a file, not a folder")
    app = make_app(BGQUEUE_LOCKS_DIR=str(not_a_folder))
    for command in ("process", "clear-finished", "update-schema"):
        result = invoke(app, command)
        assert result.exit_code == 1, result.output
        assert lines(result.output) == [
            f"Error: cannot take the host lock in {not_a_folder} (File exists): set"
            " BGQUEUE_LOCKS_DIR to a folder this user may write to."
        ]


# -- one Error: line ---------------------------------------------------------------------

#: Every command that touches the table, with arguments that would otherwise succeed.
COMMANDS = [
    ("process",),
    ("consume", "-j", "1"),
    ("clear-finished",),
    ("list",),
    ("show", "1"),
    ("retry", "--failed"),
    ("stats",),
    ("health",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_table_not_up_to_date_with_auto_update_off_is_one_error_line(
    make_app: AppFactory, command: tuple[str, ...]
) -> None:
    app = make_app(BGQUEUE_AUTO_UPDATE_SCHEMA=False)
    result = invoke(app, *command)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = lines(result.output)
    assert line.startswith("Error: SchemaError: The job table")
    assert "Run 'flask bgq update-schema'" in line


def test_update_schema_is_the_way_out_of_that_error(make_app: AppFactory) -> None:
    app = make_app(BGQUEUE_AUTO_UPDATE_SCHEMA=False)
    assert invoke(app, "update-schema").output == "job table upgraded\n"
    assert invoke(app, "list").output == "no job matches\n"


UNREACHABLE = {
    "sqlite": "sqlite:////nonexistent-folder/jobs.db",
    "postgresql": "postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:1/none",
}


@pytest.mark.parametrize("where", sorted(UNREACHABLE))
@pytest.mark.parametrize("command", [*COMMANDS, ("update-schema",)], ids=lambda c: c[0])
def test_a_database_that_does_not_answer_is_one_error_line(
    make_app: AppFactory, command: tuple[str, ...], where: str
) -> None:
    app = make_app(BGQUEUE_DATABASE_URI=UNREACHABLE[where], BGQUEUE_ENGINE_OPTIONS={})
    result = invoke(app, *command)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = lines(result.output)
    assert line.startswith("Error: the job table's database: OperationalError: ")


def test_traceback_or_flask_debug_shows_the_stack(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(BGQUEUE_AUTO_UPDATE_SCHEMA=False)
    shown = invoke(app, "--traceback", "list")
    assert isinstance(shown.exception, SchemaError)
    monkeypatch.setenv("FLASK_DEBUG", "1")
    assert isinstance(invoke(app, "stats").exception, SchemaError)


# -- errors met while loading the app, in a real `flask` process ---------------------------

APP = """
from flask import Flask
from flask_bgqueue import BackgroundQueue

def create_app():
    app = Flask(__name__, instance_path={instance!r})
    app.config["BGQUEUE_DATABASE_URI"] = {url!r}
    app.config.from_prefixed_env()
    BackgroundQueue(app)
    return app
"""


def flask(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "envapp.py").write_text(
        textwrap.dedent(
            APP.format(instance=str(tmp_path / "instance"), url=f"sqlite:///{tmp_path}/j.db")
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "envapp", *args],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_setting_met_while_loading_the_app_is_one_error_line(tmp_path: Path) -> None:
    bad = {"FLASK_BGQUEUE_AUTO_UPDATE_SCHEMA": "True"}
    result = flask(tmp_path, "bgq", "process", **bad)
    assert result.returncode == 1
    assert lines(result.stderr) == [
        "Error: ConfigurationError: BGQUEUE_AUTO_UPDATE_SCHEMA must be True or False; got the"
        " string 'True' (environment values are JSON: write true or false)."
    ], result.stderr
    shown = flask(tmp_path, "bgq", "--traceback", "process", **bad)
    assert "Traceback" in shown.stderr


def test_bgq_on_an_app_without_the_extension_says_so(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "plain", "bgq", "list"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert lines(result.stderr) == [
        "Error: the app 'plain' does not use Flask-BgQueue: call bgq.init_app(app) in it"
        " (or point --app / FLASK_APP at the app that does)."
    ]
