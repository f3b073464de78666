"""Offload a Python function to the DPU's Arm cores and chain it with built-in ops.

Each log file is a small zlib page (a few KiB, like the pages a storage
service keeps). ``count_errors`` runs on an Arm core of the emulated
BlueField-3 (``engine="arm"``), and the decompression inside it runs on the
hardware engine, whose largest job (16 KiB) each page fits.

Run: python examples/offload_function.py
"""

import zlib

import dpdpu
from dpdpu import compute


@dpdpu.offload(engine="arm")
def count_errors(blob: bytes) -> int:
    """How many requests of the log page got a 500."""
    text = compute.decompress(blob)
    return sum(1 for line in text.splitlines() if line.endswith(b" 500"))


logs = [zlib.compress(b"GET /x 200\nGET /y 500\n" * (300 + i)) for i in range(8)]

with dpdpu.Runtime("bluefield3") as rt:
    futures = [count_errors.submit(blob) for blob in logs]
    print("errors per file:", [f.result() for f in futures])  # [300, 301, ..., 307]
    print(rt.explain(futures[0]))
    print("decompressions by engine:", {k: v for k, v in rt.stats().placements.items() if "decompress" in k})
