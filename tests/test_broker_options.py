"""The broker's settings: several node URLs, AMQP arguments per queue, a broker class.

Errors are checked without any server; the arguments on the real RabbitMQ, the broker
class with the in-memory broker installed through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pika
import pytest
from flask import Flask

from flask_bgqueue import BackgroundQueue, ConfigurationError, JobState
from flask_bgqueue.broker import Broker
from flask_bgqueue.broker.amqp import AmqpBroker, control_queue, delay_queue, work_queue
from flask_bgqueue.broker.memory import MemoryBroker
from tests.conftest import AMQP_URL, AppFactory, ProcEnv
from tests.test_broker_amqp import rabbit_queues

A = "amqp://bgqueue:secret@10.0.0.1:5672/%2F"  # never contacted: nothing connects at init
B = "amqp://bgqueue:secret@10.0.0.2:5672/%2F"


def init(**config: Any) -> Flask:
    app = Flask("opts")
    app.config.update(SECRET_KEY="s", BGQUEUE_DATABASE_URI="sqlite://", **config)
    BackgroundQueue(app)
    return app


def broker(app: Flask) -> Any:
    return app.extensions["bgqueue"].broker


# -- several URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [[A, B], (A, B), f"{A},{B}", f" {A} , {B} "], ids=["list", "tuple", "env", "spaces"]
)
def test_broker_url_takes_the_nodes_of_a_cluster_as_a_list_or_comma_separated(value: Any) -> None:
    app = init(BGQUEUE_BROKER_URL=value)
    assert app.extensions["bgqueue"].settings.broker_urls == (A, B)
    assert isinstance(broker(app), AmqpBroker) and broker(app).urls == (A, B)
    masked = "amqp://bgqueue:***@10.0.0.1:5672/%2F, amqp://bgqueue:***@10.0.0.2:5672/%2F"
    assert broker(app).describe() == masked


def test_from_prefixed_env_gives_the_comma_separated_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_BGQUEUE_BROKER_URL", f"{A},{B}")
    app = Flask("opts")
    app.config.update(SECRET_KEY="s", BGQUEUE_DATABASE_URI="sqlite://")
    app.config.from_prefixed_env()
    BackgroundQueue(app)
    assert broker(app).urls == (A, B)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "must be a URL, several URLs separated by commas, or a non-empty list"),
        (5672, "must be a URL, several URLs separated by commas, or a non-empty list"),
        (f"{A},", "holds an empty or non-text URL ''"),
        ([A, None], "holds an empty or non-text URL None"),
        ([A, "redis://h"], "'redis://h' has an unknown scheme; use amqp://"),
        (["memory://x", "memory://y"], "several URLs, which only RabbitMQ nodes"),
        ([A, A], "lists a node more than once"),
    ],
    ids=["empty", "number", "trailing-comma", "none", "scheme", "memory", "twice"],
)
def test_a_bad_broker_url_list_names_the_key_and_the_fix(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match="BGQUEUE_BROKER_URL") as info:
        init(BGQUEUE_BROKER_URL=value)
    assert message in str(info.value)
    assert "secret" not in str(info.value)  # passwords masked in errors too


# -- per-queue arguments -------------------------------------------------------------------


def test_arguments_by_queue_apply_by_full_or_callback_queue_name_over_the_common_ones() -> None:
    app = init(
        BGQUEUE_BROKER_URL=A,
        BGQUEUE_AMQP_QUEUE_ARGUMENTS={"x-queue-type": "quorum", "x-delivery-limit": 5},
        BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE={
            "emails": {"x-queue-type": "classic"},  # the callback's queue=: default_emails
            "default_imports": {"x-single-active-consumer": True},
            "imports": {"x-single-active-consumer": False},  # the full name above wins
        },
    )
    b = broker(app)
    assert b.arguments_for("default") == {"x-queue-type": "quorum", "x-delivery-limit": 5}
    assert b.arguments_for("default_emails") == {"x-queue-type": "classic", "x-delivery-limit": 5}
    assert b.arguments_for("default_imports")["x-single-active-consumer"] is True


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([("emails", {})], "must map queue names to dicts of arguments"),
        ({"": {}}, "holds an empty or non-text queue name ''"),
        ({"emails": "quorum"}, "['emails'] must be a dict of AMQP arguments"),
        ({"emails": {1: 2}}, "['emails'] must be a dict of AMQP arguments"),
    ],
    ids=["not-a-dict", "empty-name", "not-arguments", "non-text-argument"],
)
def test_bad_arguments_by_queue_name_the_key_and_the_fix(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match="BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE") as info:
        init(BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE=value)
    assert message in str(info.value)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_queue_s_own_arguments_reach_its_rabbitmq_queues_only(
    procs: ProcEnv, amqp_queue: str
) -> None:
    procs.config = {
        "BGQUEUE_BROKER_URL": AMQP_URL,
        "BGQUEUE_QUEUE": amqp_queue,
        "BGQUEUE_CALLBACKS": {"mail": {"callback": "tests.procapp:noop", "queue": "emails"}},
        "BGQUEUE_AMQP_QUEUE_ARGUMENTS_BY_QUEUE": {"emails": {"x-queue-type": "quorum"}},
    }
    emails = f"{amqp_queue}_emails"
    app = procs.app()
    try:
        with app.app_context():
            bgq = app.bgq  # type: ignore[attr-defined]
            bgq.publish("noop")
            bgq.publish("mail")
            bgq.publish(
                "mail", available_at=timedelta(seconds=3.5)
            )  # a delay tier, declared by the publisher
            assert app.extensions["bgqueue"].broker.flush(60)
        for queue in (amqp_queue, emails):  # each consumer declares its control queue
            result = procs.run("bgq", "consume", queue, "-j", "1")
            assert result.returncode == 0, result.stderr
        queues = rabbit_queues(f"bgq.{amqp_queue}")
        assert queues[work_queue(amqp_queue, 1)] == "classic"
        assert queues[control_queue(amqp_queue)] == "classic"
        assert queues[work_queue(emails, 1)] == "quorum"
        assert queues[delay_queue(emails, 1, 3200)] == "quorum"
        assert queues[control_queue(emails)] == "quorum"
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        for name in (work_queue(emails, 1), delay_queue(emails, 1, 3200), control_queue(emails)):
            channel.queue_delete(name)
        connection.close()


# -- a broker class ------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_in_memory_broker_installed_by_import_string_runs_the_jobs(
    make_app: AppFactory,
) -> None:
    app = make_app(BGQUEUE_BROKER_CLASS="flask_bgqueue.broker.memory:MemoryBroker")
    ran: list[int] = []
    bgq = app.bgq  # type: ignore[attr-defined]
    bgq.callback("work")(ran.append)
    installed = broker(app)
    assert type(installed) is MemoryBroker
    with app.app_context():
        ids = [bgq.publish("work", n) for n in range(3)]
        assert installed.pending("default", 1) == ids  # the ids went through it
        assert bgq.consume(max_jobs=3).jobs == 3
        assert ran == [0, 1, 2]
        assert {bgq.get_job(i).state for i in ids} == {JobState.FINISHED}


class ConfiguredBroker(MemoryBroker):
    """A broker that reads settings of its own from the app's config."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Broker:
        return cls(config["MYBROKER_NAME"] + " " + ",".join(config["BGQUEUE_BROKER_URL"]))


class Incomplete(Broker):
    """Leaves the abstract methods out."""


def test_a_broker_class_reads_its_own_settings_and_is_given_the_url_as_written() -> None:
    app = init(
        BGQUEUE_BROKER_CLASS=ConfiguredBroker,
        BGQUEUE_BROKER_URL=["kafka://one", "kafka://two"],  # its own scheme: not checked
        MYBROKER_NAME="mine",
    )
    assert broker(app).name == "mine kafka://one,kafka://two"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no_such_module:Broker", "= 'no_such_module:Broker' does not import"),
        ("flask_bgqueue.broker.memory:Nope", "does not import"),
        ("flask_bgqueue.broker.memory:MemoryConsumer", "is not a broker: it must name a subclass"),
        (dict, "is not a broker"),
        (Incomplete, "cannot be made by tests.test_broker_options.Incomplete.from_config"),
    ],
    ids=["module", "name", "consumer", "not-a-broker", "abstract"],
)
def test_a_bad_broker_class_names_the_key_and_the_fix(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match="BGQUEUE_BROKER_CLASS") as info:
        init(BGQUEUE_BROKER_CLASS=value)
    assert message in str(info.value)
