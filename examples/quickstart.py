"""Compress on an emulated BlueField-2, see where it ran and what it would have cost.

Run: python examples/quickstart.py
"""

import zlib

import dpdpu
from dpdpu import compute

data = b"GET /api/v1/items 200 12ms region=eu-west-1\n" * 50_000

with dpdpu.Runtime("bluefield2") as rt:
    futures = [rt.submit(compute.compress, data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    blobs = [f.result() for f in futures]
    assert b"".join(zlib.decompress(b) for b in blobs) == data
    print(rt.explain(futures[0]))
    print()
    print(rt.stats())

    # The same compression with the accelerator forbidden to fall back works on
    # BlueField-2, which compresses deflate in hardware ...
    compute.compress(data[:4096], engine="accelerator", fallback=False)

# ... but not on BlueField-3, which only decompresses in hardware.
with dpdpu.Runtime("bluefield3"):
    try:
        compute.compress(data[:4096], engine="accelerator", fallback=False)
    except dpdpu.errors.UnsupportedOpError as exc:
        print(f"\nas expected: {exc}")
