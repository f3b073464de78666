"""The dpdpu exception tree.

Every error dpdpu raises is a subclass of :class:`DpdpuError`; the base class
itself is never raised.  Subclasses also inherit the built-in exception that
fits (``ValueError``, ``LookupError``, ``MemoryError`` ...), so code written
against the standard library keeps working.  Each error carries the device,
engine and op it concerns (when known) and the native status name.

Messages quote caller input through :func:`shown` and :func:`clip` (not part
of ``__all__``, which is the tree), so that they stay short whatever the
input is.
"""

from __future__ import annotations

import reprlib
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
    """

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


class UnknownOpError(DpdpuError, LookupError):
    """No operation or codec of that name exists."""


class UnsupportedOpError(DpdpuError):
    """The chosen engine cannot run the operation and fallback is not allowed."""


class JobTooLargeError(DpdpuError, ValueError):
    """The job exceeds the largest job the engine accepts."""


class DeviceMemoryError(DpdpuError, MemoryError):
    """The device does not have enough memory left for the request."""


class CorruptDataError(DpdpuError, ValueError):
    """The input is not a valid stream for the operation."""


class TruncatedDataError(CorruptDataError):
    """The input stream ends before it is complete."""


class BufferTooSmallError(DpdpuError, ValueError):
    """The destination is too small; ``needed`` says how large it must be."""

    needed: int | None = None


class QueueFullError(DpdpuError, TimeoutError):
    """An engine queue stayed full for longer than the caller allowed."""


class RuntimeClosedError(DpdpuError, RuntimeError):
    """The runtime or device has been shut down."""


class UnknownDeviceError(DpdpuError, LookupError):
    """No device backend or profile of that name is known."""


class ProfileError(DpdpuError, ValueError):
    """A device profile file is malformed or incomplete."""


class NativeBuildError(DpdpuError, ImportError):
    """The compiled core is missing or was built for another dpdpu version."""


class InternalError(DpdpuError, RuntimeError):
    """Something failed inside dpdpu that no caller input explains."""


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

    path: str | None = None
    os_errno: int | None = None


class NoSuchFileError(StorageError, LookupError, FileNotFoundError):
    """No file or directory of that name exists."""


class FileExistsStorageError(StorageError, FileExistsError):
    """A file or directory of that name already exists."""


class FileTypeError(StorageError, OSError):
    """The path names a directory where a file is needed, or the other way round."""


class DirectoryNotEmptyError(StorageError, OSError):
    """The directory still has entries."""


class DeviceFullError(StorageError, OSError):
    """The block device has no room left for the write."""


class InvalidPathError(InvalidArgumentError):
    """A file name is not acceptable (empty, absolute, ``..``, NUL, too long)."""


class JournalCorruptError(CorruptDataError):
    """Committed metadata on disk fails its checksum (not a torn tail)."""
