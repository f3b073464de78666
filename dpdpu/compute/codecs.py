"""Built-in ops of the compute engine: the codec family, crc32c and the DMA copy.

Codecs: ``deflate`` (zlib streams, run by the C core and by hardware engines
that have it), ``lz4`` (LZ4 frames) and ``zstd`` (Zstandard frames), the last
two from the ``lz4`` and ``zstandard`` packages, run on engine workers like
every other op, so they are placed, queued and modeled the same way
(BlueField-3 decompresses LZ4 in hardware).

Decompression never holds much more memory than its output: ``output_size``
bounds it (LZ4 and zstd are decoded piece by piece and stop once past it,
deflate writes into a buffer of that size), and without it the output may
grow to what is free where the task runs -- device memory on a DPU engine,
and at most half the memory this machine has available (see
:mod:`dpdpu.runtime.host_memory`) -- beyond which it fails with
:class:`~dpdpu.errors.DeviceMemoryError`.  LZ4 and zstd output is held as
device memory while it is made, as deflate's output buffer is.

Each is a plain function: called directly it runs on the current runtime
(:func:`dpdpu.current_runtime`) and returns the value; passed to
``Runtime.submit`` it returns a future.  ``engine`` pins an engine kind
(``"accelerator"``, ``"arm"``, ``"dma"``, ``"host"``) and ``fallback=False``
forbids falling back when that engine cannot run the job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import lz4.frame
import zstandard

from .. import errors
from ..runtime.device import DeviceBuffer, OutputBudget, Task
from ..runtime.native import deflate_bound
from ..runtime.runtime import current_runtime

__all__ = ["CODECS", "LEVELS", "compress", "crc32c", "decompress", "memcpy"]

#: Codecs the compute engine knows.
CODECS = ("deflate", "lz4", "zstd")

#: Accepted compression levels and the default of each codec.
LEVELS: dict[str, tuple[int, int, int]] = {"deflate": (-1, 9, 6), "lz4": (0, 16, 0), "zstd": (-7, 22, 3)}

#: Smallest output buffer guessed for a decompression of unknown size.
_MIN_OUTPUT_GUESS = 64 << 10
#: Output an LZ4 or zstd decoder makes per step: what a decompression holds beyond its output.
_PIECE = 1 << 20
#: Input fed to the LZ4 decoder per step (it copies what it has not consumed at each step).
_LZ4_FEED = 64 << 10
#: Largest output_size (the core's sizes are signed 64-bit).
_MAX_SIZE = (1 << 63) - 1

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
    if not isinstance(codec, str):
        raise errors.InvalidArgumentError(f"codec must be a string, not {type(codec).__name__}", op=direction)
    if codec not in CODECS:
        raise errors.UnknownOpError(
            f"unknown codec {errors.shown(codec)}; available: {', '.join(CODECS)}", op=direction
        )
    return f"{codec}_{direction}"


def _options(op: str, engine: str | None, fallback: bool) -> Options:
    """The placement options of a built-in op, checked here so a bad one is named as such."""
    if engine is not None and not isinstance(engine, str):
        raise errors.InvalidArgumentError(
            f"engine must be an engine kind or label (a string) or None, not {type(engine).__name__}", op=op
        )
    if not isinstance(fallback, bool):
        raise errors.InvalidArgumentError(f"fallback must be True or False, not {errors.shown(fallback)}", op=op)
    return {"engine": engine, "fallback": fallback}


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
            f"{codec} level must be an integer from {low} to {high}, not {errors.shown(level)}", op=op
        )
    options = _options(op, engine, fallback)
    n = _nbytes(data, op)
    if codec == "deflate":
        task = Task(
            op=op, src=data, dst_size=deflate_bound(n), param=level, level=level, name=op,
            nbytes=n, convert=_to_bytes,
        )  # fmt: skip
    else:
        fn = partial(_lz4_compress if codec == "lz4" else _zstd_compress, data, level)
        task = Task(op=op, src=data, fn=fn, param=level, name=op, nbytes=n)
    return task, options


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
    if output_size is not None and (
        isinstance(output_size, bool) or not isinstance(output_size, int) or not 0 <= output_size <= _MAX_SIZE
    ):
        raise errors.InvalidArgumentError(
            f"output_size must be None or an integer from 0 to 2**63-1, not {errors.shown(output_size)}", op=op
        )
    options = _options(op, engine, fallback)
    n = _nbytes(data, op)
    if codec == "deflate":
        grow = output_size is None
        size = max(4 * n, _MIN_OUTPUT_GUESS) if output_size is None else output_size
        task = Task(
            op=op, src=data, dst_size=size, name=op, nbytes=n, out_hint=0 if grow else size, grow_output=grow,
            convert=_to_bytes,
        )  # fmt: skip
    else:
        fn = partial(_decode, codec, data, output_size, op)
        task = Task(
            op=op, src=data, fn=fn, name=op, nbytes=n, dst_size=output_size or 0, out_hint=output_size or 0,
            metered=True,
        )  # fmt: skip
    return task, options


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

    Without ``output_size`` the output may grow to the memory free where the
    task runs (see the module's docstring), beyond that
    :class:`~dpdpu.errors.DeviceMemoryError`; a deflate output buffer is
    guessed and, if too small, the job is rerun once at the exact size.
    With ``output_size`` a larger output raises
    :class:`~dpdpu.errors.BufferTooSmallError` (its ``needed`` says how much
    when the stream tells; LZ4 and zstd stop decoding there).  Corrupt input raises
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


def _decode(codec: str, data: Any, size: int | None, op: str, budget: OutputBudget) -> bytes:
    """Decompress an LZ4 or zstd frame piece by piece, never holding more than ``size``
    (without it, ``budget.limit``) and one piece."""
    view = data.view() if isinstance(data, DeviceBuffer) else memoryview(data).cast("B")
    pieces = _lz4_pieces(view, op) if codec == "lz4" else _zstd_pieces(view, op)
    parts: list[bytes] = []
    total = 0
    try:
        for piece in pieces:
            total += len(piece)
            if size is not None:  # the caller's bound (device memory is still enforced by charge)
                if total > size:
                    raise _too_small(codec, view, size, op)
            elif budget.job is not None and total > budget.job:
                raise errors.JobTooLargeError(f"the output passes the {budget.job}-byte largest job", op=op)
            elif total > budget.limit:
                raise errors.DeviceMemoryError(
                    f"the output outgrows the {budget.limit} bytes of memory free for it (give output_size)", op=op
                )
            budget.charge(piece)
            parts.append(piece)
        return b"".join(parts)
    except MemoryError as exc:
        if isinstance(exc, errors.DpdpuError):
            raise
        raise errors.DeviceMemoryError(f"out of memory after {total} bytes of output", op=op) from None


def _too_small(codec: str, view: memoryview, size: int, op: str) -> errors.BufferTooSmallError:
    """The output passed ``size``: how much the frame says it needs, if it says (it has shown it holds more)."""
    declared = -1
    try:
        if codec == "lz4":
            declared = int(lz4.frame.get_frame_info(view)["content_size"]) or -1
        else:
            declared = zstandard.frame_content_size(view)
    except (RuntimeError, ValueError, TypeError, KeyError, zstandard.ZstdError):
        pass  # no size to report
    if declared > size:
        err = errors.BufferTooSmallError(f"needs {declared} bytes, has {size}", op=op)
        err.needed = declared
    else:
        err = errors.BufferTooSmallError(f"needs more than {size} bytes", op=op)
    return err


def _lz4_error(exc: RuntimeError, op: str) -> errors.DpdpuError:
    text = str(exc)[:200]
    if "alloc" in text or "resize" in text:  # the decoder ran out of memory: the frame may be fine
        return errors.DeviceMemoryError(f"out of memory decoding the LZ4 frame ({text})", op=op)
    return errors.CorruptDataError(f"not a valid LZ4 frame ({text})", op=op)


def _lz4_pieces(view: memoryview, op: str) -> Iterator[bytes]:
    decoder = lz4.frame.LZ4FrameDecompressor()
    fed = 0
    while not decoder.eof:
        if decoder.needs_input:
            if fed >= len(view):
                raise errors.TruncatedDataError("the compressed stream ends early (truncated)", op=op)
            chunk: Any = view[fed : fed + _LZ4_FEED]
            fed += len(chunk)
        else:
            chunk = b""
        try:
            piece = decoder.decompress(chunk, max_length=_PIECE)
        except RuntimeError as exc:
            raise _lz4_error(exc, op) from None
        if piece:
            yield piece
    trailing = len(decoder.unused_data or b"") + len(view) - fed
    if trailing:
        raise errors.CorruptDataError(f"{trailing} bytes follow the end of the stream", op=op)


#: Magic number of a Zstandard frame, and bytes of the Dictionary_ID and Frame_Content_Size fields by flag.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_DICT_ID_BYTES = (0, 1, 2, 4)
_ZSTD_CONTENT_SIZE_BYTES = (0, 2, 4, 8)


def _zstd_frame_end(view: memoryview, op: str) -> int:
    """Where the one Zstandard frame at the start of ``view`` ends, walking its block headers
    (RFC 8878, section 3.1.1): the decoder alone would neither notice a cut-off frame nor
    bytes after it."""
    n = len(view)
    if bytes(view[:4]) != _ZSTD_MAGIC[: min(n, 4)]:
        raise errors.CorruptDataError("not a valid Zstandard frame (no Zstandard magic number)", op=op)
    if n < 5:
        raise errors.TruncatedDataError("the compressed stream ends early (truncated)", op=op)
    descriptor = view[4]
    if descriptor & 0x08:
        raise errors.CorruptDataError("not a valid Zstandard frame (reserved header bit set)", op=op)
    single_segment = descriptor & 0x20
    content_size_bytes = _ZSTD_CONTENT_SIZE_BYTES[descriptor >> 6] or (1 if single_segment else 0)
    pos = 5 + (0 if single_segment else 1) + _ZSTD_DICT_ID_BYTES[descriptor & 3] + content_size_bytes
    while True:
        if pos + 3 > n:
            raise errors.TruncatedDataError("the compressed stream ends early (truncated)", op=op)
        header = view[pos] | view[pos + 1] << 8 | view[pos + 2] << 16
        kind = (header >> 1) & 3
        if kind == 3:
            raise errors.CorruptDataError("not a valid Zstandard frame (reserved block type)", op=op)
        pos += 3 + (1 if kind == 1 else header >> 3)
        if header & 1:
            break
    pos += 4 if descriptor & 0x04 else 0  # the content checksum
    if pos > n:
        raise errors.TruncatedDataError("the compressed stream ends early (truncated)", op=op)
    if pos < n:
        raise errors.CorruptDataError(f"{n - pos} bytes follow the end of the stream", op=op)
    return pos


#: One Zstandard decoder per thread: making one costs more than decoding a small frame, and
#: a decoder serves one operation at a time (each starts afresh).
_zstd_decoders = threading.local()


def _zstd_pieces(view: memoryview, op: str) -> Iterator[bytes]:
    end = _zstd_frame_end(view, op)
    decoder = getattr(_zstd_decoders, "decoder", None)
    if decoder is None:
        decoder = _zstd_decoders.decoder = zstandard.ZstdDecompressor()
    try:
        yield from decoder.read_to_iter(view[:end], write_size=_PIECE)
    except zstandard.ZstdError as exc:
        text = str(exc)[:200]
        if "memory" in text or "alloc" in text:  # e.g. a window larger than the decoder allows
            raise errors.DeviceMemoryError(f"cannot decode the Zstandard frame ({text})", op=op) from None
        raise errors.CorruptDataError(f"not a valid Zstandard frame ({text})", op=op) from None


def _crc32c_task(
    data: Any, value: int = 0, *, engine: str | None = None, fallback: bool = True
) -> tuple[Task, Options]:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise errors.InvalidArgumentError(
            f"value must be a 32-bit unsigned integer, not {errors.shown(value)}", op="crc32c"
        )
    options = _options("crc32c", engine, fallback)
    n = _nbytes(data, "crc32c")
    task = Task(op="crc32c", src=data, param=value, name="crc32c", nbytes=n, out_hint=4)
    return task, options


@_builtin(_crc32c_task)
def crc32c(data: Any, value: int = 0, *, engine: str | None = None, fallback: bool = True) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``value`` like ``zlib.crc32``."""
    return current_runtime().submit(crc32c, data, value, engine=engine, fallback=fallback).result()  # type: ignore[no-any-return]


def _memcpy_task(dst: Any, src: Any, *, engine: str | None = None, fallback: bool = True) -> tuple[Task, Options]:
    options = _options("memcpy", engine, fallback)
    n = _nbytes(src, "memcpy", "src")
    _nbytes(dst, "memcpy", "dst")
    if not isinstance(dst, DeviceBuffer) and memoryview(dst).readonly:
        raise errors.InvalidArgumentError("dst must be writable", op="memcpy")
    task = Task(op="memcpy", src=src, dst=dst, name="memcpy", nbytes=n, out_hint=n)
    return task, options


@_builtin(_memcpy_task)
def memcpy(dst: Any, src: Any, *, engine: str | None = None, fallback: bool = True) -> int:
    """Copy ``src`` into the start of writable ``dst`` (the DMA op); returns bytes copied.

    Either side may be a :class:`~dpdpu.runtime.device.DeviceBuffer`, so
    this moves data between host memory and device memory.
    """
    return current_runtime().submit(memcpy, dst, src, engine=engine, fallback=fallback).result()  # type: ignore[no-any-return]
