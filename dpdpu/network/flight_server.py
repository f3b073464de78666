"""The gRPC side of the Flight endpoint: error mapping, bearer-token auth, checks of the listening address.

Handlers raise dpdpu errors, pyarrow errors or plain Python ones; each has
its wire status (:func:`dpdpu.errors.to_wire`, the one table), and
:func:`flight_exception` is the Flight side of it: pyarrow's Flight server
sends ``ArrowInvalid`` as INVALID_ARGUMENT, ``KeyError`` as NOT_FOUND,
``NotImplementedError`` as UNIMPLEMENTED and its own errors as CANCELLED,
DEADLINE_EXCEEDED, UNAUTHENTICATED, PERMISSION_DENIED and UNAVAILABLE; a
status Flight has no error for (RESOURCE_EXHAUSTED, FAILED_PRECONDITION,
INTERNAL ...) goes as a server error whose ``extra_info`` names it, which
dpdpu's clients read back with :func:`flight_status`.

Messages are short: error messages quote at most an excerpt of their input
(:func:`dpdpu.errors.shown`), and :func:`flight_error` cuts whatever a
handler raises to :data:`WIRE_MESSAGE_BYTES`, so that a status (which gRPC
and Flight carry several times over in its trailing metadata) stays far
below gRPC's 16 KiB metadata limit and the client sees the real error.

Only the message leaves the server.  pyarrow describes a Python exception
that becomes a non-Flight status (INVALID_ARGUMENT, NOT_FOUND ...) with
``traceback.format_exception`` and sends that text to the client as the
status detail: file paths and source lines of the server.  Every exception
:func:`mapped` lets out is marked, and while an endpoint is open a thin
wrapper of ``traceback.format_exception`` (:data:`wire_formatter`,
delegating for every other exception) describes a marked one by its type
name alone.  The traceback is logged on the server instead
(``dpdpu.network.flight_server`` logger, DEBUG; an unexpected error at
WARNING).
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

__all__ = [
    "WIRE_MESSAGE_BYTES",
    "BearerAuth",
    "FlightConfigError",
    "check_location",
    "flight_error",
    "flight_exception",
    "flight_status",
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
WIRE_MESSAGE_BYTES = errors.WIRE_MESSAGE_BYTES

#: attribute set on exceptions bound for the wire: their traceback stays on the server
_WIRE_MARK = "_dpdpu_flight_wire"


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _WireFormatter:
    """``traceback.format_exception``, describing wire-bound exceptions by type name, while endpoints serve.

    pyarrow's Flight server describes a Python exception that becomes a
    non-Flight status (INVALID_ARGUMENT, NOT_FOUND ...) by calling
    ``traceback.format_exception``, looked up on the ``traceback`` module each
    time, and sends the text to the client: the server's file paths and source
    lines.  Nothing else runs between the handler's exception and that call
    (see docs/ARCHITECTURE.md, "Network engine"), so a wrapper there is the one
    place the status detail can be kept clean.  It is installed while at least
    one endpoint is open in the process and removed with the last one; it
    formats every exception without the mark exactly as before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._original: Callable[..., list[str]] | None = None
        self._wrapper: Callable[..., list[str]] | None = None

    def hold(self) -> Callable[[], None]:
        """Install the wrapper (if no endpoint has) and return the function that lets it go (idempotent)."""
        with self._lock:
            if self._open == 0:
                original = traceback.format_exception

                @functools.wraps(original)
                def format_exception(*args: Any, **kwargs: Any) -> list[str]:
                    value = args[1] if len(args) > 1 else kwargs.get("value", args[0] if args else None)
                    if isinstance(value, BaseException) and getattr(value, _WIRE_MARK, False):
                        return [_type_name(value)]
                    return original(*args, **kwargs)

                self._original, self._wrapper = original, format_exception
                traceback.format_exception = format_exception
            self._open += 1
        held = [True]

        def release() -> None:
            with self._lock:
                if not held:
                    return
                held.clear()
                self._open -= 1
                # Someone who wrapped it after us keeps our wrapper inside theirs: it only looks for the mark.
                if self._open == 0 and traceback.format_exception is self._wrapper:
                    traceback.format_exception = self._original  # type: ignore[assignment]

        return release


