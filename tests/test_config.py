"""init_app: the app-factory pattern and the validation of every BGQUEUE_* key."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_bgqueue import BackgroundQueue, ConfigurationError, ConfigurationWarning
from flask_bgqueue.config import DEFAULTS


def app_with(**config: object) -> Flask:
    app = Flask("cfg")
    app.config.update(SECRET_KEY="s", BGQUEUE_DATABASE_URI="sqlite://")
    app.config.update(config)
    return app


def test_app_factory_and_direct_forms_both_register_the_extension() -> None:
    bgq = BackgroundQueue()
    app = app_with()
    bgq.init_app(app)
    assert app.extensions["bgqueue"].owner is bgq
    other = app_with()
    assert BackgroundQueue(other) is other.extensions["bgqueue"].owner


def test_extension_does_not_keep_the_app() -> None:
    bgq = BackgroundQueue(app_with())
    assert not any(isinstance(v, Flask) for v in vars(bgq).values())


def test_second_init_app_on_one_app_says_to_call_it_once() -> None:
    app = app_with()
    bgq = BackgroundQueue(app)
    with pytest.raises(RuntimeError, match="call init_app\\(app\\) once"):
        bgq.init_app(app)


def test_use_outside_app_context_says_how_to_fix() -> None:
    bgq = BackgroundQueue(app_with())
    with pytest.raises(RuntimeError, match="app.app_context"):
        bgq.publish("x")


def test_use_on_an_app_without_init_app_asks_for_init_app() -> None:
    bgq = BackgroundQueue()
    with app_with().app_context(), pytest.raises(RuntimeError, match="forget to call bgq.init_app"):
        bgq.get_job(1)


def test_defaults_are_set_on_app_config() -> None:
    app = app_with()
    BackgroundQueue(app)
    for key, value in DEFAULTS.items():
        if key != "BGQUEUE_DATABASE_URI":
            assert app.config[key] == value


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("BGQUEUE_PRIORITIES", [10, 20, 10], "more than once"),
        ("BGQUEUE_PRIORITIES", [10, 1000], "0 to 999"),
        ("BGQUEUE_PRIORITIES", [-1], "0 to 999"),
        ("BGQUEUE_PRIORITIES", [], "non-empty list"),
        ("BGQUEUE_PRIORITIES", "10", "non-empty list"),
        ("BGQUEUE_PARAMETERS_FORMAT", "yaml", "auto, json, pickle"),
        ("BGQUEUE_CALLBACKS", {"a": "no_such_module_xyz:func"}, "does not import"),
        ("BGQUEUE_CALLBACKS", {"a": {"callback": "os:getpid", "colour": 1}}, "unknown options"),
        (
            "BGQUEUE_CALLBACKS",
            {"a": {"callback": "os:getpid", "priority": 7}},
            "not in BGQUEUE_PRIORITIES",
        ),
        ("BGQUEUE_CALLBACKS", ["os:getpid"], "must map"),
        ("BGQUEUE_BULK_SIZE", 0, ">= 1"),
        ("BGQUEUE_BULK_SIZE", "100", ">= 1"),
        ("BGQUEUE_WAITING_JOB_EXPIRATION_MS", -5, ">= 0"),
        ("BGQUEUE_NOTIFY_ON_NUMBER_OF_ATTEMPTS", 0, ">= 1"),
        ("BGQUEUE_MAX_ATTEMPTS", 1.5, "an integer"),
        ("BGQUEUE_PUBLISH_AFTER_APP_COMMIT", "yes", "True or False"),
        ("BGQUEUE_AUTO_UPDATE_SCHEMA", 1, "True or False"),
        ("BGQUEUE_TABLE_NAME", "jobs; drop table x", "letters, digits"),
        ("BGQUEUE_TABLE_NAME", "t" * 41, "at most 40"),
        ("BGQUEUE_QUEUE", "", "non-empty string"),
        ("BGQUEUE_HEARTBEAT_INTERVAL_SECONDS", 0, ">= 0.01"),
        ("BGQUEUE_CLAIM_BATCH_SIZE", 0, ">= 1"),
        ("BGQUEUE_WORKER_LOST_AFTER_SECONDS", float("nan"), "finite number"),
        ("BGQUEUE_WORKER_LOST_AFTER_SECONDS", float("inf"), "finite number"),
        ("BGQUEUE_HEARTBEAT_INTERVAL_SECONDS", float("nan"), "finite number"),
        ("BGQUEUE_BROKER_RESEND_AFTER_SECONDS", float("inf"), "finite number"),
        ("BGQUEUE_NETWORK_TIMEOUT_SECONDS", 0.5, ">= 1"),
        ("BGQUEUE_NETWORK_TIMEOUT_SECONDS", "30", "finite number"),
        ("BGQUEUE_AMQP_QUEUE_ARGUMENTS", [1], "must be a dict"),
        ("BGQUEUE_ENGINE_OPTIONS", None, "must be a dict"),
    ],
)
def test_wrong_value_fails_at_init_app_naming_the_key(
    key: str, value: object, fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as info:
        BackgroundQueue(app_with(**{key: value}))
    assert info.value.key == key
    assert key in str(info.value)


def test_pickle_format_without_any_key_fails_at_init_app() -> None:
    app = app_with(BGQUEUE_PARAMETERS_FORMAT="pickle")
    app.config["SECRET_KEY"] = None
    with pytest.raises(ConfigurationError, match="SECRET_KEY or BGQUEUE_SIGNING_KEY"):
        BackgroundQueue(app)


def test_missing_database_names_both_ways_to_configure_it() -> None:
    app = Flask("nodb")
    with pytest.raises(ConfigurationError) as info:
        BackgroundQueue(app)
    message = str(info.value)
    assert "SQLALCHEMY_BINDS['bgqueue']" in message and "BGQUEUE_DATABASE_URI" in message


def test_priorities_are_kept_sorted_most_urgent_first() -> None:
    app = app_with(BGQUEUE_PRIORITIES=[30, 10, 20])
    BackgroundQueue(app)
    assert app.extensions["bgqueue"].settings.priorities == (10, 20, 30)


def test_config_callbacks_accept_import_strings_and_options() -> None:
    app = app_with(
        BGQUEUE_PRIORITIES=[1, 20],
        BGQUEUE_CALLBACKS={
            "pid": "os:getpid",
            "cwd": {"callback": "os.getcwd", "queue": "io", "priority": 20},
        },
    )
    BackgroundQueue(app)
    callbacks = app.extensions["bgqueue"].settings.callbacks
    import os

    assert callbacks["pid"].func is os.getpid
    assert (callbacks["cwd"].func, callbacks["cwd"].queue, callbacks["cwd"].priority) == (
        os.getcwd,
        "io",
        20,
    )


def test_two_decorated_callbacks_with_one_name_is_an_error() -> None:
    bgq = BackgroundQueue()

    @bgq.callback("send")
    def first() -> None: ...

    with pytest.raises(ConfigurationError, match="already registered"):

        @bgq.callback("send")
        def second() -> None: ...


def test_decorator_name_defaults_to_the_function_name() -> None:
    bgq = BackgroundQueue()

    @bgq.callback
    def resize_image() -> None: ...

    assert bgq._registry.callbacks["resize_image"].func is resize_image


def test_config_and_decorator_callback_with_one_name_is_an_error() -> None:
    bgq = BackgroundQueue()

    @bgq.callback("pid")
    def pid() -> None: ...

    with pytest.raises(
        ConfigurationError, match="both in BGQUEUE_CALLBACKS and with @bgq.callback"
    ):
        bgq.init_app(app_with(BGQUEUE_CALLBACKS={"pid": "os:getpid"}))


# -- values from the environment (app.config.from_prefixed_env) ----------------------------


def env_app(monkeypatch: pytest.MonkeyPatch, **env: str) -> Flask:
    for name, value in env.items():
        monkeypatch.setenv(f"FLASK_{name}", value)
    app = app_with()
    app.config.from_prefixed_env()
    return app


def test_environment_values_written_as_json_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    app = env_app(
        monkeypatch,
        BGQUEUE_AUTO_UPDATE_SCHEMA="false",
        BGQUEUE_PRIORITIES="[10, 20]",
        BGQUEUE_MAX_ATTEMPTS="null",
        BGQUEUE_QUEUE="mail",
    )
    BackgroundQueue(app)
    s = app.extensions["bgqueue"].settings
    assert (s.auto_update_schema, s.priorities, s.max_attempts, s.queue) == (
        False,
        (10, 20),
        None,
        "mail",
    )


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        (
            "BGQUEUE_AUTO_UPDATE_SCHEMA",
            "True",
            "BGQUEUE_AUTO_UPDATE_SCHEMA must be True or False; got the string 'True'"
            " (environment values are JSON: write true or false).",
        ),
        (
            "BGQUEUE_PRIORITIES",
            "10,20",
            "BGQUEUE_PRIORITIES must be a non-empty list of integers; got the string '10,20'"
            " (environment values are JSON: write a list such as [10, 20]).",
        ),
        (
            "BGQUEUE_MAX_ATTEMPTS",
            "five",
            "BGQUEUE_MAX_ATTEMPTS must be an integer >= 1; got the string 'five'"
            " (environment values are JSON: write a number such as 1, or null).",
        ),
        (
            "BGQUEUE_ENGINE_OPTIONS",
            "pool_size=5",
            "BGQUEUE_ENGINE_OPTIONS must be a dict; got the string 'pool_size=5'"
            ' (environment values are JSON: write an object such as {"key": "value"}).',
        ),
        (
            "BGQUEUE_QUEUE",
            "123",
            "BGQUEUE_QUEUE must be a non-empty string, not 123"
            ' (environment values are JSON: write "123" for text).',
        ),
    ],
)
def test_a_wrong_environment_value_says_what_it_got_and_what_to_write(
    monkeypatch: pytest.MonkeyPatch, key: str, text: str, message: str
) -> None:
    app = env_app(monkeypatch, **{key: text})
    with pytest.raises(ConfigurationError) as info:
        BackgroundQueue(app)
    assert str(info.value) == message and info.value.key == key


def test_an_unknown_key_is_a_warning_naming_the_closest_known_key() -> None:
    app = app_with(BGQUEUE_PRIORITY=[10, 20], BGQUEUE_PRIORITIES=[10, 20])
    with pytest.warns(ConfigurationWarning) as caught:
        BackgroundQueue(app)
    [warning] = caught
    assert str(warning.message) == (
        "BGQUEUE_PRIORITY is not a Flask-BgQueue setting and is ignored;"
        " did you mean BGQUEUE_PRIORITIES?"
    )
    assert warning.filename == __file__  # it points at the init_app call


def test_an_unknown_key_like_no_known_one_points_at_the_docs() -> None:
    with pytest.warns(ConfigurationWarning, match="XYZZY is not a .* see the configuration docs"):
        BackgroundQueue().init_app(app_with(BGQUEUE_XYZZY=1))
