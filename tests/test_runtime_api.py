"""The runtime as users drive it: defaults, futures, @offload, explain, stats, shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import dpdpu
from dpdpu import Runtime, compute, errors, offload
from dpdpu.runtime.emulator import EmulatorDevice
from dpdpu.runtime.registry import register_device, registry


def test_default_device_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DPDPU_DEVICE", raising=False)
    with Runtime() as rt:
        assert rt.device.label == "bluefield3"
    monkeypatch.setenv("DPDPU_DEVICE", "bluefield2")
    with Runtime() as rt:
        assert rt.device.label == "bluefield2"
    monkeypatch.setenv("DPDPU_DEVICE", "emulator:host")
    with Runtime() as rt:
        assert rt.device.label == "host" and rt.host is None


def test_unknown_devices_are_clear_errors() -> None:
    with pytest.raises(errors.UnknownDeviceError, match="bluefield9"):
        Runtime("bluefield9")
    with pytest.raises(errors.UnknownDeviceError, match="fpga"):
        Runtime("fpga:bluefield3")
    with pytest.raises(errors.ProfileError, match="cannot read"):
        Runtime("/nonexistent/profile.toml")
    with pytest.raises(errors.InvalidArgumentError):
        Runtime("host", workers=0)


def test_profile_from_a_file(tiny_profile: Path) -> None:
    with Runtime(str(tiny_profile), workers=1) as rt:
        assert rt.device.label == "tiny"
        assert zlib.decompress(compute.compress(b"abc" * 100)) == b"abc" * 100


def test_plain_functions_use_the_current_runtime() -> None:
    with Runtime("bluefield2") as rt:
        assert dpdpu.current_runtime() is rt
        blob = compute.compress(b"x" * 10000, level=1)
        assert rt.stats().tasks == 1
        with Runtime("host") as inner:
            assert dpdpu.current_runtime() is inner
            assert compute.decompress(blob) == b"x" * 10000
            assert inner.stats().tasks == 1
        assert dpdpu.current_runtime() is rt
    default = dpdpu.current_runtime()
    assert default is not rt and not default.closed


def test_zero_copy_inputs_from_numpy_and_arrow() -> None:
    array = np.arange(100_000, dtype=np.int64)
    arrow = pa.array(array).buffers()[1]
    with Runtime("bluefield3") as rt:
        blob = rt.submit(compute.compress, array).result()
        assert zlib.decompress(blob) == array.tobytes()
        assert rt.submit(compute.crc32c, arrow).result() == compute.crc32c(array.tobytes())
        out = np.zeros_like(array)
        assert rt.submit(compute.memcpy, out, arrow).result() == array.nbytes
        assert np.array_equal(out, array)
        with pytest.raises(errors.InvalidArgumentError, match="contiguous"):
            rt.submit(compute.compress, array[::2])
        with pytest.raises(errors.InvalidArgumentError, match="str"):
            rt.submit(compute.compress, "text")
        with pytest.raises(errors.InvalidArgumentError, match="writable"):
            rt.submit(compute.memcpy, b"readonly", b"x")


def test_device_buffers_stay_on_the_device() -> None:
    with Runtime("bluefield3") as rt:
        buf = rt.alloc(1 << 16)
        data = bytes(range(256)) * 256
        host_copy = rt.submit(compute.memcpy, buf, data)
        assert host_copy.result() == len(data) and host_copy.placement.kind == "dma"
        fut = rt.submit(compute.crc32c, buf, engine="arm")
        assert fut.result() == compute.crc32c(data)
        assert fut.placement.timeline.transfer_in_s == 0  # already on the device
        with Runtime("bluefield2") as other, pytest.raises(errors.UnsupportedOpError, match="lives in bluefield3"):
            other.submit(compute.crc32c, buf, engine="arm").result()


def test_futures_work_with_concurrent_futures_and_asyncio() -> None:
    with Runtime("bluefield2") as rt:
        futs = [rt.submit(compute.compress, bytes([i]) * 50_000) for i in range(20)]
        done, not_done = cf.wait(futs, timeout=30)
        assert len(done) == 20 and not not_done
        assert len(list(cf.as_completed([rt.submit(compute.crc32c, b"a") for _ in range(10)]))) == 10
        seen = []
        fut = rt.submit(compute.crc32c, b"abc")
        fut.add_done_callback(lambda f: seen.append(f.result()))
        fut.result()
        assert seen == [compute.crc32c(b"abc")]
        assert fut.cancel() is False

        async def main() -> list[int]:
            return list(await asyncio.gather(*(rt.submit(compute.crc32c, bytes([i])) for i in range(5))))

        assert asyncio.run(main()) == [compute.crc32c(bytes([i])) for i in range(5)]


def test_result_timeout() -> None:
    gate = threading.Event()

    @offload(engine="host")
    def wait_for_gate() -> str:
        gate.wait(5)
        return "open"

    with Runtime("host", workers=1) as rt:
        fut = rt.submit(wait_for_gate)
        with pytest.raises(cf.TimeoutError):
            fut.result(timeout=0.05)
        gate.set()
        assert fut.result(timeout=5) == "open"


def test_offload_decorator_forms_and_errors() -> None:
    @offload
    def plain(x: int) -> int:
        return x + 1

    @offload(engine="host", name="doubler")
    def pinned(x: int) -> int:
        return 2 * x

    @offload()
    def broken() -> None:
        raise ValueError("user bug")

    with Runtime("bluefield3", policy="dpu-only") as rt:
        assert plain(1) == 2
        fut = plain.submit(41)
        assert fut.result() == 42 and fut.placement.kind == "arm"
        fut = pinned.submit(21)
        assert fut.result() == 42 and fut.placement.kind == "host" and fut.placement.task == "doubler"
        with pytest.raises(ValueError, match="user bug"):
            broken()
        assert plain(2) == 3  # the runtime keeps working
        assert rt.stats().errors == 1
    assert plain.__name__ == "plain" and "offload" in repr(plain)
    with pytest.raises(errors.InvalidArgumentError):
        offload(engine="gpu")


def test_offload_without_fallback_on_an_engine_without_python() -> None:
    @offload(engine="accelerator", fallback=False)
    def f() -> int:
        return 1

    with Runtime("bluefield3"), pytest.raises(errors.UnsupportedOpError, match="fallback is forbidden"):
        f()


def test_nested_tasks_do_not_deadlock_the_engine() -> None:
    """Every worker of an engine waits on a task queued behind it on the same engine."""

    @offload(engine="arm")
    def inner(i: int) -> int:
        return i * i

    @offload(engine="arm")
    def outer(i: int) -> int:
        return inner.submit(i).result() + compute.crc32c(b"x", engine="arm")

    with Runtime("bluefield3", workers=2, policy="dpu-only") as rt:
        futs = [outer.submit(i) for i in range(8)]
        crc = compute.crc32c(b"x")
        assert [f.result(timeout=30) for f in futs] == [i * i + crc for i in range(8)]
        stats = rt.stats()
        assert stats.errors == 0
        # calls made inside a task run on the task's runtime, not on a default one
        assert stats.placements["crc32c -> bluefield3/arm"] == 8 + 1  # and one from this thread
        assert stats.placements["python -> bluefield3/arm"] == 16


def test_modeled_python_time_scales_with_the_arm_slowdown() -> None:
    def spin() -> None:
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass

    with Runtime("bluefield2", policy="dpu-only") as rt:
        on_arm = rt.submit(spin)
        on_arm.result()
        on_host = rt.submit(offload(engine="host")(spin))
        on_host.result()
        slowdown = rt.device.profile.engine("arm").python_slowdown.value
        ratio = on_arm.placement.timeline.exec_s / on_host.placement.timeline.exec_s
        assert ratio == pytest.approx(slowdown, rel=0.5)


def test_program_order_drives_virtual_time() -> None:
    data = b"y" * (1 << 20)
    with Runtime("bluefield2") as rt:
        batch = [rt.submit(compute.compress, data) for _ in range(4)]
        arrivals = {f.placement.timeline.arrival_s for f in batch}
        assert arrivals == {0.0}
        last = max(f.result() and f.placement.timeline.finish_s for f in batch)
        after = rt.submit(compute.compress, data)
        after.result()
        assert after.placement.timeline.arrival_s == pytest.approx(last)


def test_batch_spills_from_the_accelerator_to_the_arm_cores() -> None:
    """dpManager's rule: a long accelerator queue makes the Arm cores the earlier finish."""
    chunk = bytes(range(256)) * 4096
    with Runtime("bluefield2", policy="dpu-only") as rt:
        futs = [rt.submit(compute.compress, chunk) for _ in range(64)]
        kinds = {f.placement.kind for f in futs if f.result()}
        assert kinds == {"accelerator", "arm"}
        for f in futs:
            chosen = f.placement.timeline.finish_s
            assert all(c.timeline is None or c.fallback_only or chosen <= c.timeline.finish_s + 1e-12
                       for c in f.placement.candidates)  # fmt: skip


