"""The KV-cache tier over Arrow Flight: :class:`KvFlightService` on the DPU, :class:`RemoteKvStore` on the host.

Register the service with the network engine's endpoint and talk to it with
the same ``store``/``lookup``/``retrieve`` calls as a local store::

    store = KvStore(shape, data_dir="/var/kv")
    with FlightEndpoint(token="s3cret", services={"kv": KvFlightService(store)}).serve_background() as ep:
        remote = RemoteKvStore(ep.location, token="s3cret")
        remote.store(tokens, kv)
        hit, kv = remote.retrieve(tokens)

**Wire format.**  Every request is a JSON ticket (``do_get``) or descriptor
command (``do_put``) with ``"kind": "kv"`` and an ``"op"``; token ids travel
in the JSON as a list of integers.

* ``{"kind": "kv", "op": "info"}`` -> one row: ``name, layers, kv_heads,
  head_dim, dtype, chunk_tokens`` (the client checks its model against it).
* ``{"kind": "kv", "op": "lookup", "tokens": [...]}`` -> one row ``hit_tokens``
  (a ``do_get``, since services of the endpoint take no actions).
* ``{"kind": "kv", "op": "retrieve", "tokens": [...]}`` -> one record batch
  per cached chunk, in order, of one row and one ``large_binary`` column
  ``kv``: the chunk's raw bytes, layer-major ``[layers, 2, chunk_tokens,
  kv_heads, head_dim]`` in the model dtype (little-endian).  The schema
  metadata ``hit_tokens`` gives the total.
* ``do_put`` with ``{"kind": "kv", "op": "store", "tokens": [...]}``: the
  client writes one such batch per full chunk of the tokens, in order; the
  server answers one metadata message ``{"stored": N}`` (tokens newly stored).

Errors travel with their wire status (:func:`dpdpu.errors.to_wire`, through
the endpoint: bad tokens or shapes are INVALID_ARGUMENT, every chunk pinned
RESOURCE_EXHAUSTED) and the client raises them as
:class:`~dpdpu.errors.InvalidArgumentError` / :class:`KvCapacityError` /
:class:`KvRemoteError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from .. import errors
from ..network.flight_server import flight_status
from .keys import ModelShape, as_tokens
from .store import KvCapacityError, KvShapeError, KvStore

__all__ = ["KIND", "KvFlightService", "KvRemoteError", "RemoteKvStore"]

KIND = "kv"
_SCHEMA = pa.schema([pa.field("kv", pa.large_binary())])


class KvRemoteError(errors.DpdpuError, ConnectionError):
    """The remote KV service failed or refused the call."""

    wire_status = "UNAVAILABLE"


def _chunk_batch(chunk: np.ndarray[Any, Any]) -> pa.RecordBatch:
    data = pa.py_buffer(np.ascontiguousarray(chunk).view(np.uint8).reshape(-1))
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
    arr = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, data])
    return pa.RecordBatch.from_arrays([arr], schema=_SCHEMA)


def _chunk_bytes(batch: pa.RecordBatch) -> list[memoryview]:
    if batch.schema.names != ["kv"] or batch.column(0).type != pa.large_binary():
        raise KvShapeError("kv batches must have one large_binary column 'kv'")
    col = batch.column(0)
    out = []
    for i in range(len(col)):
        scalar = col[i]
        if not scalar.is_valid:
            raise KvShapeError("a kv row is null")
        out.append(memoryview(scalar.as_buffer()))
    return out


class KvFlightService:
    """Serves a :class:`KvStore` as the ``"kv"`` kind of a :class:`~dpdpu.network.flight.FlightEndpoint`.

    ``max_store_bytes`` bounds one ``store`` upload (it is assembled in memory before it is stored).
    """

    def __init__(self, store: KvStore, *, max_store_bytes: int = 1 << 30) -> None:
        self.store = store
        self.max_store_bytes = max_store_bytes

    def _tokens(self, request: dict[str, Any]) -> np.ndarray[Any, Any]:
        return as_tokens(request.get("tokens"))

    def do_get(self, request: dict[str, Any], context: Any) -> flight.FlightDataStream:
        """Answer ``info``, ``lookup`` and ``retrieve`` tickets (see the module docstring)."""
        op = request.get("op")
        unknown = set(request) - {"kind", "op", "tokens"}
        if unknown:
            raise errors.InvalidArgumentError(f"unknown fields in the kv ticket: {sorted(unknown)}")
        s = self.store
        if op == "info":
            m = s.model
            row = {"name": [m.name], "layers": [m.layers], "kv_heads": [m.kv_heads], "head_dim": [m.head_dim]}
            row.update(dtype=[m.dtype], chunk_tokens=[s.chunk_tokens])
            return flight.RecordBatchStream(pa.table(row))
        if op == "lookup":
            return flight.RecordBatchStream(pa.table({"hit_tokens": [s.lookup(self._tokens(request))]}))
        if op == "retrieve":
            hit, kv = s.retrieve(self._tokens(request))
            schema = _SCHEMA.with_metadata({"hit_tokens": str(hit)})
            c = s.chunk_tokens

            def batches() -> Iterator[pa.RecordBatch]:
                for i in range(hit // c):
                    yield _chunk_batch(kv[:, :, i * c : (i + 1) * c]).replace_schema_metadata(schema.metadata)

            return flight.GeneratorStream(schema, batches())
        raise errors.InvalidArgumentError(
            f"unknown kv op {errors.shown(op)}: use info, lookup or retrieve (store is a do_put)"
        )

    def do_put(self, request: dict[str, Any], reader: Any, writer: Any, context: Any) -> None:
        """Take a ``store``: one batch per full chunk of the tokens."""
        if request.get("op") != "store" or set(request) - {"kind", "op", "tokens"}:
            raise errors.InvalidArgumentError("a kv do_put command is {'kind': 'kv', 'op': 'store', 'tokens': [...]}")
        s = self.store
        tokens = self._tokens(request)
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
        stored = s.store(tokens[:full], kv) if full else 0
        writer.write(pa.py_buffer(json.dumps({"stored": stored}).encode()))


#: the client's error for what the service answers (any other status: KvRemoteError)
_CLIENT_ERRORS: dict[str, type[errors.DpdpuError]] = {
    "INVALID_ARGUMENT": errors.InvalidArgumentError,
    "RESOURCE_EXHAUSTED": KvCapacityError,
}


class RemoteKvStore:
    """A client of :class:`KvFlightService` with the ``store``/``lookup``/``retrieve`` API of :class:`KvStore`.

    Args:
        location: the endpoint, e.g. ``ep.location``.
        token: the endpoint's bearer token, if it has one.
        model: the model the caller expects; checked against the server's.
    """

    def __init__(self, location: str, *, token: str | None = None, model: ModelShape | None = None) -> None:
        self._client = flight.FlightClient(location)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
        self._options = flight.FlightCallOptions(headers=headers)
        info = self._get({"op": "info"}).read_all().to_pylist()[0]
        served = ModelShape(info["name"], info["layers"], info["kv_heads"], info["head_dim"], info["dtype"])
        if model is not None and model != served:
            self.close()
            raise KvShapeError(f"the server holds {served}, not {model}")
        self.model = served
        self.chunk_tokens = int(info["chunk_tokens"])

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (flight.FlightError, pa.ArrowException) as exc:
            status, message = flight_status(exc)
        if status == "INVALID_ARGUMENT":
            message = f"the KV service refused the call: {message}"
        elif status != "RESOURCE_EXHAUSTED":
            message = f"the KV service failed: {message}"
        raise errors.from_wire(status, message, classes=_CLIENT_ERRORS, default=KvRemoteError)

    def _get(self, request: dict[str, Any]) -> flight.FlightStreamReader:
        ticket = flight.Ticket(json.dumps({"kind": KIND, **request}).encode())
        return self._call(self._client.do_get, ticket, self._options)

    def lookup(self, tokens: Any) -> int:
        """How many leading tokens of ``tokens`` the server has cached."""
        ids = as_tokens(tokens).tolist()
        table = self._call(lambda: self._get({"op": "lookup", "tokens": ids}).read_all())
        return int(table.column("hit_tokens")[0].as_py())

    def retrieve(self, tokens: Any) -> tuple[int, np.ndarray[Any, Any]]:
        """The cached prefix: ``(hit_tokens, kv)`` as :meth:`KvStore.retrieve` gives it."""
        ids = as_tokens(tokens).tolist()
        reader = self._get({"op": "retrieve", "tokens": ids})
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
        descriptor = flight.FlightDescriptor.for_command(
            json.dumps({"kind": KIND, "op": "store", "tokens": arr_tokens.tolist()}).encode()
        )

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

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> RemoteKvStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
