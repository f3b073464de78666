"""The Arrow Flight endpoint against plain pyarrow Flight, over loopback in one process.

- ``flight-get``: ``do_get`` of a whole in-memory table (1 GiB unless
  ``DPDPU_BENCH_FLIGHT_MIB`` says otherwise), read by a stock client.  The
  baseline is a bare ``pyarrow.flight.FlightServerBase`` streaming the same
  table with ``RecordBatchStream``; the endpoint streams the batches it
  stored at upload (auth off, as for the baseline).  Goal: at least 0.9x.
- ``flight-filter``: a filter keeping ~10% of the rows of a smaller table
  (``DPDPU_BENCH_FLIGHT_FILTER_MIB``, default 128).  Baseline: ``do_get`` of
  everything, then ``Table.filter`` on the client.  Against it: the same
  predicate pushed down in the ticket (``do_get`` returns only the matches)
  and a ``do_exchange`` that streams the table to the endpoint and receives
  only the matches.  ``extra_info`` records the bytes each moved over the
  wire (Arrow buffers sent plus received) next to the time.

Run: ``pytest benchmarks/test_bench_flight.py``.  Client and server share
this machine's cores, so the ratios say more about the endpoint's overhead
than about a real NIC.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as fl
import pytest

from dpdpu import Runtime
from dpdpu.network.flight import FlightEndpoint, ticket

GET_MIB = int(os.environ.get("DPDPU_BENCH_FLIGHT_MIB", "1024"))
FILTER_MIB = int(os.environ.get("DPDPU_BENCH_FLIGHT_FILTER_MIB", "128"))
BATCH_ROWS = 1 << 16
ROW_BYTES = 32  # four 8-byte columns
PREDICATE = "v < 100"  # v is uniform in [0, 1000): ~10% of the rows


def make_table(mib: int, seed: int) -> pa.Table:
    rows = max(BATCH_ROWS, (mib << 20) // ROW_BYTES)
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            "k": rng.integers(0, 100, rows, dtype=np.int64),
            "v": rng.integers(0, 1000, rows, dtype=np.int64),
            "x": rng.random(rows),
        }
    )
    return pa.Table.from_batches(table.to_batches(max_chunksize=BATCH_ROWS))


class _PlainServer(fl.FlightServerBase):  # type: ignore[misc]
    def __init__(self, table: pa.Table) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.table = table

    def do_get(self, context: Any, ticket: fl.Ticket) -> fl.FlightDataStream:
        return fl.RecordBatchStream(self.table)


def _wire_bytes(table: pa.Table) -> int:
    # nbytes counts what slices reference, which is what IPC sends
    return int(table.nbytes)


def _serve(table: pa.Table) -> Iterator[tuple[fl.FlightClient, fl.FlightClient]]:
    """A plain server holding ``table`` and an endpoint it was uploaded to: two clients."""
    plain = _PlainServer(table)
    thread = threading.Thread(target=plain.serve, daemon=True)
    thread.start()
    with Runtime("bluefield3") as rt, FlightEndpoint(runtime=rt).serve_background() as ep:
        ours = fl.FlightClient(ep.location)
        writer, meta = ours.do_put(fl.FlightDescriptor.for_path("t"), table.schema)
        writer.write_table(table)
        writer.done_writing()
        meta.read()
        writer.close()
        base = fl.FlightClient(f"grpc://127.0.0.1:{plain.port}")
        yield base, ours
        base.close()
        ours.close()
    plain.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def get_servers() -> Iterator[tuple[fl.FlightClient, fl.FlightClient, pa.Table]]:
    table = make_table(GET_MIB, 1)
    for base, ours in _serve(table):
        yield base, ours, table


@pytest.fixture(scope="module")
def filter_servers() -> Iterator[tuple[fl.FlightClient, fl.FlightClient, pa.Table]]:
    table = make_table(FILTER_MIB, 2)
    for base, ours in _serve(table):
        yield base, ours, table


@pytest.mark.benchmark(group="flight-get")
def test_get_plain_pyarrow(benchmark: Any, get_servers: tuple[fl.FlightClient, fl.FlightClient, pa.Table]) -> None:
    base, _, table = get_servers
    benchmark.extra_info["role"] = "baseline"
    result = benchmark.pedantic(lambda: base.do_get(fl.Ticket(b"t")).read_all(), rounds=7, warmup_rounds=1)
    assert result.num_rows == table.num_rows
    benchmark.extra_info["mib"] = GET_MIB


@pytest.mark.benchmark(group="flight-get")
def test_get_endpoint(benchmark: Any, get_servers: tuple[fl.FlightClient, fl.FlightClient, pa.Table]) -> None:
    _, ours, table = get_servers
    benchmark.extra_info["goal"] = 0.9
    result = benchmark.pedantic(lambda: ours.do_get(fl.Ticket(ticket("t"))).read_all(), rounds=7, warmup_rounds=1)
    assert result.num_rows == table.num_rows
    benchmark.extra_info["mib"] = GET_MIB


@pytest.mark.benchmark(group="flight-filter")
def test_filter_on_client(benchmark: Any, filter_servers: tuple[fl.FlightClient, fl.FlightClient, pa.Table]) -> None:
    base, _, table = filter_servers
    benchmark.extra_info["role"] = "baseline"
    received: list[int] = []

    def run() -> pa.Table:
        everything = base.do_get(fl.Ticket(b"t")).read_all()
        received.append(_wire_bytes(everything))
        return everything.filter(pc.field("v") < 100)

    result = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert result.equals(table.filter(pc.field("v") < 100))
    benchmark.extra_info["wire_bytes"] = received[-1]


@pytest.mark.benchmark(group="flight-filter")
def test_filter_pushdown_get(benchmark: Any, filter_servers: tuple[fl.FlightClient, fl.FlightClient, pa.Table]) -> None:
    _, ours, table = filter_servers
    result = benchmark.pedantic(
        lambda: ours.do_get(fl.Ticket(ticket("t", PREDICATE))).read_all(), rounds=5, warmup_rounds=1
    )
    assert result.equals(table.filter(pc.field("v") < 100))
    benchmark.extra_info["wire_bytes"] = _wire_bytes(result)


@pytest.mark.benchmark(group="flight-filter")
def test_filter_exchange(benchmark: Any, filter_servers: tuple[fl.FlightClient, fl.FlightClient, pa.Table]) -> None:
    _, ours, table = filter_servers
    descriptor = fl.FlightDescriptor.for_command(json.dumps({"pipeline": [{"filter": PREDICATE}]}))

    def run() -> pa.Table:
        writer, reader = ours.do_exchange(descriptor)
        writer.begin(table.schema)
        # Write and read at the same time: the endpoint answers batch by batch.
        sender = threading.Thread(target=lambda: (writer.write_table(table), writer.done_writing()))
        sender.start()
        result = reader.read_all()
        sender.join()
        writer.close()
        return result

    result = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert result.equals(table.filter(pc.field("v") < 100))
    benchmark.extra_info["wire_bytes"] = _wire_bytes(table) + _wire_bytes(result)
