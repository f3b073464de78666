"""The dpdpu exception tree.

Every error dpdpu raises is a subclass of :class:`DpdpuError`; the base class
itself is never raised.  Subclasses also inherit the built-in exception that
fits (``ValueError``, ``LookupError``, ``MemoryError`` ...), so code written
against the standard library keeps working.  Each error carries the device,
engine and op it concerns (when known) and the native status name.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BufferTooSmallError",
    "CorruptDataError",
    "DeviceMemoryError",
    "DpdpuError",
    "InternalError",
    "InvalidArgumentError",
    "JobTooLargeError",
    "NativeBuildError",
    "ProfileError",
    "QueueFullError",
    "RuntimeClosedError",
    "TruncatedDataError",
    "UnknownDeviceError",
    "UnknownOpError",
    "UnsupportedOpError",
]


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

    def on(self, device: str) -> DpdpuError:
        """The same error, naming ``device`` if it named none (raised by callers with ``from``)."""
        if self.device is not None:
            return self
        err = type(self)(self.detail, device=device, engine=self.engine, op=self.op, code=self.code)
        err.__dict__.update({k: v for k, v in self.__dict__.items() if k not in err.__dict__})
        return err

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # keep context when pickled across processes
        return (_rebuild, (type(self), self.detail, self.device, self.engine, self.op, self.code))


def _rebuild(
    cls: type[DpdpuError], detail: str, device: str | None, engine: str | None, op: str | None, code: str | None
) -> DpdpuError:
    return cls(detail, device=device, engine=engine, op=op, code=code)


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