def test_shutdown_and_use_after_close() -> None:
    rt = Runtime("host")
    fut = rt.submit(compute.compress, b"z" * 100_000)
    rt.shutdown()
    assert fut.done() and zlib.decompress(fut.result()) == b"z" * 100_000
    with pytest.raises(errors.RuntimeClosedError):
        rt.submit(compute.crc32c, b"x")
    rt.shutdown()  # idempotent
    assert rt.stats().tasks == 1  # counters outlive the devices


def test_shutdown_without_waiting_fails_queued_work() -> None:
    gate, started = threading.Event(), threading.Event()

    @offload(engine="host")
    def hold() -> int:
        started.set()
        gate.wait(5)
        return 1

    rt = Runtime("host", workers=1)
    first = rt.submit(hold)
    assert started.wait(5)  # running, so shutting down without waiting lets it finish
    queued = [rt.submit(compute.compress, b"q" * 1000) for _ in range(3)]
    threading.Timer(0.05, gate.set).start()
    rt.shutdown(wait=False)
    assert first.result() == 1
    for f in queued:
        with pytest.raises(errors.RuntimeClosedError):
            f.result()


def test_explain_rejects_foreign_futures() -> None:
    with Runtime("host") as rt, pytest.raises(errors.InvalidArgumentError):
        rt.explain(cf.Future())


