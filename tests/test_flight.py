"""The Arrow Flight endpoint, driven by a stock ``pyarrow.flight.FlightClient`` over loopback."""

from __future__ import annotations

import base64
import contextlib
import datetime
import gc
import ipaddress
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as fl
import pytest
from hostile_inputs import serialized, string_offsets_past_their_data

from dpdpu import Runtime
from dpdpu.network import ChannelPair
from dpdpu.network.flight import FlightConfigError, FlightEndpoint, HostHandler, ticket
from dpdpu.storage import FileService, write_dataset

TOKEN = "test-token"
AUTH = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])


def make_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "k": pa.array(rng.integers(0, 7, n, dtype=np.int64)),
            "v": pa.array(rng.integers(-1000, 1000, n, dtype=np.int64)),
            "fare": pa.array(rng.random(n) * 50),
            "city": pa.array(rng.choice(["paris", "oslo", "rome"], n)),
        }
    )


def put(client: fl.FlightClient, descriptor: fl.FlightDescriptor, table: pa.Table, chunk: int = 4096) -> Any:
    writer, meta = client.do_put(descriptor, table.schema, AUTH)
    writer.write_table(table, max_chunksize=chunk)
    writer.done_writing()
    ack = meta.read()
    writer.close()
    return json.loads(ack.to_pybytes()) if ack is not None else None


def get(client: fl.FlightClient, raw: bytes) -> pa.Table:
    return client.do_get(fl.Ticket(raw), AUTH).read_all()


def exchange(client: fl.FlightClient, pipeline: list[Any], table: pa.Table, chunk: int = 3000) -> pa.Table:
    descriptor = fl.FlightDescriptor.for_command(json.dumps({"pipeline": pipeline}))
    writer, reader = client.do_exchange(descriptor, AUTH)
    writer.begin(table.schema)
    writer.write_table(table, max_chunksize=chunk)
    writer.done_writing()
    result = reader.read_all()
    writer.close()
    return result


def action(client: fl.FlightClient, name: str, body: Any = None) -> Any:
    raw = b"" if body is None else json.dumps(body).encode()
    (result,) = list(client.do_action(fl.Action(name, raw), AUTH))
    return json.loads(result.body.to_pybytes())


