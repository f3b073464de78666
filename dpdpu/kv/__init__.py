"""The KV-cache tier for LLM serving: prefix chunks in DPU DRAM, then on DPU storage.

>>> import dpdpu.kv
>>> shape = dpdpu.kv.ModelShape("llama-7b", layers=32, kv_heads=32, head_dim=128)

- :mod:`dpdpu.kv.store` -- :class:`KvStore`, the tiered store
- :mod:`dpdpu.kv.keys` -- chained chunk keys and the model they name
- :mod:`dpdpu.kv.policies` -- eviction policies (LRU, S3-FIFO)
- :mod:`dpdpu.kv.codec` -- per-tier codecs and int8 quantization of chunks
- :mod:`dpdpu.kv.disk` -- the storage tier's chunk files
- :mod:`dpdpu.kv.sim` -- the serving-trace simulator behind ``dpdpu kv-sim``
- :mod:`dpdpu.kv.remote` -- :class:`KvFlightService` and its client :class:`RemoteKvStore`
- :mod:`dpdpu.kv.pool` -- :class:`KvStorePool`, a store per model shard, opened by its clients
- :mod:`dpdpu.kv.connector` -- :class:`KvConnector`, shaped like a serving engine's KV connector
"""

from __future__ import annotations

from .connector import KvConnector
from .keys import ModelShape, TokenError, chunk_keys, root_key
from .policies import LruPolicy, S3FifoPolicy
from .pool import KvStorePool, store_id
from .remote import KvFlightService, KvRemoteError, LayerUpload, RemoteKvStore
from .store import KvCapacityError, KvCorruptError, KvShapeError, KvStore

__all__ = [
    "KvCapacityError",
    "KvConnector",
    "KvCorruptError",
    "KvFlightService",
    "KvRemoteError",
    "KvShapeError",
    "KvStore",
    "KvStorePool",
    "LayerUpload",
    "LruPolicy",
    "ModelShape",
    "RemoteKvStore",
    "S3FifoPolicy",
    "TokenError",
    "chunk_keys",
    "root_key",
    "store_id",
]
