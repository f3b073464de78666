"""Built-in ops of the compute engine: the codec family, crc32c and the DMA copy.

Codecs: ``deflate`` (zlib streams, run by the C core and by hardware engines
that have it), ``lz4`` (LZ4 frames) and ``zstd`` (Zstandard frames), the last
two from the ``lz4`` and ``zstandard`` packages, run on engine workers like
every other op, so they are placed, queued and modeled the same way
(BlueField-3 decompresses LZ4 in hardware).

Each is a plain function: called directly it runs on the current runtime
(:func:`dpdpu.current_runtime`) and returns the value; passed to
``Runtime.submit`` it returns a future.  ``engine`` pins an engine kind
(``"accelerator"``, ``"arm"``, ``"dma"``, ``"host"``) and ``fallback=False``
forbids falling back when that engine cannot run the job.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import lz4.frame
import zstandard

from .. import errors
from ..runtime.device import DeviceBuffer, Task
from ..runtime.native import deflate_bound
from ..runtime.runtime import current_runtime

__all__ = ["CODECS", "LEVELS", "compress", "crc32c", "decompress", "memcpy"]

#: Codecs the compute engine knows.
CODECS = ("deflate", "lz4", "zstd")

#: Accepted compression levels and the default of each codec.
LEVELS: dict[str, tuple[int, int, int]] = {"deflate": (-1, 9, 6), "lz4": (0, 16, 0), "zstd": (-7, 22, 3)}

#: Smallest output buffer guessed for a decompression of unknown size.
_MIN_OUTPUT_GUESS = 64 << 10

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
    data: Any, codec: str = "deflate", level: int | None = None, *, engine: str | None = None, fallback: bool = True
) -> tuple[Task, Options]:
    op = _codec_op(codec, "compress")
    low, high, default = LEVELS[codec]
    if level is None:
        level = default
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise errors.InvalidArgumentError(
            f"{codec} level must be an integer from {low} to {high}, not {level!r}", op=op
        )
    n = _nbytes(data, op)
    if codec == "deflate":
        task = Task(
            op=op, src=data, dst_size=deflate_bound(n), param=level, level=level, name=op,
            nbytes=n, convert=_to_bytes,
        )  # fmt: skip
    else:
        fn = partial(_lz4_compress if codec == "lz4" else _zstd_compress, data, level)
        task = Task(op=op, src=data, fn=fn, param=level, name=op, nbytes=n)
    return task, {"engine": engine, "fallback": fallback}


@_builtin(_compress_task)
def compress(
    data: Any, codec: str = "deflate", level: int | None = None, *, engine: str | None = None, fallback: bool = True
) -> bytes:
    """Compress bytes-like ``data`` with ``codec``; returns the compressed bytes.

    ``deflate`` output is a zlib stream (RFC 1950), readable by
    ``zlib.decompress``; ``lz4`` an LZ4 frame (``lz4.frame``); ``zstd`` a
    Zstandard frame.  ``level`` defaults to the codec's usual one (deflate 6,
    lz4 0, zstd 3); see :data:`LEVELS` for the ranges.  Hardware engines
    ignore the level.
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
    if codec == "deflate":
        task = Task(
            op=op, src=data, dst_size=size, name=op, nbytes=n, out_hint=0 if grow else size, grow_output=grow,
            convert=_to_bytes,
        )  # fmt: skip
    else:
        fn = partial(_lz4_decompress if codec == "lz4" else _zstd_decompress, data, output_size, op)
        task = Task(op=op, src=data, fn=fn, name=op, nbytes=n, out_hint=output_size or 0)
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


def _lz4_compress(data: Any, level: int) -> bytes:
    return lz4.frame.compress(data, compression_level=level, store_size=True)  # type: ignore[no-any-return]


def _zstd_compress(data: Any, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def _checked_output(op: str, out: bytes | None, finished: bool, trailing: bytes | None, limit: int | None) -> bytes:
    if not finished:
        raise errors.TruncatedDataError("the compressed stream ends early (truncated)", op=op)
    if trailing:
        raise errors.CorruptDataError(f"{len(trailing)} bytes follow the end of the stream", op=op)
    out = out or b""
    if limit is not None and len(out) > limit:
        err = errors.BufferTooSmallError(f"needs {len(out)} bytes, has {limit}", op=op)
        err.needed = len(out)
        raise err
    return out


def _lz4_decompress(data: Any, limit: int | None, op: str) -> bytes:
    decoder = lz4.frame.LZ4FrameDecompressor()
    try:
        out = decoder.decompress(data)
    except RuntimeError as exc:
        raise errors.CorruptDataError(f"not a valid LZ4 frame ({exc})", op=op) from None
    return _checked_output(op, out, decoder.eof, decoder.unused_data, limit)


def _zstd_decompress(data: Any, limit: int | None, op: str) -> bytes:
    decoder = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = decoder.decompress(data)
    except zstandard.ZstdError as exc:
        raise errors.CorruptDataError(f"not a valid Zstandard frame ({exc})", op=op) from None
    return _checked_output(op, out, decoder.eof, decoder.unused_data, limit)


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