def sorted_by(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


class EchoService:
    """An extra kind: do_get returns the request as a one-row table; do_put counts rows."""

    def __init__(self) -> None:
        self.rows = 0

    def do_get(self, request: dict[str, Any], context: fl.ServerCallContext) -> fl.FlightDataStream:
        if "missing" in request:
            raise KeyError(f"no echo named {request['missing']!r}")
        return fl.RecordBatchStream(pa.table({"request": [json.dumps(request, sort_keys=True)]}))

    def do_put(
        self,
        request: dict[str, Any],
        reader: fl.MetadataRecordBatchReader,
        writer: fl.FlightMetadataWriter,
        context: fl.ServerCallContext,
    ) -> None:
        self.rows += reader.read_all().num_rows


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with Runtime("bluefield3", workers=2) as rt:
        yield rt


@pytest.fixture(scope="module")
def echo() -> EchoService:
    return EchoService()


@pytest.fixture(scope="module")
def endpoint(runtime: Runtime, echo: EchoService) -> Iterator[FlightEndpoint]:
    def hello(body: Any) -> Any:
        """Greets whoever the body names."""
        return {"hello": body}

    with FlightEndpoint(
        runtime=runtime,
        token=TOKEN,
        max_payload_bytes=4 << 20,
        actions={"hello": hello},
        services={"echo": echo},
    ).serve_background() as ep:
        yield ep


@pytest.fixture(scope="module")
def client(endpoint: FlightEndpoint) -> Iterator[fl.FlightClient]:
    with fl.FlightClient(endpoint.location) as c:
        yield c


@pytest.fixture(scope="module")
def trips(client: fl.FlightClient) -> pa.Table:
    table = make_table(20_000)
    ack = put(client, fl.FlightDescriptor.for_path("trips"), table)
    assert ack == {"dataset": "trips", "rows": 20_000, "bytes": ack["bytes"], "where": "memory"}
    return table


# --- every verb ------------------------------------------------------------------------------------


def test_get_pass_through_and_pushdown(client: fl.FlightClient, trips: pa.Table) -> None:
    assert get(client, ticket("trips")).equals(trips)
    got = get(client, ticket("trips", "fare > 40 and city == 'oslo'", ["id", "fare"]))
    want = trips.filter((pc.field("fare") > 40) & (pc.field("city") == "oslo")).select(["id", "fare"])
    assert got.num_rows > 0 and got.equals(want)
    # a pyarrow expression travels serialized
    got = get(client, ticket("trips", (pc.field("v") < -900) | (pc.field("k") == 3), ["v", "k"]))
    assert got.equals(trips.filter((pc.field("v") < -900) | (pc.field("k") == 3)).select(["v", "k"]))
    assert get(client, ticket("trips", None, ["city"])).equals(trips.select(["city"]))
    assert get(client, ticket("trips", "fare > 1000")).num_rows == 0


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_get_compressed(client: fl.FlightClient, trips: pa.Table, codec: str) -> None:
    assert get(client, ticket("trips", compression=codec)).equals(trips)
    got = get(client, ticket("trips", "k == 2", compression=codec))
    assert got.equals(trips.filter(pc.field("k") == 2))


def test_flight_info_schema_and_listing(client: fl.FlightClient, trips: pa.Table) -> None:
    info = client.get_flight_info(fl.FlightDescriptor.for_path("trips"), AUTH)
    assert info.schema.equals(trips.schema)
    assert info.total_records == trips.num_rows and info.total_bytes > 0
    # the ticket inside the info works with the location inside the info
    (ep,) = info.endpoints
    with fl.FlightClient(ep.locations[0]) as other:
        assert other.do_get(ep.ticket, AUTH).read_all().equals(trips)
    cmd = fl.FlightDescriptor.for_command(ticket("trips", "v > 0", ["id", "v"]))
    info = client.get_flight_info(cmd, AUTH)
    assert info.schema.names == ["id", "v"] and info.total_records == -1
    assert (
        client.do_get(info.endpoints[0].ticket, AUTH)
        .read_all()
        .equals(trips.filter(pc.field("v") > 0).select(["id", "v"]))
    )
    assert client.get_schema(fl.FlightDescriptor.for_path("trips"), AUTH).schema.equals(trips.schema)
    assert client.get_schema(cmd, AUTH).schema.names == ["id", "v"]
    names = [f.descriptor.path[0] for f in client.list_flights(options=AUTH)]
    assert b"trips" in names


def test_put_modes_and_drop(client: fl.FlightClient) -> None:
    a, b = make_table(1000, 1), make_table(500, 2)
    create = fl.FlightDescriptor.for_command(json.dumps({"dataset": "modes", "mode": "create"}))
    put(client, create, a)
    with pytest.raises(pa.ArrowInvalid, match="exists already"):
        put(client, create, b)
    assert get(client, ticket("modes")).equals(a)
    append = fl.FlightDescriptor.for_command(json.dumps({"dataset": "modes", "mode": "append"}))
    ack = put(client, append, b)
    assert ack["rows"] == 1500
    assert get(client, ticket("modes")).equals(pa.concat_tables([a, b]))
    put(client, fl.FlightDescriptor.for_path("modes"), b)  # replace
    assert get(client, ticket("modes")).equals(b)
    assert action(client, "drop", {"dataset": "modes"}) == {"dropped": "modes"}
    with pytest.raises(KeyError, match="no dataset named 'modes'"):
        get(client, ticket("modes"))
    with pytest.raises(KeyError):
        action(client, "drop", {"dataset": "modes"})


def test_exchange_filter_project_aggregate(client: fl.FlightClient) -> None:
    table = make_table(30_000, 3)
    got = exchange(client, [{"filter": "v > 500"}, {"project": ["id", "v"]}], table)
    assert got.equals(table.filter(pc.field("v") > 500).select(["id", "v"]))
    got = exchange(
        client, [{"filter": "fare < 25"}, {"project": {"id": "id", "w": "v * 2"}}, {"compress": "lz4"}], table
    )
    want = table.filter(pc.field("fare") < 25)
    assert got.column("id").equals(want.column("id"))
    assert got.column("w").to_pylist() == [x * 2 for x in want.column("v").to_pylist()]
    pipeline = [{"filter": "v >= 0"}, {"aggregate": {"keys": ["k"], "aggs": [["v", "sum"], ["*", "count"]]}}]
    got = exchange(client, pipeline, table)
    want = table.filter(pc.field("v") >= 0).group_by("k").aggregate([("v", "sum"), ([], "count_all")])
    assert sorted_by(got, ["k"]).column("v_sum").equals(sorted_by(want, ["k"]).column("v_sum"))
    assert sorted_by(got, ["k"]).column("count").to_pylist() == sorted_by(want, ["k"]).column("count_all").to_pylist()
    # an empty input stream still answers with the (aggregated) schema
    assert exchange(client, [{"filter": "v > 0"}], table.slice(0, 0)).num_rows == 0


def test_actions(client: fl.FlightClient, trips: pa.Table) -> None:
    names = {a.type for a in client.list_actions(AUTH)}
    assert {"stats", "devices", "drop", "offloads", "hello"} <= names
    assert action(client, "offloads") == ["hello"]
    assert action(client, "hello", "dpu") == {"hello": "dpu"}
    devices = action(client, "devices")
    assert devices[0]["label"] == "bluefield3" and devices[0]["memory_capacity"] > 0
    get(client, ticket("trips", "k == 1", ["id"]))
    stats = action(client, "stats")
    trip = stats["datasets"]["trips"]
    assert trip["requests"] >= 1 and trip["bytes_returned"] < trip["bytes_read"]
    assert stats["requests"]["served"] >= 1 and stats["requests"]["forwarded"] == 0
    assert stats["runtime"]["tasks"] > 0


def test_extra_kind(client: fl.FlightClient, echo: EchoService) -> None:
    got = get(client, json.dumps({"kind": "echo", "x": 1}).encode())
    assert json.loads(got.column("request")[0].as_py()) == {"kind": "echo", "x": 1}
    put(client, fl.FlightDescriptor.for_command(json.dumps({"kind": "echo"})), make_table(10))
    assert echo.rows == 10
    with pytest.raises(KeyError, match="no echo named 'x'"):
        get(client, json.dumps({"kind": "echo", "missing": "x"}).encode())
    with pytest.raises(NotImplementedError, match="does not describe flights"):
        client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps({"kind": "echo"})), AUTH)