def test_stats_json_shape() -> None:
    with Runtime("bluefield3", policy="dpu-only") as rt:
        compute.compress(b"s" * 10_000)
        data = rt.stats().as_dict()
    assert data["tasks"] == 1 and "bluefield3/arm" in data["engines"] and "utilization" in data
    assert data["placements"] == {"deflate_compress -> bluefield3/arm": 1}


def test_registry_is_read_only_and_refuses_overwrites() -> None:
    assert "emulator" in registry and registry["emulator"] is EmulatorDevice
    with pytest.raises(TypeError):
        registry["x"] = EmulatorDevice  # type: ignore[index]
    with pytest.raises(errors.InvalidArgumentError, match="already registered"):
        register_device("emulator", "somewhere.else:Device")
    with pytest.raises(errors.InvalidArgumentError, match=r"package\.module:Class"):
        register_device("broken", "no_colon_here")
    register_device("lazy-missing", "not_a_module_dpdpu:Device", hint="pip install dpdpu-lazy")
    with pytest.raises(errors.UnknownDeviceError, match="pip install dpdpu-lazy"):
        Runtime("lazy-missing:bluefield3")
    register_device("emu2", "dpdpu.runtime.emulator:EmulatorDevice")
    with Runtime("emu2:host") as rt:
        assert isinstance(rt.device, EmulatorDevice)


def test_a_device_instance_can_be_passed_in() -> None:
    device = EmulatorDevice("host", workers=1)
    with Runtime(device) as rt:
        assert rt.device is device and compute.crc32c(b"abc") == compute.crc32c(b"abc", engine="host")
    with pytest.raises(errors.InvalidArgumentError):
        Runtime(EmulatorDevice("host"), workers=2)


class _Waits:
    """A callable that only waits (as for another process), marked to run inline."""

    __dpdpu_inline__ = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = threading.Event()

    def __call__(self) -> int:
        self.started.set()
        time.sleep(self.seconds)
        return threading.get_ident()


def test_inline_python_tasks_run_on_the_submitting_thread_without_serializing() -> None:
    with Runtime("bluefield3", workers=1, policy="dpu-only") as rt:
        fn = _Waits(0.3)
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(3) as pool:
            futures = list(pool.map(lambda _: (threading.get_ident(), rt.submit(fn)), range(3)))
        elapsed = time.monotonic() - t0
        # Each ran on the thread that submitted it, all at once (one worker thread could not have).
        assert all(f.result() == ident for ident, f in futures)
        assert elapsed < 0.85
        placement = rt.explain(futures[0][1])
        assert placement.engine == "bluefield3/arm" and placement.wall_s is not None and placement.wall_s >= 0.25
        stats = rt.stats().engines["bluefield3/arm"]
        assert stats.tasks == 3 and stats.inlined == 3


def test_shutdown_waits_for_running_inline_tasks() -> None:
    rt = Runtime("host", workers=1)
    fn = _Waits(0.3)
    with cf.ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: rt.submit(fn).result())
        assert fn.started.wait(10)
        t0 = time.monotonic()
        rt.shutdown()
        assert time.monotonic() - t0 >= 0.2  # the device closed only after the task finished
        assert isinstance(running.result(5), int)
    with pytest.raises(errors.RuntimeClosedError):
        rt.submit(_Waits(0))
