"""What crosses the agent's boundaries: invocation arguments in, results out, short messages.

Shared by the agent and its worker processes, so it imports neither grpc nor the runtime,
and binds the JSON functions it uses at import (before a worker runs deployed code,
which may patch ``json`` in its process).
Messages that go back to a caller are cut short (:func:`clip`, :func:`shown`): a status
message must stay far below gRPC's metadata limit, or the caller gets
RESOURCE_EXHAUSTED instead of the real error, and outside input is never echoed whole.
"""

from __future__ import annotations

import math
from json import dumps as _dumps
from json import loads as _loads
from typing import Any

from ..errors import InvalidArgumentError

__all__ = [
    "MAX_MESSAGE_CHARS",
    "MAX_TIMEOUT_S",
    "JsonText",
    "check_seconds",
    "clip",
    "decode_args",
    "exception_text",
    "json_default",
    "result_json",
    "shown",
    "split_args",
]

#: longest message sent back to a caller (status details stay well under 1 KiB)
MAX_MESSAGE_CHARS = 600
#: longest timeout or grace accepted anywhere (a day)
MAX_TIMEOUT_S = 86400.0


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    tail = f"... [{len(text)} characters]"
    return text[: max(0, limit - len(tail))] + tail


def shown(value: object, limit: int = 80) -> str:
    """The ``repr`` of an outside value, cut short (strings are cut before ``repr`` runs)."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... [{len(value)} long]"
    return clip(repr(value), limit + 20)


def exception_text(exc: BaseException, limit: int = 400) -> str:
    """``Type: message`` of an exception, its message cut short."""
    try:
        message = str(exc)
    except Exception:
        message = "(its message cannot be shown)"
    return clip(f"{type(exc).__name__}: {message}" if message else type(exc).__name__, limit)


def check_seconds(value: Any, what: str, *, allow_zero: bool = True) -> float:
    """A number of seconds from outside: finite, not negative, at most :data:`MAX_TIMEOUT_S`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{what} must be a number of seconds, not {shown(value)}")
    seconds = float(value)
    low_ok = seconds >= 0 if allow_zero else seconds > 0
    if not math.isfinite(seconds) or not low_ok or seconds > MAX_TIMEOUT_S:
        raise InvalidArgumentError(f"{what} must be between 0 and {MAX_TIMEOUT_S:g} seconds, not {shown(value)}")
    return seconds


class JsonText(str):
    """A result already encoded as JSON (by a worker process); sent on as it is."""

    __slots__ = ()


def decode_args(args_json: str, payload: bytes | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments of an invocation (see ``InvokeRequest``).

    A JSON array is the positional arguments, an object the keyword arguments, any
    other value one argument; ``payload`` goes first.  Invalid or too deeply nested
    JSON is an :class:`InvalidArgumentError`.
    """
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if args_json:
        try:
            value = _loads(args_json)
        except ValueError as exc:
            raise InvalidArgumentError(f"arguments are not valid JSON: {clip(str(exc), 200)}") from None
        except RecursionError:
            raise InvalidArgumentError("arguments are nested too deeply") from None
        args, kwargs = split_args(value)
    if payload is not None:
        args = (payload, *args)
    return args, kwargs


def split_args(value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A decoded JSON argument value as (positional, keyword) arguments."""
    if isinstance(value, list):
        return tuple(value), {}
    if isinstance(value, dict):
        return (), value
    return (value,), {}


def json_default(value: Any) -> Any:
    """numpy scalars and arrays, Arrow arrays and sets as plain Python values (for :func:`json.dumps`)."""
    tolist = getattr(value, "tolist", None) or getattr(value, "to_pylist", None)
    if tolist is not None:
        return tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def result_json(value: Any) -> str:
    """A non-bytes result as JSON text; ValueError when it cannot be encoded."""
    if isinstance(value, JsonText):
        return value
    try:
        return _dumps(value, default=json_default)
    except RecursionError:
        raise ValueError("the result is nested too deeply") from None
    except TypeError as exc:
        raise ValueError(clip(str(exc), 200)) from None