# --- bad input ---------------------------------------------------------------------------------------


def still_serving(client: fl.FlightClient, trips: pa.Table) -> None:
    assert get(client, ticket("trips", "k == 0", ["id"])).num_rows == trips.filter(pc.field("k") == 0).num_rows


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (b"{not json", pa.ArrowInvalid, "malformed ticket: not JSON"),
        (b"[1, 2]", pa.ArrowInvalid, "expected a JSON object"),
        (b'{"dataset": "trips", "colums": ["id"]}', pa.ArrowInvalid, r"unknown field\(s\) \['colums'\]"),
        (b'{"dataset": "../etc"}', pa.ArrowInvalid, "dataset name must be"),
        (b'{"dataset": "nosuch"}', KeyError, "no dataset named 'nosuch'"),
        (b'{"dataset": "trips", "predicate": "fare >"}', pa.ArrowInvalid, "bad predicate"),
        (b'{"dataset": "trips", "predicate": "nocol > 1"}', pa.ArrowInvalid, "nocol"),
        (b'{"dataset": "trips", "predicate": "city > 1"}', pa.ArrowInvalid, "city"),
        (b'{"dataset": "trips", "predicate": {"expression": "!!"}}', pa.ArrowInvalid, "not base64"),
        (b'{"dataset": "trips", "predicate": {"expression": "AAAA"}}', pa.ArrowInvalid, "not a serialized"),
        (b'{"dataset": "trips", "columns": ["nope"]}', pa.ArrowInvalid, "no column 'nope'"),
        (b'{"dataset": "trips", "compression": "deflate"}', pa.ArrowInvalid, "compression must be one of"),
        (b'{"kind": "nokind"}', pa.ArrowInvalid, "unknown kind 'nokind'"),
    ],
)
def test_bad_tickets(client: fl.FlightClient, trips: pa.Table, raw: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        get(client, raw)
    still_serving(client, trips)


def test_bad_commands_and_actions(client: fl.FlightClient, trips: pa.Table) -> None:
    small = make_table(10)
    with pytest.raises(pa.ArrowInvalid, match="mode must be one of"):
        put(client, fl.FlightDescriptor.for_command(json.dumps({"dataset": "x", "mode": "upsert"})), small)
    with pytest.raises(pa.ArrowInvalid, match="one dataset name"):
        put(client, fl.FlightDescriptor.for_path("a", "b"), small)
    with pytest.raises(pa.ArrowInvalid, match="unknown step 'sort'"):
        exchange(client, [{"sort": "id"}], small)
    with pytest.raises(pa.ArrowInvalid, match="nocol"):
        exchange(client, [{"filter": "nocol > 1"}], small)
    with pytest.raises(pa.ArrowInvalid, match="unknown aggregate function"):
        exchange(client, [{"aggregate": {"keys": ["k"], "aggs": [["v", "median"]]}}], small)
    with pytest.raises(pa.ArrowInvalid, match="unknown action 'nope'"):
        action(client, "nope")
    with pytest.raises(pa.ArrowInvalid, match="not JSON"):
        list(client.do_action(fl.Action("hello", b"{"), AUTH))
    with pytest.raises(KeyError, match="no dataset named"):
        client.get_flight_info(fl.FlightDescriptor.for_path("nosuch"), AUTH)
    still_serving(client, trips)


def deep_json(levels: int) -> bytes:
    return b'{"a": ' * levels + b"1" + b"}" * levels


def expression_of(data: bytes) -> dict[str, str]:
    return {"expression": base64.b64encode(data).decode()}


BIG = 8 << 20


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("ticket of 100,000 '['", lambda c: get(c, b"[" * 100_000), "JSON nested more than 32 levels"),
        ("ticket 40 objects deep", lambda c: get(c, deep_json(40)), "JSON nested more than 32 levels"),
        (
            "command 40 objects deep",
            lambda c: c.get_flight_info(fl.FlightDescriptor.for_command(deep_json(40)), AUTH),
            "JSON nested more than 32 levels",
        ),
        (
            "exchange command of 100,000 '['",
            lambda c: c.do_exchange(fl.FlightDescriptor.for_command(b"[" * 100_000), AUTH)[1].read_all(),
            "JSON nested more than 32 levels",
        ),
        (
            "action body of 100,000 '['",
            lambda c: list(c.do_action(fl.Action("hello", b"[" * 100_000), AUTH)),
            "JSON nested more than 32 levels",
        ),
        (
            "mutated serialized expression",
            lambda c: get(c, ticket_with({"predicate": expression_of(string_offsets_past_their_data())})),
            "predicate 'expression'",
        ),
        (
            "truncated serialized expression",
            lambda c: get(c, ticket_with({"predicate": expression_of(serialized(pc.field("k") > 1)[:300])})),
            "not a serialized pyarrow expression",
        ),
        ("8 MiB predicate", lambda c: get(c, ticket_with({"predicate": "k > " + "1" * BIG})), "ticket too large"),
        ("3 MiB predicate", lambda c: get(c, ticket_with({"predicate": "k > " + "1" * (3 << 20)})), "64-bit range"),
        ("5,000 parentheses", lambda c: get(c, ticket_with({"predicate": "(" * 5000})), "nested too deeply"),
        ("100 KB dataset name", lambda c: get(c, ticket("x" * 100_000)), "dataset name must be"),
        (
            "100 KB column name",
            lambda c: get(c, ticket_with({"columns": ["c" * 100_000]})),
            "no column 'ccccc",
        ),
        ("100 KB action name", lambda c: list(c.do_action(fl.Action("a" * 100_000, b""), AUTH)), "unknown action"),
    ],
)
def test_hostile_requests_get_invalid_argument_with_a_short_message(
    client: fl.FlightClient, trips: pa.Table, name: str, make: Any, match: str
) -> None:
    with pytest.raises(pa.ArrowInvalid, match=match) as info:
        make(client)
    text = str(info.value)
    assert "INVALID_ARGUMENT" in text or "debug context" not in text, text[:2000]
    assert len(text.encode()) < 1024, f"{name}: {len(text.encode())} bytes"
    still_serving(client, trips)


