"""The C core through its binding: devices, memory maps, the progress engine, status codes."""

from __future__ import annotations

import threading
import time
import zlib

import pytest
from refimpl import crc32c_reference

from dpdpu import errors
from dpdpu._version import __version__
from dpdpu.runtime import native
from dpdpu.runtime.native import OPS, EngineConfig, NativeDevice, ProgressEngine, ffi, lib

ALL_OPS = frozenset(OPS) - native.CALLBACK_OPS


@pytest.fixture
def dev():
    d = NativeDevice("testdev", [EngineConfig("cpu", ALL_OPS, workers=2)], memory_bytes=1 << 20)
    yield d
    d.close()


@pytest.fixture
def pe():
    p = ProgressEngine()
    yield p
    p.destroy()


def make_task(dev: NativeDevice, op: str, src: bytes | None = None, dst: bytearray | None = None, param: int = 0):
    ct = ffi.new("struct dpdpu_task *")
    ct.op = OPS[op]
    ct.param = param
    keep = [ct]
    if src is not None:
        keep.append(dev.map_host(ct, src, dst=False))
    if dst is not None:
        keep.append(dev.map_host(ct, dst, dst=True))
    return ct, keep


def run(pe: ProgressEngine, dev: NativeDevice, ct) -> int:
    pe.submit(dev, ct)
    assert pe.wait_task(ct, 5.0)
    assert pe.progress_user_data() == [ct.user_data]
    return int(ct.status)


def test_version_and_status_names() -> None:
    assert ffi.string(lib.dpdpu_version()).decode() == __version__
    codes = [getattr(lib, n) for n in dir(lib) if n.startswith("DPDPU_ERR_")]
    sentences = {ffi.string(lib.dpdpu_status_describe(c)) for c in codes}
    names = {native.status_name(c) for c in codes}
    assert len(sentences) == len(codes) == len(names)
    assert native.status_name(12345) == "UNKNOWN_STATUS"
    for code in codes:
        err = native.error_for(code, device="d", op="o")
        assert isinstance(err, errors.DpdpuError) and err.code == native.status_name(code)
        assert str(err).startswith("d: o: ")


def test_check_passes_non_negative_values() -> None:
    assert native.check(3) == 3
    with pytest.raises(errors.CorruptDataError):
        native.check(lib.DPDPU_ERR_CORRUPT_DATA, device="d", op="deflate_decompress")


def test_crc32c_vectors() -> None:
    assert native.crc32c(b"123456789") == 0xE3069283
    assert native.crc32c(b"") == 0
    data = bytes(range(256)) * 37 + b"tail"
    assert native.crc32c(data) == crc32c_reference(data)
    assert native.crc32c(data[100:], native.crc32c(data[:100])) == crc32c_reference(data)


def test_ops_through_the_progress_engine(dev: NativeDevice, pe: ProgressEngine) -> None:
    data = b"abcdefgh" * 10000
    out = bytearray(native.deflate_bound(len(data)))
    ct, _keep = make_task(dev, "deflate_compress", data, out, param=1)
    assert run(pe, dev, ct) == lib.DPDPU_OK
    blob = bytes(out[: ct.result])
    assert zlib.decompress(blob) == data

    back = bytearray(len(data))
    ct, _keep = make_task(dev, "deflate_decompress", blob, back)
    assert run(pe, dev, ct) == lib.DPDPU_OK and bytes(back) == data and ct.result == len(data)

    small = bytearray(10)
    ct, _keep = make_task(dev, "deflate_decompress", blob, small)
    assert run(pe, dev, ct) == lib.DPDPU_ERR_BUFFER_TOO_SMALL and ct.needed == len(data)

    ct, _keep = make_task(dev, "crc32c", data)
    assert run(pe, dev, ct) == lib.DPDPU_OK and ct.result == crc32c_reference(data)

    copy = bytearray(len(data))
    ct, _keep = make_task(dev, "memcpy", data, copy)
    assert run(pe, dev, ct) == lib.DPDPU_OK and bytes(copy) == data
    assert ct.exec_ns > 0


def test_submit_refusals(dev: NativeDevice, pe: ProgressEngine) -> None:
    ct, _keep = make_task(dev, "crc32c", b"x")
    ct.op = 99
    with pytest.raises(errors.UnknownOpError):
        pe.submit(dev, ct)
    ct.op = OPS["crc32c"]
    ct.engine = 7
    with pytest.raises(errors.InvalidArgumentError):
        pe.submit(dev, ct)
    ct.engine = 0
    ct.op, ct.param = OPS["deflate_compress"], 42
    with pytest.raises(errors.InvalidArgumentError):
        pe.submit(dev, ct)
    assert pe.outstanding == 0


