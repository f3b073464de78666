"""The ``dpdpu demo`` job: a compression pipeline on emulated BlueField-2 and -3.

It generates a data set of mixed compressibility, cuts it into jobs and runs:

1. deflate compression on BlueField-2, placed on its hardware engine;
2. the same compression on BlueField-3, which has no deflate compression in
   hardware, so it falls back to the Arm cores;
3. decompression of that output on BlueField-3, in hardware;
4. the same compression and decompression on the host alone, as the baseline.

Every job runs for real (the output is checked against the input), and each
step reports wall time and modeled device time next to the host baseline.
The DPU steps use the ``dpu-only`` placement policy: the point is to offload,
so the host is used only where the device cannot run a job at all.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import compute
from .errors import InternalError
from .runtime import Runtime

__all__ = ["DemoReport", "StepResult", "generate_dataset", "run_demo"]

#: ``progress(description, total)`` returns a context manager yielding ``advance()``.
ProgressFactory = Callable[[str, int], Any]


@dataclass
class StepResult:
    """One step of the demo on one device."""

    step: str
    device: str
    jobs: int
    bytes_in: int
    bytes_out: int
    engines: dict[str, int]
    wall_s: float
    modeled_s: float
    host_busy_s: float
    why: str = ""


@dataclass
class DemoReport:
    """Everything the demo measured."""

    size: int
    chunk: int
    level: int
    steps: list[StepResult] = field(default_factory=list)
    verified: bool = False
    crc32c: int = 0

    def step(self, name: str, device: str) -> StepResult:
        """The result of ``name`` on ``device``."""
        return next(s for s in self.steps if s.step == name and s.device == device)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        return asdict(self)


def generate_dataset(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes of mixed compressibility: log lines, JSON, random and zero blocks."""
    rng = np.random.default_rng(seed)
    methods = np.array([b"GET", b"PUT", b"POST", b"DELETE"])
    paths = np.array([b"/api/v1/items", b"/api/v1/users", b"/healthz", b"/static/app.js", b"/api/v2/orders"])
    regions = np.array([b"eu-west-1", b"us-east-1", b"ap-south-1"])
    parts: list[bytes] = []
    total = 0
    block = 256 << 10
    while total < size:
        kind = rng.integers(0, 10)
        if kind < 6:  # access-log lines: compress well
            n = 2000
            ts = rng.integers(1_700_000_000, 1_800_000_000, n)
            lines = [
                b"%d %s %s %d %dms region=%s\n" % (t, m, p, s, lat, r)
                for t, m, p, s, lat, r in zip(
                    ts,
                    rng.choice(methods, n),
                    rng.choice(paths, n),
                    rng.choice([200, 200, 200, 404, 500], n),
                    rng.integers(1, 900, n),
                    rng.choice(regions, n),
                    strict=True,
                )
            ]
            chunk = b"".join(lines)[:block]
        elif kind < 8:  # JSON records with random ids: compress moderately
            records = zip(rng.integers(0, 2**62, 3000), rng.random(3000), strict=True)
            chunk = b"".join(b'{"id":%d,"score":%.4f,"ok":true}\n' % r for r in records)[:block]
        elif kind < 9:  # already compressed or encrypted data: incompressible
            chunk = rng.bytes(block)
        else:  # zero pages
            chunk = bytes(block)
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)[:size]


@contextmanager
def _no_progress(description: str, total: int) -> Iterator[Callable[[], None]]:
    yield lambda: None


def _run_step(
    rt: Runtime,
    step: str,
    op: Callable[..., Any],
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    progress: ProgressFactory,
    total_in: int,
) -> tuple[StepResult, list[Any]]:
    """Submit ``op(*args, **kwargs)`` for every call at once and wait for all of them."""
    start = time.perf_counter()
    futures = [rt.submit(op, *args, **kwargs) for args, kwargs in calls]
    with progress(f"{step} on {rt.device.label}", len(futures)) as advance:
        for fut in concurrent.futures.as_completed(futures):
            fut.exception()
            advance()
    results = [f.result() for f in futures]
    wall = time.perf_counter() - start
    placements = [f.placement for f in futures if f.placement is not None]
    timelines = [p.timeline for p in placements if p.timeline is not None]
    modeled = max(t.finish_s for t in timelines) - min(t.arrival_s for t in timelines)
    engines = Counter(p.engine for p in placements)
    why = next((p.fallback for p in placements if p.fallback), "")
    host_busy = sum(t.exec_s for p, t in zip(placements, timelines, strict=False) if p.kind == "host")
    out = sum(len(r) for r in results)
    return (
        StepResult(
            step, rt.device.label, len(futures), total_in, out, dict(engines), wall, modeled, host_busy, why or ""
        ),
        results,
    )


def run_demo(
    size: int = 32 << 20,
    chunk: int = 16 << 10,
    *,
    level: int = 6,
    seed: int = 0,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
) -> DemoReport:
    """Run the demo pipeline and return what it measured."""
    progress = progress or _no_progress
    data = generate_dataset(size, seed)
    view = memoryview(data)
    chunks = [view[i : i + chunk] for i in range(0, len(data), chunk)]
    report = DemoReport(size=len(data), chunk=chunk, level=level)
    compressed: dict[str, list[bytes]] = {}

    for device in ("bluefield2", "bluefield3", "host"):
        with Runtime(device, workers=workers, policy="dpu-only") as rt:
            calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((c,), {"level": level}) for c in chunks]
            result, compressed[device] = _run_step(rt, "compress", compute.compress, calls, progress, len(data))
            report.steps.append(result)

    for device in ("bluefield3", "host"):
        blobs = compressed[device]
        with Runtime(device, workers=workers, policy="dpu-only") as rt:
            calls = [((b,), {"output_size": len(c)}) for b, c in zip(blobs, chunks, strict=True)]
            total = sum(len(b) for b in blobs)
            result, restored = _run_step(rt, "decompress", compute.decompress, calls, progress, total)
            report.steps.append(result)
            if b"".join(restored) != data:
                raise InternalError("the demo's decompressed output differs from its input", device=device)
            report.crc32c = compute.crc32c(b"".join(restored))
    report.verified = True
    return report
