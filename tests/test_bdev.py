"""The block device: round trips, checks, the bounded queue, O_DIRECT, completions, modeled time."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpdpu import errors
from dpdpu.runtime.native import ffi, lib
from dpdpu.runtime.profile import Profile
from dpdpu.storage import BlockDevice, StorageModel, aligned_buffer

BS = 4096


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[BlockDevice]:
    with BlockDevice(tmp_path / "disk.img", capacity=256 * BS) as d:
        yield d


def test_round_trip(dev: BlockDevice) -> None:
    data = os.urandom(3 * BS)
    assert dev.write(BS, data).result() == 3 * BS
    assert dev.read(BS, 3 * BS).result() == data
    buf = bytearray(2 * BS)
    assert dev.read_into(2 * BS, buf).result() == 2 * BS
    assert bytes(buf) == data[BS:]
    assert dev.flush().result() is None
    # never-written blocks of the (sparse) device read as zeros
    assert dev.read(100 * BS, BS).result() == bytes(BS)
    stats = dev.stats()
    assert stats["writes"] == 1 and stats["reads"] == 3 and stats["flushes"] == 1 and stats["failed"] == 0
    assert stats["bytes_written"] == 3 * BS and stats["bytes_read"] == 6 * BS
    assert stats["busy_ns"] > 0


def test_buffers_are_used_in_place(dev: BlockDevice) -> None:
    view = memoryview(bytearray(4 * BS))[BS : 3 * BS]  # a window, written through
    dev.write(0, b"\x07" * 2 * BS).result()
    dev.read_into(0, view).result()
    assert bytes(view.obj[BS : 3 * BS]) == b"\x07" * 2 * BS  # type: ignore[index]
    # a bytearray is registered while the I/O is in flight: it cannot be resized
    buf = bytearray(64 * BS)
    fut = dev.read_into(0, buf)
    fut.result()
    buf.extend(b"x")  # fine once complete


def test_reopen_keeps_data_and_takes_capacity_from_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    with BlockDevice(path, capacity=16 * BS) as d:
        d.write(15 * BS, b"z" * BS).result()
        d.flush().result()
    with BlockDevice(path) as d:
        assert d.capacity == 16 * BS
        assert d.read(15 * BS, BS).result() == b"z" * BS


def test_alignment_is_checked(dev: BlockDevice) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="multiples of the block size"):
        dev.read(100, BS)
    with pytest.raises(errors.InvalidArgumentError, match="multiples of the block size"):
        dev.read(0, 100)
    with pytest.raises(errors.InvalidArgumentError):
        dev.write(0, b"x" * 100)
    with pytest.raises(errors.InvalidArgumentError):
        dev.write(0, b"")
    with pytest.raises(errors.InvalidArgumentError):
        dev.read(-BS, BS)
    with pytest.raises(errors.InvalidArgumentError, match="writable"):
        dev.read_into(0, b"immutable" * 512)
    with pytest.raises(errors.InvalidArgumentError, match="pair"):
        dev.flush(callback=print)  # type: ignore[arg-type]
    assert dev.stats()["failed"] == 0 and dev.in_flight == 0


def test_out_of_range(dev: BlockDevice) -> None:
    with pytest.raises(errors.InvalidArgumentError) as info:
        dev.read(dev.capacity, BS)
    assert info.value.code == "OUT_OF_RANGE"
    with pytest.raises(errors.InvalidArgumentError):
        dev.read(dev.capacity - BS, 2 * BS)
    with pytest.raises(errors.DeviceFullError) as full:
        dev.write(dev.capacity - BS, b"x" * 2 * BS)
    assert isinstance(full.value, OSError) and full.value.code == "OUT_OF_RANGE"
    assert dev.write(dev.capacity - BS, b"x" * BS).result() == BS  # the last block is fine


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.NoSuchFileError):
        BlockDevice(tmp_path / "missing.img", create=False)
    with pytest.raises(errors.InvalidArgumentError, match="capacity"):
        BlockDevice(tmp_path / "empty.img")  # an empty file and no capacity
    with pytest.raises(errors.InvalidArgumentError):
        BlockDevice(tmp_path / "x.img", block_size=3000, capacity=3000)
    with pytest.raises(errors.InvalidArgumentError):
        BlockDevice(tmp_path / "x.img", capacity=BS + 1)
    with pytest.raises(errors.FileTypeError):
        BlockDevice(tmp_path, capacity=BS)  # a directory
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(4 * BS))
    with BlockDevice(path, read_only=True) as ro:
        assert ro.read(0, BS).result() == bytes(BS)
        with pytest.raises(errors.UnsupportedOpError, match="read-only"):
            ro.write(0, bytes(BS))


def test_closed_device_refuses(tmp_path: Path) -> None:
    d = BlockDevice(tmp_path / "d.img", capacity=4 * BS)
    futures = [d.write(i * BS, bytes([i]) * BS) for i in range(4)]
    d.close()
    assert all(f.done() for f in futures) and [f.result() for f in futures] == [BS] * 4
    with pytest.raises(errors.RuntimeClosedError):
        d.read(0, BS)
    d.close()  # twice is fine


def test_queue_depth_bound_in_c(tmp_path: Path) -> None:
    """A batch submitted under the queue lock fills the queue exactly: the rest get AGAIN."""
    with BlockDevice(tmp_path / "q.img", capacity=64 * BS, queue_depth=3, poller=False) as d:
        bufs = [ffi.new("char[]", BS) for _ in range(5)]
        ios = [ffi.new("struct dpdpu_bdev_io *") for _ in range(5)]
        for i, io in enumerate(ios):
            io.type = lib.DPDPU_BDEV_IO_READ
            io.offset = i * BS
            io.length = BS
            io.buf = bufs[i]
            io.user_data = 1000 + i
        arr = ffi.new("struct dpdpu_bdev_io *[]", ios)
        assert lib.dpdpu_bdev_submit_batch(d._bdev, arr, 5, 0) == 3
        out = ffi.new("struct dpdpu_bdev_io *[]", 8)
        got: list[int] = []
        while len(got) < 3:
            lib.dpdpu_bdev_wait(d._bdev, 1_000_000, 0)
            n = lib.dpdpu_bdev_poll(d._bdev, out, 8)
            got.extend(out[i].user_data for i in range(n))
        assert sorted(got) == [1000, 1001, 1002]
        assert all(io.status == 0 and io.result == BS for io in ios[:3])
        assert lib.dpdpu_bdev_submit_batch(d._bdev, arr + 3, 2, 0) == 2


def test_queue_depth_bound(tmp_path: Path) -> None:
    big = 8 << 20
    with BlockDevice(tmp_path / "q.img", capacity=4 * big, queue_depth=2, workers=1, poller=False) as d:
        data = bytes(big)
        futures = []
        refused = 0
        for i in range(8):
            try:
                futures.append(d.write(i % 4 * big, data))
            except errors.QueueFullError as exc:
                refused += 1
                assert exc.code == "AGAIN"
            assert d.stats()["in_flight"] <= 2
        assert refused > 0
        # waiting for room instead of refusing
        futures.append(d.write(0, data, timeout=30.0))
        for f in futures:
            assert f.result() == big
        assert d.stats()["in_flight"] == 0


def test_direct_io(tmp_path: Path) -> None:
    with BlockDevice(tmp_path / "direct.img", capacity=64 * BS, direct=True) as d:
        assert d.direct and not d.direct_fallback and d.buffer_alignment == BS
        buf = aligned_buffer(2 * BS)
        buf[:5] = b"hello"
        assert d.write(0, buf).result() == 2 * BS
        assert d.read(0, BS).result()[:5] == b"hello"  # read() bounces through an aligned buffer
        out = aligned_buffer(BS)
        d.read_into(0, out).result()
        assert bytes(out[:5]) == b"hello"
        unaligned = memoryview(bytearray(3 * BS))[1 : 1 + BS]
        with pytest.raises(errors.InvalidArgumentError, match="aligned"):
            d.write(0, unaligned)


def _open_raw(path: Path, flags: int) -> tuple[int, Any]:
    """``dpdpu_bdev_open`` with explicit flags: its status and the bdev (released with the object)."""
    cfg = ffi.new("struct dpdpu_bdev_cfg *")
    cpath = ffi.new("char[]", os.fsencode(path))
    cfg.path = cpath
    cfg.block_size = BS
    cfg.capacity_blocks = 16
    cfg.flags = lib.DPDPU_BDEV_CREATE | flags
    out = ffi.new("struct dpdpu_bdev **")
    rc = lib.dpdpu_bdev_open(cfg, out)
    return rc, ffi.gc(out[0], lib.dpdpu_bdev_release) if rc == lib.DPDPU_OK else None


def test_direct_io_fallback(tmp_path: Path) -> None:
    # Every file system at hand may accept O_DIRECT: the flag makes the bdev
    # behave as on one that refuses it.
    rc, bdev = _open_raw(tmp_path / "fallback.img", lib.DPDPU_BDEV_DIRECT | lib.DPDPU_BDEV_DIRECT_REFUSED)
    assert rc == lib.DPDPU_OK
    info = ffi.new("struct dpdpu_bdev_info *")
    assert lib.dpdpu_bdev_get_info(bdev, info) == lib.DPDPU_OK
    assert not info.direct and info.direct_fallback and info.buf_align == 1
    # buffered I/O takes any buffer
    unaligned = ffi.new("char[]", 2 * BS)
    write = ffi.new("struct dpdpu_bdev_io *", {"type": lib.DPDPU_BDEV_IO_WRITE, "length": BS, "buf": unaligned + 1})
    (unaligned + 1)[0:3] = b"abc"
    back = ffi.new("char[]", BS)
    read = ffi.new("struct dpdpu_bdev_io *", {"type": lib.DPDPU_BDEV_IO_READ, "length": BS, "buf": back})
    for io in (write, read):
        assert lib.dpdpu_bdev_submit(bdev, io, -1) == lib.DPDPU_OK
        assert lib.dpdpu_bdev_io_wait(bdev, io, -1) == lib.DPDPU_OK and io.status == lib.DPDPU_OK
    assert ffi.buffer(back, 3)[:] == b"abc"
    # a bdev that must be direct refuses to open instead
    flags = lib.DPDPU_BDEV_DIRECT | lib.DPDPU_BDEV_DIRECT_REQUIRED | lib.DPDPU_BDEV_DIRECT_REFUSED
    assert _open_raw(tmp_path / "strict.img", flags)[0] == lib.DPDPU_ERR_NOT_SUPPORTED
    # the flag changes nothing without DIRECT
    rc, bdev = _open_raw(tmp_path / "plain.img", lib.DPDPU_BDEV_DIRECT_REFUSED)
    assert rc == lib.DPDPU_OK and lib.dpdpu_bdev_get_info(bdev, info) == lib.DPDPU_OK
    assert not info.direct and not info.direct_fallback


def test_many_concurrent_ios_from_threads(tmp_path: Path) -> None:
    blocks = 1024
    with BlockDevice(tmp_path / "many.img", capacity=blocks * BS, queue_depth=16, workers=4) as d:
        expected = {b: bytes([b % 251]) * 8 + os.urandom(BS - 8) for b in range(blocks)}
        order = list(expected)
        random.Random(1).shuffle(order)

        def writer(part: list[int]) -> None:
            futures = [d.write(b * BS, expected[b]) for b in part]
            assert [f.result() for f in futures] == [BS] * len(part)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(writer, [order[i::8] for i in range(8)]))
        reads = {b: d.read(b * BS, BS) for b in order}
        for b, fut in reads.items():
            assert fut.result() == expected[b]
        stats = d.stats()
        assert stats["writes"] == blocks and stats["reads"] == blocks and stats["failed"] == 0


def test_poll_futures_and_callbacks(tmp_path: Path) -> None:
    with BlockDevice(tmp_path / "p.img", capacity=64 * BS, poller=False, queue_depth=64) as d:
        futures = [d.write(i * BS, bytes([i]) * BS) for i in range(32)]
        done: list[object] = []
        while len(done) < 32:
            d.wait(1.0)
            done.extend(d.poll())
        assert set(map(id, done)) == set(map(id, futures)) and all(f.done() for f in futures)
        assert d.poll() == []
        # a future completes by itself when waited on, poller or not
        assert d.read(5 * BS, BS).result() == bytes([5]) * BS
        # callbacks run on the thread that polls
        seen: list[tuple[int, object, str]] = []

        def on_done(fut: object, arg: object) -> None:
            seen.append((fut.result(), arg, threading.current_thread().name))  # type: ignore[attr-defined]

        for i in range(4):
            d.read(i * BS, BS, callback=(on_done, i))
        while len(seen) < 4:
            d.wait(1.0)
            d.poll(max_completions=1)
        assert sorted(arg for _, arg, _ in seen) == [0, 1, 2, 3]  # type: ignore[type-var]
        assert {name for _, _, name in seen} == {threading.current_thread().name}

    with BlockDevice(tmp_path / "c.img", capacity=64 * BS) as d:
        hits: list[int] = []
        event = threading.Event()

        def count(fut: object, arg: int) -> None:
            hits.append(arg)
            if len(hits) == 16:
                event.set()

        for i in range(16):
            d.write(i * BS, bytes(BS), callback=(count, i))
        assert event.wait(10) and sorted(hits) == list(range(16))
        fs = [d.read(i * BS, BS) for i in range(16)]
        assert [f.result() for f in concurrent.futures.as_completed(fs)] == [bytes(BS)] * 16


def test_io_errors_surface_on_the_future(tmp_path: Path) -> None:
    """A failing system call completes the I/O with an error naming errno (in a subprocess: it lowers a limit)."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        from dpdpu import errors
        from dpdpu.storage import BlockDevice
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        d = BlockDevice({str(tmp_path / "efbig.img")!r}, capacity=64 * 4096)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
        fut = d.write(128 * 1024, bytes(4096))
        try:
            fut.result()
            print("no error")
        except errors.StorageError as exc:
            print(type(exc).__name__, exc.os_errno, exc.op, d.stats()["failed"])
        print(d.read(0, 4096).result() == bytes(4096))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["StorageError", str(errno.EFBIG), "write", "1", "True"]


