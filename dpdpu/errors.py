"""The dpdpu exception tree.

Every error dpdpu raises is a subclass of :class:`DpdpuError`; the base class
itself is never raised.  Subclasses also inherit the built-in exception that
fits (``ValueError``, ``LookupError``, ``MemoryError`` ...), so code written
against the standard library keeps working.  Each error carries the device,
engine and op it concerns (when known) and the native status name.

Messages quote caller input through :func:`shown` and :func:`clip` (these
and the wire functions below are not part of ``__all__``, which is the
tree), so that they stay short whatever the input is.

**On the wire.**  Each class names the status it travels under
(:attr:`DpdpuError.wire_status`, one of gRPC's names in
:data:`WIRE_STATUSES`); :func:`to_wire` gives an exception's status and
short message and :func:`from_wire` the error a status stands for.  This is
the one table: the Flight endpoint and its clients, the agent's gRPC service
and client, and the request/response frames over the host<->DPU channel
adapt these names to their transport and back.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BufferTooSmallError",
    "CorruptDataError",
    "DeviceMemoryError",
    "DpdpuError",
    "ExpressionError",
    "ExpressionSyntaxError",
    "ExpressionTypeError",
    "InternalError",
    "InvalidArgumentError",
    "JobTooLargeError",
    "NativeBuildError",
    "ProfileError",
    "QueueFullError",
    "RuntimeClosedError",
    "TruncatedDataError",
    "UnknownColumnError",
    "UnknownDeviceError",
    "UnknownOpError",
    "UnsupportedOpError",
    "StorageError",
    "NoSuchFileError",
    "FileExistsStorageError",
    "FileTypeError",
    "DirectoryNotEmptyError",
    "DeviceFullError",
    "InvalidPathError",
    "JournalCorruptError",
]


#: the most characters of caller input an error message quotes
QUOTE_LIMIT = 120

_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxdict = _short.maxlist = _short.maxtuple = _short.maxset = _short.maxfrozenset = 6
_short.maxstring = _short.maxother = _short.maxlong = QUOTE_LIMIT


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` itself when it has at most ``limit`` characters, else its start and its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` in at most about ``limit`` characters: how an error message quotes caller input.

    A long string or bytes object shows its start and its length; containers
    show a few items and levels.  It costs O(``limit``) whatever ``value`` is
    (a deeply nested list included) and never raises.
    """
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit])  # escapes can make it up to 10 times longer than the part it shows
        if len(value) <= limit and len(text) <= limit + 3:
            return text
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{text[:limit]}... ({len(value):,} {unit})"
    try:
        text = _short.repr(value)
    except Exception:  # a value whose repr fails (e.g. an int too long for str()) is named by its type
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


class DpdpuError(Exception):
    """Base of all dpdpu errors (never raised directly).

    Attributes:
        device: label of the device concerned, e.g. ``"bluefield3"``.
        engine: name of the engine concerned, e.g. ``"accelerator"``.
        op: the operation, e.g. ``"deflate_compress"``.
        code: the native status name, e.g. ``"CORRUPT_DATA"``.
        wire_status: the status the error travels under on the wire (see :func:`to_wire`).
    """

    #: the gRPC status name of this class of errors (a class may set its own)
    wire_status: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        device: str | None = None,
        engine: str | None = None,
        op: str | None = None,
        code: str | None = None,
    ) -> None:
        self.device = device
        self.engine = engine
        self.op = op
        self.code = code
        self.detail = message
        where = device or ""
        if engine:
            where = f"{where}/{engine}" if where else engine
        parts = [p for p in (where, op) if p]
        super().__init__(": ".join([*parts, message]))

    def on(self, device: str, engine: str | None = None) -> DpdpuError:
        """The same error, naming ``device`` (and ``engine``) if it named none (raised with ``from``)."""
        if self.device is not None:
            return self
        err = type(self)(self.detail, device=device, engine=self.engine or engine, op=self.op, code=self.code)
        err.__dict__.update({k: v for k, v in self.__dict__.items() if k not in err.__dict__})
        return err

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # keep context when pickled across processes
        known = ("device", "engine", "op", "code", "detail")
        extra = {k: v for k, v in self.__dict__.items() if k not in known}
        return (_rebuild, (type(self), self.detail, self.device, self.engine, self.op, self.code, extra))


