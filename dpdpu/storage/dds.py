"""A DDS-style offloaded read path: a cache table on the DPU and a front end on the host.

* :class:`CacheTable` — a fixed-capacity concurrent hash table in C
  (``csrc/cache_table.c``) mapping a key of up to 64 bytes to where its value
  lives: a version, a file, an offset and a size.
* :class:`DdsBackEnd` — runs on "the DPU": a thread, or a separate process
  (:mod:`dpdpu.storage.dds_process`).  It takes batches of requests from a
  :class:`ChannelPair`; the *offload predicate* decides, request by request,
  whether the DPU serves it; the *offload function* maps a served request to
  ``(file, offset, nbytes)`` (by default a lookup in its cache table), which
  the back end reads from the :class:`FileService`.  Everything else is
  forwarded to the host through the same channel.
* :class:`DdsFrontEnd` — the host side: :meth:`~DdsFrontEnd.get` and the
  batched :meth:`~DdsFrontEnd.get_many`, whose forwarded requests its *host
  handler* answers on the host; :meth:`~DdsFrontEnd.cache_put` and
  :meth:`~DdsFrontEnd.cache_delete` keep the back end's cache table current.

A request whose key the offload function does not find (it returns None) is a
miss and is forwarded to the host too; without a host handler forwarded
requests fail with :class:`CacheMissError`.  A predicate, offload function or
host handler that raises fails only its own request: the front end raises the
same ``dpdpu.errors`` class when the error was one, else
:class:`RemoteRequestError`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..runtime import channel_rpc as rpc
from ..runtime.channel import ChannelPair
from ..runtime.native import error_for, ffi, lib
from ..runtime.runtime import current_runtime
from .fs import FileService

__all__ = [
    "CacheEntry",
    "CacheMissError",
    "CacheTable",
    "DdsBackEnd",
    "DdsFrontEnd",
    "DdsRequest",
    "DdsStats",
    "RemoteRequestError",
]

#: Longest key the cache table takes, in bytes.
KEY_MAX: int = lib.DPDPU_CACHE_KEY_MAX

# Frames (dpdpu.runtime.channel_rpc).  Requests: GET (payload: the key), PUT (version,
# offset, size, key length, the key, the file name), DELETE (the key), STATS.  Answers:
# VALUE (the value, read on the DPU), FORWARD (the forwarding reason, then the key),
# DONE (the answer of a control request), or a failure (FAILED, with the error).
_PUT = struct.Struct("<QQIB")
_KIND_GET = 1
_KIND_PUT = 2
_KIND_DELETE = 3
_KIND_STATS = 4
_FAILED = 0
_VALUE = 1
_FORWARD = 2
_DONE = 3
_WHY_PREDICATE = 0
_WHY_MISS = 1
_CONTROL_OPS = {_KIND_PUT: "cache_put", _KIND_DELETE: "cache_delete", _KIND_STATS: "dds_stats"}

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
#: the largest request frame the back end takes (a key, or a cache put with its file name)
_MAX_REQUEST = 1 << 16


class CacheMissError(errors.DpdpuError, KeyError):
    """The key is not in the cache table and no host handler takes misses."""

    wire_status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return Exception.__str__(self)


class RemoteRequestError(errors.DpdpuError, RuntimeError):
    """A predicate, offload function or host handler raised while serving the request.

    Attributes:
        remote_type: the name of the exception class raised on the back end.
    """

    wire_status = "UNKNOWN"

    remote_type: str | None = None


def _check_key(key: object) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise errors.InvalidArgumentError(f"a key is bytes or str, got {type(key).__name__}")
    data = bytes(key)
    if not 0 < len(data) <= KEY_MAX:
        raise errors.InvalidArgumentError(f"a key has 1 to {KEY_MAX} bytes, got {len(data)}")
    return data


def _check_uint(name: str, value: object, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise errors.InvalidArgumentError(f"{name} must be an int within 0..{top}, got {value!r}")
    return value


@dataclass(frozen=True)
class CacheEntry:
    """Where a cached value lives.

    Attributes:
        version: the value's version (the table keeps what it is given).
        file: path of the file in the :class:`FileService`.
        offset: byte offset of the value in the file.
        size: bytes of the value.
    """

    version: int
    file: str
    offset: int
    size: int


class CacheTable:
    """A fixed-capacity concurrent hash table: key (1..64 bytes) -> :class:`CacheEntry`.

    Lookups, inserts and deletes may run from any number of threads at once;
    the native calls release the GIL and lock only the key's buckets.  File
    names are interned into a Python-side list so that the native table holds
    a 32-bit file id.

    Args:
        capacity: most entries the table holds (1..16 Mi).

    Raises:
        InvalidArgumentError: a bad capacity.
    """

    def __init__(self, capacity: int) -> None:
        _check_uint("capacity", capacity, lib.DPDPU_CACHE_MAX_CAPACITY)
        if capacity == 0:
            raise errors.InvalidArgumentError("capacity must be at least 1")
        out = ffi.new("struct dpdpu_cache **")
        rc = lib.dpdpu_cache_create(capacity, out)
        if rc < 0:
            raise error_for(rc, op="cache_create")
        self._h = ffi.gc(out[0], lib.dpdpu_cache_free)
        self._files: list[str] = []
        self._file_ids: dict[str, int] = {}
        self._files_lock = threading.Lock()

    @property
    def capacity(self) -> int:
        """Most entries the table holds."""
        return int(lib.dpdpu_cache_capacity(self._h))

    @property
    def files(self) -> list[str]:
        """The interned file names, indexed by file id (a copy)."""
        with self._files_lock:
            return list(self._files)

    def _file_id(self, file: object) -> int:
        if not isinstance(file, str) or not file:
            raise errors.InvalidArgumentError(f"a file is a non-empty path string, got {file!r}")
        with self._files_lock:
            fid = self._file_ids.get(file)
            if fid is None:
                if len(self._files) > _U32:
                    raise errors.InvalidArgumentError("the table has interned 2**32 file names already")
                fid = len(self._files)
                self._files.append(file)
                self._file_ids[file] = fid
            return fid

    def put(self, key: bytes | str, version: int, file: str, offset: int, size: int) -> bool:
        """Insert ``key`` or replace its entry; True if it was new.

        Raises:
            InvalidArgumentError: a bad key (not 1..64 bytes), file, or number.
            DeviceFullError: the table holds ``capacity`` entries already.
        """
        k = _check_key(key)
        entry = ffi.new("struct dpdpu_cache_entry *")
        entry.version = _check_uint("version", version, _U64)
        entry.offset = _check_uint("offset", offset, _U64)
        entry.size = _check_uint("size", size, _U32)
        entry.file = self._file_id(file)
        rc = lib.dpdpu_cache_put(self._h, k, len(k), entry)
        if rc == lib.DPDPU_ERR_NO_DEVICE_MEMORY:
            err = errors.DeviceFullError(
                f"the cache table is full ({len(self)} of {self.capacity} entries)", op="cache_put", code="FULL"
            )
            raise err
        if rc < 0:
            raise error_for(rc, op="cache_put")
        return bool(rc == lib.DPDPU_CACHE_INSERTED)

    def get(self, key: bytes | str) -> CacheEntry | None:
        """The entry of ``key``, or None if it is absent.

        Raises:
            InvalidArgumentError: a bad key.
        """
        k = _check_key(key)
        out = ffi.new("struct dpdpu_cache_entry *")
        rc = lib.dpdpu_cache_get(self._h, k, len(k), out)
        if rc < 0:
            raise error_for(rc, op="cache_get")
        if rc == 0:
            return None
        with self._files_lock:
            file = self._files[out.file]
        return CacheEntry(version=int(out.version), file=file, offset=int(out.offset), size=int(out.size))

    def delete(self, key: bytes | str) -> bool:
        """Remove ``key``; True if it was present.

        Raises:
            InvalidArgumentError: a bad key.
        """
        k = _check_key(key)
        rc = lib.dpdpu_cache_delete(self._h, k, len(k))
        if rc < 0:
            raise error_for(rc, op="cache_delete")
        return bool(rc)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(lib.dpdpu_cache_count(self._h))

    def __repr__(self) -> str:
        return f"<CacheTable {len(self)}/{self.capacity}>"


@dataclass(frozen=True)
class DdsRequest:
    """One read request as the back end's predicate, offload function and host handler see it.

    Attributes:
        id: the front end's request id (unique per front end).
        key: the key asked for.
    """

    id: int
    key: bytes


@dataclass(frozen=True)
class DdsStats:
    """Counters of a :class:`DdsBackEnd`.

    Attributes:
        requests: requests received.
        batches: batches taken from the channel.
        dpu_served: requests answered from the file service on the DPU.
        forwarded: requests forwarded to the host (misses included).
        misses: requests the offload function did not find (forwarded to the host).
        failed: requests answered with an error.
        dpu_bytes: value bytes served on the DPU.
        control: cache updates and stats requests from the front end.
    """

    requests: int
    batches: int
    dpu_served: int
    forwarded: int
    misses: int
    failed: int
    dpu_bytes: int
    control: int


Predicate = Callable[[DdsRequest], bool]
OffloadFn = Callable[[DdsRequest], "tuple[str, int, int] | None"]
HostHandler = Callable[[DdsRequest], bytes]


def _error_record(rid: int, exc: BaseException, where: str = "") -> bytes:
    message = exc.detail if isinstance(exc, errors.DpdpuError) else str(exc)
    if where:
        message = f"{where} raised {type(exc).__name__}: {message}"
    return rpc.encode_error(rid, _FAILED, exc, message)


def _forward(req: DdsRequest, why: int) -> bytes:
    # The host answers forwarded requests itself: the frame tells the front end to.
    return rpc.encode(req.id, _FORWARD, bytes([why]) + req.key)


class DdsBackEnd:
    """The DPU side: serves batches of read requests arriving on ``pair``.

    Args:
        pair: the agent side of a :class:`ChannelPair` (requests in, responses out).
        fs: the file service values are read from.
        cache: the cache table the default offload function looks keys up in.
        offload_predicate: ``f(request) -> bool``; True serves the request on
            the DPU.  Default: every request.  An ``@dpdpu.offload`` function
            runs as a task on ``runtime`` (one task per request of a batch,
            all in flight together).
        offload_function: ``f(request) -> (file, offset, nbytes)`` or None for
            a miss.  Default: look the key up in ``cache``.  ``@dpdpu.offload``
            functions run as tasks like the predicate.
        runtime: the runtime ``@offload`` callables run on (default: the
            current runtime of the thread that calls :meth:`start` or :meth:`serve`).
        max_batch: most requests taken from the channel at once.
    """

    def __init__(
        self,
        pair: ChannelPair,
        fs: FileService,
        cache: CacheTable | None = None,
        offload_predicate: Predicate | None = None,
        offload_function: OffloadFn | None = None,
        *,
        runtime: Any = None,
        max_batch: int = 256,
    ) -> None:
        if offload_function is None and cache is None:
            raise errors.InvalidArgumentError("give a cache table or an offload function")
        for name, fn in (
            ("offload_predicate", offload_predicate),
            ("offload_function", offload_function),
        ):
            if fn is not None and not callable(fn):
                raise errors.InvalidArgumentError(f"{name} must be callable, got {type(fn).__name__}")
        _check_uint("max_batch", max_batch, 1 << 20)
        if max_batch == 0:
            raise errors.InvalidArgumentError("max_batch must be at least 1")
        self.pair = pair
        self.fs = fs
        self.cache = cache
        self._predicate = offload_predicate
        self._function = offload_function
        self._runtime = runtime
        self._max_batch = max_batch
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(DdsStats.__dataclass_fields__, 0)

    # --- running ------------------------------------------------------------------

    def start(self) -> DdsBackEnd:
        """Serve in a background thread until the front end closes its side (see :meth:`join`)."""
        if self._thread is not None:
            raise errors.InvalidArgumentError("this back end was started already")
        if self._runtime is None and self._uses_offload():
            # The worker thread does not inherit the caller's `with Runtime()` context.
            self._runtime = current_runtime()
        self._thread = threading.Thread(target=self.serve, name="dpdpu-dds-backend", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for the background thread to end (it ends when the front end closes)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Close this side of the channel (ending :meth:`serve`) and wait for the thread."""
        self.pair.close()
        self.join()

    def __enter__(self) -> DdsBackEnd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve(self) -> int:
        """Serve batches in this thread until the peer closes; returns how many requests were served."""
        served = 0
        while True:
            try:
                batch = self.pair.recv_many(self._max_batch)
            except errors.RuntimeClosedError:
                return served
            try:
                responses = self.handle_batch(batch)
            except errors.RuntimeClosedError:
                return served
            served += len(batch)
            try:
                self._send(responses)
            except errors.RuntimeClosedError:
                return served

    def stats(self) -> DdsStats:
        """The counters so far."""
        with self._lock:
            return DdsStats(**self._counts)

    # --- one batch ----------------------------------------------------------------

    def handle_batch(self, messages: Sequence[bytes]) -> list[bytes]:
        """The response records of a batch of request records (one each, in order)."""
        out: list[bytes | None] = [None] * len(messages)
        requests: list[tuple[int, DdsRequest]] = []
        for i, msg in enumerate(messages):
            try:
                frame = rpc.decode(msg, max_payload=_MAX_REQUEST)
                if not frame.ok:
                    raise errors.CorruptDataError(f"request {frame.id} reports a failure instead of asking")
                if frame.kind != _KIND_GET:
                    out[i] = self._control(frame)
                    continue
                requests.append((i, DdsRequest(frame.id, bytes(frame.payload))))
            except errors.DpdpuError as exc:
                rid = int.from_bytes(msg[:8], "little") if len(msg) >= 8 else 0
                out[i] = _error_record(rid, exc)

        on_dpu: list[tuple[int, DdsRequest]] = []
        to_host: list[tuple[int, DdsRequest]] = []
        for (i, req), decision in zip(requests, self._map(self._predicate, [r for _, r in requests]), strict=True):
            if isinstance(decision, BaseException):
                out[i] = _error_record(req.id, decision, "offload predicate")
            elif decision is None or decision:
                on_dpu.append((i, req))
            else:
                to_host.append((i, req))

        reads: list[tuple[int, DdsRequest, int, concurrent.futures.Future[bytes]]] = []
        locations = self._map(self._function or self._lookup, [r for _, r in on_dpu])
        for (i, req), where in zip(on_dpu, locations, strict=True):
            if isinstance(where, BaseException):
                out[i] = _error_record(req.id, where, "offload function")
                continue
            if where is None:
                out[i] = _forward(req, _WHY_MISS)
                continue
            try:
                file, offset, nbytes = where
                reads.append((i, req, nbytes, self.fs.read(file, offset, nbytes)))
            except Exception as exc:  # a malformed location fails this request only
                out[i] = _error_record(req.id, exc, "offload function")

        for i, req in to_host:
            out[i] = _forward(req, _WHY_PREDICATE)
        for i, req, nbytes, future in reads:
            try:
                data = future.result()
            except Exception as exc:
                out[i] = _error_record(req.id, exc, "read")
                continue
            if len(data) != nbytes:
                # The file no longer holds what the entry says: never hand back a short value.
                err = errors.TruncatedDataError(
                    f"key {req.key!r} maps to {nbytes} bytes but only {len(data)} are there "
                    "(the file is shorter than the cache entry says)",
                    op="dds_get",
                )
                out[i] = _error_record(req.id, err)
                continue
            out[i] = rpc.encode(req.id, _VALUE, data)
        responses = [r if r is not None else b"" for r in out]
        self._tally(responses)
        return responses

    def _tally(self, responses: list[bytes]) -> None:
        # The counters follow from the answers themselves (their status, forwarding reason and value
        # size), added once per batch rather than under the lock for every request.
        counts = dict.fromkeys(self._counts, 0)
        counts["batches"] = 1
        for rsp in responses:
            if len(rsp) < rpc.HEADER_BYTES:
                continue
            frame = rpc.decode(rsp)
            if frame.ok and frame.kind == _DONE:
                counts["control"] += 1
                continue
            counts["requests"] += 1
            if not frame.ok:
                counts["failed"] += 1
            elif frame.kind == _VALUE:
                counts["dpu_served"] += 1
                counts["dpu_bytes"] += len(frame.payload)
            else:
                counts["forwarded"] += 1
                counts["misses"] += frame.payload[0] == _WHY_MISS
        with self._lock:
            for name, delta in counts.items():
                self._counts[name] += delta

    def _lookup(self, req: DdsRequest) -> tuple[str, int, int] | None:
        assert self.cache is not None
        entry = self.cache.get(req.key)
        return None if entry is None else (entry.file, entry.offset, entry.size)

    def _uses_offload(self) -> bool:
        return any(hasattr(fn, "__dpdpu_offload__") for fn in (self._predicate, self._function))

    def _map(self, fn: Callable[[DdsRequest], Any] | None, reqs: list[DdsRequest]) -> list[Any]:
        """``fn`` of each request, or the exception it raised; ``@offload`` functions as concurrent tasks."""
        if fn is None:
            return [None] * len(reqs)
        results: list[Any] = []
        if hasattr(fn, "__dpdpu_offload__"):
            runtime = self._runtime if self._runtime is not None else current_runtime()
            futures: list[Any] = []
            for req in reqs:
                try:
                    futures.append(runtime.submit(fn, req))
                except Exception as exc:
                    futures.append(exc)
            for fut in futures:
                if isinstance(fut, BaseException):
                    results.append(fut)
                    continue
                try:
                    results.append(fut.result())
                except Exception as exc:
                    results.append(exc)
            return results
        for req in reqs:
            try:
                results.append(fn(req))
            except Exception as exc:
                results.append(exc)
        return results

    def _control(self, frame: rpc.Frame) -> bytes:
        """Answer a cache update or stats request from the front end."""
        rid, kind, payload = frame.id, frame.kind, frame.payload
        if kind == _KIND_STATS:
            return rpc.encode(rid, _DONE, json.dumps(dataclasses.asdict(self.stats())).encode())
        if kind not in (_KIND_PUT, _KIND_DELETE):
            raise errors.InvalidArgumentError(f"unknown request kind {kind}")
        if self.cache is None:
            raise errors.InvalidArgumentError("this back end has no cache table to update")
        if kind == _KIND_DELETE:
            return rpc.encode(rid, _DONE, bytes([self.cache.delete(bytes(payload))]))
        if kind == _KIND_PUT:
            if len(payload) < _PUT.size:
                raise errors.CorruptDataError("a cache-put record is too short")
            version, offset, size, klen = _PUT.unpack_from(payload)
            key = bytes(payload[_PUT.size : _PUT.size + klen])
            if len(key) != klen:
                raise errors.CorruptDataError("a cache-put record's key length does not match its size")
            try:
                file = bytes(payload[_PUT.size + klen :]).decode("utf-8", "strict")
            except UnicodeDecodeError as exc:
                raise errors.CorruptDataError("a cache-put record's file name is not UTF-8") from exc
            # An entry must point at bytes that exist now (a later change of the file is caught at read).
            st = self.fs.stat(file)
            if st.kind != "file":
                raise errors.FileTypeError(f"cache entry for {key!r} names {file!r}, not a file", op="cache_put")
            end = st.size
            if offset + size > end:
                raise errors.InvalidArgumentError(
                    f"cache entry for {key!r} covers bytes {offset}..{offset + size} of {file!r}, which has {end} bytes"
                )
            return rpc.encode(rid, _DONE, bytes([self.cache.put(key, version, file, offset, size)]))
        raise errors.InvalidArgumentError(f"unknown request kind {kind}")

    def _send(self, responses: list[bytes]) -> None:
        limit = self.pair.tx.max_message
        small: list[bytes] = []
        for rsp in responses:
            if len(rsp) > limit:
                # Large values go in bulk mode; keep the order of the batch around them.
                if small:
                    self.pair.send_many(small)
                    small = []
                self.pair.send_bulk(rsp)
            else:
                small.append(rsp)
        if small:
            self.pair.send_many(small)