def test_capabilities_max_job_and_device_memory(pe: ProgressEngine) -> None:
    d = NativeDevice(
        "small",
        [
            EngineConfig("hw", frozenset({"deflate_decompress"}), workers=1, max_job_bytes=1000, on_device=True),
            EngineConfig("arm", frozenset({"crc32c", "memcpy"}), workers=1, on_device=True),
        ],
        memory_bytes=4096,
    )
    try:
        assert d.supports(0, "deflate_decompress") and not d.supports(0, "deflate_compress")
        assert d.max_job_bytes(0, "deflate_decompress") == 1000
        assert d.max_job_bytes(1, "crc32c") is None
        with pytest.raises(errors.UnsupportedOpError):
            d.max_job_bytes(0, "crc32c")
        ct, _keep = make_task(d, "crc32c", b"x" * 10)  # engine 0 lacks crc32c
        with pytest.raises(errors.UnsupportedOpError):
            pe.submit(d, ct)
        ct, _keep = make_task(d, "deflate_decompress", b"x" * 1001, bytearray(10))
        with pytest.raises(errors.JobTooLargeError):
            pe.submit(d, ct)
        ct, _keep = make_task(d, "crc32c", b"x" * 5000)
        ct.engine = 1
        with pytest.raises(errors.DeviceMemoryError):  # 5000 bytes staged on a 4096-byte device
            pe.submit(d, ct)
        block = d.alloc(4000)
        assert d.memory_used == 4000
        with pytest.raises(errors.DeviceMemoryError):
            d.alloc(100)
        del block
        assert d.memory_used == 0
    finally:
        d.close()


def test_memory_maps_check_ranges(dev: NativeDevice) -> None:
    memory = ffi.new("char[]", 64)
    out = ffi.new("struct dpdpu_mmap **")
    native.check(lib.dpdpu_mmap_create(dev.handle, memory, 64, lib.DPDPU_MMAP_HOST, out))
    mmap = out[0]
    buf = ffi.new("struct dpdpu_buf *")
    assert lib.dpdpu_buf_init(buf, mmap, memory + 8, 56) == lib.DPDPU_OK
    assert lib.dpdpu_buf_init(buf, mmap, memory + 8, 57) == lib.DPDPU_ERR_OUT_OF_RANGE
    assert lib.dpdpu_buf_init(buf, mmap, memory - 1, 2) == lib.DPDPU_ERR_OUT_OF_RANGE
    assert lib.dpdpu_mmap_destroy(mmap) == lib.DPDPU_OK
    assert lib.dpdpu_mmap_create(dev.handle, ffi.NULL, 8, 0, out) == lib.DPDPU_ERR_INVALID_ARGUMENT


def test_c_allocated_device_memory(dev: NativeDevice) -> None:
    out = ffi.new("struct dpdpu_mmap **")
    assert lib.dpdpu_mmap_alloc(dev.handle, 2 << 20, out) == lib.DPDPU_ERR_NO_DEVICE_MEMORY
    native.check(lib.dpdpu_mmap_alloc(dev.handle, 1000, out))
    assert lib.dpdpu_dev_mem_used(dev.handle) == 1000
    assert ffi.buffer(lib.dpdpu_mmap_addr(out[0]), 1000)[:] == bytes(1000)
    assert lib.dpdpu_mmap_destroy(out[0]) == lib.DPDPU_OK
    assert lib.dpdpu_dev_mem_used(dev.handle) == 0


def test_map_in_use_cannot_be_destroyed(pe: ProgressEngine) -> None:
    started, release = threading.Event(), threading.Event()

    def block() -> int:
        started.set()
        release.wait(5)
        return 0

    d = NativeDevice("cb", [EngineConfig("arm", frozenset({"python", "crc32c"}), workers=1)], with_callback=True)
    try:
        hold = ffi.new("struct dpdpu_task *")
        hold.op, hold.user_data = OPS["python"], 424242
        native.register_callback(424242, block)
        pe.submit(d, hold)
        started.wait(5)
        memory = ffi.new("char[]", 16)
        out = ffi.new("struct dpdpu_mmap **")
        native.check(lib.dpdpu_mmap_create(d.handle, memory, 16, 0, out))
        ct = ffi.new("struct dpdpu_task *")
        ct.op, ct.user_data = OPS["crc32c"], 7
        native.check(lib.dpdpu_buf_init(ffi.addressof(ct, "src"), out[0], memory, 16))
        pe.submit(d, ct)  # queued behind the blocked callback
        assert lib.dpdpu_mmap_destroy(out[0]) == lib.DPDPU_ERR_IN_USE
        release.set()
        assert pe.wait_task(ct, 5)
        assert lib.dpdpu_mmap_destroy(out[0]) == lib.DPDPU_OK
        assert sorted(pe.progress_user_data()) == [7, 424242]
    finally:
        release.set()
        d.close()


