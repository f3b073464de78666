"""The Arrow Flight endpoint of the network engine: clients send Arrow data to the DPU and get back what they need.

The DPU owns the network port.  A :class:`FlightEndpoint` is a gRPC Flight
server running there: clients upload datasets (``do_put``), read them back
filtered and projected on the DPU (``do_get``), or stream batches through a
pipeline that runs on the DPU (``do_exchange``), with any stock Flight client.

>>> with FlightEndpoint(token="s3cret").serve_background() as ep:   # doctest: +SKIP
...     client = flight.FlightClient(ep.location)
...     opts = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer s3cret")])
...     reader = client.do_get(flight.Ticket(b'{"dataset": "trips", "predicate": "fare > 10"}'), opts)

**Tickets and descriptor commands** are JSON objects.  ``"kind"`` (default
``"dataset"``) picks who handles them: the built-in dataset service, or a
:class:`FlightService` passed as ``services={"kv": ...}``.  The dataset kind:

* ``do_get`` ticket, and ``get_flight_info``/``get_schema`` command::

      {"dataset": "trips",                 # 1-128 of [A-Za-z0-9_-]
       "predicate": "fare > 10",           # optional: the expression language of
                                           # dpdpu.compute.expr, or
                                           # {"expression": "<base64>"}: a serialized
                                           # pyarrow.compute.Expression (flight_tickets.encode_expression)
       "columns": ["a", "b"],              # optional: output columns, in order
       "compression": "lz4"}               # optional: "lz4" or "zstd" IPC body compression

  ``get_flight_info``/``get_schema`` also take a path descriptor ``["trips"]``.
* ``do_put`` descriptor: path ``["trips"]`` (mode ``replace``) or command
  ``{"dataset": "trips", "mode": "create" | "replace" | "append", "format":
  "parquet" | "ipc"}`` (mode default ``replace``; format matters only with a
  ``data_dir``, default ``parquet``).  The server answers with one metadata
  message ``{"dataset", "rows", "bytes", "where"}``.  An upload counts only if
  its stream ends cleanly: pyarrow's reader ends the same way when the client
  vanishes part way, so a call cancelled by then (client killed, connection
  lost, deadline) stores nothing and the previous version stays.
* ``do_exchange`` command: ``{"pipeline": [{"filter": "<predicate>"},
  {"project": ["a", "b"]}, {"aggregate": {"keys": ["k"], "aggs": [["v",
  "sum"], ["*", "count"]]}}, {"compress": "lz4"}]}``.  Filter and project
  steps before the first aggregate run on each batch as it arrives and their
  results stream straight back; the aggregate and the steps after it run
  once the client has finished writing.  ``project`` also takes ``{"out":
  "a * 2"}``.  ``compress`` sets the reply's IPC compression.  As with any
  bidirectional gRPC stream, a client sending much data through per-batch
  steps should read the results while it writes (another thread): both
  directions have bounded buffers.

**Actions** (``do_action``, body and result JSON): ``stats`` (runtime stats,
per dataset bytes read vs returned, requests served on the DPU vs forwarded
to the host, uploads dropped as broken off), ``devices``, ``drop`` (body ``{"dataset": "trips"}``),
``offloads`` (the names of the extra actions) and every action passed as
``actions=`` (which take precedence over built-ins of the same name).

**Errors** reach the client as the matching Flight error: malformed JSON
(or JSON nested more than 32 levels), unknown fields, bad predicates or
columns (in a ticket, or in a ``get_flight_info``/``get_schema`` command,
checked the same way), malformed serialized expressions, schema mismatches,
tickets, commands and action bodies above ``max_request_bytes`` and payloads
above ``max_payload_bytes`` are INVALID_ARGUMENT (``pyarrow.ArrowInvalid``);
an unknown dataset is NOT_FOUND (``pyarrow.ArrowKeyError``); a missing or
wrong token is UNAUTHENTICATED; a dataset that does not fit in the DPU's
memory is a ``FlightServerError``.  The client gets a short message (at most
:data:`~dpdpu.network.flight_server.WIRE_MESSAGE_BYTES`, quoting at most an
excerpt of its input), never the server's traceback (see
:mod:`~dpdpu.network.flight_server`).  The server keeps serving after each.

**Routing** (DDS-style): ``route(ticket) -> bool`` decides per ``do_get``
whether the DPU serves it (True) or forwards it over a
:class:`~dpdpu.runtime.channel.ChannelPair` to a
:class:`~dpdpu.network.flight_routing.HostHandler` on the host (False).

**Compression** is Arrow IPC body compression (LZ4 frame or Zstandard), which
every Flight client decodes on its own; ``deflate`` is not an IPC codec, so
it is refused rather than sent in a form stock clients cannot read.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight

from .. import errors
from ..compute.expr import bind_predicate
from ..compute.kernels import aggregate as dpdpu_aggregate
from ..compute.kernels import filter as dpdpu_filter
from ..compute.kernels import project as dpdpu_project
from ..errors import clip, shown
from ..runtime.channel import ChannelPair
from ..runtime.runtime import Runtime, current_runtime
from .addresses import is_unspecified
from .flight_catalog import Catalog, DatasetNotFoundError, StoredDataset, UploadAbortedError
from .flight_routing import HostHandler, HostLink
from .flight_server import BearerAuth, FlightConfigError, check_location, mapped, mapped_batches, wire_formatter
from .flight_tickets import (
    DEFAULT_KIND,
    ExchangeStep,
    GetRequest,
    as_object,
    check_name,
    decode_json,
    encode_expression,
    invalid,
    ipc_options,
    kind_of,
    parse_exchange,
    parse_get,
    parse_put,
    ticket,
)

__all__ = [
    "FlightConfigError",
    "FlightEndpoint",
    "FlightService",
    "HostHandler",
    "encode_expression",
    "ticket",
]

_BUILTIN_ACTIONS = {
    "stats": "runtime stats, per-dataset bytes read vs returned, requests served vs forwarded",
    "devices": "the runtime's devices: profile, engines, memory",
    "drop": 'delete a dataset; body {"dataset": NAME}',
    "offloads": "names of the extra actions this endpoint offers",
}


class FlightService(Protocol):
    """Handles tickets and ``do_put`` commands of one extra ``"kind"``.

    A service may also define ``get_flight_info(request, context)`` and
    ``do_exchange(request, reader, writer, context)``; the endpoint calls them
    for descriptors of its kind when present (UNIMPLEMENTED otherwise).
    Exceptions it raises reach the client as Flight errors like the
    endpoint's own (``KeyError``: NOT_FOUND, ``ValueError``: INVALID_ARGUMENT).
    """

    def do_get(self, request: dict[str, Any], context: flight.ServerCallContext) -> flight.FlightDataStream:
        """Stream the data ``request`` (the decoded ticket) names."""
        ...

    def do_put(
        self,
        request: dict[str, Any],
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
        context: flight.ServerCallContext,
    ) -> None:
        """Take the upload described by ``request`` (the decoded descriptor command)."""
        ...


# --- the server ---------------------------------------------------------------------------------


class _Server(flight.FlightServerBase):  # type: ignore[misc]
    """pyarrow's server, delegating every call to the endpoint."""

    def __init__(self, endpoint: FlightEndpoint, location: str, **options: Any) -> None:
        super().__init__(location, **options)
        self._ep = endpoint

    @mapped
    def list_flights(self, context: Any, criteria: bytes) -> Iterator[flight.FlightInfo]:
        return iter([self._ep._info_of(stored, None) for stored in self._ep.catalog.datasets()])

    @mapped
    def get_flight_info(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        return self._ep._get_flight_info(context, descriptor)

    @mapped
    def get_schema(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        return flight.SchemaResult(self._ep._get_flight_info(context, descriptor).schema)

    @mapped
    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.FlightDataStream:
        return self._ep._do_get(context, ticket)

    @mapped
    def do_put(
        self,
        context: Any,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        self._ep._do_put(context, descriptor, reader, writer)

    @mapped
    def do_exchange(
        self,
        context: Any,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        self._ep._do_exchange(context, descriptor, reader, writer)

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return self._ep._list_actions()

    @mapped
    def do_action(self, context: Any, action: flight.Action) -> Iterator[flight.Result]:
        return self._ep._do_action(action)


class FlightEndpoint:
    """An Arrow Flight server on the DPU: datasets in, filtered/projected/aggregated results out.

    Args:
        location: where to listen, ``grpc://HOST:PORT`` (port 0: any free
            port; see :attr:`port`); with ``tls`` the scheme becomes
            ``grpc+tls``.
        runtime: where the kernels run (default: :func:`dpdpu.current_runtime`).
        data_dir: keep datasets on a :class:`~dpdpu.storage.fs.FileService`
            there (durable, scanned with pushdown); None keeps them in DPU
            memory, charged to the runtime device's memory (shared with the
            runtime's other users; see :mod:`~dpdpu.network.flight_catalog`).
        token: bearer token every call must carry; required off loopback.
        tls: ``(certificate chain PEM, private key PEM)``.
        max_payload_bytes: the most one ``do_put`` or ``do_exchange`` may
            send; beyond it the call fails with INVALID_ARGUMENT.
        max_request_bytes: the most bytes a ticket, a descriptor (command or
            path) or an action (name and body) may hold; a larger one fails
            with INVALID_ARGUMENT before it is parsed.  4 MiB, gRPC's own
            default message limit, by default.
        actions: extra ``do_action`` handlers: JSON-decoded body in (None
            for an empty body), JSON-serialisable result out.
        services: extra ticket/command kinds, dispatched on ``"kind"``.
        route: offload predicate over each ``do_get`` ticket (the decoded
            JSON): True serves it on the DPU, False forwards it to the host.
        host: the channel to the host handler: a :class:`ChannelPair` whose
            requests this endpoint sends (the endpoint does not close it), or
            a name for a pair the endpoint creates (and closes) for a
            :class:`HostHandler` to attach to.
        host_timeout: seconds to wait for the host's answer.

    Raises:
        FlightConfigError: no token while listening off loopback, TLS
            options that do not match the scheme, ``route`` without ``host``,
            or a reserved service kind.
    """

    def __init__(
        self,
        location: str = "grpc://127.0.0.1:0",
        *,
        runtime: Runtime | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
        max_payload_bytes: int = 1 << 30,
        max_request_bytes: int = 4 << 20,
        actions: Mapping[str, Callable[[Any], Any]] | None = None,
        services: Mapping[str, FlightService] | None = None,
        route: Callable[[dict[str, Any]], bool] | None = None,
        host: ChannelPair | str | None = None,
        host_timeout: float = 30.0,
    ) -> None:
        scheme, hostname = check_location(location, tls, token)
        for option, value in (("max_payload_bytes", max_payload_bytes), ("max_request_bytes", max_request_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FlightConfigError(f"{option} must be a positive integer, not {value!r}")
        if route is not None and host is None:
            raise FlightConfigError("route needs a host channel to forward requests to (host=...)")
        self.services: dict[str, FlightService] = dict(services or {})
        if DEFAULT_KIND in self.services:
            raise FlightConfigError(f"the kind {DEFAULT_KIND!r} is built in; give the service another name")
        self.actions: dict[str, Callable[[Any], Any]] = dict(actions or {})
        self.runtime = runtime if runtime is not None else current_runtime()
        self.max_payload_bytes = max_payload_bytes
        self.max_request_bytes = max_request_bytes
        self.route = route
        self._host: HostLink | None = None
        if isinstance(host, str):
            self._host = HostLink(ChannelPair.create(host), timeout=host_timeout, owned=True)
        elif host is not None:
            self._host = HostLink(host, timeout=host_timeout)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("served", "forwarded", "puts", "puts_aborted", "exchanges", "exchange_bytes_in", "exchange_bytes_out"), 0
        )
        self._thread: threading.Thread | None = None
        self._closed = False
        self.catalog = Catalog(self.runtime, data_dir)
        options: dict[str, Any] = {}
        if token is not None:
            options["middleware"] = {"auth": BearerAuth(token)}
        if tls is not None:
            options["tls_certificates"] = [tls]
        if tls is not None and not location.startswith("grpc+tls:"):
            location = "grpc+tls:" + location.split(":", 1)[1]
        self._release_formatter = wire_formatter.hold()  # from the first call the server may take
        try:
            self._server = _Server(self, location, **options)
        except BaseException:
            self._release_formatter()
            self.catalog.close()
            if self._host is not None:
                self._host.close()
            raise
        self._scheme = scheme
        self._hostname = hostname
        self._unspecified = is_unspecified(hostname)

    # --- life cycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.port)

    @property
    def location(self) -> str:
        """A URI a client can connect to, e.g. ``grpc://127.0.0.1:40123``.

        Listening on every address (``0.0.0.0`` or ``::``), it names this
        machine's host name instead.
        """
        name = socket.gethostname() if self._unspecified else self._hostname
        host = f"[{name}]" if ":" in name else name
        return f"{self._scheme}://{host}:{self.port}"

    def serve_background(self) -> FlightEndpoint:
        """Serve in a daemon thread; return self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve, name="dpdpu-flight", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (waiting for calls in progress) and release the datasets and the host channel."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._release_formatter()
        self.catalog.close()
        if self._host is not None:
            self._host.close()

    def __enter__(self) -> FlightEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FlightEndpoint({self.location!r}, {len(self.catalog.names())} datasets)"

    # --- requests ----------------------------------------------------------------------------------

    def _check_size(self, size: int, what: str) -> None:
        if size > self.max_request_bytes:
            raise invalid(
                f"{what} too large: {size:,} bytes; this endpoint takes at most {self.max_request_bytes:,} "
                "(max_request_bytes)"
            )

    def _request(self, raw: bytes, what: str) -> dict[str, Any]:
        """A ticket's or command's JSON object, after checking its size."""
        self._check_size(len(raw), what)
        return as_object(decode_json(raw, what), what)

    def _descriptor_request(self, descriptor: flight.FlightDescriptor, what: str) -> dict[str, Any]:
        if descriptor.descriptor_type == flight.DescriptorType.PATH:
            raw_path = descriptor.path
            self._check_size(sum(len(p) for p in raw_path), what)
            path = [p.decode(errors="replace") if isinstance(p, bytes) else str(p) for p in raw_path]
            if len(path) != 1:
                raise invalid(f"malformed {what}: a path descriptor holds one dataset name, not {shown(path)}")
            return {"dataset": check_name(path[0], what)}
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise invalid(f"malformed {what}: expected a path or a command descriptor")
        return self._request(descriptor.command, what)

    def _service(self, kind: str, what: str) -> FlightService:
        service = self.services.get(kind)
        if service is None:
            known = sorted([DEFAULT_KIND, *self.services])
            raise invalid(f"malformed {what}: unknown kind {shown(kind)}; this endpoint serves {known}")
        return service

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _do_get(self, context: Any, raw_ticket: flight.Ticket) -> flight.FlightDataStream:
        request = self._request(raw_ticket.ticket, "ticket")
        kind = kind_of(request, "ticket")
        if kind != DEFAULT_KIND:
            return self._service(kind, "ticket").do_get(request, context)
        req = parse_get(request)
        options = ipc_options(req.compression)
        if self.route is not None and self._host is not None and not self._offload(request):
            self._count("forwarded")
            table = self._host.get(request)
            return flight.RecordBatchStream(table, options=options)
        try:
            query = self.catalog.query(self.catalog.get(req.dataset), req.predicate, req.columns)
        except errors.ExpressionError as exc:
            raise invalid(f"bad predicate or columns in the ticket for dataset {req.dataset!r}: {exc}") from exc
        self._count("served")
        if query.table is not None:
            return flight.RecordBatchStream(query.table, options=options)
        assert query.batches is not None
        return flight.GeneratorStream(query.schema, mapped_batches(query.batches), options=options)

    def _offload(self, request: dict[str, Any]) -> bool:
        assert self.route is not None
        try:
            return bool(self.route(request))
        except Exception as exc:
            raise flight.FlightServerError(
                f"the offload predicate raised {type(exc).__name__}: {clip(str(exc))}"
            ) from exc

    def _do_put(
        self,
        context: Any,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        request = self._descriptor_request(descriptor, "do_put descriptor")
        kind = kind_of(request, "do_put descriptor")
        if kind != DEFAULT_KIND:
            self._service(kind, "do_put descriptor").do_put(request, reader, writer, context)
            return
        req = parse_put(request)
        schema = reader.schema
        batches: list[pa.RecordBatch] = []
        total = 0
        for batch in self._batches(reader, schema, f"do_put of {req.dataset!r}"):
            total += batch.get_total_buffer_size()
            if total > self.max_payload_bytes:
                raise invalid(
                    f"payload too large: do_put of {req.dataset!r} exceeds max_payload_bytes "
                    f"({self.max_payload_bytes} bytes); nothing was stored"
                )
            batches.append(batch)
        # pyarrow's reader ends the same way whether the client finished
        # writing or vanished part way (killed, connection lost, deadline): only
        # the call's cancellation tells a broken-off stream from a complete one.
        try:
            stored = self.catalog.put(req, schema, batches, context.is_cancelled)
        except UploadAbortedError:
            self._count("puts_aborted")
            raise
        self._count("puts")
        ack = {"dataset": stored.name, "rows": stored.num_rows, "bytes": stored.nbytes, "where": stored.where}
        writer.write(pa.py_buffer(json.dumps(ack).encode()))

    @staticmethod
    def _batches(reader: flight.MetadataRecordBatchReader, schema: pa.Schema, what: str) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return
            batch = chunk.data
            if batch is None:
                continue  # a metadata-only message
            if not batch.schema.equals(schema):
                raise invalid(
                    f"schema mismatch in {what}: a batch has schema\n{clip(str(batch.schema))}\n"
                    f"not the declared\n{clip(str(schema))}"
                )
            yield batch

    def _do_exchange(
        self,
        context: Any,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise invalid('malformed exchange descriptor: expected a command {"pipeline": [...]}')
        request = self._request(descriptor.command, "exchange command")
        kind = kind_of(request, "exchange command")
        if kind != DEFAULT_KIND:
            service: Any = self._service(kind, "exchange command")
            if not hasattr(service, "do_exchange"):
                raise NotImplementedError(f"the {kind!r} service does not take do_exchange")
            service.do_exchange(request, reader, writer, context)
            return
        ex = parse_exchange(request)
        schema = reader.schema
        # Running the per-batch steps on an empty batch checks them (before any
        # data is read) and gives the schema of what they produce.
        probe = self._run_steps(ex.streaming, _empty(schema))
        out_schema = probe.schema
        options = ipc_options(ex.compression)
        self._count("exchanges")
        total = 0
        kept: list[pa.RecordBatch] = []
        if not ex.final:
            writer.begin(out_schema, options=options)
        for batch in self._batches(reader, schema, "do_exchange"):
            total += batch.get_total_buffer_size()
            if total > self.max_payload_bytes:
                raise invalid(f"payload too large: do_exchange exceeds max_payload_bytes ({self.max_payload_bytes})")
            out = self._run_steps(ex.streaming, batch)
            if ex.final:
                kept.append(out)
            elif out.num_rows:
                if not out.schema.equals(out_schema):
                    out = pa.RecordBatch.from_arrays(out.columns, schema=out_schema)
                writer.write_batch(out)
                self._count("exchange_bytes_out", out.nbytes)
        self._count("exchange_bytes_in", total)
        if ex.final:
            table = pa.Table.from_batches(kept, schema=out_schema)
            for step in ex.final:
                table = _table(self._step(step, table))
            writer.begin(table.schema, options=options)
            writer.write_table(table)
            self._count("exchange_bytes_out", table.nbytes)

    def _run_steps(self, steps: list[ExchangeStep], data: pa.RecordBatch) -> pa.RecordBatch:
        for step in steps:
            data = self._step(step, data)
        return data

    def _step(self, step: ExchangeStep, data: Any) -> Any:
        rt = self.runtime
        if step.op == "filter":
            return dpdpu_filter(data, step.arg, runtime=rt)
        if step.op == "project":
            return dpdpu_project(data, step.arg, runtime=rt)
        keys, aggs = step.arg
        return dpdpu_aggregate(_table(data), keys, aggs, runtime=rt)

    def _info_of(self, stored: StoredDataset, req: GetRequest | None) -> flight.FlightInfo:
        """What a query ``req`` of ``stored`` returns; None: the whole dataset, under its path descriptor."""
        by_path = req is None
        if req is None:
            req = GetRequest(stored.name, raw={"dataset": stored.name})
        command = json.dumps(req.raw).encode()
        descriptor = (
            flight.FlightDescriptor.for_path(stored.name) if by_path else flight.FlightDescriptor.for_command(command)
        )
        schema = stored.schema
        rows, nbytes = stored.num_rows, stored.nbytes
        if req.columns is not None:
            for name in req.columns:
                if schema.get_field_index(name) < 0:
                    raise invalid(f"no column {shown(name)} in dataset {stored.name!r}; it has {shown(schema.names)}")
            schema = pa.schema([schema.field(c) for c in req.columns])
        if req.predicate is not None:
            # Checked as do_get would: a command whose ticket do_get would
            # refuse must not be described as if it were valid.
            try:
                bind_predicate(req.predicate, stored.schema)
            except errors.ExpressionError as exc:
                raise invalid(f"bad predicate in the descriptor for dataset {stored.name!r}: {exc}") from exc
            rows = nbytes = -1  # unknown until the query runs
        # No location means "where you got this": right when listening on every
        # address, since this server cannot know which of them the client reached.
        locations = [] if self._unspecified else [self.location]
        endpoint = flight.FlightEndpoint(command, locations)
        return flight.FlightInfo(schema, descriptor, [endpoint], rows, nbytes)

    def _get_flight_info(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        request = self._descriptor_request(descriptor, "descriptor")
        kind = kind_of(request, "descriptor")
        if kind != DEFAULT_KIND:
            service: Any = self._service(kind, "descriptor")
            if not hasattr(service, "get_flight_info"):
                raise NotImplementedError(f"the {kind!r} service does not describe flights")
            info: flight.FlightInfo = service.get_flight_info(request, context)
            return info
        req = parse_get(request, "descriptor")
        # A path descriptor names the whole dataset: described as list_flights does.
        by_path = descriptor.descriptor_type == flight.DescriptorType.PATH
        return self._info_of(self.catalog.get(req.dataset), None if by_path else req)

    # --- actions -----------------------------------------------------------------------------------

    def _list_actions(self) -> list[tuple[str, str]]:
        out = dict(_BUILTIN_ACTIONS)
        for name, fn in self.actions.items():
            doc = (getattr(fn, "__doc__", None) or "").strip()
            out[name] = doc.splitlines()[0] if doc else f"extra action {name!r}"
        return sorted(out.items())

    def _do_action(self, action: flight.Action) -> Iterator[flight.Result]:
        self._check_size(len(action.type) + (action.body.size if action.body is not None else 0), "action")
        body_bytes = action.body.to_pybytes() if action.body is not None else b""
        body = decode_json(body_bytes, f"body of action {shown(action.type)}") if body_bytes.strip() else None
        handler = self.actions.get(action.type)
        if handler is not None:
            result = handler(body)
        elif action.type == "stats":
            result = self.stats()
        elif action.type == "devices":
            result = self.devices()
        elif action.type == "drop":
            name = body.get("dataset") if isinstance(body, dict) else body
            name = check_name(name, "drop body")
            if not self.catalog.drop(name):
                raise DatasetNotFoundError(f"no dataset named {name!r} at this endpoint", op="drop")
            result = {"dropped": name}
        elif action.type == "offloads":
            result = sorted(self.actions)
        else:
            known = sorted({*_BUILTIN_ACTIONS, *self.actions})
            raise invalid(f"unknown action {shown(action.type)}; this endpoint offers {shown(known)}")
        try:
            payload = json.dumps(result).encode()
        except (TypeError, ValueError) as exc:
            raise flight.FlightServerError(
                f"action {action.type!r} returned a value JSON cannot hold: {clip(str(exc))}"
            ) from exc
        return iter([flight.Result(pa.py_buffer(payload))])

    def stats(self) -> dict[str, Any]:
        """What the ``stats`` action returns: runtime stats, dataset traffic, request routing."""
        with self._lock:
            counts = dict(self._counts)
        runtime = json.loads(json.dumps(self.runtime.stats().as_dict(), default=str))
        return {
            "requests": {
                "served": counts["served"],
                "forwarded": counts["forwarded"],
                "puts": counts["puts"],
                "puts_aborted": counts["puts_aborted"],
                "exchanges": counts["exchanges"],
            },
            "exchange": {"bytes_in": counts["exchange_bytes_in"], "bytes_out": counts["exchange_bytes_out"]},
            "datasets": self.catalog.counters(),
            "memory": {"datasets_bytes": self.catalog.memory_bytes, "limit": self.catalog.memory_limit()},
            "storage": "memory" if self.catalog.fs is None else str(self.catalog.fs.data_dir),
            "runtime": runtime,
        }

    def devices(self) -> list[dict[str, Any]]:
        """What the ``devices`` action returns: each device of the runtime."""
        return [
            {
                "label": dev.label,
                "profile": dev.profile.name,
                "kind": dev.profile.kind,
                "memory_capacity": dev.memory_capacity,
                "memory_used": dev.memory_used,
                "engines": [{"name": e.name, "kind": e.kind} for e in dev.engines],
            }
            for dev in self.runtime.devices
        ]


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)


def _table(data: Any) -> pa.Table:
    return data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