def ticket_with(fields: dict[str, Any]) -> bytes:
    return json.dumps({"dataset": "trips", **fields}).encode()


def test_requests_above_the_size_limit_are_refused_before_parsing(runtime: Runtime) -> None:
    with (
        FlightEndpoint(runtime=runtime, max_request_bytes=1000).serve_background() as ep,
        fl.FlightClient(ep.location) as c,
    ):
        put(c, fl.FlightDescriptor.for_path("t"), make_table(10))
        fits = ticket("t", "v > " + "1" * 900)
        assert len(fits) <= 1000
        with pytest.raises(pa.ArrowInvalid, match="64-bit range"):
            get(c, fits)  # parsed: the predicate's own error
        calls = [
            lambda: get(c, b" " * 1001),
            lambda: c.get_schema(fl.FlightDescriptor.for_command(b" " * 1001)),
            lambda: c.get_flight_info(fl.FlightDescriptor.for_path("x" * 1001)),
            lambda: list(c.do_action(fl.Action("stats", b" " * 1000))),
            lambda: c.do_exchange(fl.FlightDescriptor.for_command(b" " * 1001))[1].read_all(),
        ]
        for refused in calls:
            with pytest.raises(pa.ArrowInvalid, match=r"too large: 1,00\d bytes; this endpoint takes at most 1,000"):
                refused()
        assert action(c, "stats")["requests"]["served"] == 0
    with pytest.raises(FlightConfigError, match="max_request_bytes"):
        FlightEndpoint(runtime=runtime, max_request_bytes=0)


def test_failed_calls_leave_no_reference_cycles(client: fl.FlightClient, trips: pa.Table) -> None:
    """A failed call's exception, and the request it holds, are freed with the call, not by a later collection."""
    bad = [ticket_with({"predicate": "k >"}), b"{", ticket("nosuch"), b"[" * 2000]
    for raw in bad:  # warm up: first calls create lasting objects (caches, imported modules)
        with pytest.raises((pa.ArrowInvalid, KeyError)):
            get(client, raw)
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            for raw in bad:
                with contextlib.suppress(pa.ArrowInvalid, KeyError):  # keeps no reference to the exception
                    get(client, raw)
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage == 0, f"{garbage} objects were kept alive only by reference cycles"


def test_schema_mismatch_on_append_leaves_dataset_unchanged(client: fl.FlightClient) -> None:
    a = make_table(100, 4)
    put(client, fl.FlightDescriptor.for_path("strict"), a)
    other = a.drop_columns(["city"])
    append = fl.FlightDescriptor.for_command(json.dumps({"dataset": "strict", "mode": "append"}))
    with pytest.raises(pa.ArrowInvalid, match="schema mismatch"):
        put(client, append, other)
    assert get(client, ticket("strict")).equals(a)
    action(client, "drop", {"dataset": "strict"})


