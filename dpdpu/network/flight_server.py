"""The gRPC side of the Flight endpoint: error mapping, bearer-token auth, checks of the listening address.

Handlers raise dpdpu errors, pyarrow errors or plain Python ones; pyarrow's
Flight server turns a few Python exception types into gRPC status codes
(``KeyError``: NOT_FOUND, ``pyarrow.ArrowInvalid``: INVALID_ARGUMENT,
``NotImplementedError``: UNIMPLEMENTED, ``FlightUnauthenticatedError``:
UNAUTHENTICATED ...) and everything else into INTERNAL.  :func:`flight_error`
picks the right one for each error a handler can meet, so clients see the
status that matches the cause, with the message that explains it.

Messages are short: error messages quote at most an excerpt of their input
(:func:`dpdpu.errors.shown`), and :func:`flight_error` cuts whatever a
handler raises to :data:`WIRE_MESSAGE_BYTES`, so that a status (which gRPC
and Flight carry several times over in its trailing metadata) stays far
below gRPC's 16 KiB metadata limit and the client sees the real error.

Only the message leaves the server.  pyarrow describes a Python exception
that becomes a non-Flight status (INVALID_ARGUMENT, NOT_FOUND ...) with
``traceback.format_exception`` and sends that text to the client as the
status detail: file paths and source lines of the server.  Every exception
:func:`mapped` lets out is marked, and a thin wrapper of
``traceback.format_exception`` (installed once, delegating for every other
exception) describes a marked one by its type name alone, which is what
pyarrow itself sends when it cannot format one.  The traceback is logged
on the server instead (``dpdpu.network.flight_server`` logger, DEBUG; an
unexpected error at WARNING).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.flight as flight

from .. import errors
from .addresses import is_loopback
from .flight_catalog import UploadAbortedError

__all__ = [
    "WIRE_MESSAGE_BYTES",
    "BearerAuth",
    "FlightConfigError",
    "check_location",
    "flight_error",
    "mapped",
    "mapped_batches",
]

F = TypeVar("F", bound=Callable[..., Any])


class FlightConfigError(errors.InvalidArgumentError):
    """The endpoint's configuration is unsafe or inconsistent (e.g. no token off loopback)."""


# --- errors -------------------------------------------------------------------------------------


_log = logging.getLogger(__name__)

#: The most bytes of message an error sends to the client.  pyarrow's client repeats the message
#: in the text of its exception, which then stays under 1 KiB.
WIRE_MESSAGE_BYTES = 320

#: attribute set on exceptions bound for the wire: their traceback stays on the server
_WIRE_MARK = "_dpdpu_flight_wire"
_install_lock = threading.Lock()


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _install_wire_formatter() -> None:
    """Make ``traceback.format_exception`` describe wire-bound exceptions by type name only.

    pyarrow looks the function up on the ``traceback`` module each time it
    describes an exception for a client, so a wrapper there is the one place
    its status detail can be kept free of server source.  Every exception
    without the mark is formatted exactly as before.
    """
    with _install_lock:
        original = traceback.format_exception
        if getattr(original, _WIRE_MARK, False):
            return

        @functools.wraps(original)
        def format_exception(*args: Any, **kwargs: Any) -> list[str]:
            value = args[1] if len(args) > 1 else kwargs.get("value", args[0] if args else None)
            if isinstance(value, BaseException) and getattr(value, _WIRE_MARK, False):
                return [_type_name(value)]
            return original(*args, **kwargs)

        setattr(format_exception, _WIRE_MARK, True)
        traceback.format_exception = format_exception


def _for_wire(exc: BaseException, cause: BaseException) -> BaseException:
    """Mark ``exc`` as bound for a client (see the module docstring) and log ``cause`` here."""
    # An exception type with __slots__ takes no mark: pyarrow formats it as usual.
    with contextlib.suppress(AttributeError):
        setattr(exc, _WIRE_MARK, True)
    unexpected = isinstance(exc, flight.FlightServerError) and not isinstance(cause, flight.FlightError)
    _log.log(
        logging.WARNING if unexpected else logging.DEBUG, "Flight call failed: %s", _type_name(cause), exc_info=cause
    )
    return exc


