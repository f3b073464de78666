"""Send a table to the DPU's Flight endpoint and get back only what you need, with a stock client.

Run: python examples/flight_client.py

It starts an endpoint in this process (on an emulated BlueField-3), then
talks to it with nothing but ``pyarrow.flight``: upload, a filtered and
projected read with LZ4 on the wire, an aggregate as a streaming offload,
and the endpoint's counters.  Against a remote endpoint, drop the
``FlightEndpoint`` part and point the client at its ``grpc://HOST:PORT``.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

import dpdpu
from dpdpu.network.flight import FlightEndpoint

TOKEN = "demo-token"
rng = np.random.default_rng(0)
n = 1_000_000
trips = pa.table(
    {
        "trip_id": np.arange(n, dtype=np.int64),
        "zone": rng.integers(0, 50, n, dtype=np.int64),
        "fare": rng.gamma(2.0, 8.0, n),
        "tip": rng.gamma(1.0, 2.0, n),
    }
)

with dpdpu.Runtime("bluefield3") as rt, FlightEndpoint(runtime=rt, token=TOKEN).serve_background() as ep:
    client = flight.FlightClient(ep.location)
    auth = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])

    # 1. Upload (a path descriptor replaces any dataset of that name).
    writer, acks = client.do_put(flight.FlightDescriptor.for_path("trips"), trips.schema, auth)
    writer.write_table(trips, max_chunksize=65536)
    writer.done_writing()
    print("stored:", json.loads(acks.read().to_pybytes()))
    writer.close()

    # 2. Read back only the expensive trips, two columns, LZ4-compressed on the wire.
    ticket = {"dataset": "trips", "predicate": "fare > 60 and tip > 5", "columns": ["trip_id", "fare"]}
    ticket["compression"] = "lz4"
    result = client.do_get(flight.Ticket(json.dumps(ticket).encode()), auth).read_all()
    print(f"do_get: {result.num_rows} of {trips.num_rows} rows came back")

    # 3. Streaming offload: the endpoint aggregates what we stream to it.
    command = {"pipeline": [{"filter": "fare > 10"}, {"aggregate": {"keys": ["zone"], "aggs": [["tip", "mean"]]}}]}
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(json.dumps(command)), auth)
    writer.begin(trips.schema)
    writer.write_table(trips.slice(0, 200_000), max_chunksize=65536)
    writer.done_writing()
    per_zone = reader.read_all().sort_by("zone")
    writer.close()
    print("do_exchange: mean tip of zone 0 =", round(per_zone.column("tip_mean")[0].as_py(), 3))

    # 4. What crossed the wire, and where the work ran.
    (stats,) = client.do_action(flight.Action("stats", b""), auth)
    counters = json.loads(stats.body.to_pybytes())["datasets"]["trips"]
    print(f"trips: {counters['bytes_read']} bytes scanned on the DPU, {counters['bytes_returned']} returned")
    client.close()
