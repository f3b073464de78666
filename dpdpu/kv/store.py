"""The KV-cache tier for LLM serving: prefix chunks in DPU DRAM, then on DPU storage.

An LLM server that runs out of GPU memory for KV caches hands them to a
:class:`KvStore`; on the next request sharing a prefix it fetches them back
instead of recomputing the prefill.

>>> import numpy as np
>>> from dpdpu.kv import KvStore, ModelShape
>>> shape = ModelShape("tiny", layers=2, kv_heads=2, head_dim=4)
>>> with KvStore(shape, chunk_tokens=4) as kv:
...     tokens = list(range(10))
...     kv.store(tokens, np.ones(shape.token_shape(10), dtype=np.float16))
...     kv.lookup(tokens)
8
8

**Keys** (:mod:`dpdpu.kv.keys`): tokens are cut into chunks of
``chunk_tokens``; each full chunk's key is a BLAKE2b digest chained over the
previous key and qualified by model, shape, dtype, layer range and
tensor-parallel rank.  A trailing partial chunk is neither stored nor found.

**Data**: ``kv`` is layer-major ``[layers, 2, tokens, kv_heads, head_dim]``
(2 = keys, values) in the model dtype: ``float16`` for ``fp16``, raw
``uint16`` bit patterns for ``bf16`` (an ``ml_dtypes`` bfloat16 array is
taken as its bits too).  A numpy array or any buffer (flat bytes of that
layout) is accepted; anything else is a :class:`KvShapeError`.

**Tiers**: DPU DRAM (capacity: the device profile's ``memory`` unless
``dram_bytes`` says otherwise), then, with a ``data_dir``, files in a
:class:`~dpdpu.storage.fs.FileService` (``disk_bytes``).  Each tier has an
eviction policy (``lru`` or ``s3fifo``, :mod:`dpdpu.kv.policies`);
DRAM evictions are written to disk (demotion), disk evictions are dropped.
A disk hit is copied into DRAM (promotion; the disk copy stays).  Chunks in
use (being read, or pinned with :meth:`KvStore.pin`) are never evicted; when
a chunk being stored finds no room in either tier because every chunk is
pinned, :class:`KvCapacityError` (so what :meth:`KvStore.store` counts is
always retrievable afterwards).  A disk chunk is charged its header and its
payload in whole blocks; any positive ``disk_bytes`` works (the file service is
that size rounded up to a block).

**Layer-wise stores** (:meth:`KvStore.store_layer`) stage a request's layers
until the last arrives; at most ``max_staged`` requests are staged (the oldest
is dropped to admit another), :meth:`KvStore.clear` and :meth:`KvStore.close`
free them, and :meth:`KvStore.stats` shows them.
Optionally each tier compresses layer segments with a codec of the family,
and ``quantize="int8"`` keeps chunks as int8 with per-channel scales.  A chunk
holding a non-finite value (inf, NaN) is kept raw instead, since one such value
would spoil its channel's scale.  The error is in :meth:`KvStore.stats`: the
largest over every chunk the store holds or held, the ones found on disk at
open included (each disk chunk records its own).  Disk chunks carry CRC-32C
checksums: a corrupt chunk (or one whose header, checksum or not, describes
anything but this store's chunks) is a miss, and is dropped; a directory
found among the chunk files is left alone and counted (``ignored_entries``).  Each store
configuration (model qualification, chunk size, lossless or ``int8``) keeps its
chunks in a directory of its own (:mod:`dpdpu.kv.disk`), so several
models share a data directory without touching each other's chunks, and a
lossless store never finds lossy ones.

**Durability**: chunk files become durable at :meth:`KvStore.flush` and
:meth:`KvStore.close`; a reopened store finds them (their headers are read
and checked at open).  The DRAM tier is lost on close.

**Threads**: every method may be called from any number of threads.

**Simplifications**: the DRAM tier is numpy memory of this process (the
emulated DPU's memory is not charged for it); lossless codecs run through the
runtime (placed, and charged modeled time), while checksums on the read path
use the core's inline CRC-32C on the file service's threads; a lookup does not
read disk chunks, so a corrupt one shows (as a shorter hit) at retrieve.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import errors
from ..runtime.profile import Profile
from ..runtime.runtime import Runtime, current_runtime
from .codec import CODECS, Encoded, decode_into, encode
from .disk import DiskChunk, DiskTier, KvCorruptError
from .keys import ModelShape, TokenError, as_tokens, chunk_keys, root_key
from .policies import POLICIES, make_policy

__all__ = [
    "CODECS",
    "POLICIES",
    "KvCapacityError",
    "KvCorruptError",
    "KvShapeError",
    "KvStore",
    "ModelShape",
    "TokenError",
]

DEFAULT_CHUNK_TOKENS = 256
DEFAULT_DISK_BYTES = 4 << 30
DEFAULT_MAX_STAGED = 8
_PARALLEL_COPY_BYTES = 16 << 20


class KvShapeError(errors.InvalidArgumentError):
    """KV data does not match the declared model shape or dtype."""


class KvCapacityError(errors.DeviceMemoryError):
    """A tier needs room and every chunk in it is pinned (or one chunk exceeds the tier)."""


_DRAM = "dram"
_DISK = "disk"


class KvStore:
    """A two-tier KV-cache store (see the module docstring).

    Args:
        model: the model's KV shape.
        data_dir: directory of the storage tier; ``None`` keeps chunks in DRAM only.
        chunk_tokens: tokens per chunk (256).
        dram_bytes: DRAM tier capacity (default: the device profile's ``memory``).
        disk_bytes: storage tier capacity (4 GiB).
        policy: eviction policy of both tiers, ``"lru"`` or ``"s3fifo"``;
            ``disk_policy`` overrides it for the storage tier.
        dram_codec, disk_codec: compress each tier's chunks (``lz4``, ``zstd``, ``deflate``).
        quantize: ``"int8"`` to keep chunks as int8 with per-channel scales (lossy).
        device: profile (or name) giving the DRAM capacity and modeling storage
            time; default: the runtime's device.
        runtime: runtime the codecs run on (default: the current one).
        layer_range, tp_rank, tp_size: which part of the model this store
            holds; part of every key.
        promote_on_hit: copy disk hits into DRAM.
        max_staged: requests :meth:`store_layer` stages at once (the oldest is dropped beyond).
    """

    def __init__(
        self,
        model: ModelShape,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        dram_bytes: int | None = None,
        disk_bytes: int = DEFAULT_DISK_BYTES,
        policy: str = "lru",
        disk_policy: str | None = None,
        dram_codec: str | None = None,
        disk_codec: str | None = None,
        quantize: str | None = None,
        device: str | Profile | None = None,
        runtime: Runtime | None = None,
        layer_range: tuple[int, int] | None = None,
        tp_rank: int = 0,
        tp_size: int = 1,
        promote_on_hit: bool = True,
        max_staged: int = DEFAULT_MAX_STAGED,
    ) -> None:
        if not isinstance(model, ModelShape):
            raise errors.InvalidArgumentError(f"model must be a ModelShape, not {type(model).__name__}")
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens <= 0:
            raise errors.InvalidArgumentError(
                f"chunk_tokens must be a positive integer, not {errors.shown(chunk_tokens)}"
            )
        for name, codec in (("dram_codec", dram_codec), ("disk_codec", disk_codec)):
            if codec is not None and codec not in CODECS:
                raise errors.InvalidArgumentError(
                    f"{name} must be one of {', '.join(CODECS)} or None, not {errors.shown(codec)}"
                )
        if quantize not in (None, "int8"):
            raise errors.InvalidArgumentError(f"quantize must be None or 'int8', not {errors.shown(quantize)}")
        if isinstance(max_staged, bool) or not isinstance(max_staged, int) or max_staged <= 0:
            raise errors.InvalidArgumentError(f"max_staged must be a positive integer, not {errors.shown(max_staged)}")
        if data_dir is not None and (isinstance(disk_bytes, bool) or int(disk_bytes) <= 0):
            raise errors.InvalidArgumentError(f"disk_bytes must be positive, not {errors.shown(disk_bytes)}")
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.runtime = runtime
        profile = Profile.of(device) if device is not None else (runtime or current_runtime()).device.profile
        self.profile = profile
        self.dram_capacity = int(profile.memory.value) if dram_bytes is None else int(dram_bytes)
        self.disk_capacity = int(disk_bytes) if data_dir is not None else 0
        self.dram_codec = dram_codec
        self.disk_codec = disk_codec
        self.rep = quantize or "raw"
        self.promote_on_hit = promote_on_hit
        self._root = root_key(model, layer_range=layer_range, tp_rank=tp_rank, tp_size=tp_size)
        self._lock = threading.RLock()
        self._dram: dict[bytes, Encoded] = {}
        self._demoting: dict[bytes, Encoded] = {}
        self._disk: dict[bytes, DiskChunk] = {}
        self._dram_policy = make_policy(policy, self.dram_capacity)
        self._disk_policy = make_policy(disk_policy or policy, self.disk_capacity)
        self._dram_used = 0
        self._disk_used = 0
        self._pins: Counter[bytes] = Counter()
        # Insertion-ordered, so the oldest staged request is the first to drop.
        self._staged: dict[tuple[bytes, int], tuple[np.ndarray[Any, Any], set[int]]] = {}
        self.max_staged = max_staged
        self._counters: Counter[str] = Counter()
        self._seconds: dict[str, float] = {_DRAM: 0.0, _DISK: 0.0}
        self._quant_max = 0.0
        self._quant_sq = 0.0
        self._quant_n = 0
        self._closed = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpdpu-kv")
        self._copier = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpdpu-kv-copy")
        self._disk_tier: DiskTier | None = None
        if data_dir is not None:
            self._disk_tier = DiskTier(
                data_dir, model, self.disk_capacity, profile, chunk_tokens, root=self._root, rep=self.rep
            )
            found, bad, ignored = self._disk_tier.scan()
            self._counters["corrupt_dropped"] += bad
            self._counters["ignored_entries"] += ignored
            for chunk in found:
                if self._disk_used + chunk.footprint > self.disk_capacity:
                    # Opened with less room than before: this store's own chunks beyond it go.
                    self._disk_tier.delete(chunk)
                    self._counters["disk_evictions"] += 1
                    continue
                self._disk[chunk.key] = chunk
                self._disk_policy.insert(chunk.key, chunk.footprint)
                self._disk_used += chunk.footprint
                # Served as this store's own: their error counts in the reported one.
                self._count_quant(chunk.quant_error, chunk.tokens)

    # --- helpers ------------------------------------------------------------------------------

    def _ctx(self) -> contextlib.AbstractContextManager[Any]:
        return self.runtime.as_current() if self.runtime is not None else contextlib.nullcontext()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.RuntimeClosedError("the KV store is closed")

    @property
    def root(self) -> bytes:
        """The digest every key of this store chains from (model, shape, dtype, layer range and rank)."""
        return self._root

    def keys(self, tokens: Any) -> list[bytes]:
        """The keys of every full chunk of ``tokens`` (see :mod:`dpdpu.kv.keys`)."""
        return chunk_keys(tokens, self._root, self.chunk_tokens)

    def _as_kv(self, kv: Any, ntokens: int) -> np.ndarray[Any, Any]:
        shape = self.model.token_shape(ntokens)
        want = self.model.np_dtype
        if isinstance(kv, np.ndarray):
            arr = kv
        else:
            try:
                view = memoryview(kv)
            except TypeError:
                raise KvShapeError(f"kv must be a numpy array or a buffer, not {type(kv).__name__}") from None
            arr = np.frombuffer(view.cast("B"), dtype=np.uint8) if view.format in ("B", "b", "c") else np.asarray(view)
        if arr.dtype.name == "bfloat16" and self.model.dtype == "bf16":
            arr = arr.view(np.uint16)
        if arr.dtype == np.uint8 and arr.ndim == 1 and arr.nbytes == int(np.prod(shape)) * want.itemsize:
            arr = arr.view(want)
        if arr.dtype != want:
            raise KvShapeError(f"kv dtype {arr.dtype} does not match the model's {self.model.dtype} (held as {want})")
        if arr.shape != shape:
            if arr.ndim == 1 and arr.size == int(np.prod(shape)):
                return arr.reshape(shape)
            raise KvShapeError(f"kv shape {arr.shape} does not match [layers, 2, tokens, kv_heads, head_dim] = {shape}")
        return arr

    def _count_quant(self, error: tuple[float, float] | None, tokens: int) -> None:
        if error is not None:
            self._quant_max = max(self._quant_max, error[0])
            self._quant_sq += error[1] ** 2 * tokens
            self._quant_n += tokens

    # --- store --------------------------------------------------------------------------------

    def store(self, tokens: Any, kv: Any) -> int:
        """Store the KV of every full chunk of ``tokens``; returns how many tokens were newly stored.

        ``kv`` covers every token of ``tokens`` (``[layers, 2, len(tokens), heads, dim]``);
        chunks already cached are left alone.  The count covers only new chunks of the prefix
        still held when it returns (what a lookup then finds); :class:`KvCapacityError` when a
        chunk finds no room in any tier (all pinned).
        """
        self._check_open()
        arr_tokens = as_tokens(tokens)
        arr = self._as_kv(kv, len(arr_tokens))
        return self._store(self.keys(arr_tokens), arr)

    def _store(self, keys: list[bytes], arr: np.ndarray[Any, Any]) -> int:
        """:meth:`store` of chunks whose keys are known and data checked."""
        added: list[bytes] = []
        c = self.chunk_tokens
        with self._ctx():
            for i, key in enumerate(keys):
                with self._lock:
                    if key in self._dram or key in self._demoting or key in self._disk:
                        continue
                chunk = np.array(arr[:, :, i * c : (i + 1) * c], copy=True, order="C")
                enc = encode(chunk, self.model, rep=self.rep, codec=self.dram_codec)
                if self._put(key, enc):
                    added.append(key)
        # A later chunk may have pushed an earlier one out of both tiers (every disk chunk pinned), and
        # a lookup stops at the first missing chunk: only new chunks of the prefix still held count.
        with self._lock:
            prefix = set()
            for key in keys:
                if key not in self._dram and key not in self._demoting and key not in self._disk:
                    break
                prefix.add(key)
        return sum(c for key in added if key in prefix)

    def _put(self, key: bytes, enc: Encoded) -> bool:
        """Insert a chunk into DRAM (demoting what must go), or straight to disk if DRAM cannot hold it."""
        with self._lock:
            if key in self._dram or key in self._demoting:
                return False
            self._count_quant(enc.quant_error, enc.tokens)
            if enc.rep != self.rep:
                self._counters["unquantized_chunks"] += 1
            self._counters["stored_chunks"] += 1
            if enc.nbytes > self.dram_capacity:
                if self._disk_tier is None:
                    raise KvCapacityError(f"a chunk of {enc.nbytes} bytes exceeds the DRAM tier ({self.dram_capacity})")
                if key in self._disk:
                    return False
                to_disk: list[tuple[bytes, Encoded]] = []
                room = False
            else:
                to_disk, room = self._make_dram_room(enc.nbytes)
            if room:
                self._dram[key] = enc
                self._dram_policy.insert(key, enc.nbytes)
                self._dram_used += enc.nbytes
            elif self._disk_tier is None:
                self._counters["stored_chunks"] -= 1
                raise KvCapacityError(
                    f"the DRAM tier ({self.dram_capacity} bytes) has no room for {enc.nbytes} bytes: "
                    "every chunk is pinned"
                )
            else:
                # No room in DRAM (the chunk is too large, or every chunk is pinned for now): straight to disk.
                self._demoting[key] = enc
                to_disk.append((key, enc))
        why = self._demote(to_disk).get(key)
        if why is not None:
            # Neither tier could take it: counting it as stored would promise a hit that never comes.
            with self._lock:
                self._counters["stored_chunks"] -= 1
            raise KvCapacityError(f"no tier can hold a chunk of {enc.nbytes} bytes: {why}")
        return True

    def _make_dram_room(self, nbytes: int) -> tuple[list[tuple[bytes, Encoded]], bool]:
        """Evict until ``nbytes`` fit: the chunks to demote, and whether there is room now (False: all pinned)."""
        out: list[tuple[bytes, Encoded]] = []
        while self._dram_used + nbytes > self.dram_capacity:
            victim = self._dram_policy.victim(lambda k: self._pins[k] == 0)  # type: ignore[index]
            if victim is None:
                return out, False
            assert isinstance(victim, bytes)
            enc = self._dram.pop(victim)
            self._dram_used -= enc.nbytes
            self._counters["dram_evictions"] += 1
            if victim not in self._disk and self._disk_tier is not None:
                self._demoting[victim] = enc
                out.append((victim, enc))
        return out, True

    def _demote(self, chunks: list[tuple[bytes, Encoded]]) -> dict[bytes, str]:
        """Write chunks evicted from DRAM to disk (outside the lock: they stay readable meanwhile).

        Returns the keys dropped for want of room, each with why.
        """
        disk = self._disk_tier
        dropped_keys: dict[bytes, str] = {}
        for key, enc in chunks:
            assert disk is not None
            reserved = 0
            try:
                # Compressed (if so configured) before room is made: the exact footprint is charged.
                with self._ctx():
                    chunk, buffers = disk.prepare(key, enc, self.disk_codec)
                if chunk.footprint > self.disk_capacity:
                    raise KvCapacityError(
                        f"it takes {chunk.footprint} bytes on disk, more than the storage tier ({self.disk_capacity})"
                    )
                with self._lock:
                    dropped = self._make_disk_room(chunk.footprint)
                    # Reserved now, not once written: concurrent demotions must not count the same room.
                    self._disk_used += chunk.footprint
                    reserved = chunk.footprint
                for old in dropped:
                    disk.delete(old)
                with self._ctx():
                    written = disk.write(chunk, buffers)
            except (KvCapacityError, errors.DeviceFullError) as exc:
                # No room (every disk chunk pinned, or the service filled by other stores): the demoted
                # chunk is dropped (it is a cache).
                if reserved:
                    disk.delete(chunk)  # a partly written file would only show as corrupt at the next open
                with self._lock:
                    self._disk_used -= reserved
                    self._demoting.pop(key, None)
                    self._counters["demotions_dropped"] += 1
                dropped_keys[key] = str(exc)
                continue
            except BaseException:
                with self._lock:
                    self._disk_used -= reserved
                    self._demoting.pop(key, None)
                raise
            with self._lock:
                self._demoting.pop(key, None)
                self._disk[key] = written
                self._disk_policy.insert(key, written.footprint)
                self._counters["demotions"] += 1
                self._counters["disk_bytes_written"] += written.nbytes
        return dropped_keys

    def _make_disk_room(self, nbytes: int) -> list[DiskChunk]:
        out = []
        while self._disk_used + nbytes > self.disk_capacity:
            victim = self._disk_policy.victim(lambda k: self._pins[k] == 0)  # type: ignore[index]
            if victim is None:
                raise KvCapacityError(f"the storage tier has no room for {nbytes} bytes: every chunk in it is pinned")
            assert isinstance(victim, bytes)
            chunk = self._disk.pop(victim)
            self._disk_used -= chunk.footprint
            self._counters["disk_evictions"] += 1
            out.append(chunk)
        return out

    def store_layer(self, tokens: Any, layer: int, kv_layer: Any, *, start: int = 0) -> int:
        """Store one layer (``[2, len(tokens) - start, heads, dim]``); once every layer arrived the chunks are stored.

        ``start`` (a whole number of chunks) skips chunks the caller knows are stored: ``kv_layer``
        covers tokens ``[start, len(tokens))`` and only chunks from ``start`` on are stored.
        Returns the tokens newly stored by this call (0 until the last layer).
        """
        self._check_open()
        arr_tokens = as_tokens(tokens)
        keys = self.keys(arr_tokens)
        c = self.chunk_tokens
        if isinstance(start, bool) or not isinstance(start, int) or start % c or not 0 <= start <= len(keys) * c:
            raise KvShapeError(f"start must be a whole number of {c}-token chunks within the tokens")
        if len(keys) * c == start:
            return 0
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.model.layers:
            raise KvShapeError(f"layer must be in [0, {self.model.layers}), not {errors.shown(layer)}")
        n = len(arr_tokens)
        full = len(keys) * c
        one = self._as_kv_layer(kv_layer, n - start)
        # Staged by the last chunk's key and the start: two uploads of one prefix from different starts
        # must not mix their layers.
        tag = (keys[-1], start)
        with self._lock:
            staged = self._staged.get(tag)
            if staged is None:
                # A request whose remaining layers never come must not hold its buffer forever.
                while len(self._staged) >= self.max_staged:
                    del self._staged[next(iter(self._staged))]
                    self._counters["staged_dropped"] += 1
                staged = (np.empty(self.model.token_shape(full - start), dtype=self.model.np_dtype), set())
                self._staged[tag] = staged
            buf, done = staged
        buf[layer] = one[:, : full - start]
        with self._lock:
            done.add(layer)
            # Identity check: the entry may have been dropped (and another staged under the key) meanwhile.
            complete = len(done) == self.model.layers and self._staged.get(tag) is staged
            if complete:
                del self._staged[tag]
        if not complete:
            return 0
        # The keys of the full chunks are those of every token: no need to hash them again.
        self._check_open()
        return self._store(keys[start // c :], buf)

    def _as_kv_layer(self, kv_layer: Any, ntokens: int) -> np.ndarray[Any, Any]:
        m = self.model
        arr = kv_layer if isinstance(kv_layer, np.ndarray) else np.asarray(memoryview(kv_layer))
        if arr.dtype.name == "bfloat16" and m.dtype == "bf16":
            arr = arr.view(np.uint16)
        shape = (2, ntokens, m.kv_heads, m.head_dim)
        if arr.dtype != m.np_dtype or arr.shape != shape:
            raise KvShapeError(f"a layer must be {shape} of {m.np_dtype}, not {arr.shape} of {arr.dtype}")
        return arr

    # --- lookup and retrieve ---------------------------------------------------------------------

    def lookup(self, tokens: Any) -> int:
        """How many leading tokens of ``tokens`` are cached (in either tier).

        A lookup changes nothing but the ``lookups`` counter: no pin, no eviction order, no promotion.
        """
        return self.lookup_keys(self.keys(tokens))

    def lookup_keys(self, keys: list[bytes]) -> int:
        """:meth:`lookup` of chunks whose keys are known."""
        self._check_open()
        n = 0
        with self._lock:
            for key in keys:
                if key not in self._dram and key not in self._demoting and key not in self._disk:
                    break
                n += 1
            self._counters["lookups"] += 1
        return n * self.chunk_tokens

    def _plan(self, keys: list[bytes]) -> list[tuple[bytes, str, Any]]:
        plan: list[tuple[bytes, str, Any]] = []
        with self._lock:
            for key in keys:
                if key in self._dram:
                    plan.append((key, _DRAM, self._dram[key]))
                    self._dram_policy.hit(key)
                elif key in self._demoting:
                    plan.append((key, _DRAM, self._demoting[key]))
                elif key in self._disk:
                    plan.append((key, _DISK, self._disk[key]))
                    self._disk_policy.hit(key)
                else:
                    break
                self._pins[key] += 1
        return plan

    def _unpin(self, keys: list[bytes]) -> None:
        with self._lock:
            for key in keys:
                self._pins[key] -= 1
                if self._pins[key] <= 0:
                    del self._pins[key]

    def _drop_corrupt(self, key: bytes, chunk: DiskChunk) -> None:
        with self._lock:
            if self._disk.get(key) is chunk:
                del self._disk[key]
                self._disk_policy.remove(key)
                self._disk_used -= chunk.footprint
            self._counters["corrupt_dropped"] += 1
        assert self._disk_tier is not None
        self._disk_tier.delete(chunk)

    def retrieve(self, tokens: Any, *, out: np.ndarray[Any, Any] | None = None) -> tuple[int, np.ndarray[Any, Any]]:
        """The cached prefix of ``tokens``: ``(hit_tokens, kv)``, ``kv`` shaped ``[layers, 2, hit_tokens, ...]``.

        ``out``, if given, is a C-contiguous array ``[layers, 2, T, heads, dim]`` of the model
        dtype with ``T`` at least the full-chunk tokens of ``tokens`` (a server's preallocated
        buffer); the result is then a view of it.
        """
        self._check_open()
        keys = self.keys(tokens)
        c = self.chunk_tokens
        if out is not None:
            self._check_out(out, len(keys) * c)
        plan = self._plan(keys)
        if out is None:
            out = np.empty(self.model.token_shape(len(plan) * c), dtype=self.model.np_dtype)
        served = 0
        promote: list[int] = []
        seconds: dict[str, float] = {_DRAM: 0.0, _DISK: 0.0}
        moved: Counter[str] = Counter()
        try:
            with self._ctx():
                for i, (key, tier, obj) in enumerate(plan):
                    dst = out[:, :, i * c : (i + 1) * c]
                    t0 = time.perf_counter()
                    if tier == _DRAM:
                        self._copy_out(obj, dst)
                    else:
                        try:
                            assert self._disk_tier is not None
                            self._disk_tier.read_into(obj, dst)
                        except KvCorruptError:
                            self._drop_corrupt(key, obj)
                            break
                        promote.append(i)
                    seconds[tier] += time.perf_counter() - t0
                    moved[f"{tier}_read_bytes"] += dst.nbytes
                    moved[f"{tier}_hits"] += 1
                    served += 1
        finally:
            self._unpin([k for k, _, _ in plan])
        with self._lock:
            for tier in (_DRAM, _DISK):
                self._seconds[tier] += seconds[tier]
                self._counters[f"{tier}_read_bytes"] += moved[f"{tier}_read_bytes"]
                self._counters[f"{tier}_hits"] += moved[f"{tier}_hits"]
            self._counters["retrieves"] += 1
            self._counters["hit_tokens"] += served * c
            self._counters["miss_tokens"] += (len(keys) - served) * c
            self._counters["misses"] += len(keys) - served
        if self.promote_on_hit:
            self._promote([(plan[i][0], out[:, :, i * c : (i + 1) * c]) for i in promote])
        return served * c, out if out.shape[2] == served * c else out[:, :, : served * c]

    def _copy_out(self, enc: Encoded, dst: np.ndarray[Any, Any]) -> None:
        # A large raw chunk is copied by two threads, half the layers each (numpy releases the GIL):
        # the destination is strided, so each piece is a modest memcpy with ordinary stores, and a
        # second core's bandwidth is what there is to gain.
        if enc.array is None or enc.array.nbytes < _PARALLEL_COPY_BYTES:
            decode_into(enc, self.model, dst)
            return
        half = self.model.layers // 2
        src = enc.array
        fut = self._copier.submit(np.copyto, dst[:half], src[:half])
        np.copyto(dst[half:], src[half:])
        fut.result()

    def _check_out(self, out: np.ndarray[Any, Any], tokens: int) -> None:
        m = self.model
        ok = (
            isinstance(out, np.ndarray)
            and out.dtype == m.np_dtype
            and out.ndim == 5
            and out.shape[:2] == (m.layers, 2)
            and out.shape[3:] == (m.kv_heads, m.head_dim)
            and out.shape[2] >= tokens
            and out.flags.c_contiguous
            and out.flags.writeable
        )
        if not ok:
            shape = m.token_shape(tokens)
            raise KvShapeError(
                f"out must be a writable C-contiguous {m.np_dtype} array of shape {shape} (or more tokens)"
            )

    def _promote(self, chunks: list[tuple[bytes, np.ndarray[Any, Any]]]) -> None:
        # A raw chunk's DRAM size is known before encoding: skip the copy when it cannot fit anyway.
        least = 1 if self.rep != "raw" or self.dram_codec is not None else None
        with self._ctx():
            for key, data in chunks:
                if (least or data.nbytes) > self.dram_capacity:
                    continue
                with self._lock:
                    if key in self._dram or key not in self._disk:
                        continue
                # A copy: ``data`` is a view of the caller's output, which the caller may change.
                enc = encode(np.array(data, order="C", copy=True), self.model, rep=self.rep, codec=self.dram_codec)
                with self._lock:
                    if key in self._dram or key not in self._disk or enc.nbytes > self.dram_capacity:
                        continue
                    to_disk, room = self._make_dram_room(enc.nbytes)
                    if room:
                        self._dram[key] = enc
                        self._dram_policy.insert(key, enc.nbytes)
                        self._dram_used += enc.nbytes
                        self._counters["promotions"] += 1
                self._demote(to_disk)

    def retrieve_layer(self, tokens: Any, layer: int, *, start: int = 0) -> tuple[int, np.ndarray[Any, Any]]:
        """One layer of the cached prefix: ``(hit_tokens, kv)``, ``kv`` shaped ``[2, hit_tokens - start, heads, dim]``.

        A server calls it per layer to overlap loading layer ``i+1`` with computing
        layer ``i`` (:meth:`prefetch` first brings disk chunks into DRAM).  ``start`` (a whole
        number of chunks) skips chunks the caller holds: the cached run of chunks from there on.
        """
        self._check_open()
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.model.layers:
            raise KvShapeError(f"layer must be in [0, {self.model.layers}), not {errors.shown(layer)}")
        keys = self.keys(tokens)[self._start_chunk(tokens, start) :]
        plan = self._plan(keys)
        c = self.chunk_tokens
        m = self.model
        out = np.empty((2, len(plan) * c, m.kv_heads, m.head_dim), dtype=m.np_dtype)
        served = 0
        try:
            with self._ctx():
                for i, (key, tier, obj) in enumerate(plan):
                    dst = out[:, i * c : (i + 1) * c]
                    if tier == _DRAM:
                        decode_into(obj, m, dst, layer)
                    else:
                        try:
                            assert self._disk_tier is not None
                            self._disk_tier.read_into(obj, dst, layer)
                        except KvCorruptError:
                            self._drop_corrupt(key, obj)
                            break
                    served += 1
        finally:
            self._unpin([k for k, _, _ in plan])
        if layer == 0:  # a layer-wise load counts once
            with self._lock:
                self._counters["hit_tokens"] += served * c
                self._counters["miss_tokens"] += (len(keys) - served) * c
                self._counters["misses"] += len(keys) - served
        return start + served * c, out if served == len(plan) else out[:, : served * c]

    def _start_chunk(self, tokens: Any, start: int) -> int:
        c = self.chunk_tokens
        if isinstance(start, bool) or not isinstance(start, int) or start % c or not 0 <= start <= len(tokens):
            raise KvShapeError(f"start must be a whole number of {c}-token chunks within the tokens")
        return start // c

    def iter_layers(self, tokens: Any, *, start: int = 0) -> Iterator[tuple[int, int, np.ndarray[Any, Any]]]:
        """``(layer, hit_tokens, kv_layer)`` for every layer in order, the chunks pinned until the end.

        ``kv_layer`` covers tokens ``[start, hit_tokens)`` (see :meth:`retrieve_layer`).  The hit
        is fixed by the first layer; later layers never return more.
        """
        keys = self.pin_keys(tokens, start=start)
        try:
            hit = -1
            for layer in range(self.model.layers):
                n, arr = self.retrieve_layer(tokens, layer, start=start)
                if hit < 0:
                    hit = n
                yield layer, min(hit, n), arr[:, : min(hit, n) - start]
        finally:
            self.unpin_keys(keys)

    def prefetch(self, tokens: Any) -> concurrent.futures.Future[int]:
        """Bring the cached prefix of ``tokens`` into DRAM in the background; the future gives its token count."""
        self._check_open()
        keys = self.keys(tokens)

        def job() -> int:
            with self._ctx():
                for key in keys:
                    with self._lock:
                        in_dram = key in self._dram or key in self._demoting
                        chunk = self._disk.get(key)
                        if chunk is not None and not in_dram:
                            self._pins[key] += 1
                    if in_dram:
                        continue
                    if chunk is None:
                        break
                    buf = np.empty(self.model.token_shape(self.chunk_tokens), dtype=self.model.np_dtype)
                    try:
                        assert self._disk_tier is not None
                        self._disk_tier.read_into(chunk, buf)
                    except KvCorruptError:
                        self._drop_corrupt(key, chunk)
                        break
                    finally:
                        self._unpin([key])
                    self._promote([(key, buf)])
                    with self._lock:
                        self._counters["prefetched_chunks"] += 1
            return self.lookup_dram(keys)

        return self._pool.submit(job)

    def lookup_dram(self, keys: list[bytes]) -> int:
        """How many leading tokens of these keys are in DRAM."""
        n = 0
        with self._lock:
            for key in keys:
                if key not in self._dram and key not in self._demoting:
                    break
                n += 1
        return n * self.chunk_tokens

    # --- pinning and eviction ------------------------------------------------------------------

    def pin(self, tokens: Any) -> int:
        """Pin the cached prefix of ``tokens`` (it cannot be evicted until :meth:`unpin`); returns its tokens."""
        self._check_open()
        plan = self._plan(self.keys(tokens))
        return len(plan) * self.chunk_tokens

    def pin_keys(self, tokens: Any, *, start: int = 0) -> list[bytes]:
        """Pin the cached run of chunks of ``tokens`` from ``start`` on; returns their keys for :meth:`unpin_keys`."""
        self._check_open()
        keys = self.keys(tokens)[self._start_chunk(tokens, start) :]
        return [key for key, _, _ in self._plan(keys)]

    def unpin_keys(self, keys: list[bytes]) -> None:
        """Undo one :meth:`pin_keys` (of exactly the keys it returned)."""
        self._unpin(keys)

    def unpin(self, tokens: Any) -> None:
        """Undo one :meth:`pin` of the same tokens."""
        keys = self.keys(tokens)
        with self._lock:
            for key in keys:
                if self._pins.get(key, 0) <= 0:
                    break
                self._pins[key] -= 1
                if self._pins[key] <= 0:
                    del self._pins[key]

    @contextlib.contextmanager
    def pinned(self, tokens: Any) -> Iterator[int]:
        """Pin the cached prefix of ``tokens`` inside the block; yields its token count."""
        self._check_open()
        keys = self.keys(tokens)
        plan = self._plan(keys)
        try:
            yield len(plan) * self.chunk_tokens
        finally:
            self._unpin(keys[: len(plan)])

    def evict(self, tokens: Any) -> int:
        """Remove every chunk of ``tokens`` from both tiers (pinned ones stay); returns the chunks removed."""
        self._check_open()
        return self._remove(self.keys(tokens))

    def clear(self) -> int:
        """Remove every unpinned chunk from both tiers and drop staged layers; returns the chunks removed."""
        self._check_open()
        with self._lock:
            self._staged.clear()
            keys = list({*self._dram, *self._disk})
        return self._remove(keys)

    def _remove(self, keys: list[bytes]) -> int:
        removed = 0
        files = []
        with self._lock:
            for key in keys:
                if self._pins.get(key, 0) > 0:
                    continue
                hit = False
                enc = self._dram.pop(key, None)
                if enc is not None:
                    self._dram_policy.remove(key)
                    self._dram_used -= enc.nbytes
                    hit = True
                chunk = self._disk.pop(key, None)
                if chunk is not None:
                    self._disk_policy.remove(key)
                    self._disk_used -= chunk.footprint
                    files.append(chunk)
                    hit = True
                removed += hit
        for chunk in files:
            assert self._disk_tier is not None
            self._disk_tier.delete(chunk)
        return removed

    # --- information and life cycle ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: hits, misses, bytes and chunks per tier, read GB/s per tier, int8 error."""
        with self._lock:
            c = dict(self._counters)
            hits = c.get("hit_tokens", 0)
            misses = c.get("miss_tokens", 0)
            out: dict[str, Any] = {
                "hit_tokens": hits,
                "miss_tokens": misses,
                "hits": c.get("dram_hits", 0) + c.get("disk_hits", 0),
                "misses": c.get("misses", 0),
                "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
                "retrieves": c.get("retrieves", 0),
                "lookups": c.get("lookups", 0),
                "pinned_chunks": len(self._pins),
            }
            for tier, cap, used, n in (
                (_DRAM, self.dram_capacity, self._dram_used, len(self._dram)),
                (_DISK, self.disk_capacity, self._disk_used, len(self._disk)),
            ):
                secs = self._seconds.get(tier, 0.0)
                read = c.get(f"{tier}_read_bytes", 0)
                out[tier] = {
                    "chunks": n,
                    "bytes": used,
                    "capacity": cap,
                    "hits": c.get(f"{tier}_hits", 0),
                    "read_bytes": read,
                    "read_gb_per_s": read / secs / 1e9 if secs > 0 else 0.0,
                    "evictions": c.get(f"{tier}_evictions", 0),
                }
            out[_DISK]["written_bytes"] = c.get("disk_bytes_written", 0)
            for key in (
                "stored_chunks", "demotions", "demotions_dropped", "promotions", "corrupt_dropped", "ignored_entries",
            ):  # fmt: skip
                out[key] = c.get(key, 0)
            out["prefetched_chunks"] = c.get("prefetched_chunks", 0)
            out["staged"] = {
                "requests": len(self._staged),
                "bytes": sum(buf.nbytes for buf, _ in self._staged.values()),
                "dropped": c.get("staged_dropped", 0),
            }
            if self.rep == "int8":
                rms = (self._quant_sq / self._quant_n) ** 0.5 if self._quant_n else 0.0
                out["quantization"] = {
                    "mode": "int8",
                    "max_abs_error": self._quant_max,
                    "rms_error": rms,
                    "unquantized_chunks": c.get("unquantized_chunks", 0),
                }
        return out

    def flush(self) -> None:
        """Make the storage tier durable (chunks written so far survive a restart)."""
        if self._disk_tier is not None:
            self._disk_tier.flush()

    def close(self) -> None:
        """Finish background work and close the storage tier (DRAM contents are lost)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._staged.clear()
        self._pool.shutdown(wait=True)
        self._copier.shutdown(wait=True)
        if self._disk_tier is not None:
            self._disk_tier.close()

    def __enter__(self) -> KvStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.model
        shape = f"{m.layers} layers x {m.kv_heads} heads x {m.head_dim} {m.dtype}"
        return f"KvStore({m.name}: {shape}, {self.chunk_tokens}-token chunks)"
