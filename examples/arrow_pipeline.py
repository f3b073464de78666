"""Filter and aggregate compressed Arrow data, placed as a whole on an emulated BlueField-3.

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
            run = pipeline.run(blob, rt)
            print(run)
            print(run.value.to_pylist(), end="\n\n")


if __name__ == "__main__":
    main()
