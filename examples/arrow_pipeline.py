"""Filter and aggregate compressed Arrow data that arrived in DPU memory, placed as a whole.

The batch lands in the emulated BlueField-3's memory, as data from the network
would.  The pipeline is planned end to end under two policies: ``cost`` (the
earliest finish, host cores included: pulling the batch over PCIe to the
faster host cores can win) and ``dpu-only`` (keep the work on the DPU: the
host's cores stay free, and only the small aggregate crosses PCIe).

Run: ``python examples/arrow_pipeline.py``
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import dpdpu
from dpdpu import compute


def log_batch(rows: int, seed: int) -> bytes:
    """An LZ4-compressed Arrow IPC stream of access-log rows, as a DPU might receive it."""
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            "region": pa.array(rng.choice(["eu-west-1", "us-east-1", "ap-south-1"], rows)).dictionary_encode(),
            "status": rng.choice([200, 200, 200, 404, 500], rows),
            "latency_ms": rng.gamma(2.0, 40.0, rows),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return compute.compress(sink.getvalue(), "lz4")


def main() -> None:
    blob = log_batch(500_000, seed=7)
    pipeline = (
        compute.Pipeline()
        .decompress(codec="lz4")
        .filter("status >= 500 or latency_ms > 200")
        .aggregate(["region"], [("latency_ms", "mean"), ("*", "count")])
    )
    for policy in ("cost", "dpu-only"):
        with dpdpu.Runtime("bluefield3", policy=policy) as rt:
            arrived = rt.alloc(len(blob))  # the batch, as the NIC wrote it into DPU memory
            arrived.view()[:] = blob
            run = pipeline.run(arrived, rt)
            print(run)
            host = rt.stats().engines["host/cpu"].modeled_busy_s
            print(f"host core time used: {host * 1e3:.2f} ms")
            print(sorted(run.value.to_pylist(), key=lambda row: row["region"]), end="\n\n")


if __name__ == "__main__":
    main()