def test_payload_limit(client: fl.FlightClient, trips: pa.Table) -> None:
    big = make_table(200_000, 5)  # ~7 MiB against a 4 MiB limit
    with pytest.raises(pa.ArrowInvalid, match="payload too large"):
        put(client, fl.FlightDescriptor.for_path("big"), big, chunk=16384)
    with pytest.raises(KeyError):
        get(client, ticket("big"))
    with pytest.raises(pa.ArrowInvalid, match="payload too large"):
        exchange(client, [{"filter": "v > 0"}], big, chunk=16384)
    still_serving(client, trips)


def test_auth_required_on_every_call(endpoint: FlightEndpoint, client: fl.FlightClient, trips: pa.Table) -> None:
    wrong = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer nope")])
    for options in (fl.FlightCallOptions(), wrong):
        with pytest.raises(fl.FlightUnauthenticatedError):
            client.do_get(fl.Ticket(ticket("trips")), options).read_all()
        with pytest.raises(fl.FlightUnauthenticatedError):
            list(client.list_flights(options=options))
        with pytest.raises(fl.FlightUnauthenticatedError):
            client.get_flight_info(fl.FlightDescriptor.for_path("trips"), options)
        with pytest.raises(fl.FlightUnauthenticatedError):
            list(client.do_action(fl.Action("stats", b""), options))
        with pytest.raises(fl.FlightUnauthenticatedError):
            writer, _ = client.do_put(fl.FlightDescriptor.for_path("evil"), trips.schema, options)
            writer.write_table(trips.slice(0, 10))
            writer.close()
    assert "evil" not in action(client, "stats")["datasets"]
    still_serving(client, trips)


def test_config_errors(runtime: Runtime) -> None:
    with pytest.raises(FlightConfigError, match="token is required"):
        FlightEndpoint("grpc://0.0.0.0:0", runtime=runtime)
    with pytest.raises(FlightConfigError, match="needs tls"):
        FlightEndpoint("grpc+tls://127.0.0.1:0", runtime=runtime)
    with pytest.raises(FlightConfigError, match="route needs a host"):
        FlightEndpoint(runtime=runtime, route=lambda r: True)
    with pytest.raises(FlightConfigError):
        FlightEndpoint(runtime=runtime, max_payload_bytes=0)


def test_listening_on_every_address(runtime: Runtime) -> None:
    table = make_table(100)
    with FlightEndpoint("grpc://0.0.0.0:0", runtime=runtime, token=TOKEN).serve_background() as ep:
        assert ep.location == f"grpc://{socket.gethostname()}:{ep.port}"
        with fl.FlightClient(f"grpc://127.0.0.1:{ep.port}") as c:
            put(c, fl.FlightDescriptor.for_path("any"), table)
            (endpoint,) = c.get_flight_info(fl.FlightDescriptor.for_path("any"), AUTH).endpoints
            assert endpoint.locations == []  # redeem where the info came from
            assert c.do_get(endpoint.ticket, AUTH).read_all().equals(table)


def test_memory_capacity_bounds_datasets(tiny_profile: Path) -> None:
    with (
        Runtime(str(tiny_profile), workers=1) as rt,
        FlightEndpoint(runtime=rt).serve_background() as ep,
        fl.FlightClient(ep.location) as c,
    ):
        small = make_table(5000)  # ~170 KiB of a 1 MiB device
        put(c, fl.FlightDescriptor.for_path("fits"), small)
        with pytest.raises(fl.FlightServerError, match="DPU memory"):
            put(c, fl.FlightDescriptor.for_path("huge"), make_table(40_000))
        with pytest.raises(KeyError):
            get(c, ticket("huge"))
        assert get(c, ticket("fits")).equals(small)


# --- storage engine --------------------------------------------------------------------------------


def test_data_dir_pushdown_and_restart(runtime: Runtime, tmp_path: Path) -> None:
    table = make_table(50_000, 6).sort_by("fare")  # sorted: row-group statistics can skip groups
    with (
        FlightEndpoint(runtime=runtime, data_dir=tmp_path / "ds").serve_background() as ep,
        fl.FlightClient(ep.location) as c,
    ):
        ack = put(c, fl.FlightDescriptor.for_command(json.dumps({"dataset": "t", "format": "parquet"})), table)
        assert ack["where"] == "parquet"
        put(c, fl.FlightDescriptor.for_command(json.dumps({"dataset": "i", "format": "ipc"})), table)
        got = get(c, ticket("t", "fare > 45", ["id", "fare"]))
        assert got.equals(table.filter(pc.field("fare") > 45).select(["id", "fare"]))
        assert get(c, ticket("i", "city == 'rome'")).equals(table.filter(pc.field("city") == "rome"))
        stats = action(c, "stats")["datasets"]["t"]
        assert stats["bytes_read"] < stats["bytes"]  # pushdown read only part of the file
        append = fl.FlightDescriptor.for_command(json.dumps({"dataset": "t", "mode": "append"}))
        put(c, append, table.slice(0, 10))
    # a new endpoint on the same directory finds the datasets, current versions only
    with (
        FlightEndpoint(runtime=runtime, data_dir=tmp_path / "ds").serve_background() as ep,
        fl.FlightClient(ep.location) as c,
    ):
        assert get(c, ticket("t")).num_rows == 50_010
        assert get(c, ticket("i", None, ["id"])).equals(table.select(["id"]))
        action(c, "drop", {"dataset": "i"})
        assert [f.descriptor.path for f in c.list_flights()] == [[b"t"]]
    with FileService(tmp_path / "ds") as fs:
        (only,) = fs.listdir("datasets")  # replaced versions were deleted
        assert only.startswith("t.") and only.endswith(".parquet")


