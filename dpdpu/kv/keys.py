"""Keys of the KV-cache tier: model shapes, token validation and chained chunk hashes.

A token sequence is cut into chunks of ``chunk_tokens`` tokens (256 by
default).  Chunk ``i``'s key is the BLAKE2b-128 digest of chunk ``i-1``'s key
followed by chunk ``i``'s tokens as little-endian 64-bit integers; chunk 0
chains from a root digest of the *qualifier*: the model name, its shape, the
dtype, the layer range and the tensor-parallel rank and size.  So:

* two processes (or machines) compute the same keys for the same tokens, with
  no state shared and no use of Python's randomized ``hash()``;
* a key names a whole prefix, not just its own tokens: the longest cached
  prefix is found by walking the keys in order until the first miss;
* keys of one model (or rank, or layer range) never collide with another's,
  so a lookup with another model's shape is a miss, never its data.

Only full chunks get keys: the tokens of a trailing partial chunk are never
stored and never count as cached (a 600-token prompt with 256-token chunks
caches 512 tokens; the rest is recomputed by the server).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import errors

__all__ = ["DTYPES", "KEY_BYTES", "ModelShape", "TokenError", "as_tokens", "chunk_keys", "root_key"]

#: Bytes of a chunk key.
KEY_BYTES = 16
#: Model dtypes and the numpy dtype their elements are held in (bf16 as raw
#: ``uint16`` bits: numpy has no bfloat16 and ``ml_dtypes`` is not a dependency).
DTYPES: dict[str, np.dtype[Any]] = {"fp16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}
_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
_KEY_VERSION = b"dpdpu-kv/1"


class TokenError(errors.InvalidArgumentError):
    """Tokens are not a 1-D sequence of integers."""


@dataclass(frozen=True)
class ModelShape:
    """The KV-cache shape of a model (of one tensor-parallel rank).

    Args:
        name: model name, part of every key (``"llama-7b"``).
        layers: transformer layers.
        kv_heads: key/value heads held by this rank.
        head_dim: elements per head.
        dtype: ``"fp16"`` or ``"bf16"`` (bf16 data is passed as ``uint16`` bit patterns).
    """

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "fp16"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise errors.InvalidArgumentError(f"model name must be a non-empty string, not {errors.shown(self.name)}")
        for field in ("layers", "kv_heads", "head_dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise errors.InvalidArgumentError(f"{field} must be a positive integer, not {errors.shown(value)}")
        dtype = _ALIASES.get(self.dtype, self.dtype)
        if dtype not in DTYPES:
            raise errors.InvalidArgumentError(f"dtype must be one of {sorted(DTYPES)}, not {errors.shown(self.dtype)}")
        object.__setattr__(self, "dtype", dtype)

    @property
    def np_dtype(self) -> np.dtype[Any]:
        """The numpy dtype elements are held in (``uint16`` for bf16)."""
        return DTYPES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        """KV bytes of one token over all layers (keys and values)."""
        return self.layers * 2 * self.kv_heads * self.head_dim * self.np_dtype.itemsize

    def token_shape(self, tokens: int) -> tuple[int, int, int, int, int]:
        """The layer-major array shape ``[layers, 2, tokens, kv_heads, head_dim]``."""
        return (self.layers, 2, tokens, self.kv_heads, self.head_dim)


def as_tokens(tokens: Any) -> np.ndarray[Any, np.dtype[np.int64]]:
    """``tokens`` as a 1-D little-endian int64 array; :class:`TokenError` when it is not a 1-D integer sequence."""
    if isinstance(tokens, (str, bytes, bytearray)):
        raise TokenError(f"tokens must be a 1-D sequence of integers, not {type(tokens).__name__}")
    if isinstance(tokens, np.ndarray):
        arr = tokens
    elif isinstance(tokens, Sequence) or hasattr(tokens, "__array__"):
        if isinstance(tokens, Sequence) and any(
            isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in tokens
        ):
            raise TokenError("tokens must be integers")
        arr = np.asarray(tokens) if len(tokens) else np.zeros(0, dtype=np.int64)
    else:
        raise TokenError(f"tokens must be a 1-D sequence of integers, not {type(tokens).__name__}")
    if arr.ndim != 1:
        raise TokenError(f"tokens must be 1-D, not of shape {arr.shape}")
    if arr.size == 0:
        # ``np.array([])`` is float64 only because numpy defaults empty arrays to it: no tokens, as ``[]``.
        return np.zeros(0, dtype="<i8")
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise TokenError(f"tokens must be integers, not {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= 1 << 63:
        raise TokenError("token ids must fit in 64 bits")
    return np.ascontiguousarray(arr, dtype="<i8")


def root_key(
    model: ModelShape, *, layer_range: tuple[int, int] | None = None, tp_rank: int = 0, tp_size: int = 1
) -> bytes:
    """The digest every chain of ``model`` (this layer range and rank) starts from."""
    lo, hi = layer_range if layer_range is not None else (0, model.layers)
    qualifier = (
        f"{model.name}\0layers={model.layers}\0heads={model.kv_heads}\0dim={model.head_dim}\0dtype={model.dtype}"
        f"\0range={lo}:{hi}\0tp={tp_rank}/{tp_size}"
    )
    return hashlib.blake2b(_KEY_VERSION + b"\0" + qualifier.encode(), digest_size=KEY_BYTES).digest()


def chunk_keys(tokens: Any, root: bytes, chunk_tokens: int) -> list[bytes]:
    """Keys of every *full* chunk of ``tokens``, each chained over the one before (see the module docstring)."""
    arr = as_tokens(tokens)
    out: list[bytes] = []
    prev = root
    header = struct.pack("<I", chunk_tokens)
    for i in range(len(arr) // chunk_tokens):
        h = hashlib.blake2b(prev, digest_size=KEY_BYTES)
        h.update(header)
        h.update(arr[i * chunk_tokens : (i + 1) * chunk_tokens].tobytes())
        prev = h.digest()
        out.append(prev)
    return out
