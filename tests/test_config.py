"""init_app: the app-factory pattern and the validation of every BGQUEUE_* key."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_bgqueue import BackgroundQueue, ConfigurationError
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
