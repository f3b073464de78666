"""Deflate compression of 64 MiB of mixed data in 1 MiB jobs: the runtime vs zlib on one thread.

Run: ``pytest benchmarks/test_bench_deflate.py`` (``DPDPU_BENCH_MIB`` shrinks the data set).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator

import pytest

from dpdpu import Runtime, compute
from dpdpu.demo import generate_dataset

SIZE = int(os.environ.get("DPDPU_BENCH_MIB", "64")) << 20
JOB = 1 << 20
LEVEL = 1


@pytest.fixture(scope="module")
def jobs() -> list[memoryview]:
    data = memoryview(generate_dataset(SIZE, seed=1))
    return [data[i : i + JOB] for i in range(0, SIZE, JOB)]


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    # The host device has one engine, so `workers` is exactly the C threads compressing.
    with Runtime("host", workers=request.param) as rt:
        yield rt


@pytest.mark.benchmark(group="deflate-64MiB")
def test_zlib_one_thread(benchmark, jobs) -> None:
    benchmark.extra_info["role"] = "baseline"
    out = benchmark.pedantic(lambda: [zlib.compress(j, LEVEL) for j in jobs], rounds=3, warmup_rounds=1)
    assert zlib.decompress(out[0]) == jobs[0]


@pytest.mark.benchmark(group="deflate-64MiB")
def test_runtime(benchmark, jobs, runtime: Runtime) -> None:
    benchmark.extra_info["goal"] = 1.7 if runtime.device.workers == 2 else 0.95  # type: ignore[attr-defined]

    def run() -> list[bytes]:
        futures = [runtime.submit(compute.compress, j, level=LEVEL) for j in jobs]
        return [f.result() for f in futures]

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert zlib.decompress(out[-1]) == jobs[-1]
