"""Parameters to stored form and back: exact JSON when possible, else signed pickle.

JSON keeps what the standard encoder cannot by tagging it: ``{"__bgq__": "bytes", "v":
"<base64>"}``. A value is stored as JSON only when decoding gives back an equal value of
the very same types (a ``str`` subclass, an ``OrderedDict`` or a ``zoneinfo`` time zone does
not), so a job never sees its arguments change shape.

Pickle is the fallback for arbitrary objects. It is signed with HMAC-SHA256 under a key
derived from ``SECRET_KEY`` (or ``BGQUEUE_SIGNING_KEY``), and a payload whose signature
does not verify is never unpickled: whoever can write the table cannot make a worker run
code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import pickle
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any

from .exceptions import ParametersError, SignatureError

TAG = "__bgq__"
_MAGIC = b"BGQ1"
#: ``json.dumps(value, separators=(",", ":"))`` without building an encoder per call.
_compact = json.JSONEncoder(separators=(",", ":")).encode
_SALT = b"flask-bgqueue.parameters"


class _NotJson(Exception):
    def __init__(self, path: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.path, self.value, self.reason = path, value, reason


@dataclass(frozen=True)
class Stored:
    """The two columns that hold parameters; exactly one is not ``None``."""

    parameters: bytes | None
    parameters_json: str | None


def dump(value: Any, fmt: str, keys: tuple[bytes, ...]) -> Stored:
    """Encode parameters for the table, or raise :class:`ParametersError`."""
    if fmt != "pickle":
        if type(value) is dict and TAG not in value and _flat(value):
            return Stored(None, _compact(value))
        try:
            return Stored(None, _compact(_encode(value, "parameters")))
        except _NotJson as exc:
            if fmt == "json":
                raise ParametersError(
                    f"{exc.path} = {_short(exc.value)} cannot be stored as JSON: {exc.reason}."
                    " Pass JSON-compatible values or set BGQUEUE_PARAMETERS_FORMAT to 'auto'.",
                    exc.path,
                    exc.value,
                ) from None
            if not keys:
                raise ParametersError(
                    f"{exc.path} = {_short(exc.value)} cannot be stored as JSON ({exc.reason})"
                    " and pickle is refused because no key signs it: set SECRET_KEY or"
                    " BGQUEUE_SIGNING_KEY.",
                    exc.path,
                    exc.value,
                ) from None
    elif not keys:
        raise ParametersError(
            "pickled parameters must be signed: set SECRET_KEY or BGQUEUE_SIGNING_KEY."
        )
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ParametersError(
            f"parameters = {_short(value)} cannot be pickled: {exc}. Pass plain data (ids,"
            " strings, numbers) and load objects inside the callback.",
            "parameters",
            value,
        ) from exc
    return Stored(_MAGIC + _sign(keys[0], data) + data, None)


def find_models(value: Any, path: str = "parameters") -> list[tuple[str, Any]]:
    """SQLAlchemy model instances in ``value`` (in its containers too), with their paths.

    Told by the state SQLAlchemy keeps on each instance, so sqlalchemy.orm is not imported.
    """
    if hasattr(value, "_sa_instance_state"):
        return [(path, value)]
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += find_models(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found += find_models(v, f"{path}[{i}]")
    elif isinstance(value, (set, frozenset)):
        for v in value:
            found += find_models(v, f"{path} item")
    return found


def load(stored: Stored, keys: tuple[bytes, ...]) -> Any:
    """Decode stored parameters; raise :class:`SignatureError` rather than unpickle a forgery."""
    if stored.parameters_json is not None:
        return _decode(json.loads(stored.parameters_json))
    blob = stored.parameters
    if blob is None:
        return None
    blob = bytes(blob)
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 32:
        raise SignatureError(
            "the pickled parameters carry no signature; refusing to unpickle them."
        )
    signature, data = blob[len(_MAGIC) : len(_MAGIC) + 32], blob[len(_MAGIC) + 32 :]
    if not keys:
        raise SignatureError(
            "the parameters are pickled but no key can verify them: set SECRET_KEY or"
            " BGQUEUE_SIGNING_KEY to the key that signed them."
        )
    if not any(hmac.compare_digest(signature, _sign(k, data)) for k in keys):
        raise SignatureError(
            "the signature of the pickled parameters does not verify (they were altered, or"
            " signed with another SECRET_KEY); refusing to unpickle them."
        )
    return pickle.loads(data)


def describe(stored: Stored) -> str:
    """A safe, readable description of stored parameters that never unpickles."""
    if stored.parameters_json is not None:
        return stored.parameters_json
    if stored.parameters is None:
        return "null"
    return f"<pickle, {len(stored.parameters)} bytes, signed>"


def _sign(key: bytes, data: bytes) -> bytes:
    derived = hmac.new(key, _SALT, hashlib.sha256).digest()
    return hmac.new(derived, data, hashlib.sha256).digest()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_SCALARS = frozenset({str, int, bool, type(None)})


def _flat(value: dict[Any, Any]) -> bool:
    """Whether a dict holds only ``str`` keys and str/int/bool/None values: plain JSON as is."""
    scalars = _SCALARS
    return all(type(k) is str and type(v) in scalars for k, v in value.items())


def json_text(text: str) -> str:
    """``text`` as it appears inside a stored JSON string (escapes included)."""
    return json.dumps(text)[1:-1]


def _tagged(kind: str, v: Any) -> dict[str, Any]:
    return {TAG: kind, "v": v}


def _encode(value: Any, path: str) -> Any:
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return value if math.isfinite(value) else _tagged("float", repr(value))
    if t is list:
        return [_encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if t is tuple:
        return _tagged("tuple", [_encode(v, f"{path}[{i}]") for i, v in enumerate(value)])
    if t is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: _encode(v, f"{path}[{k!r}]") for k, v in value.items()}
        return _tagged(
            "dict",
            [
                [_encode(k, f"{path} key {k!r}"), _encode(v, f"{path}[{k!r}]")]
                for k, v in value.items()
            ],
        )
    if t is set or t is frozenset:
        return _tagged(t.__name__, [_encode(v, f"{path} item") for v in value])
    if t is bytes:
        return _tagged("bytes", base64.b64encode(value).decode("ascii"))
    if t is datetime or t is time:
        if value.tzinfo is not None and (
            type(value.tzinfo) is not timezone
            or value.tzinfo != timezone(value.utcoffset())  # type: ignore[arg-type,unused-ignore]
            or value.tzname() != timezone(value.utcoffset()).tzname(None)  # type: ignore[arg-type,unused-ignore]
        ):
            raise _NotJson(path, value, f"its time zone {value.tzinfo!r} is not a fixed offset")
        return _tagged(t.__name__, value.isoformat())
    if t is date:
        return _tagged("date", value.isoformat())
    if t is uuid.UUID:
        return _tagged("uuid", str(value))
    if t is Decimal:
        return _tagged("decimal", str(value))
    raise _NotJson(path, value, f"JSON has no exact form for {t.__module__}.{t.__qualname__}")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "float": float,
    "tuple": lambda v: tuple(_decode(x) for x in v),
    "dict": lambda v: {_decode(k): _decode(x) for k, x in v},
    "set": lambda v: {_decode(x) for x in v},
    "frozenset": lambda v: frozenset(_decode(x) for x in v),
    "bytes": base64.b64decode,
    "datetime": datetime.fromisoformat,
    "time": time.fromisoformat,
    "date": date.fromisoformat,
    "uuid": uuid.UUID,
    "decimal": Decimal,
}


def _decode(value: Any) -> Any:
    if type(value) is list:
        return [_decode(v) for v in value]
    if type(value) is dict:
        if TAG in value:
            return _DECODERS[value[TAG]](value["v"])
        return {k: _decode(v) for k, v in value.items()}
    return value