def _rebuild(
    cls: type[DpdpuError],
    detail: str,
    device: str | None,
    engine: str | None,
    op: str | None,
    code: str | None,
    extra: dict[str, Any] | None = None,
) -> DpdpuError:
    err = cls(detail, device=device, engine=engine, op=op, code=code)
    err.__dict__.update(extra or {})
    return err


class InvalidArgumentError(DpdpuError, ValueError):
    """An argument has the wrong type, size or value."""

    wire_status = "INVALID_ARGUMENT"


class UnknownOpError(DpdpuError, LookupError):
    """No operation or codec of that name exists."""

    wire_status = "INVALID_ARGUMENT"


class UnsupportedOpError(DpdpuError):
    """The chosen engine cannot run the operation and fallback is not allowed."""

    wire_status = "FAILED_PRECONDITION"


class JobTooLargeError(DpdpuError, ValueError):
    """The job exceeds the largest job the engine accepts."""

    wire_status = "INVALID_ARGUMENT"


class DeviceMemoryError(DpdpuError, MemoryError):
    """The device does not have enough memory left for the request."""

    wire_status = "RESOURCE_EXHAUSTED"


class CorruptDataError(DpdpuError, ValueError):
    """The input is not a valid stream for the operation."""

    wire_status = "INVALID_ARGUMENT"


class TruncatedDataError(CorruptDataError):
    """The input stream ends before it is complete."""


class BufferTooSmallError(DpdpuError, ValueError):
    """The destination is too small; ``needed`` says how large it must be."""

    wire_status = "INVALID_ARGUMENT"

    needed: int | None = None


class QueueFullError(DpdpuError, TimeoutError):
    """An engine queue stayed full for longer than the caller allowed."""

    wire_status = "RESOURCE_EXHAUSTED"


class RuntimeClosedError(DpdpuError, RuntimeError):
    """The runtime or device has been shut down."""

    wire_status = "UNAVAILABLE"


class UnknownDeviceError(DpdpuError, LookupError):
    """No device backend or profile of that name is known."""

    wire_status = "INVALID_ARGUMENT"


class ProfileError(DpdpuError, ValueError):
    """A device profile file is malformed or incomplete."""

    wire_status = "INVALID_ARGUMENT"


class NativeBuildError(DpdpuError, ImportError):
    """The compiled core is missing or was built for another dpdpu version."""

    wire_status = "INTERNAL"


class InternalError(DpdpuError, RuntimeError):
    """Something failed inside dpdpu that no caller input explains."""

    wire_status = "INTERNAL"


class ExpressionError(InvalidArgumentError):
    """A predicate or projection expression is invalid.

    Attributes:
        expression: the text of the expression (or its rendering).
        position: 0-based character offset of the offending part, when known.
        column: the column concerned, when there is one.
    """

    expression: str | None = None
    position: int | None = None
    column: str | None = None


class ExpressionSyntaxError(ExpressionError):
    """The expression text does not parse."""


class UnknownColumnError(ExpressionError, LookupError):
    """The expression names a column the data does not have."""


class ExpressionTypeError(ExpressionError, TypeError):
    """An operator is applied to a column or value of a type it does not take."""


class StorageError(DpdpuError):
    """A block device or file service operation failed.

    Attributes:
        path: the file concerned, when there is one.
        os_errno: the system error number behind it, when a system call failed.
    """

    wire_status = "INTERNAL"

    path: str | None = None
    os_errno: int | None = None


class NoSuchFileError(StorageError, LookupError, FileNotFoundError):
    """No file or directory of that name exists."""

    wire_status = "NOT_FOUND"


class FileExistsStorageError(StorageError, FileExistsError):
    """A file or directory of that name already exists."""

    wire_status = "ALREADY_EXISTS"


class FileTypeError(StorageError, OSError):
    """The path names a directory where a file is needed, or the other way round."""

    wire_status = "FAILED_PRECONDITION"


class DirectoryNotEmptyError(StorageError, OSError):
    """The directory still has entries."""

    wire_status = "FAILED_PRECONDITION"


class DeviceFullError(StorageError, OSError):
    """The block device has no room left for the write."""

    wire_status = "RESOURCE_EXHAUSTED"


class InvalidPathError(InvalidArgumentError):
    """A file name is not acceptable (empty, absolute, ``..``, NUL, too long)."""


class JournalCorruptError(CorruptDataError):
    """Committed metadata on disk fails its checksum (not a torn tail)."""

    wire_status = "DATA_LOSS"


# --- on the wire ----------------------------------------------------------------------------------

#: gRPC's status names: what every transport of dpdpu calls the ways a request can end.
WIRE_STATUSES: tuple[str, ...] = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)