def _wire_message(exc: BaseException) -> str:
    """``exc``'s message, cut to :data:`WIRE_MESSAGE_BYTES` of UTF-8."""
    # str() of a plain KeyError quotes its message
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
    data = text.encode("utf-8", "replace")
    if len(data) <= WIRE_MESSAGE_BYTES:
        return text
    note = f"... (cut from {len(data):,} bytes)"
    return data[: WIRE_MESSAGE_BYTES - len(note)].decode("utf-8", "ignore") + note


def flight_error(exc: BaseException) -> BaseException:
    """The exception to raise so that the client sees the Flight status matching ``exc``, with a short message."""
    message = _wire_message(exc)
    if isinstance(exc, (flight.FlightError, pa.ArrowException, NotImplementedError)):
        if message == str(exc):
            return exc
        with contextlib.suppress(TypeError):  # the same type, with the message cut
            return type(exc)(message, exc.extra_info) if isinstance(exc, flight.FlightError) else type(exc)(message)
    out: BaseException
    if isinstance(exc, UploadAbortedError):
        out = flight.FlightCancelledError(message)
    elif isinstance(exc, (KeyError, errors.NoSuchFileError)):
        out = pa.ArrowKeyError(message)
    elif isinstance(exc, NotImplementedError):
        out = NotImplementedError(message)
    elif isinstance(exc, errors.DeviceMemoryError):
        out = flight.FlightServerError(message)
    elif isinstance(exc, (ValueError, TypeError)):
        out = pa.ArrowInvalid(message)  # dpdpu's invalid-argument and expression errors are ValueErrors
    else:
        out = flight.FlightServerError(f"{type(exc).__name__}: {message}")
    return out


def mapped(fn: F) -> F:
    """Raise whatever ``fn`` raises as the matching Flight error."""

    _install_wire_formatter()

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            _raise_mapped(exc)

    return wrapper  # type: ignore[return-value]


def mapped_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Yield ``batches``, raising whatever they raise as the matching Flight error (as :func:`mapped`)."""
    _install_wire_formatter()
    try:
        yield from batches
    except Exception as exc:
        _raise_mapped(exc)


def _raise_mapped(exc: Exception) -> NoReturn:
    out = _for_wire(flight_error(exc), exc)
    try:
        if out is exc:
            raise exc
        raise out from exc
    finally:
        # This frame ends up in the raised exception's traceback: holding the exception in its
        # locals would make a reference cycle, which keeps the request (a ticket of megabytes)
        # alive until the next garbage collection instead of freeing it with the call.
        del out, exc


# --- auth ---------------------------------------------------------------------------------------


class BearerAuth(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Checks ``authorization: Bearer <token>`` on every call."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: Any, headers: dict[str, list[Any]]) -> None:
        for value in headers.get("authorization", []):
            raw = value.encode() if isinstance(value, str) else bytes(value)
            if hmac.compare_digest(raw, self._expected):
                return None
        raise flight.FlightUnauthenticatedError("missing or wrong bearer token (header 'authorization: Bearer ...')")


# --- where to listen ------------------------------------------------------------------------------


def check_location(location: str, tls: tuple[bytes, bytes] | None, token: str | None) -> tuple[str, str]:
    """The URI scheme and host of ``location``, after checking it against ``tls`` and ``token``."""
    parts = urlsplit(location)
    if parts.scheme not in ("grpc", "grpc+tcp", "grpc+tls") or not parts.hostname:
        raise FlightConfigError(f"location must be grpc://HOST:PORT or grpc+tls://HOST:PORT, not {location!r}")
    if parts.scheme == "grpc+tls" and tls is None:
        raise FlightConfigError("a grpc+tls location needs tls=(certificate chain PEM, private key PEM)")
    if tls is not None and (
        not isinstance(tls, tuple) or len(tls) != 2 or not all(isinstance(x, bytes) and x for x in tls)
    ):
        raise FlightConfigError("tls must be (certificate chain PEM bytes, private key PEM bytes)")
    if token is not None and (not isinstance(token, str) or not token):
        raise FlightConfigError("token must be a non-empty string")
    if token is None and not is_loopback(parts.hostname):
        raise FlightConfigError(
            f"a token is required when listening on {parts.hostname!r} (not loopback): anyone who can reach "
            "the port could read and replace datasets"
        )
    return ("grpc+tls" if tls is not None else "grpc"), parts.hostname
