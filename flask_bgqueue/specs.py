"""A registered callback (:class:`CallbackSpec`) and what ``publish()`` checks its parameters
against (:class:`KeywordFit`), both read once when the callback is registered."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .limits import Limits

__all__ = ["CallbackSpec", "KeywordFit"]


@dataclass(frozen=True)
class CallbackSpec:
    """A registered callback: the function, where its jobs go, and whether ``publish()``
    checks their parameters against its signature (``signature`` is ``None`` when Python
    cannot tell it, as for some built-in functions: then nothing is checked)."""

    name: str
    func: Callable[..., Any]
    queue: str | None = None
    priority: int | None = None
    check_arguments: bool = True
    signature: inspect.Signature | None = field(default=None, compare=False, repr=False)
    #: Seconds an attempt may run (``None``: ``BGQUEUE_DEFAULT_TIMEOUT_SECONDS``).
    timeout: float | None = None
    #: At most this many jobs running at once, and this many starts per window (see
    #: :mod:`flask_bgqueue.limits`); per ``concurrency_key`` when jobs have one.
    limits: Limits | None = None
    #: What a dict of parameters certainly fits (see :class:`KeywordFit`); ``None`` when
    #: the signature is not read or takes required arguments only by position.
    keywords: KeywordFit | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        name: str,
        func: Callable[..., Any],
        queue: str | None = None,
        priority: int | None = None,
        check_arguments: bool = True,
        timeout: float | None = None,
        limits: Limits | None = None,
    ) -> CallbackSpec:
        """A spec with the function's signature read once, here."""
        signature = None
        if check_arguments:
            try:
                signature = inspect.signature(func)
            except (TypeError, ValueError):  # a built-in without one: not checked
                pass
        keywords = None if signature is None else KeywordFit.of(signature)
        return cls(
            name, func, queue, priority, check_arguments, signature, timeout, limits, keywords
        )


@dataclass(frozen=True)
class KeywordFit:
    """The names a callback takes by keyword, read once from its signature, so that
    ``publish()`` can accept a dict of parameters with two set operations instead of
    ``Signature.bind`` (a quarter of a bulk publish's time). Only a sure fit is decided
    here; anything else goes through ``bind``, which also words the error."""

    #: Names that may be passed by keyword.
    named: frozenset[str]
    #: Names that must be passed (no default).
    required: frozenset[str]
    #: The function takes ``**kwargs``.
    any_keyword: bool

    @classmethod
    def of(cls, signature: inspect.Signature) -> KeywordFit | None:
        params = signature.parameters.values()
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if any(p.kind is p.POSITIONAL_ONLY for p in params):
            return None  # rare; ``bind`` decides
        return cls(
            named=frozenset(p.name for p in params if p.kind in kinds),
            required=frozenset(p.name for p in params if p.kind in kinds and p.default is p.empty),
            any_keyword=any(p.kind is p.VAR_KEYWORD for p in params),
        )

    def fits(self, parameters: dict[Any, Any]) -> bool:
        """True when ``func(**parameters)`` certainly binds."""
        keys = parameters.keys()
        if not self.required <= keys:
            return False
        if self.any_keyword:
            return all(type(k) is str for k in keys)
        return keys <= self.named
