"""Parameters: exact JSON when possible, signed pickle otherwise, forgeries never unpickled."""

from __future__ import annotations

import pickle
import uuid
from collections import OrderedDict
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from flask_bgqueue import ParametersError, SignatureError
from flask_bgqueue.serialization import Stored, dump, load

KEYS = (b"secret",)

EXACT_IN_JSON = [
    None,
    {"to": "a@b.c", "n": 3, "ok": True, "ratio": 0.1, "neg": -0.0},
    [1, "two", None],
    b"\x00\xffbinary",
    datetime(2026, 1, 2, 3, 4, 5, 6),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    datetime(2026, 1, 2, tzinfo=timezone.utc),
    date(2026, 1, 2),
    time(12, 30),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("1.10"),
    {"nested": [(1, 2), {"t": (b"x", date(2020, 1, 1))}]},
    {1: "int key", (1, 2): "tuple key"},
    {"__bgq__": "a user key that looks like a tag"},
    {"s": {1, 2}, "f": frozenset({"a"})},
    float("inf"),
    10**40,
]


@pytest.mark.parametrize("value", EXACT_IN_JSON, ids=repr)
def test_json_round_trips_exactly_with_types_kept(value: object) -> None:
    stored = dump(value, "auto", KEYS)
    assert stored.parameters is None and stored.parameters_json is not None
    back = load(stored, KEYS)
    assert back == value
    assert _types(back) == _types(value)


def _types(value: object) -> object:
    if isinstance(value, dict):
        return (type(value), [(_types(k), _types(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [_types(v) for v in value])
    if isinstance(value, datetime):
        return (type(value), value.tzinfo, value.tzname())
    return type(value)


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x


class Name(str):
    pass


NOT_EXACT_IN_JSON = [
    Point(3),
    OrderedDict(a=1),
    datetime(2026, 1, 1, tzinfo=ZoneInfo("Europe/Prague")),
    datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1), "CET")),
    Name("a str subclass"),
]


@pytest.mark.parametrize("value", NOT_EXACT_IN_JSON, ids=lambda v: type(v).__name__)
def test_auto_falls_back_to_signed_pickle_for_what_json_cannot_hold(value: object) -> None:
    stored = dump({"v": value}, "auto", KEYS)
    assert stored.parameters_json is None and stored.parameters is not None
    back = load(stored, KEYS)
    assert back == {"v": value} and type(back["v"]) is type(value)


def test_json_format_refuses_naming_the_value_and_its_place() -> None:
    with pytest.raises(ParametersError) as info:
        dump({"user": [1, Point(2)]}, "json", KEYS)
    assert info.value.path == "parameters['user'][1]"
    assert "Point" in str(info.value) and "parameters['user'][1]" in str(info.value)


def test_without_a_key_pickle_is_refused_saying_which_key_to_set() -> None:
    with pytest.raises(ParametersError, match="SECRET_KEY or BGQUEUE_SIGNING_KEY"):
        dump(Point(1), "auto", ())


def test_pickle_format_pickles_even_json_values() -> None:
    stored = dump({"a": 1}, "pickle", KEYS)
    assert stored.parameters_json is None and load(stored, KEYS) == {"a": 1}


def test_unpicklable_value_is_refused_with_the_reason() -> None:
    with pytest.raises(ParametersError, match="cannot be pickled"):
        dump(lambda: 1, "auto", KEYS)


CALLS: list[str] = []


def _record(text: str) -> None:
    CALLS.append(text)


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_record, ("code ran",))


def test_a_forged_payload_is_never_unpickled() -> None:
    CALLS.clear()
    genuine = dump(Point(1), "auto", KEYS).parameters
    assert genuine is not None
    forged = genuine[:36] + pickle.dumps(Exploit())  # a valid header, another body
    with pytest.raises(SignatureError, match="does not verify"):
        load(Stored(forged, None), KEYS)
    with pytest.raises(SignatureError, match="no signature"):
        load(Stored(pickle.dumps(Exploit()), None), KEYS)
    assert CALLS == []


def test_payload_signed_with_another_key_is_refused_but_a_fallback_key_verifies() -> None:
    stored = dump(Point(1), "auto", (b"old",))
    with pytest.raises(SignatureError):
        load(stored, (b"new",))
    assert load(stored, (b"new", b"old")) == Point(1)