#: held by each open endpoint (:meth:`dpdpu.network.flight.FlightEndpoint.close` lets go)
wire_formatter = _WireFormatter()


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


#: what a FlightServerError's extra_info starts with when it carries a status Flight has no error for
_STATUS_TAG = b"dpdpu-status:"

# The statuses pyarrow's Flight server can send as themselves, and the exception that sends each.
_FLIGHT_EXCEPTION: dict[str, Callable[[str], Exception]] = {
    "INVALID_ARGUMENT": pa.ArrowInvalid,
    "NOT_FOUND": pa.ArrowKeyError,
    "UNIMPLEMENTED": NotImplementedError,
    "CANCELLED": flight.FlightCancelledError,
    "DEADLINE_EXCEEDED": flight.FlightTimedOutError,
    "UNAUTHENTICATED": flight.FlightUnauthenticatedError,
    "PERMISSION_DENIED": flight.FlightUnauthorizedError,
    "UNAVAILABLE": flight.FlightUnavailableError,
}

# What a client's exception says, by its class (most specific first).
_FLIGHT_STATUS: tuple[tuple[type[BaseException], str], ...] = (
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightTimedOutError, "DEADLINE_EXCEEDED"),
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightInternalError, "INTERNAL"),
    (flight.FlightError, "UNKNOWN"),
    (pa.ArrowInvalid, "INVALID_ARGUMENT"),
    (KeyError, "NOT_FOUND"),
    (NotImplementedError, "UNIMPLEMENTED"),
)


def flight_exception(status: str, message: str) -> Exception:
    """The exception a Flight handler raises so that the client gets ``status`` (a name of
    :data:`dpdpu.errors.WIRE_STATUSES`) and ``message``.

    Flight has errors for some statuses only; the others go as a server error
    whose ``extra_info`` names the status, which :func:`flight_status` reads back.
    """
    make = _FLIGHT_EXCEPTION.get(status)
    out: Exception = (
        make(message) if make is not None else flight.FlightServerError(message, _STATUS_TAG + status.encode())
    )
    return out


def flight_status(exc: BaseException) -> tuple[str, str]:
    """The wire status and the message of an error a Flight call raised on the client."""
    info = getattr(exc, "extra_info", b"")
    status = next((s for cls, s in _FLIGHT_STATUS if isinstance(exc, cls)), "UNKNOWN")
    if isinstance(exc, flight.FlightServerError) and isinstance(info, bytes) and info.startswith(_STATUS_TAG):
        status = info[len(_STATUS_TAG) :].decode("ascii", "replace")
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
    # pyarrow appends the status detail and gRPC's debug context to the message
    return status, text.split(". Detail:")[0].split(". gRPC client debug context")[0]


def flight_error(exc: BaseException) -> BaseException:
    """The exception to raise so that the client sees the Flight status matching ``exc``, with a short message."""
    if isinstance(exc, flight.FlightError):  # a status already: only its message is cut
        message = errors.cut_utf8(str(exc), WIRE_MESSAGE_BYTES)
        cut: BaseException = exc
        if message != str(exc):
            with contextlib.suppress(TypeError):
                cut = type(exc)(message, exc.extra_info)
        return cut
    return flight_exception(*errors.to_wire(exc, WIRE_MESSAGE_BYTES))


def mapped(fn: F) -> F:
    """Raise whatever ``fn`` raises as the matching Flight error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            _raise_mapped(exc)

    return wrapper  # type: ignore[return-value]


def mapped_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Yield ``batches``, raising whatever they raise as the matching Flight error (as :func:`mapped`)."""
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
