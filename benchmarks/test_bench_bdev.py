"""Block device reads and writes vs ``os.preadv``/``os.pread``/``os.pwrite`` on the same file.

Each group moves the same bytes (64 MiB by default) sequentially or at
shuffled block offsets, in 4 KiB or 1 MiB I/Os: the baseline one system call
after the other on this thread, the block device with a window of 1 or 8
I/Os in flight.  Three kinds of group:

* ``read``: into eight preallocated buffers, used in turn by both sides
  (``os.preadv`` vs ``BlockDevice.read_into``);
* ``read-bytes``: returning new bytes objects (``os.pread`` vs ``BlockDevice.read``),
  so allocation is part of it;
* ``write``: from one buffer (``os.pwrite`` vs ``BlockDevice.write``).

Both sides use one file, written in full and read once before timing, so
reads come from the page cache on both sides (memory speed) and writes go to
it; nothing is flushed.  The preallocated buffers start 64 bytes into a cache
line-aligned allocation on both sides: some x86 copy loops slow down several
times when source and destination sit at nearly the same offset within a
page (4K aliasing), which would measure the buffer's address, not the I/O.
The goal is for 1 MiB I/O at queue depth 8 to be at least 0.9x the baseline.

Run: ``pytest benchmarks/test_bench_bdev.py`` (``DPDPU_BENCH_BDEV_MIB`` shrinks
the data moved per round).
"""

from __future__ import annotations

import collections
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dpdpu.storage import BlockDevice, aligned_buffer

MIB = 1 << 20
TOTAL = int(os.environ.get("DPDPU_BENCH_BDEV_MIB", "64")) * MIB
SIZES = {"4KiB": 4096, "1MiB": MIB}
#: rounds per size: a 1 MiB round is short, so take many for a stable median
ROUNDS = {4096: 3, MIB: 15}
KINDS = ("read", "read-bytes", "write")
WINDOW_BUFFERS = 8


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("bench") / "disk.img"
    chunk = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(TOTAL // MIB):
            f.write(chunk)
    # Warm the page cache the same way for both sides.
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass
    yield path


@pytest.fixture(scope="module")
def fd(disk: Path) -> Iterator[int]:
    handle = os.open(disk, os.O_RDWR)
    yield handle
    os.close(handle)


@pytest.fixture(scope="module")
def devices(disk: Path) -> Iterator[dict[int, BlockDevice]]:
    devs = {qd: BlockDevice(disk, queue_depth=qd) for qd in (1, 8)}
    yield devs
    for dev in devs.values():
        dev.close()


@pytest.fixture(scope="module")
def buffers() -> dict[int, list[memoryview]]:
    out = {}
    for size in SIZES.values():
        out[size] = [aligned_buffer(size + 4096)[64 : 64 + size] for _ in range(WINDOW_BUFFERS)]
    return out


def _offsets(pattern: str, size: int) -> list[int]:
    offsets = list(range(0, TOTAL, size))
    if pattern == "rand":
        random.Random(size).shuffle(offsets)
    return offsets


def _windowed(submit: Callable[[int, int], Any], offsets: list[int], depth: int) -> None:
    window: collections.deque[Any] = collections.deque()
    for i, off in enumerate(offsets):
        if len(window) >= depth:
            window.popleft().result()
        window.append(submit(i, off))
    for fut in window:
        fut.result()


CASES = [(p, kind, s) for p in ("seq", "rand") for kind in KINDS for s in SIZES]


@pytest.mark.parametrize(("pattern", "kind", "size_name"), CASES)
def test_os_baseline(
    benchmark: Any, fd: int, buffers: dict[int, list[memoryview]], pattern: str, kind: str, size_name: str
) -> None:
    size = SIZES[size_name]
    benchmark.group = f"bdev-{pattern}-{kind}-{size_name}"
    benchmark.extra_info["role"] = "baseline"
    offsets = _offsets(pattern, size)
    bufs = buffers[size]
    data = os.urandom(size)

    def run() -> None:
        if kind == "read":
            for i, off in enumerate(offsets):
                os.preadv(fd, [bufs[i % WINDOW_BUFFERS]], off)
        elif kind == "read-bytes":
            for off in offsets:
                os.pread(fd, size, off)
        else:
            for off in offsets:
                os.pwrite(fd, data, off)

    benchmark.pedantic(run, rounds=ROUNDS[size], warmup_rounds=1)


@pytest.mark.parametrize("depth", [1, 8])
@pytest.mark.parametrize(("pattern", "kind", "size_name"), CASES)
def test_bdev(
    benchmark: Any,
    devices: dict[int, BlockDevice],
    fd: int,
    buffers: dict[int, list[memoryview]],
    pattern: str,
    kind: str,
    size_name: str,
    depth: int,
) -> None:
    size = SIZES[size_name]
    dev = devices[depth]
    benchmark.group = f"bdev-{pattern}-{kind}-{size_name}"
    if size == MIB and depth >= 4:
        benchmark.extra_info["goal"] = 0.9
    offsets = _offsets(pattern, size)
    bufs = buffers[size]
    data = os.urandom(size)
    if kind == "read":
        dev.read_into(offsets[0], bufs[0]).result()
        assert bytes(bufs[0]) == os.pread(fd, size, offsets[0])

        def submit(i: int, off: int) -> Any:
            return dev.read_into(off, bufs[i % WINDOW_BUFFERS])
    elif kind == "read-bytes":
        assert dev.read(offsets[0], size).result() == os.pread(fd, size, offsets[0])

        def submit(i: int, off: int) -> Any:
            return dev.read(off, size)
    else:

        def submit(i: int, off: int) -> Any:
            return dev.write(off, data)

    benchmark.pedantic(lambda: _windowed(submit, offsets, depth), rounds=ROUNDS[size], warmup_rounds=1)