def test_data_dir_ignores_a_torn_upload(runtime: Runtime, tmp_path: Path) -> None:
    table = make_table(1000, 10)
    with FileService(tmp_path / "ds") as fs:
        write_dataset(fs, "datasets/t.1.ipc", table, format="ipc")
        fs.create("datasets/t.2.parquet")  # a newer version whose upload never completed
        fs.write("datasets/t.2.parquet", 0, b"PAR1 torn").result()
        fs.flush().result()
    with (
        FlightEndpoint(runtime=runtime, data_dir=tmp_path / "ds").serve_background() as ep,
        fl.FlightClient(ep.location) as c,
    ):
        assert get(c, ticket("t")).equals(table)
        put(c, fl.FlightDescriptor.for_path("t"), table.slice(0, 5))
        assert get(c, ticket("t")).num_rows == 5
    with FileService(tmp_path / "ds") as fs:
        assert fs.listdir("datasets") == ["t.3.parquet"]


# --- concurrency ----------------------------------------------------------------------------------------


def test_sixteen_concurrent_clients(endpoint: FlightEndpoint, trips: pa.Table) -> None:
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with fl.FlightClient(endpoint.location) as c:
                mine = make_table(3000 + 100 * i, 100 + i)
                put(c, fl.FlightDescriptor.for_path(f"c{i}"), mine, chunk=1000)
                for j in range(3):
                    lo = -800 + 300 * j
                    got = get(c, ticket(f"c{i}", f"v > {lo}", ["id", "v"]))
                    assert got.equals(mine.filter(pc.field("v") > lo).select(["id", "v"]))
                    shared = get(c, ticket("trips", f"k == {(i + j) % 7}"))
                    assert shared.equals(trips.filter(pc.field("k") == (i + j) % 7))
                    agg = exchange(c, [{"aggregate": {"keys": ["k"], "aggs": [["v", "sum"], ["v", "max"]]}}], mine)
                    want = mine.group_by("k").aggregate([("v", "sum"), ("v", "max")])
                    assert sorted_by(agg, ["k"]).equals(sorted_by(want, ["k"]).select(agg.schema.names))
                action(c, "drop", {"dataset": f"c{i}"})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures[0]


# --- TLS ---------------------------------------------------------------------------------------------


def self_signed() -> tuple[bytes, bytes]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_round_trip(runtime: Runtime) -> None:
    cert, key = self_signed()
    table = make_table(2000, 7)
    with FlightEndpoint(runtime=runtime, token=TOKEN, tls=(cert, key)).serve_background() as ep:
        assert ep.location.startswith("grpc+tls://127.0.0.1:")
        with fl.FlightClient(ep.location, tls_root_certs=cert) as c:
            put(c, fl.FlightDescriptor.for_path("secure"), table)
            assert get(c, ticket("secure", "v < 0", compression="zstd")).equals(table.filter(pc.field("v") < 0))
            with pytest.raises(fl.FlightUnauthenticatedError):
                c.do_get(fl.Ticket(ticket("secure"))).read_all()


# --- routing -------------------------------------------------------------------------------------------


def test_routing_to_a_host_handler_thread(runtime: Runtime) -> None:
    dpu_side, host_side = ChannelPair.local()
    cold = make_table(5000, 8)
    with (
        HostHandler(host_side, {"cold": cold}).serve_background() as handler,
        FlightEndpoint(
            runtime=runtime, route=lambda req: req.get("dataset") != "cold", host=dpu_side
        ).serve_background() as ep,
        fl.FlightClient(ep.location) as c,
    ):
        hot = make_table(3000, 9)
        put(c, fl.FlightDescriptor.for_path("hot"), hot)
        assert get(c, ticket("hot", "k == 1")).equals(hot.filter(pc.field("k") == 1))
        got = get(c, ticket("cold", "fare > 10 and k != 2", ["id", "k"], compression="lz4"))
        assert got.equals(cold.filter((pc.field("fare") > 10) & (pc.field("k") != 2)).select(["id", "k"]))
        with pytest.raises(pa.ArrowInvalid, match="nocol"):
            get(c, ticket("cold", "nocol > 1"))
        assert get(c, ticket("cold", None, ["v"])).equals(cold.select(["v"]))  # the host still answers
        requests = action_plain(c, "stats")["requests"]
        assert requests["served"] == 1 and requests["forwarded"] == 3
        assert handler.handled == 2 and handler.failed == 1
    dpu_side.close()


