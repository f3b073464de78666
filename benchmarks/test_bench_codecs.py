"""LZ4 and zstd through the runtime vs the ``lz4`` and ``zstandard`` packages called directly.

64 MiB of mixed data in 1 MiB jobs, one thread each side: the runtime uses the
host device with one worker, so what is measured is dispatch overhead, not
parallelism.  Run: ``pytest benchmarks/test_bench_codecs.py``
(``DPDPU_BENCH_MIB`` shrinks the data set).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import lz4.frame
import pytest
import zstandard

from dpdpu import Runtime, compute
from dpdpu.demo import generate_dataset

SIZE = int(os.environ.get("DPDPU_BENCH_MIB", "64")) << 20
JOB = 1 << 20

DIRECT: dict[tuple[str, str], Callable[[Any], bytes]] = {
    ("lz4", "compress"): lambda b: lz4.frame.compress(b, compression_level=0, store_size=True),
    ("lz4", "decompress"): lz4.frame.decompress,
    ("zstd", "compress"): lambda b: zstandard.ZstdCompressor(level=3).compress(b),
    ("zstd", "decompress"): lambda b: zstandard.ZstdDecompressor().decompress(b),
}
CASES = sorted(DIRECT)


@pytest.fixture(scope="module")
def jobs() -> list[memoryview]:
    data = memoryview(generate_dataset(SIZE, seed=2))
    return [data[i : i + JOB] for i in range(0, SIZE, JOB)]


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with Runtime("host", workers=1) as rt:
        yield rt


def _inputs(jobs: list[memoryview], codec: str, direction: str) -> list[Any]:
    if direction == "compress":
        return list(jobs)
    return [DIRECT[codec, "compress"](j) for j in jobs]


@pytest.mark.parametrize(("codec", "direction"), CASES, ids=[f"{c}-{d}" for c, d in CASES])
def test_package_direct(benchmark, jobs, codec: str, direction: str) -> None:
    benchmark.group = f"{codec}-{direction}-{SIZE >> 20}MiB"
    benchmark.extra_info["role"] = "baseline"
    inputs = _inputs(jobs, codec, direction)
    fn = DIRECT[codec, direction]
    out = benchmark.pedantic(lambda: [fn(b) for b in inputs], rounds=5, warmup_rounds=1)
    assert len(out) == len(inputs)


@pytest.mark.parametrize(("codec", "direction"), CASES, ids=[f"{c}-{d}" for c, d in CASES])
def test_runtime(benchmark, jobs, runtime: Runtime, codec: str, direction: str) -> None:
    benchmark.group = f"{codec}-{direction}-{SIZE >> 20}MiB"
    benchmark.extra_info["goal"] = 0.95
    inputs = _inputs(jobs, codec, direction)
    op = compute.compress if direction == "compress" else compute.decompress

    def run() -> list[bytes]:
        futures = [runtime.submit(op, b, codec) for b in inputs]
        return [f.result() for f in futures]

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    expected = DIRECT[codec, direction](inputs[-1])
    assert out[-1] == expected