def test_queue_full_and_shutdown_without_drain(pe: ProgressEngine) -> None:
    started, release = threading.Event(), threading.Event()

    def block() -> int:
        started.set()
        release.wait(5)
        return 0

    d = NativeDevice(
        "q", [EngineConfig("arm", frozenset({"python", "nop"}), workers=1, queue_depth=2)], with_callback=True
    )
    hold = ffi.new("struct dpdpu_task *")
    hold.op, hold.user_data = OPS["python"], 515151
    native.register_callback(515151, block)
    pe.submit(d, hold)
    started.wait(5)
    queued = ffi.new("struct dpdpu_task *")
    queued.op, queued.user_data = OPS["nop"], 1
    pe.submit(d, queued)
    extra = ffi.new("struct dpdpu_task *")
    extra.op = OPS["nop"]
    with pytest.raises(errors.QueueFullError):
        pe.submit(d, extra, timeout_s=0)
    with pytest.raises(errors.QueueFullError):
        pe.submit(d, extra, timeout_s=0.01)
    threading.Timer(0.05, release.set).start()
    d.close(drain=False)
    assert hold.status == lib.DPDPU_OK
    assert queued.status == lib.DPDPU_ERR_SHUTDOWN
    assert sorted(pe.progress_user_data()) == [1, 515151]
    with pytest.raises(errors.RuntimeClosedError):
        pe.submit(d, extra)


def test_progress_engine_wait_times_out_and_kicks(pe: ProgressEngine) -> None:
    start = time.monotonic()
    assert pe.wait(0.02) == 0
    assert time.monotonic() - start >= 0.015
    threading.Timer(0.02, pe.kick).start()
    assert pe.wait(5) == 0  # woken by the kick, nothing queued


def test_workers_run_without_the_gil(dev: NativeDevice, pe: ProgressEngine) -> None:
    """While a C worker compresses, this Python thread keeps running."""
    data = bytes(range(256)) * (64 << 10)  # 16 MiB, ~100 ms at level 9
    out = bytearray(native.deflate_bound(len(data)))
    ct, _keep = make_task(dev, "deflate_compress", data, out, param=9)
    counter = 0
    pe.submit(dev, ct)
    while not ct.done:
        counter += 1
    assert pe.wait_task(ct, 10)
    pe.progress_user_data()
    assert ct.status == lib.DPDPU_OK
    assert counter > 1000


def test_inline_submission_skips_the_queue(dev: NativeDevice, pe: ProgressEngine) -> None:
    ct, _keep = make_task(dev, "crc32c", b"123456789")
    pe.submit(dev, ct, inline=True)
    assert ct.done and ct.result == 0xE3069283
    assert pe.outstanding == 0 and pe.progress_user_data() == []
    assert dev.engine_stats(0)["inlined"] == 1


def test_op_table() -> None:
    info = ffi.new("struct dpdpu_op_info *")
    facts = {}
    for op in range(lib.DPDPU_OP_COUNT):
        assert lib.dpdpu_op_info(op, info) == lib.DPDPU_OK
        name = ffi.string(info.name).decode()
        assert ffi.string(lib.dpdpu_op_name(op)).decode() == name
        facts[name] = (bool(info.needs_dst), bool(info.callback), bool(info.splits), int(info.inline_max_bytes))
    assert facts["deflate_compress"] == (True, False, True, 0)
    assert facts["deflate_decompress"] == (True, False, False, 0)
    assert facts["memcpy"] == (True, False, False, 4096)
    assert facts["callback"] == (False, True, False, 0)
    assert {n for n, f in facts.items() if f[1]} == {"callback", *native.CALLBACK_OPS} - {"python"}
    assert lib.dpdpu_op_info(lib.DPDPU_OP_COUNT, info) == lib.DPDPU_ERR_UNKNOWN_OP
    assert lib.dpdpu_op_info(0, ffi.NULL) == lib.DPDPU_ERR_INVALID_ARGUMENT
    assert ffi.string(lib.dpdpu_op_name(lib.DPDPU_OP_COUNT)) == b"unknown"


def test_binding_refuses_a_core_with_another_op_table(monkeypatch: pytest.MonkeyPatch) -> None:
    native._check_op_table()  # what import ran
    monkeypatch.setattr(native, "CALLBACK_OPS", native.CALLBACK_OPS - {"lz4_compress"})
    with pytest.raises(errors.NativeBuildError, match="lz4_compress"):
        native._check_op_table()
    monkeypatch.undo()
    monkeypatch.setattr(native, "OPS", {**native.OPS, "filter": native.OPS["project"]})
    with pytest.raises(errors.NativeBuildError, match="filter"):
        native._check_op_table()


def test_engine_counters(dev: NativeDevice, pe: ProgressEngine) -> None:
    ct, _keep = make_task(dev, "memcpy", b"12345", bytearray(5))
    run(pe, dev, ct)
    ct, _keep = make_task(dev, "memcpy", b"12345", bytearray(2))
    run(pe, dev, ct)
    stats = dev.engine_stats(0)
    assert stats["tasks"] == 2 and stats["failed"] == 1
    assert stats["bytes_in"] == 10 and stats["bytes_out"] == 5


def test_bad_device_configurations() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        NativeDevice("none", [])
    with pytest.raises(errors.InvalidArgumentError):
        NativeDevice("w", [EngineConfig("cpu", frozenset({"nop"}), workers=0)])
    with pytest.raises(errors.InvalidArgumentError):  # a callback op needs a callback
        NativeDevice("cb", [EngineConfig("cpu", frozenset({"python"}), workers=1)])
    with pytest.raises(errors.UnknownOpError):
        NativeDevice("u", [EngineConfig("cpu", frozenset({"sha1"}), workers=1)])
