"""The KV-cache tier for LLM serving (see :mod:`dpdpu.storage.kv`), under a short name.

>>> import dpdpu.kv
>>> shape = dpdpu.kv.ModelShape("llama-7b", layers=32, kv_heads=32, head_dim=128)
"""

from __future__ import annotations

from .storage.kv import KvCapacityError, KvCorruptError, KvShapeError, KvStore
from .storage.kv_keys import ModelShape, TokenError, chunk_keys, root_key
from .storage.kv_policies import LruPolicy, S3FifoPolicy

__all__ = [
    "KvCapacityError",
    "KvCorruptError",
    "KvShapeError",
    "KvStore",
    "LruPolicy",
    "ModelShape",
    "S3FifoPolicy",
    "TokenError",
    "chunk_keys",
    "root_key",
]