def action_plain(client: fl.FlightClient, name: str) -> Any:
    (result,) = list(client.do_action(fl.Action(name, b"")))
    return json.loads(result.body.to_pybytes())


HOST_PROCESS = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from dpdpu.network.flight import HostHandler

    table = pa.table({"id": list(range(1000)), "x": [i % 10 for i in range(1000)]})
    with HostHandler(sys.argv[1], {"archive": table}, attach_timeout=30) as handler:
        handler.serve()
    print("handled", handler.handled, flush=True)
    """
)


def test_routing_to_a_host_process(runtime: Runtime) -> None:
    pair = ChannelPair.create()
    assert pair.name is not None

    def route(req: dict[str, Any]) -> bool:
        return not str(req["dataset"]).startswith("archive")

    proc = subprocess.Popen(
        [sys.executable, "-c", HOST_PROCESS, pair.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with (
            FlightEndpoint(
                runtime=runtime, route=lambda req: not req["dataset"].startswith("archive"), host=pair
            ) as ep,
            fl.FlightClient(ep.serve_background().location) as c,
        ):
            got = get(c, ticket("archive", "x >= 7", ["id"]))
            assert got.column("id").to_pylist() == [i for i in range(1000) if i % 10 >= 7]
            with pytest.raises(KeyError, match="on the host"):
                get(c, ticket("archive2"))
            with pytest.raises(KeyError):  # not forwarded: the DPU does not have it
                get(c, json.dumps({"dataset": "local"}).encode())
            assert action_plain(c, "stats")["requests"]["forwarded"] == 2
    finally:
        pair.close()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "handled 1"


# --- uploads that break off ---------------------------------------------------------------------------

KILLED_UPLOADER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np, pyarrow as pa, pyarrow.flight as fl
    table = pa.table({"id": np.arange(100_000, dtype=np.int64)})
    client = fl.FlightClient(sys.argv[1])
    auth = fl.FlightCallOptions(headers=[(b"authorization", sys.argv[2].encode())])
    writer, _ = client.do_put(fl.FlightDescriptor.for_path("t"), table.schema, auth)
    writer.write_table(table, max_chunksize=1000)
    os.kill(os.getpid(), signal.SIGKILL)  # dies with every batch sent but the stream never finished
    """
)


@pytest.mark.parametrize("storage", ["memory", "data_dir"])
def test_killed_uploader_does_not_replace_the_dataset(runtime: Runtime, tmp_path: Path, storage: str) -> None:
    data_dir = tmp_path / "ds" if storage == "data_dir" else None
    good = pa.table({"id": pa.array(range(10), pa.int64())})
    with (
        FlightEndpoint(runtime=runtime, token=TOKEN, data_dir=data_dir).serve_background() as ep,
        fl.FlightClient(ep.location) as c,
    ):
        put(c, fl.FlightDescriptor.for_path("t"), good)
        proc = subprocess.run(
            [sys.executable, "-c", KILLED_UPLOADER, ep.location, f"Bearer {TOKEN}"], capture_output=True, timeout=60
        )
        assert proc.returncode == -9, proc.stderr
        deadline = time.monotonic() + 20
        while action(c, "stats")["requests"]["puts_aborted"] == 0:  # the server's side of the call ends
            assert time.monotonic() < deadline, "the broken-off upload was never noticed"
            time.sleep(0.02)
        assert get(c, ticket("t")).equals(good)
    if data_dir is not None:
        with FileService(data_dir) as fs:
            assert len(fs.listdir("datasets")) == 1  # the partial version was not left behind


def test_descriptor_commands_are_checked_like_tickets(client: fl.FlightClient, trips: pa.Table) -> None:
    for bad, match in (
        ({"dataset": "trips", "predicate": "fare >>"}, "bad predicate"),
        ({"dataset": "trips", "predicate": "nocol > 1"}, "nocol"),
        ({"dataset": "trips", "predicate": "city > 1"}, "city"),
        ({"dataset": "trips", "columns": ["nope"]}, "no column 'nope'"),
    ):
        descriptor = fl.FlightDescriptor.for_command(json.dumps(bad))
        with pytest.raises(pa.ArrowInvalid, match=match):
            client.get_flight_info(descriptor, AUTH)
        with pytest.raises(pa.ArrowInvalid, match=match):
            client.get_schema(descriptor, AUTH)
    good = fl.FlightDescriptor.for_command(json.dumps({"dataset": "trips", "predicate": "fare > 1", "columns": ["k"]}))
    assert client.get_schema(good, AUTH).schema.equals(trips.select(["k"]).schema)
    info = client.get_flight_info(good, AUTH)
    assert info.schema.equals(trips.select(["k"]).schema)
    assert client.do_get(info.endpoints[0].ticket, AUTH).read_all().schema.equals(info.schema)


