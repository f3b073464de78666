"""Offload a Python function to the DPU's Arm cores and chain it with built-in ops.

Run: python examples/offload_function.py
"""

import zlib

import dpdpu
from dpdpu import compute


@dpdpu.offload
def count_errors(blob: bytes) -> int:
    """Runs on an Arm core of the emulated DPU; the decompression inside runs in hardware."""
    text = compute.decompress(blob)
    return sum(1 for line in text.splitlines() if b" 500 " in line)


logs = [zlib.compress(b"GET /x 200\nGET /y 500\n" * (1000 + i)) for i in range(8)]

with dpdpu.Runtime("bluefield3") as rt:
    futures = [count_errors.submit(blob) for blob in logs]
    print("errors per file:", [f.result() for f in futures])
    print(rt.explain(futures[0]))
    print(rt.stats())
