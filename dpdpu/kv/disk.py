"""The storage tier of the KV cache: one file per chunk in a :class:`FileService`.

A chunk lives in the file ``kv/<root hex>-<chunk tokens>-<rep>/<key hex>``:
each store configuration (model qualification, chunk size, and whether it
quantizes) has a directory of its own, so stores of several models (or a
lossless and an ``int8`` store) share a data directory without seeing, counting
or deleting each other's chunks, and a lossless store never serves lossy data.
A chunk's first ``header_bytes``
(a multiple of the service's block size, so the payload starts on a block)
hold a fixed part ``<4sIIII``: magic ``DPKV``, format version, header bytes,
JSON length and the CRC-32C of the JSON; then the JSON: key, root, representation,
codec, tokens, the int8 quantization error (``null`` for raw data), and per
layer segment its stored length, uncompressed length and CRC-32C.  The payload
is the layer segments one after the other (see :mod:`dpdpu.kv.codec`).

A chunk occupies its header and its payload rounded up to whole blocks (its
:attr:`DiskChunk.footprint`); the store charges that against ``disk_bytes``,
and the file service is sized from ``disk_bytes`` (rounded up to a block).

Every segment is checked against its CRC-32C as it is read; a mismatch (or a
bad header, or a short file) raises :class:`KvCorruptError`, and the store
drops the chunk and reports a miss.  A header is checked whole before it is
believed, even when its own checksum holds: every length must be what the
store's model and chunk size give, so a lying header cannot size a read or
a decompression.  Anything in the directory that is not a chunk file (a
subdirectory) is left alone and counted.  Raw uncompressed layers are read
straight into the caller's output (one read per layer's keys and per its
values, all issued together, each layer checked as soon as it lands).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors
from ..compute import codecs
from ..runtime import native
from ..runtime.profile import Profile
from ..storage.fs import FileService
from .codec import CODECS, Encoded, decode_layer_into, layer_segments, segment_bytes
from .keys import KEY_BYTES, ModelShape

__all__ = ["DiskChunk", "DiskTier", "KvCorruptError"]

_MAGIC = b"DPKV"
_VERSION = 2
_FIXED = struct.Struct("<4sIIII")
_DIR = "kv"
#: Raw chunks the file service has room for beyond the store's capacity (see :class:`DiskTier`).
_HEADROOM_CHUNKS = 8


class _LayerCheck:
    """Verifies one layer once both its reads (keys, values) completed, on the completing thread."""

    def __init__(self, layer: int, bufs: list[Any], crc: int) -> None:
        self.layer, self.bufs, self.crc = layer, bufs, crc
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.ok = False
        self._left = len(bufs)
        self._lock = threading.Lock()

    def landed(self, nbytes: int, future: concurrent.futures.Future[int]) -> None:
        """The read of ``nbytes`` into one of the buffers completed."""
        with self._lock:
            self._left -= 1
            last = self._left == 0
        try:
            if future.result() != nbytes:
                self.error = KvCorruptError(f"layer {self.layer} is cut short")
            if not last:
                return
            if self.error is None:
                crc = 0
                for buf in self.bufs:
                    crc = native.crc32c(buf, crc)
                self.ok = crc == self.crc
        except BaseException as exc:
            self.error = exc
        if last:
            self.done.set()


class KvCorruptError(errors.CorruptDataError):
    """A chunk on disk fails its checksum or is malformed (the store reports a miss and drops it)."""

    wire_status = "DATA_LOSS"


@dataclass
class DiskChunk:
    """Where a chunk sits on disk and how to read it."""

    key: bytes
    rep: str
    codec: str | None
    tokens: int
    header_bytes: int
    lens: list[int]
    raw_lens: list[int]
    crcs: list[int]
    #: the file's name in the service
    path: str
    #: the service's block size (files occupy whole blocks)
    block: int
    #: (max abs error, RMS error) of an int8 chunk, ``None`` for raw data
    quant_error: tuple[float, float] | None = None

    @property
    def nbytes(self) -> int:
        """Payload bytes."""
        return sum(self.lens)

    @property
    def footprint(self) -> int:
        """Bytes of the service the file occupies: its header and its payload in whole blocks."""
        return self.header_bytes + -(-self.nbytes // self.block) * self.block

    def offset(self, layer: int) -> int:
        """File offset of a layer segment."""
        return self.header_bytes + sum(self.lens[:layer])


class DiskTier:
    """Chunk files in a :class:`FileService` (the eviction policy and capacity are the store's)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        model: ModelShape,
        capacity: int,
        device: str | Profile | None,
        chunk_tokens: int = 256,
        *,
        root: bytes,
        rep: str = "raw",
    ) -> None:
        self.model = model
        self.root = root
        self.rep = rep
        self.chunk_tokens = chunk_tokens
        self.dir = f"{_DIR}/{root.hex()}-{chunk_tokens}-{rep}"
        existing = (Path(data_dir) / "data.bdev").exists()
        # Large chunks read best in large blocks; small ones would waste most of a large block.
        block = 65536 if model.bytes_per_token * chunk_tokens >= (16 << 20) else 4096
        # The store charges each chunk's footprint in whole blocks, so ``capacity`` rounded up to a
        # block is what its chunks take.  Headroom for a few raw chunks more: a file deleted to make
        # room frees its blocks only once the deletion commits, which concurrent writers may not
        # see in time.  An existing service keeps its own size.
        raw_chunk = block + -(-model.bytes_per_token * chunk_tokens // block) * block
        fs_capacity = max(1, -(-capacity // block)) * block + _HEADROOM_CHUNKS * raw_chunk
        self.fs = FileService(data_dir, capacity=None if existing else fs_capacity, block_size=block, device=device)
        self.fs.mkdir(self.dir, parents=True, exist_ok=True)

    def scan(self) -> tuple[list[DiskChunk], int, int]:
        """The chunks already on disk (from an earlier run), how many bad files were dropped,
        and how many entries that are no chunk files (directories) were left alone."""
        found: list[DiskChunk] = []
        bad = ignored = 0
        # Only this configuration's directory: other models' chunks are none of this store's business.
        for name in sorted(self.fs.listdir(self.dir)):
            path = f"{self.dir}/{name}"
            try:
                if self.fs.stat(path).is_dir:
                    ignored += 1  # not ours to empty, and no reason to refuse the rest
                    continue
                key = bytes.fromhex(name) if len(name) == 2 * KEY_BYTES else b""
                if len(key) != KEY_BYTES:
                    raise KvCorruptError("not a chunk file name")
                found.append(self._read_header(key))
            except (ValueError, KvCorruptError, errors.StorageError):
                bad += 1
                self._delete(path)
        return found, bad, ignored

    def _read_header(self, key: bytes) -> DiskChunk:
        path = f"{self.dir}/{key.hex()}"
        size = self.fs.stat(path).size
        head = self.fs.read(path, 0, min(size, 4096)).result()
        if len(head) < _FIXED.size:
            raise KvCorruptError(f"chunk {key.hex()}: header cut short")
        magic, version, header_bytes, json_len, json_crc = _FIXED.unpack_from(head)
        block = self.fs.block_size
        if magic != _MAGIC or version != _VERSION or _FIXED.size + json_len > header_bytes or header_bytes % block:
            raise KvCorruptError(f"chunk {key.hex()}: not a KV chunk file")
        if header_bytes > size:
            raise KvCorruptError(f"chunk {key.hex()}: file cut short")
        if _FIXED.size + json_len > len(head):
            head = self.fs.read(path, 0, _FIXED.size + json_len).result()
        raw = head[_FIXED.size : _FIXED.size + json_len]
        if len(raw) != json_len or codecs.crc32c(raw) != json_crc:
            raise KvCorruptError(f"chunk {key.hex()}: header fails its checksum")
        try:
            meta = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise KvCorruptError(f"chunk {key.hex()}: malformed header") from exc
        chunk = self._chunk_of(key, meta, header_bytes, path)
        if size < header_bytes + chunk.nbytes:
            raise KvCorruptError(f"chunk {key.hex()}: file cut short")
        return chunk

    def _chunk_of(self, key: bytes, meta: Any, header_bytes: int, path: str) -> DiskChunk:
        """The chunk a header's JSON describes, if it is one this store could have written."""
        layers = self.model.layers

        def ints(name: str, high: int) -> list[int]:
            values = meta.get(name)
            if (
                not isinstance(values, list)
                or len(values) != layers
                or not all(type(v) is int and 0 <= v <= high for v in values)
            ):
                raise KvCorruptError(f"chunk {key.hex()}: header field {name} is not {layers} lengths")
            return values

        if not isinstance(meta, dict):
            raise KvCorruptError(f"chunk {key.hex()}: malformed header")
        rep, codec, tokens, quant = meta.get("rep"), meta.get("codec"), meta.get("tokens"), meta.get("quant_error")
        # a lossless store holds raw chunks only; an int8 one also raw chunks it could not quantize
        if meta.get("key") != key.hex() or meta.get("root") != self.root.hex() or rep not in ("raw", self.rep):
            raise KvCorruptError(f"chunk {key.hex()}: header names another chunk or store")
        if type(tokens) is not int or tokens != self.chunk_tokens or (codec is not None and codec not in CODECS):
            raise KvCorruptError(f"chunk {key.hex()}: header names another chunk size or codec")
        if (rep == "raw") != (quant is None) or not (
            quant is None
            or (isinstance(quant, list) and len(quant) == 2 and all(type(q) in (int, float) for q in quant))
        ):
            raise KvCorruptError(f"chunk {key.hex()}: header has a bad quantization error")
        segment = segment_bytes(self.model, rep, tokens)
        raw_lens = ints("raw_lens", segment)
        lens = ints("lens", 1 << 62)
        crcs = ints("crcs", 0xFFFFFFFF)
        if raw_lens != [segment] * layers or (codec is None and lens != raw_lens):
            raise KvCorruptError(f"chunk {key.hex()}: header lengths do not match the model")
        quant_error = None if quant is None else (float(quant[0]), float(quant[1]))
        return DiskChunk(
            key, rep, codec, tokens, header_bytes, lens, raw_lens, crcs, path, self.fs.block_size, quant_error
        )  # fmt: skip

    def prepare(self, key: bytes, enc: Encoded, codec: str | None) -> tuple[DiskChunk, list[Any]]:
        """The chunk file for ``enc`` (its segments compressed with ``codec``): where it will be, and its buffers.

        Nothing is written: the caller makes room for the exact :attr:`DiskChunk.footprint` first.
        """
        raw = layer_segments(enc, self.model)
        raw_lens = [len(memoryview(s).cast("B")) for s in raw]
        if codec is None or enc.codec == codec:
            segs: list[Any] = raw if codec is None else list(enc.segments)
        else:
            segs = [codecs.compress(s, codec) for s in raw]
        lens = [len(memoryview(s).cast("B")) for s in segs]
        crcs = [codecs.crc32c(s) for s in segs]
        quant = None if enc.rep == "raw" else enc.quant_error
        meta: dict[str, Any] = {"key": key.hex(), "root": self.root.hex(), "rep": enc.rep, "codec": codec}
        # (a tuple goes to JSON as a list)
        meta.update(tokens=enc.tokens, quant_error=quant, lens=lens, raw_lens=raw_lens, crcs=crcs)
        body = json.dumps(meta, separators=(",", ":")).encode()
        block = self.fs.block_size
        header_bytes = -(-(_FIXED.size + len(body)) // block) * block
        header = bytearray(header_bytes)
        _FIXED.pack_into(header, 0, _MAGIC, _VERSION, header_bytes, len(body), codecs.crc32c(body))
        header[_FIXED.size : _FIXED.size + len(body)] = body
        path = f"{self.dir}/{key.hex()}"
        chunk = DiskChunk(key, enc.rep, codec, enc.tokens, header_bytes, lens, raw_lens, crcs, path, block, quant)
        return chunk, [header, *segs]

    def write(self, chunk: DiskChunk, buffers: list[Any]) -> DiskChunk:
        """Write a chunk :meth:`prepare` gave; returns it."""
        self.fs.create(chunk.path, exist_ok=True)
        self.fs.writev(chunk.path, 0, buffers).result()
        return chunk

    def read_into(self, chunk: DiskChunk, dst: np.ndarray[Any, Any], layer: int | None = None) -> None:
        """Read the chunk (or one ``layer``) into ``dst``, checking every segment; :class:`KvCorruptError` if bad."""
        layers = list(range(self.model.layers)) if layer is None else [layer]
        try:
            if chunk.rep == "raw" and chunk.codec is None:
                self._read_raw(chunk, dst, layers, layer is None)
            else:
                futures = [self.fs.read(chunk.path, chunk.offset(i), chunk.lens[i]) for i in layers]
                for i, fut in zip(layers, futures, strict=True):
                    seg: Any = fut.result()
                    self._check(chunk, i, len(seg) == chunk.lens[i] and codecs.crc32c(seg) == chunk.crcs[i])
                    if chunk.codec is not None:
                        try:
                            seg = codecs.decompress(seg, chunk.codec, output_size=chunk.raw_lens[i])
                        except (errors.CorruptDataError, errors.BufferTooSmallError) as exc:
                            raise KvCorruptError(f"chunk {chunk.key.hex()}: layer {i} does not decompress") from exc
                        self._check(chunk, i, len(seg) == chunk.raw_lens[i])
                    decode_layer_into(self.model, chunk.rep, seg, dst[i] if layer is None else dst)
        except errors.NoSuchFileError as exc:  # dropped by another thread meanwhile
            raise KvCorruptError(f"chunk {chunk.key.hex()}: gone") from exc

    def _read_raw(self, chunk: DiskChunk, dst: np.ndarray[Any, Any], layers: list[int], whole: bool) -> None:
        # One read per contiguous destination (a layer's keys, its values), all in flight at once:
        # a read spanning several buffers would go through a bounce buffer.  Each layer's checksum
        # is computed by the file service thread completing its last read (the native CRC releases
        # the GIL), so checking overlaps the reads still in flight.
        pending = []
        for i in layers:
            view = dst[i] if whole else dst
            bufs = [view] if view.flags.c_contiguous else [view[0], view[1]]
            if not all(b.flags.c_contiguous for b in bufs):
                raise errors.InternalError("layer destinations must be contiguous")
            check = _LayerCheck(i, bufs, chunk.crcs[i])
            off = chunk.offset(i)
            for buf in bufs:
                self.fs.read_into(chunk.path, off, buf).add_done_callback(functools.partial(check.landed, buf.nbytes))
                off += buf.nbytes
            pending.append(check)
        for check in pending:
            check.done.wait()
            if isinstance(check.error, errors.NoSuchFileError):
                raise check.error
            self._check(chunk, check.layer, check.error is None and check.ok)

    def _check(self, chunk: DiskChunk, layer: int, ok: bool) -> None:
        if not ok:
            raise KvCorruptError(f"chunk {chunk.key.hex()}: layer {layer} fails its checksum")

    def delete(self, chunk: DiskChunk) -> None:
        """Remove a chunk's file."""
        self._delete(chunk.path)

    def _delete(self, path: str) -> None:
        with contextlib.suppress(errors.NoSuchFileError):
            self.fs.delete(path)

    def flush(self) -> None:
        """Make every chunk written so far durable."""
        self.fs.flush().result()

    def close(self) -> None:
        """Flush and release the data directory."""
        self.fs.close()