# --- what errors tell the client ------------------------------------------------------------------------


def test_errors_carry_the_message_but_no_server_traceback(runtime: Runtime) -> None:
    def broken(body: Any) -> Any:
        """Fails the way a bug would."""
        raise RuntimeError("kaboom")

    def missing(body: Any) -> Any:
        """Names something that is not there."""
        raise pa.ArrowKeyError("no such thing")

    table = make_table(100)
    with (
        FlightEndpoint(runtime=runtime, actions={"broken": broken, "missing": missing}).serve_background() as ep,
        fl.FlightClient(ep.location) as c,
    ):
        put(c, fl.FlightDescriptor.for_path("t"), table)
        bad_cmd = fl.FlightDescriptor.for_command(json.dumps({"dataset": "t", "predicate": "v >>"}))
        calls: list[tuple[Any, type, str]] = [
            (lambda: get(c, b"{not json"), pa.ArrowInvalid, "not JSON"),
            (lambda: get(c, ticket("nosuch")), KeyError, "no dataset named 'nosuch'"),
            (lambda: get(c, ticket("t", "v >>")), pa.ArrowInvalid, "bad predicate"),
            (lambda: c.get_schema(bad_cmd, AUTH), pa.ArrowInvalid, "bad predicate"),
            (lambda: c.get_flight_info(fl.FlightDescriptor.for_path("nosuch"), AUTH), KeyError, "nosuch"),
            (lambda: put(c, fl.FlightDescriptor.for_command(b"{"), table), pa.ArrowInvalid, "not JSON"),
            (lambda: exchange(c, [{"sort": "id"}], table), pa.ArrowInvalid, "unknown step"),
            (lambda: action(c, "nope"), pa.ArrowInvalid, "unknown action"),
            (lambda: action(c, "missing"), KeyError, "no such thing"),
            (lambda: action(c, "broken"), fl.FlightServerError, "RuntimeError: kaboom"),
        ]
        for call, error, match in calls:
            with pytest.raises(error, match=match) as info:
                call()
            text = str(info.value)
            assert "Traceback" not in text and 'File "' not in text and ".py" not in text, text
    try:  # any other exception is still formatted in full
        raise ValueError("local")
    except ValueError as exc:
        assert "Traceback" in "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# --- device memory -------------------------------------------------------------------------------------------


def test_in_memory_datasets_are_charged_to_the_device(tiny_profile: Path) -> None:
    with (
        Runtime(str(tiny_profile), workers=1) as rt,
        FlightEndpoint(runtime=rt).serve_background() as a,
        FlightEndpoint(runtime=rt).serve_background() as b,
        fl.FlightClient(a.location) as ca,
        fl.FlightClient(b.location) as cb,
    ):
        capacity = rt.device.memory_capacity
        assert capacity == 1 << 20
        table = make_table(12_000)  # ~410 KiB: two fit in 1 MiB, three do not
        size = put(ca, fl.FlightDescriptor.for_path("t"), table)["bytes"]
        assert rt.device.memory_used == size
        assert action(ca, "devices")[0]["memory_used"] == size
        assert action(cb, "stats")["memory"] == {"datasets_bytes": 0, "limit": capacity - size}
        put(cb, fl.FlightDescriptor.for_path("t"), table)
        assert rt.device.memory_used == 2 * size
        with pytest.raises(fl.FlightServerError, match="DPU memory"):  # the limit is shared
            put(cb, fl.FlightDescriptor.for_path("u"), table)
        assert action(ca, "stats")["memory"] == {"datasets_bytes": size, "limit": capacity - size}
        append = fl.FlightDescriptor.for_command(json.dumps({"dataset": "t", "mode": "append"}))
        small = table.slice(0, 100)
        more = put(ca, append, small)["bytes"] - size
        assert rt.device.memory_used == 2 * size + more
        put(ca, fl.FlightDescriptor.for_path("t"), small)  # a replace releases the old version
        assert rt.device.memory_used == size + more
        action(cb, "drop", {"dataset": "t"})
        assert rt.device.memory_used == more
        put(cb, fl.FlightDescriptor.for_path("empty"), table.slice(0, 0))  # nothing to charge
        assert rt.device.memory_used == more


def test_closing_an_endpoint_releases_its_memory(tiny_profile: Path) -> None:
    with Runtime(str(tiny_profile), workers=1) as rt:
        with FlightEndpoint(runtime=rt).serve_background() as ep, fl.FlightClient(ep.location) as c:
            put(c, fl.FlightDescriptor.for_path("t"), make_table(1000))
            assert rt.device.memory_used > 0
        assert rt.device.memory_used == 0
