"""Tiny-task dispatch: submit + result of a trivial op, vs concurrent.futures.ThreadPoolExecutor.

``inline`` is the path a trivial op takes (it runs on the submitting thread
when its engine is idle); ``queued`` forces the hand-off to a C worker thread
(8 KiB jobs are above the inline limit) against the same hand-off in a pool.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from dpdpu import Runtime, compute

SMALL, QUEUED = b"x", bytes(8192)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with Runtime("host", workers=1) as rt:
        yield rt


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as ex:
        yield ex


@pytest.mark.benchmark(group="dispatch-trivial")
def test_threadpool_trivial(benchmark, pool) -> None:
    benchmark.extra_info["role"] = "baseline"
    benchmark(lambda: pool.submit(zlib.crc32, SMALL).result())


@pytest.mark.benchmark(group="dispatch-trivial")
def test_runtime_trivial(benchmark, runtime) -> None:
    benchmark.extra_info["goal"] = 1.0
    assert benchmark(lambda: runtime.submit(compute.crc32c, SMALL).result()) == compute.crc32c(SMALL)


@pytest.mark.benchmark(group="dispatch-queued-8KiB")
def test_threadpool_queued(benchmark, pool) -> None:
    benchmark.extra_info["role"] = "baseline"
    benchmark(lambda: pool.submit(zlib.crc32, QUEUED).result())


@pytest.mark.benchmark(group="dispatch-queued-8KiB")
def test_runtime_queued(benchmark, runtime) -> None:
    benchmark(lambda: runtime.submit(compute.crc32c, QUEUED).result())