def test_modeled_time_follows_the_profile(tmp_path: Path) -> None:
    bf2 = Profile.load("bluefield2").storage
    bf3 = Profile.load("bluefield3").storage
    host = Profile.load("host").storage
    assert bf2 is not None and bf3 is not None and host is not None
    assert bf2.medium.value == "eMMC" and bf3.medium.value == "NVMe"
    for storage in (bf2, bf3, host):
        # 8 KB random reads at a deep queue reproduce the published throughput (within 10%)
        model = StorageModel(storage)
        ios = 2000
        finish = max(model.charge("read", 8192, 0.0).finish_s for _ in range(ios))
        mb_per_s = ios * 8192 / finish / 1e6
        assert storage.random_read_8k_mb_per_s is not None
        assert mb_per_s == pytest.approx(storage.random_read_8k_mb_per_s.value, rel=0.1)
        # one 8 KB random read on an idle device takes the latency that throughput implies;
        # a read that continues it is sequential and shorter, a write longer
        model = StorageModel(storage)
        first = model.charge("read", 8192, 0.0, offset=1 << 20)
        assert first.modeled_s == pytest.approx(storage.read_fixed_s + 8192 / storage.read_bytes_per_s, rel=1e-9)
        follow = model.charge("read", 8192, first.finish_s, offset=(1 << 20) + 8192)
        assert follow.modeled_s < first.modeled_s
        assert model.service_s("write", 8192) > model.service_s("read", 8192)
        # 4 MB reads are bandwidth-bound whatever the queue depth
        model = StorageModel(storage)
        finish = max(model.charge("read", 4 << 20, 0.0).finish_s for _ in range(50))
        assert 50 * (4 << 20) / finish / 1e6 == pytest.approx(storage.read_mb_per_s.value, rel=0.05)

    times = {}
    for name in ("bluefield2", "bluefield3", "host"):
        with BlockDevice(tmp_path / f"{name}.img", capacity=64 * BS, device=name) as d:
            fut = d.read(0, 2 * BS)
            fut.result()
            assert fut.timing is not None and fut.modeled_s == pytest.approx(fut.timing.finish_s)
            later = d.write(0, bytes(2 * BS))  # arrives after the read the program has taken
            later.result()
            assert later.timing is not None and later.timing.arrival_s == pytest.approx(fut.timing.finish_s)
            times[name] = fut.modeled_s
            assert d.stats()["modeled_ios"] == 2 and d.stats()["vnow_s"] == pytest.approx(later.timing.finish_s)
    assert times["bluefield2"] > times["bluefield3"] > times["host"]
    with BlockDevice(tmp_path / "none.img", capacity=4 * BS, device=None) as d:
        fut = d.read(0, BS)
        assert fut.result() == bytes(BS) and fut.timing is None and "modeled_ios" not in d.stats()


def test_profiles_without_storage_still_load(tmp_path: Path, tiny_profile: Path) -> None:
    profile = Profile.load(tiny_profile)
    assert profile.storage is None
    with BlockDevice(tmp_path / "t.img", capacity=4 * BS, device=profile) as d:
        assert d.model is None
    bad = tiny_profile.read_text() + '\n[storage]\nmedium = { value = "x", source = "t" }\n'
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    with pytest.raises(errors.ProfileError, match="storage"):
        Profile.load(path)
    assert any(a.startswith("storage.") for a in Profile.load("bluefield3").assumptions())
