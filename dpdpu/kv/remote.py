"""The KV-cache tier over Arrow Flight: :class:`KvFlightService` on the DPU, :class:`RemoteKvStore` on the host.

Register the service with the network engine's endpoint and talk to it with
the same ``store``/``lookup``/``retrieve`` calls as a local store::

    store = KvStore(shape, data_dir="/var/kv")
    with FlightEndpoint(token="s3cret", services={"kv": KvFlightService(store)}).serve_background() as ep:
        remote = RemoteKvStore(ep.location, token="s3cret")
        remote.store(tokens, kv)
        hit, kv = remote.retrieve(tokens)

Served over a :class:`~dpdpu.kv.pool.KvStorePool`, the tier holds a store per
model shard, which each client opens with its model, rank and options
(``RemoteKvStore(location, model=shape, tp_rank=r, tp_size=n, options={...})``);
that is how a serving engine's scheduler and its workers share one tier.

**Wire format.**  Every request is a JSON ticket (``do_get``) or descriptor
command (``do_put``) with ``"kind": "kv"`` and an ``"op"``; token ids travel
in the JSON as a list of integers.  ``"store"`` names the store by id (its
root key in hex, :func:`~dpdpu.kv.pool.store_id`); without it, the service's
first store.  ``lookup``, ``pin``, ``unpin`` and ``prefetch`` may name several
(``"stores": [...]``, e.g. every rank of a model) and then answer for all of
them: the prefix every one holds.  Services of the endpoint take no actions,
so every call that is not a put is a ``do_get``.

* ``info`` -> one row: ``name, layers, kv_heads, head_dim, dtype,
  chunk_tokens, store`` (the client checks its model against it).
* ``open`` with ``"model": {name, layers, kv_heads, head_dim, dtype}``,
  ``"tp": [rank, size]`` and ``"options"`` (chunk size, device profile,
  policies, codecs, quantization) -> the ``info`` row of that shard's store,
  opened if it was not.
* ``lookup`` -> one row ``hit_tokens, dram_tokens``: the cached prefix and the
  part of it in DRAM.  It changes nothing: no pin, no eviction order, no
  promotion.
* ``pin`` with ``"seconds"`` -> one row ``pinned_tokens``: the cached prefix is
  not evicted until ``unpin`` or until the seconds pass (a client that dies
  does not hold it for ever).
* ``unpin`` -> one row ``released``: the oldest pin of the same prefix, gone.
* ``prefetch`` -> one row ``hit_tokens``: storage chunks of the cached prefix
  are brought into DRAM in the background.
* ``retrieve`` -> one record batch per cached chunk, in order, of one row and
  one ``large_binary`` column ``kv``: the chunk's raw bytes, layer-major
  ``[layers, 2, chunk_tokens, kv_heads, head_dim]`` in the model dtype
  (little-endian).  The schema metadata ``hit_tokens`` gives the total.
* ``retrieve_layers`` with ``"start"`` (a whole number of chunks) -> layer
  after layer, one batch per chunk from ``start`` on, columns ``layer``
  (int32) and ``kv`` (the chunk's ``[2, chunk_tokens, kv_heads, head_dim]``):
  a client can use layer ``i`` while ``i+1`` is on its way.  A layer with fewer
  chunks than the one before is a chunk that turned out corrupt.
* ``do_put`` with ``{"op": "store"}``: the client writes one ``kv`` batch per
  full chunk of the tokens, in order; with ``{"op": "store_layers", "start":
  S}``, batches of ``layer`` and ``kv`` as ``retrieve_layers`` sends them, for
  the chunks from ``S`` on, every layer once.  The server answers one metadata
  message ``{"stored": N}`` (tokens newly stored).

Errors come back as Flight errors (bad tokens, shapes or fields: INVALID_ARGUMENT;
every chunk pinned: a server error) and the client raises them as
:class:`~dpdpu.errors.InvalidArgumentError` / :class:`KvCapacityError` /
:class:`KvRemoteError`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from .. import errors
from ..runtime.profile import builtin_profiles
from .keys import ModelShape, as_tokens
from .pool import OPTIONS, KvStorePool, store_id
from .store import KvCapacityError, KvShapeError, KvStore

__all__ = ["KIND", "KvFlightService", "KvRemoteError", "LayerUpload", "RemoteKvStore"]

KIND = "kv"
_SCHEMA = pa.schema([pa.field("kv", pa.large_binary())])
_LAYER_SCHEMA = pa.schema([pa.field("layer", pa.int32()), pa.field("kv", pa.large_binary())])
#: The most stores one request may name, the longest model name, the largest model dimension.
_MAX_STORES_NAMED = 1024
_MAX_NAME = 256
_MAX_DIM = 1 << 16
_ID_CHARS = 32
_FIELDS: dict[str, set[str]] = {
    "info": set(),
    "open": {"model", "tp", "options"},
    "lookup": {"tokens", "stores", "dram"},
    "pin": {"tokens", "stores", "seconds"},
    "unpin": {"tokens", "stores"},
    "prefetch": {"tokens", "stores"},
    "retrieve": {"tokens"},
    "retrieve_layers": {"tokens", "start"},
    "store": {"tokens"},
    "store_layers": {"tokens", "start"},
}


class KvRemoteError(errors.DpdpuError, ConnectionError):
    """The remote KV service failed or refused the call."""


def _server_error(exc: Exception) -> Exception:
    mapped: Exception
    if isinstance(exc, (flight.FlightError, pa.ArrowException)):
        mapped = exc
    elif isinstance(exc, errors.DeviceMemoryError):
        mapped = flight.FlightServerError(f"KvCapacityError: {exc}")
    elif isinstance(exc, (ValueError, TypeError)):
        mapped = pa.ArrowInvalid(str(exc))
    else:
        mapped = flight.FlightServerError(f"{type(exc).__name__}: {exc}")
    return mapped


@contextlib.contextmanager
def _flight_errors() -> Iterator[None]:
    """Raise what the block raises as the Flight error the client maps back (see :meth:`RemoteKvStore._call`)."""
    try:
        yield
    except Exception as exc:
        mapped = _server_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def _binary(chunk: np.ndarray[Any, Any]) -> pa.Array:
    data = pa.py_buffer(np.ascontiguousarray(chunk).view(np.uint8).reshape(-1))
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, data])


def _chunk_batch(chunk: np.ndarray[Any, Any]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([_binary(chunk)], schema=_SCHEMA)


def _layer_batch(layer: int, chunk: np.ndarray[Any, Any]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([layer], pa.int32()), _binary(chunk)], schema=_LAYER_SCHEMA)


def _chunk_bytes(batch: pa.RecordBatch) -> list[memoryview]:
    if batch.schema.names != ["kv"] or batch.column(0).type != pa.large_binary():
        raise KvShapeError("kv batches must have one large_binary column 'kv'")
    return _rows(batch.column(0))


def _rows(col: pa.Array) -> list[memoryview]:
    out = []
    for i in range(len(col)):
        scalar = col[i]
        if not scalar.is_valid:
            raise KvShapeError("a kv row is null")
        out.append(memoryview(scalar.as_buffer()))
    return out


def _layer_rows(batch: pa.RecordBatch) -> list[tuple[int, memoryview]]:
    if batch.schema != _LAYER_SCHEMA:
        raise KvShapeError("layer batches must have the columns layer (int32) and kv (large_binary)")
    layers = batch.column(0)
    if layers.null_count:
        raise KvShapeError("a layer number is null")
    return list(zip(layers.to_pylist(), _rows(batch.column(1)), strict=True))


def _int(request: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise errors.InvalidArgumentError(f"{name} must be an integer in [{lo}, {hi}], not {errors.shown(value)}")
    return value


def _model(raw: Any) -> ModelShape:
    fields = ("name", "layers", "kv_heads", "head_dim", "dtype")
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise errors.InvalidArgumentError(f"model must be an object with exactly {', '.join(fields)}")
    if not isinstance(raw["name"], str) or len(raw["name"]) > _MAX_NAME:
        raise errors.InvalidArgumentError(f"a model name is a string of at most {_MAX_NAME} characters")
    for dim in fields[1:4]:
        _int(raw, dim, 0, 1, _MAX_DIM)
    return ModelShape(raw["name"], raw["layers"], raw["kv_heads"], raw["head_dim"], raw["dtype"])


def _shape_row(store: KvStore) -> dict[str, list[Any]]:
    m = store.model
    return {
        "name": [m.name], "layers": [m.layers], "kv_heads": [m.kv_heads], "head_dim": [m.head_dim],
        "dtype": [m.dtype], "chunk_tokens": [store.chunk_tokens], "store": [store.root.hex()],
    }  # fmt: skip


def _row(**columns: Any) -> flight.RecordBatchStream:
    return flight.RecordBatchStream(pa.table({k: [v] for k, v in columns.items()}))


class KvFlightService:
    """Serves KV stores as the ``"kv"`` kind of a :class:`~dpdpu.network.flight.FlightEndpoint`.

    Args:
        stores: one :class:`KvStore`, or a :class:`~dpdpu.kv.pool.KvStorePool` whose
            clients open a store per model shard.
        max_store_bytes: bounds one upload (a ``store`` is assembled in memory before it is
            stored; a ``store_layers`` holds a layer at a time) and one store's chunk.
        max_pin_seconds: the longest a ``pin`` may hold a prefix.
    """

    def __init__(
        self, stores: KvStore | KvStorePool, *, max_store_bytes: int = 1 << 30, max_pin_seconds: float = 3600.0
    ) -> None:
        if isinstance(stores, KvStore):
            self.pool = KvStorePool()
            self.pool.add(stores)
        elif isinstance(stores, KvStorePool):
            self.pool = stores
        else:
            raise errors.InvalidArgumentError(f"stores must be a KvStore or a KvStorePool, not {type(stores).__name__}")
        self.max_store_bytes = max_store_bytes
        self.max_pin_seconds = max_pin_seconds
        # Pins by deadline: (deadline, sequence, store, keys); expired ones are released on the next call.
        self._pins: list[tuple[float, int, KvStore, list[bytes]]] = []
        self._pin_seq = itertools.count()
        self._pin_lock = threading.Lock()

    # --- requests -----------------------------------------------------------------------------------

    def _check(self, request: dict[str, Any]) -> str:
        op = request.get("op")
        if not isinstance(op, str) or op not in _FIELDS:
            raise errors.InvalidArgumentError(
                f"unknown kv op {errors.shown(op)}: use {', '.join(k for k in _FIELDS if not k.startswith('store'))} "
                "(store and store_layers are a do_put)"
            )
        unknown = set(request) - {"kind", "op", "store"} - _FIELDS[op]
        if unknown:
            raise errors.InvalidArgumentError(f"unknown fields in the kv {op} ticket: {sorted(unknown)[:8]}")
        return op

    @staticmethod
    def _id(raw: Any) -> str:
        if not isinstance(raw, str) or len(raw) != _ID_CHARS or raw.strip("0123456789abcdef"):
            raise errors.InvalidArgumentError(f"a store id is {_ID_CHARS} lowercase hex digits")
        return raw

    def _store(self, request: dict[str, Any]) -> KvStore:
        raw = request.get("store")
        sid = None if raw is None else self._id(raw)
        store = self.pool.get(sid)
        if store is None:
            raise errors.InvalidArgumentError(
                "no such store: open it first" if sid is not None else "this tier serves no default store: name one"
            )
        return store

    def _targets(self, request: dict[str, Any]) -> list[KvStore | None]:
        """The stores a lookup-like call names (a store not opened yet holds nothing: None)."""
        raw = request.get("stores")
        if raw is None:
            return [self._store(request)]
        if "store" in request or not isinstance(raw, list) or not 0 < len(raw) <= _MAX_STORES_NAMED:
            raise errors.InvalidArgumentError(f"stores must be a list of 1 to {_MAX_STORES_NAMED} store ids, alone")
        return [self.pool.get(self._id(sid)) for sid in raw]

    def _expire(self) -> None:
        now = time.monotonic()
        with self._pin_lock:
            due = []
            while self._pins and self._pins[0][0] <= now:
                due.append(heapq.heappop(self._pins))
        for _, _, store, keys in due:
            store.unpin_keys(keys)

    # --- do_get -------------------------------------------------------------------------------------

    def do_get(self, request: dict[str, Any], context: Any) -> flight.FlightDataStream:
        """Answer every op but the puts (see the module docstring)."""
        with _flight_errors():
            self._expire()
            return self._do_get(request)

    def _do_get(self, request: dict[str, Any]) -> flight.FlightDataStream:
        op = self._check(request)
        if op == "info":
            return flight.RecordBatchStream(pa.table(_shape_row(self._store(request))))
        if op == "open":
            return flight.RecordBatchStream(pa.table(_shape_row(self._open(request))))
        if op in ("lookup", "pin", "unpin", "prefetch"):
            tokens = as_tokens(request.get("tokens"))
            return getattr(self, f"_{op}")(request, tokens, self._targets(request))
        if op == "retrieve":
            return self._retrieve(self._store(request), as_tokens(request.get("tokens")))
        if op == "retrieve_layers":
            return self._retrieve_layers(request, self._store(request), as_tokens(request.get("tokens")))
        raise errors.InvalidArgumentError(f"{op} is a do_put, not a ticket")

    def _open(self, request: dict[str, Any]) -> KvStore:
        model = _model(request.get("model"))
        tp = request.get("tp", [0, 1])
        if not isinstance(tp, list) or len(tp) != 2:
            raise errors.InvalidArgumentError("tp must be [rank, size]")
        options = request.get("options", {})
        if not isinstance(options, dict) or set(options) - set(OPTIONS):
            raise errors.InvalidArgumentError(f"options may hold {', '.join(OPTIONS)}")
        chunk = _int(options, "chunk_tokens", OPTIONS["chunk_tokens"], 1, 1 << 20)
        if chunk * model.bytes_per_token > self.max_store_bytes:
            raise errors.InvalidArgumentError(
                f"a chunk of {chunk} tokens takes {chunk * model.bytes_per_token} bytes, over {self.max_store_bytes}"
            )
        device = options.get("device")
        # Only built-in profiles: a path would make the tier read a file its client names.
        if device is not None and device not in builtin_profiles():
            raise errors.InvalidArgumentError(f"device must be one of {', '.join(builtin_profiles())}")
        _, store = self.pool.open(model, tp_rank=tp[0], tp_size=tp[1], **options)
        return store

    def _lookup(self, request: dict[str, Any], tokens: np.ndarray[Any, Any], targets: list[KvStore | None]) -> Any:
        hit = dram = None
        for store in targets:
            if store is None:
                hit = dram = 0
                break
            # Keys are hashed once per store: each shard has its own root.
            keys = store.keys(tokens)
            n = store.lookup_keys(keys)
            hit = n if hit is None else min(hit, n)
            if request.get("dram"):
                d = store.lookup_dram(keys)
                dram = d if dram is None else min(dram, d)
        return _row(hit_tokens=hit or 0, dram_tokens=dram or 0)

    def _pin(self, request: dict[str, Any], tokens: np.ndarray[Any, Any], targets: list[KvStore | None]) -> Any:
        seconds = request.get("seconds")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not 0 <= seconds <= self.max_pin_seconds
        ):
            raise errors.InvalidArgumentError(f"seconds must be a number in [0, {self.max_pin_seconds:g}]")
        pinned = None
        deadline = time.monotonic() + seconds
        for store in targets:
            if store is None:
                pinned = 0
                continue
            keys = store.pin_keys(tokens)
            with self._pin_lock:
                heapq.heappush(self._pins, (deadline, next(self._pin_seq), store, keys))
            n = len(keys) * store.chunk_tokens
            pinned = n if pinned is None else min(pinned, n)
        return _row(pinned_tokens=pinned or 0)

    def _unpin(self, request: dict[str, Any], tokens: np.ndarray[Any, Any], targets: list[KvStore | None]) -> Any:
        released = 0
        for store in targets:
            if store is None:
                continue
            keys = store.keys(tokens)
            with self._pin_lock:
                # The pin of this prefix that would expire first.
                found = [p for p in self._pins if p[2] is store and p[3] == keys[: len(p[3])]]
                if found:
                    pin = min(found)
                    self._pins.remove(pin)
                    heapq.heapify(self._pins)
            if found:
                store.unpin_keys(pin[3])
                released += 1
        return _row(released=released)

    def _prefetch(self, request: dict[str, Any], tokens: np.ndarray[Any, Any], targets: list[KvStore | None]) -> Any:
        hit = None
        for store in targets:
            if store is None:
                hit = 0
                continue
            store.prefetch(tokens)
            n = store.lookup(tokens)
            hit = n if hit is None else min(hit, n)
        return _row(hit_tokens=hit or 0)

    def _retrieve(self, s: KvStore, tokens: np.ndarray[Any, Any]) -> flight.FlightDataStream:
        hit, kv = s.retrieve(tokens)
        schema = _SCHEMA.with_metadata({"hit_tokens": str(hit)})
        c = s.chunk_tokens

        def batches() -> Iterator[pa.RecordBatch]:
            for i in range(hit // c):
                yield _chunk_batch(kv[:, :, i * c : (i + 1) * c]).replace_schema_metadata(schema.metadata)

        return flight.GeneratorStream(schema, batches())

    def _retrieve_layers(self, request: dict[str, Any], s: KvStore, tokens: np.ndarray[Any, Any]) -> Any:
        c = s.chunk_tokens
        start = _int(request, "start", 0, 0, len(tokens) // c * c)
        if start % c:
            raise errors.InvalidArgumentError(f"start must be a whole number of {c}-token chunks")

        def batches() -> Iterator[pa.RecordBatch]:
            # The chunks stay pinned while the stream lasts, and are released if the client goes away.
            for layer, hit, kv in s.iter_layers(tokens, start=start):
                for i in range((hit - start) // c):
                    yield _layer_batch(layer, kv[:, i * c : (i + 1) * c])

        return flight.GeneratorStream(_LAYER_SCHEMA, batches())

    # --- do_put -------------------------------------------------------------------------------------

    def do_put(self, request: dict[str, Any], reader: Any, writer: Any, context: Any) -> None:
        """Take a ``store`` (one batch per full chunk) or a ``store_layers`` (one batch per chunk and layer)."""
        with _flight_errors():
            self._expire()
            op = self._check(request)
            if op == "store":
                stored = self._put_store(self._store(request), as_tokens(request.get("tokens")), reader)
            elif op == "store_layers":
                stored = self._put_layers(request, self._store(request), reader, context)
            else:
                raise errors.InvalidArgumentError(f"a kv do_put is a store or a store_layers, not {op}")
            writer.write(pa.py_buffer(json.dumps({"stored": stored}).encode()))

    def _put_store(self, s: KvStore, tokens: np.ndarray[Any, Any], reader: Any) -> int:
        c = s.chunk_tokens
        full = len(tokens) // c * c
        chunk_nbytes = c * s.model.bytes_per_token
        if full // c * chunk_nbytes > self.max_store_bytes:
            raise errors.InvalidArgumentError(
                f"a store of {full} tokens ({full // c * chunk_nbytes} bytes) exceeds max_store_bytes "
                f"({self.max_store_bytes}); send fewer tokens per call"
            )
        kv = np.empty(s.model.token_shape(full), dtype=s.model.np_dtype)
        got = 0
        for chunk in reader:
            for raw in _chunk_bytes(chunk.data):
                if got >= full // c or raw.nbytes != chunk_nbytes:
                    raise KvShapeError(
                        f"expected {full // c} chunks of {chunk_nbytes} bytes, got a {raw.nbytes}-byte chunk {got}"
                    )
                arr = np.frombuffer(raw, dtype=s.model.np_dtype).reshape(s.model.token_shape(c))
                kv[:, :, got * c : (got + 1) * c] = arr
                got += 1
        if got != full // c:
            raise KvShapeError(f"expected {full // c} chunks, got {got}")
        return s.store(tokens[:full], kv) if full else 0

    def _put_layers(self, request: dict[str, Any], s: KvStore, reader: Any, context: Any) -> int:
        m = s.model
        c = s.chunk_tokens
        tokens = as_tokens(request.get("tokens"))
        full = len(tokens) // c * c
        start = _int(request, "start", 0, 0, full)
        if start % c:
            raise errors.InvalidArgumentError(f"start must be a whole number of {c}-token chunks")
        chunks = (full - start) // c
        layer_shape = (2, c, m.kv_heads, m.head_dim)
        chunk_nbytes = c * m.bytes_per_token // m.layers
        if chunks * chunk_nbytes > self.max_store_bytes:
            raise errors.InvalidArgumentError(
                f"a layer of this upload exceeds max_store_bytes ({self.max_store_bytes})"
            )
        done: set[int] = set()
        stored = 0
        layer, got = -1, 0
        buf = np.empty((2, full - start, m.kv_heads, m.head_dim), dtype=m.np_dtype)
        for chunk in reader:
            for n, raw in _layer_rows(chunk.data):
                if got == 0:
                    if not 0 <= n < m.layers or n in done:
                        raise KvShapeError(f"layer {n} is not a layer of this model still to come")
                    layer = n
                if n != layer or raw.nbytes != chunk_nbytes:
                    raise KvShapeError(f"expected chunk {got} of layer {layer} ({chunk_nbytes} bytes)")
                buf[:, got * c : (got + 1) * c] = np.frombuffer(raw, dtype=m.np_dtype).reshape(layer_shape)
                got += 1
                if got == chunks:
                    stored += s.store_layer(tokens[:full], layer, buf, start=start)
                    done.add(layer)
                    got = 0
        if got or (chunks and len(done) != m.layers) or context.is_cancelled():
            # A stream cut short (or broken off) stores nothing more; what was staged is dropped in time.
            raise KvShapeError(f"the upload ended after {len(done)} of {m.layers} layers")
        return stored


def _first(exc: BaseException) -> str:
    # gRPC appends the server's traceback and debug context after ". Detail:"; the first part is the message.
    return str(exc).split(". Detail:")[0].split(". gRPC client debug context")[0]


class RemoteKvStore:
    """A client of :class:`KvFlightService` with the ``store``/``lookup``/``retrieve`` API of :class:`KvStore`.

    Args:
        location: the endpoint, e.g. ``ep.location``.
        token: the endpoint's bearer token, if it has one.
        model: the model the caller expects; checked against the server's.
        tp_rank, tp_size: the shard of ``model`` this client uses (with ``options``).
        options: open this shard's store on a pool with these options (``chunk_tokens``,
            ``device``, ``policy``, ``disk_policy``, ``dram_codec``, ``disk_codec``,
            ``quantize``); None uses the service's first store.
    """

    def __init__(
        self,
        location: str,
        *,
        token: str | None = None,
        model: ModelShape | None = None,
        tp_rank: int = 0,
        tp_size: int = 1,
        options: dict[str, Any] | None = None,
    ) -> None:
        self._client = flight.FlightClient(location)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
        self._options = flight.FlightCallOptions(headers=headers)
        self._store: str | None = None
        try:
            if options is not None:
                if model is None:
                    raise errors.InvalidArgumentError("opening a store needs the model")
                shape = {"name": model.name, "layers": model.layers, "kv_heads": model.kv_heads}
                shape.update(head_dim=model.head_dim, dtype=model.dtype)
                request = {"op": "open", "model": shape, "tp": [tp_rank, tp_size], "options": options}
                info = self._call(lambda: self._get(request).read_all().to_pylist()[0])
            else:
                info = self._call(lambda: self._get({"op": "info"}).read_all().to_pylist()[0])
            served = ModelShape(info["name"], info["layers"], info["kv_heads"], info["head_dim"], info["dtype"])
            if model is not None and model != served:
                raise KvShapeError(f"the server holds {served}, not {model}")
        except BaseException:
            self.close()
            raise
        self.model = served
        self.chunk_tokens = int(info["chunk_tokens"])
        self.store_id: str = info["store"]
        self._store = self.store_id
        self.tp_rank, self.tp_size = tp_rank, tp_size

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except pa.ArrowInvalid as exc:
            raise errors.InvalidArgumentError(f"the KV service refused the call: {_first(exc)}") from None
        except flight.FlightServerError as exc:
            if "KvCapacityError" in str(exc):
                raise KvCapacityError(_first(exc)) from None
            raise KvRemoteError(f"the KV service failed: {_first(exc)}") from None
        except (flight.FlightError, pa.ArrowException) as exc:
            raise KvRemoteError(f"the KV service failed: {_first(exc)}") from None

    def _request(self, request: dict[str, Any], all_ranks: bool = False) -> bytes:
        if all_ranks:
            ranks = [store_id(self.model, tp_rank=r, tp_size=self.tp_size) for r in range(self.tp_size)]
            request = {**request, "stores": ranks}
        elif self._store is not None and "store" not in request and "stores" not in request:
            request = {**request, "store": self._store}
        return json.dumps({"kind": KIND, **request}).encode()

    def _get(self, request: dict[str, Any], all_ranks: bool = False) -> flight.FlightStreamReader:
        ticket = flight.Ticket(self._request(request, all_ranks))
        reader: flight.FlightStreamReader = self._call(self._client.do_get, ticket, self._options)
        return reader

    def _one(self, request: dict[str, Any], all_ranks: bool = False) -> dict[str, Any]:
        row: dict[str, Any] = self._call(lambda: self._get(request, all_ranks).read_all().to_pylist()[0])
        return row

    def lookup(self, tokens: Any, *, all_ranks: bool = False, dram: bool = False) -> Any:
        """How many leading tokens of ``tokens`` the server has cached; changes nothing on the server.

        With ``all_ranks``, the prefix every tensor-parallel rank's store holds; with ``dram``,
        ``(hit_tokens, tokens of it in DRAM)``.
        """
        ids = as_tokens(tokens).tolist()
        row = self._one({"op": "lookup", "tokens": ids, "dram": dram}, all_ranks)
        return (int(row["hit_tokens"]), int(row["dram_tokens"])) if dram else int(row["hit_tokens"])

    def pin(self, tokens: Any, *, seconds: float, all_ranks: bool = False) -> int:
        """Keep the cached prefix of ``tokens`` from eviction for ``seconds`` (or until :meth:`unpin`); its tokens."""
        ids = as_tokens(tokens).tolist()
        return int(self._one({"op": "pin", "tokens": ids, "seconds": seconds}, all_ranks)["pinned_tokens"])

    def unpin(self, tokens: Any, *, all_ranks: bool = False) -> int:
        """Release the pin of this prefix that would expire first; how many stores had one."""
        ids = as_tokens(tokens).tolist()
        return int(self._one({"op": "unpin", "tokens": ids}, all_ranks)["released"])

    def prefetch(self, tokens: Any, *, all_ranks: bool = False) -> int:
        """Start bringing the cached prefix of ``tokens`` into the server's DRAM; returns its tokens."""
        ids = as_tokens(tokens).tolist()
        return int(self._one({"op": "prefetch", "tokens": ids}, all_ranks)["hit_tokens"])

    def retrieve(self, tokens: Any) -> tuple[int, np.ndarray[Any, Any]]:
        """The cached prefix: ``(hit_tokens, kv)`` as :meth:`KvStore.retrieve` gives it."""
        ids = as_tokens(tokens).tolist()
        reader = self._call(self._get, {"op": "retrieve", "tokens": ids})
        m = self.model
        c = self.chunk_tokens

        def read() -> tuple[int, np.ndarray[Any, Any]]:
            meta = reader.schema.metadata or {}
            hit = int(meta.get(b"hit_tokens", b"0"))
            out = np.empty(m.token_shape(hit), dtype=m.np_dtype)
            i = 0
            for chunk in reader:
                for raw in _chunk_bytes(chunk.data):
                    if (i + 1) * c > hit or raw.nbytes != c * m.bytes_per_token:
                        raise KvRemoteError("the KV service sent more or other chunks than it announced")
                    out[:, :, i * c : (i + 1) * c] = np.frombuffer(raw, dtype=m.np_dtype).reshape(m.token_shape(c))
                    i += 1
            if i * c != hit:
                raise KvRemoteError(f"the KV service announced {hit} tokens and sent {i * c}")
            return hit, out

        result: tuple[int, np.ndarray[Any, Any]] = self._call(read)
        return result

    def retrieve_layers(self, tokens: Any, *, start: int = 0) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
        """The cached chunks of ``tokens`` from token ``start`` on, layer by layer as they arrive.

        Yields ``(layer, kv)`` with ``kv`` of shape ``[2, n, kv_heads, head_dim]`` for tokens
        ``[start, start + n)``; a layer is yielded as soon as its last chunk is in.  Layers
        after a chunk that turned out corrupt on the server carry fewer tokens.
        """
        arr = as_tokens(tokens)
        m = self.model
        c = self.chunk_tokens
        wanted = len(arr) // c - start // c
        reader = self._call(self._get, {"op": "retrieve_layers", "tokens": arr.tolist(), "start": start})
        layer_shape = (2, c, m.kv_heads, m.head_dim)
        chunk_nbytes = c * m.bytes_per_token // m.layers
        layer, parts = -1, list[np.ndarray[Any, Any]]()
        stream = iter(reader)
        while True:
            batch = self._call(next, stream, None)
            rows = [] if batch is None else self._call(_layer_rows, batch.data)
            for n, raw in rows:
                if n != layer and parts:
                    yield layer, np.concatenate(parts, axis=1)
                    parts = []
                if raw.nbytes != chunk_nbytes or not 0 <= n < m.layers or len(parts) >= wanted:
                    raise KvRemoteError("the KV service sent a chunk this load did not ask for")
                layer = n
                parts.append(np.frombuffer(raw, dtype=m.np_dtype).reshape(layer_shape))
            if batch is None:
                break
        if parts:
            yield layer, np.concatenate(parts, axis=1)

    def store(self, tokens: Any, kv: Any) -> int:
        """Send the KV of every full chunk of ``tokens``; returns the tokens the server newly stored."""
        arr_tokens = as_tokens(tokens)
        m = self.model
        arr = kv if isinstance(kv, np.ndarray) else np.frombuffer(memoryview(kv).cast("B"), dtype=m.np_dtype)
        if arr.dtype.name == "bfloat16" and m.dtype == "bf16":
            arr = arr.view(np.uint16)
        shape = m.token_shape(len(arr_tokens))
        if arr.dtype != m.np_dtype or (arr.shape != shape and not (arr.ndim == 1 and arr.size == np.prod(shape))):
            raise KvShapeError(f"kv must be {shape} of {m.np_dtype}, not {arr.shape} of {arr.dtype}")
        arr = arr.reshape(shape)
        c = self.chunk_tokens
        descriptor = flight.FlightDescriptor.for_command(self._request({"op": "store", "tokens": arr_tokens.tolist()}))

        def put() -> int:
            writer, meta_reader = self._client.do_put(descriptor, _SCHEMA, self._options)
            with writer:
                for i in range(len(arr_tokens) // c):
                    writer.write_batch(_chunk_batch(arr[:, :, i * c : (i + 1) * c]))
                writer.done_writing()
                ack = meta_reader.read()
            return int(json.loads(ack.to_pybytes())["stored"]) if ack is not None else 0

        stored: int = self._call(put)
        return stored

    def store_layers(self, tokens: Any, *, start: int = 0) -> LayerUpload:
        """Start an upload of the chunks of ``tokens`` from ``start`` on, a layer at a time (:class:`LayerUpload`)."""
        arr = as_tokens(tokens)
        c = self.chunk_tokens
        if start % c or not 0 <= start <= len(arr) // c * c:
            raise errors.InvalidArgumentError(f"start must be a whole number of {c}-token chunks within the tokens")
        request = {"op": "store_layers", "tokens": arr.tolist(), "start": start}
        descriptor = flight.FlightDescriptor.for_command(self._request(request))
        writer, meta_reader = self._call(self._client.do_put, descriptor, _LAYER_SCHEMA, self._options)
        return LayerUpload(self, writer, meta_reader, (len(arr) // c * c - start) // c)

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> RemoteKvStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LayerUpload:
    """One request's chunks sent layer by layer: :meth:`write` each layer once, then :meth:`finish`."""

    def __init__(self, remote: RemoteKvStore, writer: Any, meta_reader: Any, chunks: int) -> None:
        self._remote = remote
        self._writer = writer
        self._meta = meta_reader
        self.chunks = chunks

    def write(self, layer: int, kv: np.ndarray[Any, Any]) -> None:
        """Send one layer: ``[2, chunks * chunk_tokens, kv_heads, head_dim]`` of the model dtype."""
        m = self._remote.model
        c = self._remote.chunk_tokens
        want = (2, self.chunks * c, m.kv_heads, m.head_dim)
        if kv.dtype.name == "bfloat16" and m.dtype == "bf16":
            kv = kv.view(np.uint16)
        if kv.shape != want or kv.dtype != m.np_dtype:
            raise KvShapeError(f"a layer must be {want} of {m.np_dtype}, not {kv.shape} of {kv.dtype}")
        for i in range(self.chunks):
            self._remote._call(self._writer.write_batch, _layer_batch(layer, kv[:, i * c : (i + 1) * c]))

    def finish(self) -> int:
        """End the upload; returns the tokens the server newly stored."""

        def end() -> int:
            self._writer.done_writing()
            ack = self._meta.read()
            self._writer.close()
            return int(json.loads(ack.to_pybytes())["stored"]) if ack is not None else 0

        stored: int = self._remote._call(end)
        return stored

    def abort(self) -> None:
        """Break the upload off (the server stores nothing of it)."""
        with contextlib.suppress(Exception):
            self._writer.close()
