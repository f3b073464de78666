"""The stores of one KV tier: one :class:`KvStore` per model shard, opened by the clients that use them.

A serving engine runs a scheduler and one worker per tensor-parallel rank,
each in its own process; each rank's KV is a shard with its own keys (the
root names the model, its shape and the rank).  A :class:`KvStorePool`
holds a store per shard, opened on demand with the settings the client sends
(chunk size, device profile, policies, codecs), while the tier's resources
stay the pool's: its DRAM and storage budgets, split evenly over a model's
ranks, and its data directory, where each store keeps a file service of its
own (``<data_dir>/<store id>``), so a restarted tier finds each shard's chunks.

A store's id is its root key in hex: every process computes it from the
model and rank alone, so a scheduler can address the stores of all ranks.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .. import errors
from ..runtime.profile import Profile
from ..runtime.runtime import Runtime
from .keys import ModelShape, root_key
from .store import DEFAULT_CHUNK_TOKENS, DEFAULT_DISK_BYTES, KvCapacityError, KvStore

__all__ = ["DEFAULT_MAX_STORES", "KvStorePool", "store_id"]

#: Stores one pool opens at most (every client's open names a shard; a bound keeps a tier's memory bounded).
DEFAULT_MAX_STORES = 64
_MAX_TP = 1024
#: What a client may choose when it opens a store, and the defaults.
OPTIONS: dict[str, Any] = {
    "chunk_tokens": DEFAULT_CHUNK_TOKENS,
    "device": None,
    "policy": "lru",
    "disk_policy": None,
    "dram_codec": None,
    "disk_codec": None,
    "quantize": None,
}


def store_id(model: ModelShape, *, tp_rank: int = 0, tp_size: int = 1) -> str:
    """The id of a model shard's store: its root key in hex (the same in every process)."""
    return root_key(model, tp_rank=tp_rank, tp_size=tp_size).hex()


def _rank(tp_rank: Any, tp_size: Any) -> tuple[int, int]:
    for name, value in (("tp_rank", tp_rank), ("tp_size", tp_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.InvalidArgumentError(f"{name} must be an integer, not {errors.shown(value)}")
    if not 0 < tp_size <= _MAX_TP or not 0 <= tp_rank < tp_size:
        raise errors.InvalidArgumentError(f"tp_rank {tp_rank} of tp_size {tp_size} is not a rank")
    return tp_rank, tp_size


class KvStorePool:
    """The stores of one tier, by shard (see the module docstring).

    Args:
        data_dir: where each store keeps its storage tier (a directory per store); None: DRAM only.
        dram_bytes: DRAM per model, split over its ranks (default: each store's device profile ``memory``).
        disk_bytes: storage per model, split over its ranks.
        runtime: the runtime the stores' codecs run on.
        max_stores: stores this pool opens at most (:class:`KvCapacityError` beyond).
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        dram_bytes: int | None = None,
        disk_bytes: int = DEFAULT_DISK_BYTES,
        runtime: Runtime | None = None,
        max_stores: int = DEFAULT_MAX_STORES,
    ) -> None:
        for name, value in (("dram_bytes", dram_bytes), ("disk_bytes", disk_bytes), ("max_stores", max_stores)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise errors.InvalidArgumentError(f"{name} must be a non-negative integer, not {errors.shown(value)}")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.dram_bytes = dram_bytes
        self.disk_bytes = disk_bytes
        self.runtime = runtime
        self.max_stores = max_stores
        self._lock = threading.Lock()
        self._stores: dict[str, KvStore] = {}
        self._options: dict[str, dict[str, Any]] = {}
        self._default: KvStore | None = None
        self._closed = False

    def add(self, store: KvStore) -> str:
        """Serve an open store (the caller keeps closing it); the first one added answers requests naming none."""
        with self._lock:
            self._check_open()
            sid = store.root.hex()
            if sid in self._stores:
                raise errors.InvalidArgumentError(f"a store {sid} is already in the pool")
            self._stores[sid] = store
            if self._default is None:
                self._default = store
        return sid

    def _check_open(self) -> None:
        if self._closed:
            raise errors.RuntimeClosedError("the KV store pool is closed")

    def open(self, model: ModelShape, *, tp_rank: int = 0, tp_size: int = 1, **options: Any) -> tuple[str, KvStore]:
        """The store of this shard, opened with ``options`` (see :data:`OPTIONS`) if it is not open yet.

        A shard's store is opened once: a later open must send the same options, or is refused.
        """
        if not isinstance(model, ModelShape):
            raise errors.InvalidArgumentError(f"model must be a ModelShape, not {type(model).__name__}")
        tp_rank, tp_size = _rank(tp_rank, tp_size)
        unknown = sorted(str(k)[:40] for k in options if k not in OPTIONS)
        if unknown:
            raise errors.InvalidArgumentError(f"unknown store options {unknown}: use {', '.join(OPTIONS)}")
        wanted = {**OPTIONS, **options}
        sid = store_id(model, tp_rank=tp_rank, tp_size=tp_size)
        with self._lock:
            self._check_open()
            store = self._stores.get(sid)
            if store is not None:
                if self._options.get(sid, wanted) != wanted:
                    raise errors.InvalidArgumentError(
                        f"the store of {model.name[:60]} rank {tp_rank}/{tp_size} is open with other options"
                    )
                return sid, store
            if len(self._stores) >= self.max_stores:
                raise KvCapacityError(f"the tier holds {self.max_stores} stores, its most")
            device = Profile.of(wanted["device"]) if wanted["device"] is not None else None
            dram = self.dram_bytes
            if dram is None and device is not None:
                dram = int(device.memory.value)
            # Opened under the lock: two ranks racing to open one shard must not get two stores.
            store = KvStore(
                model,
                data_dir=self.data_dir / sid if self.data_dir is not None else None,
                chunk_tokens=wanted["chunk_tokens"],
                dram_bytes=None if dram is None else dram // tp_size,
                disk_bytes=max(1, self.disk_bytes // tp_size),
                policy=wanted["policy"],
                disk_policy=wanted["disk_policy"],
                dram_codec=wanted["dram_codec"],
                disk_codec=wanted["disk_codec"],
                quantize=wanted["quantize"],
                device=device,
                runtime=self.runtime,
                tp_rank=tp_rank,
                tp_size=tp_size,
            )
            self._stores[sid] = store
            self._options[sid] = wanted
            return sid, store

    def get(self, sid: str | None) -> KvStore | None:
        """The store with this id (None: the first one added), or None when there is none."""
        with self._lock:
            self._check_open()
            return self._default if sid is None else self._stores.get(sid)

    def stores(self) -> dict[str, KvStore]:
        """Every store, by id."""
        with self._lock:
            return dict(self._stores)

    def close(self) -> None:
        """Close the stores this pool opened (added ones stay their owner's)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            opened = [self._stores[sid] for sid in self._options]
        for store in opened:
            store.close()

    def __enter__(self) -> KvStorePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