#: the most bytes of message an error takes onto the wire by default: gRPC and Flight repeat a
#: status's message in its trailing metadata, which must stay far below gRPC's 16 KiB limit
WIRE_MESSAGE_BYTES = 320

# Exceptions from outside the tree, by the built-in they are (most specific first).
_BUILTIN_STATUS: tuple[tuple[type[BaseException], str], ...] = (
    (KeyError, "NOT_FOUND"),
    (NotImplementedError, "UNIMPLEMENTED"),
    (TimeoutError, "DEADLINE_EXCEEDED"),
    (MemoryError, "RESOURCE_EXHAUSTED"),
    (ValueError, "INVALID_ARGUMENT"),
    (TypeError, "INVALID_ARGUMENT"),
)

# What a status stands for when the receiving side names no class of its own.
_STATUS_CLASS: dict[str, type[DpdpuError]] = {"INVALID_ARGUMENT": InvalidArgumentError}


def wire_status(exc: BaseException) -> str:
    """The status ``exc`` travels under: its class's for dpdpu errors, else by the built-in it is, else INTERNAL."""
    if isinstance(exc, DpdpuError):
        status = exc.wire_status
        return status if status in WIRE_STATUSES else "INTERNAL"
    for cls, status in _BUILTIN_STATUS:
        if isinstance(exc, cls):
            return status
    return "INTERNAL"


def cut_utf8(text: str, limit: int = WIRE_MESSAGE_BYTES) -> str:
    """``text`` in at most ``limit`` bytes of UTF-8, saying how long it was when it is cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    note = f"... (cut from {len(data):,} bytes)"
    return data[: max(0, limit - len(note))].decode("utf-8", "ignore") + note


def _message(exc: BaseException) -> str:
    try:
        # str() of a plain KeyError quotes its message
        if isinstance(exc, KeyError) and not isinstance(exc, DpdpuError) and exc.args and isinstance(exc.args[0], str):
            return exc.args[0]
        return str(exc)
    except Exception:  # an exception whose str() fails is named by its type
        return f"({type(exc).__name__} that cannot be shown)"


def to_wire(exc: BaseException, limit: int = WIRE_MESSAGE_BYTES) -> tuple[str, str]:
    """``(status, message)`` for sending ``exc`` to the other end: its status and a message of at most ``limit`` bytes.

    An exception from outside the tree that ends as INTERNAL (a bug, most
    likely) is named by its type in the message; dpdpu errors say what
    went wrong themselves.
    """
    status = wire_status(exc)
    message = _message(exc)
    if status == "INTERNAL" and not isinstance(exc, DpdpuError):
        message = f"{type(exc).__name__}: {message}"
    return status, cut_utf8(message, limit)


def _tree() -> dict[str, type[DpdpuError]]:
    found: dict[str, type[DpdpuError]] = {}
    pending: list[type[DpdpuError]] = [DpdpuError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == __name__:
            found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def from_wire(
    status: str,
    message: str,
    *,
    kind: str | None = None,
    classes: Mapping[str, type[DpdpuError]] | None = None,
    default: type[DpdpuError] | None = None,
    op: str | None = None,
) -> DpdpuError:
    """The error that ``status`` and ``message`` from the other end stand for (to raise on this side).

    Args:
        status: a name of :data:`WIRE_STATUSES` (anything else counts as UNKNOWN).
        message: the other end's message.
        kind: the class name the other end gave: a class of this module's tree
            or of ``classes`` of that name is rebuilt as itself; any other name
            (the other end's own exception) gives ``default``.
        classes: this side's class for some statuses, over the table's.
        default: the class of every other status (else :class:`InvalidArgumentError`
            for INVALID_ARGUMENT, :class:`InternalError` for the others).
        op: the operation to name in the error.

    The error keeps the status it came with as its ``wire_status``, so that
    passing it on sends the same status further.
    """
    status = status if status in WIRE_STATUSES else "UNKNOWN"
    chosen = dict(classes or {})
    cls: type[DpdpuError] | None = None
    if kind is not None:
        known = {c.__name__: c for c in chosen.values()}
        cls = known.get(kind) or _tree().get(kind)
        if cls is None and default is not None:
            cls = default
    if cls is None:
        cls = chosen.get(status) or default or _STATUS_CLASS.get(status, InternalError)
    err = cls(message, op=op)
    if err.wire_status != status:
        err.wire_status = status
    return err
