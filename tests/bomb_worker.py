"""Run one decompression bomb in a fresh process and report what it cost (tests/test_decompression_bounds.py).

Usage: python bomb_worker.py CODEC OUTPUT_SIZE|none MIB [--profile NAME_OR_PATH] [--policy P]
       [--engine KIND] [--address-space BYTES]

Builds a stream of MIB mebibytes of zeros (no content size in its header), starts a
runtime, then decompresses the stream once and prints one JSON line: the outcome
(``ok`` or the exception's class and its bases), the message, and the peak resident
set (``VmHWM``) before and after the decompression, in bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import zlib

import lz4.frame
import zstandard

import dpdpu
from dpdpu import compute


def bomb(codec: str, mib: int) -> bytes:
    """MIB MiB of zeros compressed as one stream that does not declare its size."""
    chunk = bytes(1 << 20)
    if codec == "zstd":
        z = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join([*(z.compress(chunk) for _ in range(mib)), z.flush()])
    if codec == "lz4":
        lz = lz4.frame.LZ4FrameCompressor()
        return b"".join([lz.begin(), *(lz.compress(chunk) for _ in range(mib)), lz.flush()])
    d = zlib.compressobj(1)
    return b"".join([*(d.compress(chunk) for _ in range(mib)), d.flush()])


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("codec")
    parser.add_argument("output_size")
    parser.add_argument("mib", type=int)
    parser.add_argument("--profile", default="bluefield3")
    parser.add_argument("--policy", default="cost")
    parser.add_argument("--engine", default=None)
    parser.add_argument("--address-space", type=int, default=0)
    args = parser.parse_args()
    size = None if args.output_size == "none" else int(args.output_size)
    blob = bomb(args.codec, args.mib)
    with dpdpu.Runtime(args.profile, workers=1, policy=args.policy) as rt:
        # Warm up: the runtime's threads, arenas and codec modules are not the bomb's doing.
        rt.submit(compute.decompress, compute.compress(b"warm" * 1000, args.codec), args.codec).result()
        if args.address_space:
            resource.setrlimit(resource.RLIMIT_AS, (args.address_space, args.address_space))
        before = peak_rss()
        report: dict[str, object] = {"input": len(blob), "hwm_before": before}
        try:
            out = rt.submit(compute.decompress, blob, args.codec, output_size=size, engine=args.engine).result()
            report.update(outcome="ok", length=len(out))
            del out
        except BaseException as exc:
            report.update(outcome=[c.__name__ for c in type(exc).__mro__], message=str(exc))
        report["hwm_after"] = peak_rss()
        report["memory_used"] = rt.device.memory_used
    print(json.dumps(report))


if __name__ == "__main__":
    main()
