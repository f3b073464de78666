"""Built-in ops of the compute engine: deflate, crc32c and the DMA copy.

Each is a plain function: called directly it runs on the current runtime
(:func:`dpdpu.current_runtime`) and returns the value; passed to
``Runtime.submit`` it returns a future.  ``engine`` pins an engine kind
(``"accelerator"``, ``"arm"``, ``"dma"``, ``"host"``) and ``fallback=False``
forbids falling back when that engine cannot run the job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .. import errors
from ..runtime.device import DeviceBuffer, Task
from ..runtime.native import deflate_bound
from ..runtime.runtime import current_runtime

__all__ = ["CODECS", "compress", "crc32c", "decompress", "memcpy"]

#: Codecs the compute engine knows.
CODECS = ("deflate",)

#: Smallest output buffer guessed for a decompression of unknown size.
_MIN_OUTPUT_GUESS = 64 << 10
#: Expected compression ratio, used only to estimate the PCIe bytes of the
#: output before a compression runs (assumption).
_ASSUMED_RATIO = 2

F = TypeVar("F", bound=Callable[..., Any])
Options = dict[str, Any]


def _builtin(build: Callable[..., tuple[Task, Options]]) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        fn.__dpdpu_builtin__ = build  # type: ignore[attr-defined]
        return fn

    return mark


def _nbytes(data: Any, op: str, what: str = "data") -> int:
    if type(data) is bytes:
        return len(data)
    if isinstance(data, DeviceBuffer):
        return data.nbytes
    if isinstance(data, str):
        raise errors.InvalidArgumentError(f"{what} must be bytes-like, not str (encode it first)", op=op)
    try:
        view = memoryview(data)
    except TypeError:
        raise errors.InvalidArgumentError(f"{what} must be bytes-like, not {type(data).__name__}", op=op) from None
    if not view.contiguous:
        raise errors.InvalidArgumentError(f"{what} must be contiguous in memory", op=op)
    return view.nbytes


def _codec_op(codec: str, direction: str) -> str:
    if codec not in CODECS:
        raise errors.UnknownOpError(
            f"unknown codec {codec!r}; available: {', '.join(CODECS)}", op=f"{codec}_{direction}"
        )
    return f"{codec}_{direction}"


def _to_bytes(result: int, output: memoryview | None) -> bytes:
    return b"" if output is None else bytes(output)


def _compress_task(
    data: Any, codec: str = "deflate", level: int = 6, *, engine: str | None = None, fallback: bool = True
) -> tuple[Task, Options]:
    op = _codec_op(codec, "compress")
    if isinstance(level, bool) or not isinstance(level, int) or not -1 <= level <= 9:
        raise errors.InvalidArgumentError(f"level must be an integer from -1 to 9, not {level!r}", op=op)
    n = _nbytes(data, op)
    task = Task(
        op=op, src=data, dst_size=deflate_bound(n), param=level, level=level, name=op,
        nbytes=n, out_hint=n // _ASSUMED_RATIO, convert=_to_bytes,
    )  # fmt: skip
    return task, {"engine": engine, "fallback": fallback}


@_builtin(_compress_task)
def compress(
    data: Any, codec: str = "deflate", level: int = 6, *, engine: str | None = None, fallback: bool = True
) -> bytes:
    """Compress bytes-like ``data``; returns the compressed bytes.

    ``deflate`` output is a zlib stream (RFC 1950), readable by
    ``zlib.decompress``.  ``level`` is zlib's: -1 (default, 6) or 0-9.
    Hardware engines ignore the level.
    """
    return current_runtime().submit(compress, data, codec, level, engine=engine, fallback=fallback).result()  # type: ignore[no-any-return]


def _decompress_task(
    data: Any,
    codec: str = "deflate",
    *,
    output_size: int | None = None,
    engine: str | None = None,
    fallback: bool = True,
) -> tuple[Task, Options]:
    op = _codec_op(codec, "decompress")
    n = _nbytes(data, op)
    if output_size is None:
        size, grow = max(4 * n, _MIN_OUTPUT_GUESS), True
    elif isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 0:
        raise errors.InvalidArgumentError(f"output_size must be a non-negative integer, not {output_size!r}", op=op)
    else:
        size, grow = output_size, False
    task = Task(
        op=op, src=data, dst_size=size, name=op, nbytes=n, out_hint=size, grow_output=grow, convert=_to_bytes,
    )  # fmt: skip
    return task, {"engine": engine, "fallback": fallback}


@_builtin(_decompress_task)
def decompress(
    data: Any,
    codec: str = "deflate",
    *,
    output_size: int | None = None,
    engine: str | None = None,
    fallback: bool = True,
) -> bytes:
    """Decompress one complete stream; returns the original bytes.

    Without ``output_size`` the output buffer is guessed and, if too small,
    the job is rerun once at the exact size.  With ``output_size`` a larger
    output raises :class:`~dpdpu.errors.BufferTooSmallError` (its ``needed``
    says how much).  Corrupt input raises
    :class:`~dpdpu.errors.CorruptDataError`, a cut-off stream
    :class:`~dpdpu.errors.TruncatedDataError`; so do bytes after the end of
    the stream.
    """
    future = current_runtime().submit(
        decompress, data, codec, output_size=output_size, engine=engine, fallback=fallback
    )
    return future.result()  # type: ignore[no-any-return]


def _crc32c_task(
    data: Any, value: int = 0, *, engine: str | None = None, fallback: bool = True
) -> tuple[Task, Options]:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise errors.InvalidArgumentError(f"value must be a 32-bit unsigned integer, not {value!r}", op="crc32c")
    n = _nbytes(data, "crc32c")
    task = Task(op="crc32c", src=data, param=value, name="crc32c", nbytes=n, out_hint=4)
    return task, {"engine": engine, "fallback": fallback}


@_builtin(_crc32c_task)
def crc32c(data: Any, value: int = 0, *, engine: str | None = None, fallback: bool = True) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``value`` like ``zlib.crc32``."""
    return current_runtime().submit(crc32c, data, value, engine=engine, fallback=fallback).result()  # type: ignore[no-any-return]


def _memcpy_task(dst: Any, src: Any, *, engine: str | None = None, fallback: bool = True) -> tuple[Task, Options]:
    n = _nbytes(src, "memcpy", "src")
    _nbytes(dst, "memcpy", "dst")
    if not isinstance(dst, DeviceBuffer) and memoryview(dst).readonly:
        raise errors.InvalidArgumentError("dst must be writable", op="memcpy")
    task = Task(op="memcpy", src=src, dst=dst, name="memcpy", nbytes=n, out_hint=n)
    return task, {"engine": engine, "fallback": fallback}


@_builtin(_memcpy_task)
def memcpy(dst: Any, src: Any, *, engine: str | None = None, fallback: bool = True) -> int:
    """Copy ``src`` into the start of writable ``dst`` (the DMA op); returns bytes copied.

    Either side may be a :class:`~dpdpu.runtime.device.DeviceBuffer`, so
    this moves data between host memory and device memory.
    """
    return current_runtime().submit(memcpy, dst, src, engine=engine, fallback=fallback).result()  # type: ignore[no-any-return]
