"""Request routing for the Flight endpoint: what the DPU does not serve goes to the host.

As in DDS, an *offload predicate* looks at each read request (the decoded
ticket) and says whether the DPU serves it; the others travel over a
:class:`~dpdpu.runtime.channel.ChannelPair` to a :class:`HostHandler` on the
host, which runs the query against the host's own data and answers through
the same channel.  The endpoint then streams that answer to the client as if
it had computed it, so clients cannot tell which side served them.

On the channel, one frame each way per request (:mod:`dpdpu.runtime.channel_rpc`):
a ``GET`` frame carrying the ticket as JSON, answered by a frame carrying the
result as an Arrow IPC stream, or by a failed frame with the error's wire
status (:func:`dpdpu.errors.to_wire`).  The endpoint forwards one request at a
time per channel and drops any answer to a request that timed out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from .. import errors
from ..compute.kernels import filter as dpdpu_filter
from ..compute.kernels import project as dpdpu_project
from ..runtime import channel_rpc
from ..runtime.channel import ChannelPair
from ..runtime.runtime import Runtime
from ..storage.dataset import open_dataset
from ..storage.fs import FileService
from .flight_catalog import DatasetNotFoundError
from .flight_tickets import decode_json, invalid, parse_get

__all__ = ["HostHandler", "HostLink"]

#: the frame kind of a forwarded read
_GET = 1
#: the largest forwarded ticket the host takes (the endpoint refuses larger requests already)
_MAX_TICKET = 16 << 20


#: what the endpoint raises for the host's answers (any other status: an internal error, keeping its status)
_HOST_ERRORS: dict[str, type[errors.DpdpuError]] = {
    "NOT_FOUND": DatasetNotFoundError,
    "INVALID_ARGUMENT": errors.InvalidArgumentError,
}


class HostHandler:
    """The host end of request routing: answers forwarded read requests from host data.

    Args:
        channel: the agent side of the endpoint's pair, or its name (attached
            here, waiting up to ``attach_timeout`` seconds for it to exist).
        data: the host's datasets: a mapping of name to table, or a
            :class:`~dpdpu.storage.fs.FileService` whose file of that name
            holds the dataset.
        runtime: where the kernels run (default: a ``"host"`` runtime this
            handler owns; the host's own CPU, as the point of forwarding is
            that the DPU does not do this work).
    """

    def __init__(
        self,
        channel: ChannelPair | str,
        data: Mapping[str, pa.Table] | FileService,
        *,
        runtime: Runtime | None = None,
        attach_timeout: float = 10.0,
    ) -> None:
        self._own_pair = isinstance(channel, str)
        self.pair = ChannelPair.attach(channel, timeout=attach_timeout) if isinstance(channel, str) else channel
        self.data = data
        self._own_runtime = runtime is None
        self.runtime = runtime if runtime is not None else Runtime("host", workers=2)
        self.handled = 0
        self.failed = 0
        self._thread: threading.Thread | None = None

    def handle(self, message: bytes) -> bytes:
        """Answer one forwarded request (never raises: errors become failed frames)."""
        rid = int.from_bytes(message[:8], "little") if len(message) >= 8 else 0
        try:
            frame = channel_rpc.decode(message, max_payload=_MAX_TICKET)
            if not frame.ok or frame.kind != _GET:
                raise invalid(f"forwarded request {rid} is not a read")
            request = decode_json(bytes(frame.payload), "forwarded ticket")
            if not isinstance(request, dict):
                raise invalid("malformed forwarded ticket: expected a JSON object")
            table = self._query(request)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            self.handled += 1
            return channel_rpc.encode(rid, _GET, sink.getvalue())
        except Exception as exc:  # every failure is the request's, not the handler's
            self.failed += 1
            return channel_rpc.encode_error(rid, _GET, exc)

    def _query(self, request: dict[str, Any]) -> pa.Table:
        req = parse_get(request)
        if isinstance(self.data, FileService):
            if not self.data.exists(req.dataset):
                raise DatasetNotFoundError(f"no dataset named {req.dataset!r} on the host", op="flight")
            return open_dataset(self.data, req.dataset).scan(req.predicate, req.columns, runtime=self.runtime).table
        table = self.data.get(req.dataset)
        if table is None:
            raise DatasetNotFoundError(f"no dataset named {req.dataset!r} on the host", op="flight")
        if req.predicate is not None:
            table = dpdpu_filter(table, req.predicate, runtime=self.runtime)
        if req.columns is not None:
            table = dpdpu_project(table, req.columns, runtime=self.runtime)
        return table

    def serve(self) -> int:
        """Answer requests until the endpoint closes its side (or :meth:`close`); return how many."""
        return self.pair.serve(self.handle)

    def serve_background(self) -> HostHandler:
        """Run :meth:`serve` in a daemon thread; return self."""
        self._thread = threading.Thread(target=self.serve, name="dpdpu-flight-host", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the channel (and the runtime this handler made)."""
        self.pair.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._own_runtime:
            self.runtime.shutdown()

    def __enter__(self) -> HostHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostLink:
    """The endpoint's side of routing: forwards a request and waits for the host's answer."""

    def __init__(self, pair: ChannelPair, *, timeout: float | None = 30.0, owned: bool = False) -> None:
        self.pair = pair
        self.timeout = timeout
        self.owned = owned
        self._link = channel_rpc.RpcLink(pair)

    def get(self, request: dict[str, Any]) -> pa.Table:
        """The host's answer to a read request (raises the matching Flight-mappable error)."""
        try:
            frame = self._link.call(_GET, json.dumps(request).encode(), self.timeout)
        except errors.CorruptDataError as exc:
            raise errors.InternalError(f"the host handler sent an unreadable answer: {exc}") from None
        except (errors.RuntimeClosedError, TimeoutError) as exc:
            raise flight.FlightUnavailableError(f"the host handler did not answer: {exc}") from exc
        if frame.ok:
            return pa.ipc.open_stream(frame.payload).read_all()
        name, message = channel_rpc.error_parts(frame)
        if frame.status not in _HOST_ERRORS:
            message = f"host handler: {message}"
        raise errors.from_wire(frame.status, message, kind=name, classes=_HOST_ERRORS)

    def close(self) -> None:
        """Close the pair if the endpoint made it."""
        if self.owned:
            self.pair.close()
