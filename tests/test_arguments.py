"""Mistakes caught when they are made, not hours later when the job runs.

``publish()`` checks the parameters against the callback's signature (a dict as keyword
arguments, a list as positional ones), ``init_app`` checks a decorator's priority, and a
SQLAlchemy model stored as a pickle is warned of.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_bgqueue import ArgumentsError, BackgroundQueue, ConfigurationError, PublishError
from flask_bgqueue.specs import KeywordFit
from tests.conftest import AppFactory
from tests.helpers import all_jobs


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the checks happen before the database is touched."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def ship(order_id: int, *, express: bool = False) -> None:
    """A module-level callback, to be named in BGQUEUE_CALLBACKS."""


@pytest.fixture
def bgq(make_app: AppFactory) -> Any:
    bgq = BackgroundQueue()
    bgq.callback("ship")(ship)
    bgq.callback("anything", check_arguments=False)(ship)
    bgq.callback("positional")(lambda a, b=2, /: None)
    app = make_app(
        bgq,
        BGQUEUE_CALLBACKS={
            "ship_by_config": "tests.test_arguments:ship",
            "unchecked_by_config": {
                "callback": "tests.test_arguments:ship",
                "check_arguments": False,
            },
        },
    )
    with app.app_context():
        yield bgq


def refused(bgq: Any, name: str, parameters: Any) -> ArgumentsError:
    with pytest.raises(ArgumentsError) as info:
        bgq.publish(name, parameters)
    assert all_jobs(bgq) == []  # nothing was stored
    return info.value


def test_a_mistyped_keyword_is_refused_naming_the_callback_and_the_argument(bgq: Any) -> None:
    error = refused(bgq, "ship", {"ordr_id": 1})
    assert isinstance(error, PublishError)
    assert (error.callback_name, error.argument) == ("ship", "ordr_id")
    assert str(error).startswith(
        "callback 'ship': ship(order_id, *, express=False) takes no argument 'ordr_id'"
        " (did you mean 'order_id'?), so the job would fail when it ran; nothing was stored."
    )
    assert "check_arguments=False" in str(error)


@pytest.mark.parametrize(
    ("parameters", "argument", "fragment"),
    [
        ({}, "order_id", "needs the argument 'order_id'"),
        (None, "order_id", "needs the argument 'order_id'"),
        ({"order_id": 1, "colour": "red"}, "colour", "takes no argument 'colour'"),
        ([1, 2], None, "cannot take these parameters (too many positional arguments)"),
        ([], "order_id", "needs the argument 'order_id'"),
    ],
)
def test_parameters_that_do_not_fit_are_refused(
    bgq: Any, parameters: Any, argument: str | None, fragment: str
) -> None:
    error = refused(bgq, "ship", parameters)
    assert error.argument == argument and fragment in str(error)


@pytest.mark.parametrize(
    "parameters", [{"order_id": 1}, {"order_id": 1, "express": True}, [1], (1,), 7]
)
def test_parameters_that_fit_are_stored(bgq: Any, parameters: Any) -> None:
    assert bgq.publish("ship", parameters) is not None


def test_a_keyword_for_a_positional_only_argument_says_to_publish_a_list(bgq: Any) -> None:
    error = refused(bgq, "positional", {"a": 1})
    assert error.argument == "a" and "takes 'a' only by position (publish a list)" in str(error)
    assert bgq.publish("positional", [1]) is not None


def test_callbacks_from_the_config_are_checked_alike(bgq: Any) -> None:
    error = refused(bgq, "ship_by_config", {"ordr_id": 1})
    assert (error.callback_name, error.argument) == ("ship_by_config", "ordr_id")


def test_check_arguments_false_stores_what_the_signature_does_not_allow(bgq: Any) -> None:
    assert bgq.publish("anything", {"ordr_id": 1}) is not None
    assert bgq.publish("unchecked_by_config", {"ordr_id": 1}) is not None


def test_a_callable_without_a_signature_is_not_checked(bgq: Any) -> None:
    bgq.callback("builtin")(dict)  # inspect cannot tell every built-in's signature
    assert bgq.publish("builtin", {"a": 1}) is not None


def test_check_arguments_in_the_config_must_be_a_flag(make_app: AppFactory) -> None:
    callbacks = {"x": {"callback": "tests.test_arguments:ship", "check_arguments": "no"}}
    with pytest.raises(ConfigurationError, match="check_arguments 'no'; use True or False"):
        make_app(BGQUEUE_CALLBACKS=callbacks)


# -- a decorator's priority, at init_app ---------------------------------------------------


def test_a_decorator_priority_outside_the_configured_ones_fails_at_init_app(
    make_app: AppFactory,
) -> None:
    bgq = BackgroundQueue()
    bgq.callback("urgent", priority=5)(ship)
    with pytest.raises(ConfigurationError) as info:
        make_app(bgq, BGQUEUE_PRIORITIES=[10, 20])
    assert str(info.value) == (
        "callback 'urgent' has priority 5, which is not in BGQUEUE_PRIORITIES [10, 20]: add"
        " it there, or give @bgq.callback another priority."
    )
    assert info.value.key == "BGQUEUE_PRIORITIES"


# -- a SQLAlchemy model as a parameter ------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)


def test_a_model_instance_stored_as_a_pickle_is_warned_of_once_saying_to_pass_its_id(
    bgq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bgq.callback("ship_order")(lambda order, note="": None)
    with caplog.at_level(logging.WARNING):
        bgq.publish("ship_order", {"order": Order(id=7), "note": "gift"})
        bgq.publish("ship_order", {"order": Order(id=8)})
    warnings = [r for r in caplog.records if "SQLAlchemy" in r.getMessage()]
    assert len(warnings) == 1  # once per callback, not once per job
    message = warnings[0].getMessage()
    assert "publish('ship_order'): parameters['order'] is a SQLAlchemy Order instance" in message
    assert "Pass its id and load it in the callback." in message
    assert warnings[0].callback == "ship_order"  # type: ignore[attr-defined]


def test_plain_parameters_and_other_pickles_are_not_warned_of(
    bgq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bgq.callback("takes")(lambda value: None)
    with caplog.at_level(logging.WARNING):
        bgq.publish("takes", [{"order_id": 7}])
        bgq.publish("takes", [Path("/srv")])  # pickled, but no model
    assert not [r for r in caplog.records if "SQLAlchemy" in r.getMessage()]


def _kw_only(*, a: int, b: int = 2) -> None: ...
def _mixed(a: int, b: int = 1, *args: Any, c: int, d: int = 4) -> None: ...
def _any_keyword(a: int, **kwargs: Any) -> None: ...
def _plain(a: int, b: int) -> None: ...
def _none() -> None: ...


@pytest.mark.parametrize("func", [_kw_only, _mixed, _any_keyword, _plain, _none])
def test_the_quick_keyword_check_accepts_only_what_bind_accepts(func: Any) -> None:
    """A dict that publish() accepts without ``Signature.bind`` always binds, and every dict
    that binds is accepted by one of the two (the quick check never refuses: it falls back)."""
    signature = inspect.signature(func)
    fit = KeywordFit.of(signature)
    assert fit is not None
    names = ["a", "b", "c", "d", "e", "args", "kwargs"]
    accepted = 0
    for size in range(len(names) + 1):
        for keys in itertools.combinations(names, size):
            parameters: dict[Any, Any] = dict.fromkeys(keys, 1)
            try:
                signature.bind(**parameters)
                binds = True
            except TypeError:
                binds = False
            if fit.fits(parameters):
                accepted += 1
                assert binds, (func.__name__, keys)
    assert accepted > 0
    assert not fit.fits({1: 2, **dict.fromkeys(fit.required, 1)})  # not a name: bind decides


def test_positional_only_callbacks_are_always_checked_by_bind() -> None:
    def f(a: int, /, b: int) -> None: ...

    assert KeywordFit.of(inspect.signature(f)) is None
