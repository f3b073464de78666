"""Chunk files of a KV store on disk, written and then tampered with (tests of the disk tier).

The store keeps its chunks as files of a :class:`FileService`; these helpers open that
service directly, as anything else with access to the data directory could, and change
chunk files behind the store's back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dpdpu.compute import codecs
from dpdpu.kv import KvStore, ModelShape
from dpdpu.storage.fs import FileService

SHAPE = ModelShape("tiny", layers=3, kv_heads=2, head_dim=8)
C = 4  # tokens per chunk
TOKENS = list(range(3 * C))
FIXED = struct.Struct("<4sIIII")  # magic, version, header bytes, JSON length, JSON CRC-32C


def kv_for(ntokens: int) -> np.ndarray[Any, Any]:
    """Deterministic KV of ``ntokens`` tokens."""
    n = int(np.prod(SHAPE.token_shape(ntokens)))
    return ((np.arange(n) % 997) / 97.0 - 5.0).astype(np.float16).reshape(SHAPE.token_shape(ntokens))


def open_store(data_dir: Path, codec: str | None = None) -> KvStore:
    """A disk-only store (DRAM holds nothing, so every hit reads a chunk file)."""
    return KvStore(SHAPE, chunk_tokens=C, data_dir=data_dir, device="bluefield3", dram_bytes=0,
                   disk_bytes=1 << 20, disk_codec=codec)  # fmt: skip


def write_chunks(data_dir: Path, codec: str | None = None) -> np.ndarray[Any, Any]:
    """Store three chunks of :data:`TOKENS`; returns their KV."""
    kv = kv_for(len(TOKENS))
    with open_store(data_dir, codec) as store:
        store.store(TOKENS, kv)
    return kv


@contextmanager
def chunk_files(data_dir: Path) -> Iterator[tuple[FileService, str, list[str]]]:
    """The store's file service, its chunk directory and the chunk file names (closed store only)."""
    fs = FileService(data_dir)
    try:
        (config,) = fs.listdir("kv")
        folder = f"kv/{config}"
        yield fs, folder, sorted(fs.listdir(folder))
    finally:
        fs.close()


def read_file(fs: FileService, path: str) -> bytes:
    """A whole file."""
    return fs.read(path, 0, fs.stat(path).size).result()


def replace_file(fs: FileService, path: str, data: bytes) -> None:
    """Make ``path`` hold exactly ``data``."""
    if fs.exists(path):
        fs.delete(path)
    fs.create(path)
    if data:
        fs.write(path, 0, data).result()


def rewrite_header(fs: FileService, path: str, change: Callable[[dict[str, Any]], Any]) -> None:
    """Change a chunk header's JSON with ``change`` and sign it again: the checksum holds, the content lies."""
    data = bytearray(read_file(fs, path))
    magic, version, header_bytes, json_len, _ = FIXED.unpack_from(data)
    if not FIXED.size + json_len <= header_bytes <= len(data):
        raise ValueError("no header to rewrite")
    meta = json.loads(bytes(data[FIXED.size : FIXED.size + json_len]))
    if not isinstance(meta, dict):
        raise ValueError("no header to rewrite")
    change(meta)
    body = json.dumps(meta).encode()
    if FIXED.size + len(body) > header_bytes:
        body = body[: header_bytes - FIXED.size]  # still signed: a cut header must be caught by its content
    header = bytearray(header_bytes)
    FIXED.pack_into(header, 0, magic, version, header_bytes, len(body), codecs.crc32c(body))
    header[FIXED.size : FIXED.size + len(body)] = body
    data[:header_bytes] = header
    replace_file(fs, path, bytes(data))