class DdsFrontEnd:
    """The host side: sends read requests to a :class:`DdsBackEnd` and collects the values.

    Args:
        pair: the host side of a :class:`ChannelPair`.
        host_handler: ``f(request) -> bytes`` answering, on the host, the
            requests the back end forwards (the predicate said "host", or the
            offload function missed).  None: those fail with
            :class:`CacheMissError`.
        timeout: seconds to wait for each response (None: no limit).

    One front end is meant for one thread at a time; calls are serialized.
    """

    def __init__(
        self, pair: ChannelPair, *, host_handler: HostHandler | None = None, timeout: float | None = 30.0
    ) -> None:
        if host_handler is not None and not callable(host_handler):
            raise errors.InvalidArgumentError(f"host_handler must be callable, got {type(host_handler).__name__}")
        self.pair = pair
        self.timeout = timeout
        self._host = host_handler
        self._link = rpc.RpcLink(pair)
        self._sources = {"dpu": 0, "host": 0}

    def get(self, key: bytes | str) -> bytes:
        """The value of ``key``.

        Raises:
            InvalidArgumentError: a bad key.
            CacheMissError: forwarded to the host (or not cached) and no host handler is set.
            RemoteRequestError: the back end's predicate or offload function, or the host handler, raised.
            StorageError: reading the file failed (the same subclass as on the back end).
            QueueFullError: no response within ``timeout``.
            RuntimeClosedError: the back end has gone.
        """
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[bytes | str]) -> list[bytes]:
        """The values of ``keys`` in order, sent as one batch.

        Forwarded requests are answered by the host handler as their records
        arrive, while the DPU's reads of the others are still in flight.

        Raises:
            The first failed request's error, as :meth:`get` (the others are still collected).
        """
        records = [_check_key(key) for key in keys]
        link = self._link
        with link.lock:
            first = link.take_ids(len(records))
            if records:
                self.pair.send_many([rpc.encode(first + n, _KIND_GET, k) for n, k in enumerate(records)], self.timeout)
            results: dict[int, bytes | BaseException] = {}
            while len(results) < len(records):
                # answers to requests an earlier call gave up on are dropped
                for frame in link.receive(first, len(records), self.timeout, len(records) - len(results)):
                    if not frame.ok:
                        results[frame.id] = _rebuild_error(frame)
                    elif frame.kind == _FORWARD:
                        req = DdsRequest(frame.id, bytes(frame.payload[1:]))
                        results[frame.id] = self._on_host(req, frame.payload[0] == _WHY_MISS)
                    else:
                        self._sources["dpu"] += 1
                        results[frame.id] = bytes(frame.payload)
        values: list[bytes] = []
        for n in range(len(records)):
            value = results[first + n]
            if isinstance(value, BaseException):
                raise value
            values.append(value)
        return values

    def _on_host(self, req: DdsRequest, missed: bool) -> bytes | BaseException:
        if self._host is None:
            why = "is not cached" if missed else "was forwarded to the host"
            return CacheMissError(f"key {req.key!r} {why} and no host handler is set", op="dds_get", code="MISS")
        try:
            value = bytes(self._host(req))
        except Exception as exc:
            err = RemoteRequestError(f"host handler raised {type(exc).__name__}: {exc}", op="dds_get")
            err.remote_type = type(exc).__name__
            return err
        self._sources["host"] += 1
        return value

    # --- the back end's cache table and counters -----------------------------------------

    def cache_put(self, key: bytes | str, version: int, file: str, offset: int, size: int) -> bool:
        """Insert or replace ``key`` in the back end's cache table; True if it was new.

        Raises:
            InvalidArgumentError: a bad key, file or number.
            DeviceFullError: the table is full.
        """
        k = _check_key(key)
        if not isinstance(file, str) or not file:
            raise errors.InvalidArgumentError(f"a file is a non-empty path string, got {file!r}")
        head = _PUT.pack(
            _check_uint("version", version, _U64),
            _check_uint("offset", offset, _U64),
            _check_uint("size", size, _U32),
            len(k),
        )
        return bool(self._control(_KIND_PUT, head + k + file.encode())[0])

    def cache_delete(self, key: bytes | str) -> bool:
        """Remove ``key`` from the back end's cache table; True if it was present."""
        return bool(self._control(_KIND_DELETE, _check_key(key))[0])

    def backend_stats(self) -> DdsStats:
        """The back end's counters, asked over the channel."""
        return DdsStats(**json.loads(self._control(_KIND_STATS, b"")))

    def _control(self, kind: int, payload: bytes) -> bytes:
        frame = self._link.call(kind, payload, self.timeout)
        if not frame.ok:
            raise _rebuild_error(frame, _CONTROL_OPS.get(kind, "dds"))
        return bytes(frame.payload)

    @property
    def served(self) -> dict[str, int]:
        """Values this front end received, by who served them: ``{"dpu": n, "host": m}``."""
        return dict(self._sources)

    def close(self) -> None:
        """Close the host side; the back end's :meth:`DdsBackEnd.serve` then returns."""
        self.pair.close()

    def __enter__(self) -> DdsFrontEnd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rebuild_error(frame: rpc.Frame, op: str = "dds_get") -> BaseException:
    # A dpdpu error comes back as its own class; anything else the back end's code raised, as RemoteRequestError.
    err = rpc.error_of(frame, classes=_KNOWN, default=RemoteRequestError, op=op)
    if isinstance(err, CacheMissError):
        err.code = "MISS"
    elif isinstance(err, RemoteRequestError):
        err.remote_type = rpc.error_parts(frame)[0]
    return err


#: classes of this module an error record may name
_KNOWN: dict[str, type[errors.DpdpuError]] = {"NOT_FOUND": CacheMissError}
