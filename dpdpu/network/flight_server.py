"""The gRPC side of the Flight endpoint: error mapping, bearer-token auth, checks of the listening address.

Handlers raise dpdpu errors, pyarrow errors or plain Python ones; pyarrow's
Flight server turns a few Python exception types into gRPC status codes
(``KeyError``: NOT_FOUND, ``pyarrow.ArrowInvalid``: INVALID_ARGUMENT,
``NotImplementedError``: UNIMPLEMENTED, ``FlightUnauthenticatedError``:
UNAUTHENTICATED ...) and everything else into INTERNAL.  :func:`flight_error`
picks the right one for each error a handler can meet, so clients see the
status that matches the cause, with the message that explains it.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.flight as flight

from .. import errors

__all__ = [
    "BearerAuth",
    "FlightConfigError",
    "check_location",
    "flight_error",
    "is_unspecified",
    "mapped",
    "mapped_batches",
]

F = TypeVar("F", bound=Callable[..., Any])


class FlightConfigError(errors.InvalidArgumentError):
    """The endpoint's configuration is unsafe or inconsistent (e.g. no token off loopback)."""


# --- errors -------------------------------------------------------------------------------------


def flight_error(exc: BaseException) -> BaseException:
    """The exception to raise so that the client sees the Flight status matching ``exc``."""
    if isinstance(exc, (flight.FlightError, pa.ArrowException, NotImplementedError)):
        return exc
    out: BaseException
    if isinstance(exc, (KeyError, errors.NoSuchFileError)):
        # str() of a plain KeyError quotes its message
        out = pa.ArrowKeyError(exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc))
    elif isinstance(exc, errors.DeviceMemoryError):
        out = flight.FlightServerError(str(exc))
    elif isinstance(exc, (ValueError, TypeError)):
        out = pa.ArrowInvalid(str(exc))  # dpdpu's invalid-argument and expression errors are ValueErrors
    else:
        out = flight.FlightServerError(f"{type(exc).__name__}: {exc}")
    return out


def mapped(fn: F) -> F:
    """Raise whatever ``fn`` raises as the matching Flight error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            out = flight_error(exc)
            if out is exc:
                raise
            raise out from exc

    return wrapper  # type: ignore[return-value]


def mapped_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    try:
        yield from batches
    except Exception as exc:
        out = flight_error(exc)
        if out is exc:
            raise
        raise out from exc


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


def is_unspecified(hostname: str) -> bool:
    try:
        return ipaddress.ip_address(hostname).is_unspecified
    except ValueError:
        return False


def is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False
