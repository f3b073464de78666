"""How a KV chunk is held in a tier: raw, int8-quantized, and/or compressed per layer.

A chunk is the array ``[layers, 2, tokens, kv_heads, head_dim]`` of one
full chunk of tokens.  Its *layer segment* ``l`` is the bytes of layer ``l``:

* ``raw``: the keys then the values of the layer, in the model dtype;
* ``int8``: the int8 values ``q = round(x / scale)`` of keys then values,
  followed by the float32 scales ``[2, kv_heads, head_dim]`` (one per
  channel: the largest magnitude over the chunk's tokens over 127).  Reading
  back gives ``q * scale`` rounded to the model dtype, so the error of an
  element is at most half its channel's scale plus the dtype's rounding.
  A chunk holding a non-finite value (inf, NaN) is encoded ``raw`` instead:
  its channel's scale would be inf or NaN, turning finite values into NaN.

A tier may further compress each segment with a codec of the family
(``lz4``, ``zstd``, ``deflate``) through :func:`dpdpu.compute.compress`, so
the runtime places the work (a BlueField hardware engine where it has one).
The DRAM tier keeps an uncompressed raw chunk as one array (retrieve is a
single copy into the output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import errors
from ..compute import codecs
from .keys import ModelShape

__all__ = [
    "CODECS",
    "REPRESENTATIONS",
    "Encoded",
    "decode_into",
    "decode_layer_into",
    "encode",
    "layer_segments",
    "segment_bytes",
]

CODECS = ("lz4", "zstd", "deflate")
REPRESENTATIONS = ("raw", "int8")


def _check_codec(codec: str | None) -> None:
    if codec is not None and codec not in CODECS:
        raise errors.InvalidArgumentError(
            f"codec must be one of {', '.join(CODECS)} or None, not {errors.shown(codec)}"
        )


@dataclass
class Encoded:
    """One chunk as a tier holds it."""

    rep: str
    codec: str | None
    tokens: int
    #: the chunk itself (raw, uncompressed): ``[layers, 2, tokens, heads, dim]``
    array: np.ndarray[Any, Any] | None = None
    #: per-layer segments otherwise (compressed with ``codec`` if any)
    segments: list[bytes] = field(default_factory=list)
    #: uncompressed bytes of each layer segment
    raw_lens: list[int] = field(default_factory=list)
    #: (max abs error, RMS error) of the int8 quantization, in model units
    quant_error: tuple[float, float] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes the chunk occupies in its tier."""
        if self.array is not None:
            return int(self.array.nbytes)
        return sum(len(s) for s in self.segments)


def _to_f32(x: np.ndarray[Any, Any], model: ModelShape) -> np.ndarray[Any, np.dtype[np.float32]]:
    if model.dtype == "bf16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def _from_f32(x: np.ndarray[Any, Any], model: ModelShape, out: np.ndarray[Any, Any]) -> None:
    if model.dtype == "bf16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        # Round to nearest even, the way hardware converts float32 to bfloat16.
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        np.copyto(out, rounded.astype(np.uint16))
    else:
        np.copyto(out, x, casting="unsafe")


def _quantize(chunk: np.ndarray[Any, Any], model: ModelShape) -> tuple[list[bytes], tuple[float, float]]:
    x = _to_f32(chunk, model)
    scale = np.abs(x).max(axis=2, keepdims=True) / np.float32(127.0)
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    back = np.empty_like(chunk)
    _from_f32(q.astype(np.float32) * scale, model, back)
    err = np.abs(_to_f32(back, model) - x)
    stats = (
        float(err.max()) if err.size else 0.0,
        float(np.sqrt(np.mean(err.astype(np.float64) ** 2))) if err.size else 0.0,
    )
    scale = scale.astype(np.float32)
    segs = [q[layer].tobytes() + scale[layer].tobytes() for layer in range(model.layers)]
    return segs, stats


def encode(chunk: np.ndarray[Any, Any], model: ModelShape, *, rep: str = "raw", codec: str | None = None) -> Encoded:
    """Encode a C-contiguous chunk (``[layers, 2, tokens, heads, dim]``) for a tier."""
    _check_codec(codec)
    tokens = int(chunk.shape[2])
    if rep == "raw":
        if codec is None:
            return Encoded("raw", None, tokens, array=chunk)
        raw = [chunk[layer].tobytes() for layer in range(model.layers)]
        quant = None
    elif rep == "int8" and not np.isfinite(_to_f32(chunk, model)).all():
        # Kept exact rather than spoiled (see the module docstring); the caller sees ``rep == "raw"``.
        return encode(chunk, model, rep="raw", codec=codec)
    elif rep == "int8":
        raw, quant = _quantize(chunk, model)
    else:
        raise errors.InvalidArgumentError(
            f"representation must be one of {', '.join(REPRESENTATIONS)}, not {errors.shown(rep)}"
        )
    lens = [len(s) for s in raw]
    segs = raw if codec is None else [codecs.compress(s, codec) for s in raw]
    return Encoded(rep, codec, tokens, segments=segs, raw_lens=lens, quant_error=quant)


def segment_bytes(model: ModelShape, rep: str, tokens: int) -> int:
    """Bytes of one uncompressed layer segment of ``tokens`` tokens in representation ``rep``."""
    elements = 2 * tokens * model.kv_heads * model.head_dim
    if rep == "raw":
        return elements * model.np_dtype.itemsize
    return elements + 2 * model.kv_heads * model.head_dim * 4  # int8 values, then float32 scales


def layer_segments(enc: Encoded, model: ModelShape) -> list[Any]:
    """Every layer segment uncompressed (views of the array where it can)."""
    if enc.array is not None:
        return [memoryview(enc.array[layer]).cast("B") for layer in range(model.layers)]
    if enc.codec is None:
        return list(enc.segments)
    return [codecs.decompress(s, enc.codec, output_size=n) for s, n in zip(enc.segments, enc.raw_lens, strict=True)]


def decode_layer_into(model: ModelShape, rep: str, segment: Any, dst: np.ndarray[Any, Any]) -> None:
    """Write one uncompressed layer segment into ``dst`` (``[2, tokens, heads, dim]`` of the model dtype)."""
    tokens = dst.shape[1]
    if rep == "raw":
        src = np.frombuffer(segment, dtype=model.np_dtype).reshape(dst.shape)
        np.copyto(dst, src)
        return
    nq = 2 * tokens * model.kv_heads * model.head_dim
    q = np.frombuffer(segment, dtype=np.int8, count=nq).reshape(dst.shape)
    scale = np.frombuffer(segment, dtype=np.float32, offset=nq).reshape(2, 1, model.kv_heads, model.head_dim)
    _from_f32(q.astype(np.float32) * scale, model, dst)


def decode_into(enc: Encoded, model: ModelShape, dst: np.ndarray[Any, Any], layer: int | None = None) -> None:
    """Write the chunk (or one ``layer`` of it) into ``dst`` (``[layers, 2, tokens, ...]`` or ``[2, tokens, ...]``)."""
    if enc.array is not None:
        np.copyto(dst, enc.array if layer is None else enc.array[layer])
        return
    layers = range(model.layers) if layer is None else (layer,)
    for i in layers:
        seg: Any = enc.segments[i]
        if enc.codec is not None:
            seg = codecs.decompress(seg, enc.codec, output_size=enc.raw_lens[i])
        decode_layer_into(model, enc.rep, seg, dst[i] if layer is None else dst)
