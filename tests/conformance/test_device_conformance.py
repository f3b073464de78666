"""What every device profile must do.  Runs once per profile (``--profile NAME`` picks one).

Tests that need a capability look it up on the device and skip when it is
absent, so they never name a profile.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from refimpl import crc32c_reference

from dpdpu import Runtime, compute, errors
from dpdpu.runtime.device import Task
from dpdpu.runtime.native import OPS
from dpdpu.runtime.placement import FALLBACK_CHAIN

PAYLOAD = (b"dpdpu conformance " * 4000) + bytes(range(256)) * 64


def engines_running(rt: Runtime, op: str) -> list[str]:
    return [e.kind for e in rt.device.engines if op in e.ops]


def kinds_without(rt: Runtime, op: str) -> list[str]:
    return [e.kind for e in rt.device.engines if op not in e.ops]


def test_profile_figures_carry_sources(rt: Runtime) -> None:
    p = rt.device.profile
    assert p.memory.source
    for engine in p.engines:
        assert engine.lanes.source and (engine.dispatch is None or engine.dispatch.source)
        if engine.max_job_bytes is not None:
            assert engine.max_job_bytes.source
        for cost in engine.costs.values():
            assert cost.source.strip() and cost.setup.source.strip()
            assert cost.per_in_s >= 0 and cost.per_out_s >= 0 and cost.fixed_s >= 0
            # a job's cost grows with it: through its input, or through its output and a largest job
            assert cost.per_in_s > 0 or (cost.per_out_s > 0 and engine.max_job_bytes is not None)
    for line in p.assumptions():
        assert ": " in line  # "what: source"


def test_native_capabilities_match_the_profile(rt: Runtime) -> None:
    native = rt.device.native
    for engine in rt.device.engines:
        for op in OPS:
            assert native.supports(engine.index, op) == (op in engine.ops), (engine.label, op)
            if op in engine.ops:
                assert native.max_job_bytes(engine.index, op) == engine.max_job_bytes


def test_accelerator_ops_agree_with_hardware_matrix(rt: Runtime) -> None:
    hardware = rt.device.profile.hardware
    for engine in rt.device.engines:
        if engine.kind == "accelerator":
            for op in engine.ops - {"nop"}:
                assert hardware[op].value is True


@pytest.mark.parametrize("level", [1, 6])
def test_compress_on_every_capable_engine(rt: Runtime, level: int) -> None:
    kinds = engines_running(rt, "deflate_compress")
    assert kinds, "every device compresses somewhere"
    for kind in kinds:
        fut = rt.submit(compute.compress, PAYLOAD, level=level, engine=kind, fallback=False)
        blob = fut.result()
        assert zlib.decompress(blob) == PAYLOAD
        assert fut.placement.kind == kind and fut.placement.status == "ok"


def fitting_payload(rt: Runtime, op: str) -> bytes:
    """PAYLOAD cut to the largest job of every engine that runs ``op``."""
    limits = [e.max_job_bytes for e in rt.device.engines if op in e.ops and e.max_job_bytes is not None]
    return PAYLOAD[: min([len(PAYLOAD), *limits])]


def test_decompress_on_every_capable_engine(rt: Runtime) -> None:
    payload = fitting_payload(rt, "deflate_decompress")
    blob = zlib.compress(payload, 6)
    for kind in engines_running(rt, "deflate_decompress"):
        assert rt.submit(compute.decompress, blob, engine=kind, fallback=False).result() == payload
        exact = rt.submit(compute.decompress, blob, output_size=len(payload), engine=kind, fallback=False)
        assert exact.result() == payload and exact.placement.attempts == 1


def test_output_above_the_largest_job_moves_to_another_engine(rt: Runtime) -> None:
    limited = [e for e in rt.device.engines if e.max_job_bytes is not None and "deflate_decompress" in e.ops]
    if not limited:
        pytest.skip("no engine of this device limits decompression jobs")
    for engine in limited:
        payload = bytes(engine.max_job_bytes + 1)
        blob = zlib.compress(payload)  # a small stream whose output does not fit one job
        fut = rt.submit(compute.decompress, blob, engine=engine.kind)
        assert fut.result() == payload
        placed = rt.explain(fut)
        assert placed.kind != engine.kind and placed.fallback and "largest job" in placed.fallback
        with pytest.raises(errors.JobTooLargeError, match="largest job"):
            rt.submit(compute.decompress, blob, engine=engine.kind, fallback=False).result()


def test_crc32c_and_memcpy_on_every_capable_engine(rt: Runtime) -> None:
    expected = crc32c_reference(PAYLOAD)
    for kind in engines_running(rt, "crc32c"):
        assert rt.submit(compute.crc32c, PAYLOAD, engine=kind, fallback=False).result() == expected
    for kind in engines_running(rt, "memcpy"):
        dst = bytearray(len(PAYLOAD) + 10)
        assert rt.submit(compute.memcpy, dst, PAYLOAD, engine=kind, fallback=False).result() == len(PAYLOAD)
        assert bytes(dst[: len(PAYLOAD)]) == PAYLOAD


def test_python_tasks_run_on_arm_or_host(rt: Runtime) -> None:
    fut = rt.submit(lambda a, b: a * b, 6, 7)
    assert fut.result() == 42
    expected = "arm" if engines_running(rt, "python") and rt.device.profile.kind == "dpu" else "host"
    assert fut.placement.kind == expected
    assert fut.placement.timeline.exec_s > 0


def test_unsupported_op_without_fallback_names_device_and_op(rt: Runtime) -> None:
    missing = kinds_without(rt, "deflate_compress")
    if not missing:
        pytest.skip("every engine of this device compresses")
    for kind in missing:
        with pytest.raises(errors.UnsupportedOpError) as info:
            rt.submit(compute.compress, PAYLOAD, engine=kind, fallback=False)
        assert rt.device.label in str(info.value) and "deflate_compress" in str(info.value)
    assert zlib.decompress(compute.compress(PAYLOAD)) == PAYLOAD  # still working


def test_pinned_engine_falls_back_along_the_chain(rt: Runtime) -> None:
    for kind in kinds_without(rt, "deflate_compress"):
        if kind not in FALLBACK_CHAIN:
            continue
        fut = rt.submit(compute.compress, PAYLOAD, engine=kind)
        assert zlib.decompress(fut.result()) == PAYLOAD
        chain = FALLBACK_CHAIN[kind]
        assert fut.placement.kind in chain[1:]
        assert fut.placement.fallback and kind in fut.placement.fallback


def test_unknown_engine_kind_and_codec(rt: Runtime) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="gpu"):
        rt.submit(compute.compress, b"x", engine="gpu")
    with pytest.raises(errors.UnknownOpError) as info:
        rt.submit(compute.compress, b"x", codec="brotli")
    assert rt.device.label in str(info.value) and "brotli" in str(info.value)


def test_job_above_max_size(rt: Runtime) -> None:
    limited = [e for e in rt.device.engines if e.max_job_bytes is not None and "deflate_decompress" in e.ops]
    if not limited:
        pytest.skip("no engine of this device limits decompression jobs")
    for engine in limited:
        big = np.zeros(engine.max_job_bytes + 1, dtype=np.uint8)  # lazily zeroed: costs no memory until touched
        with pytest.raises(errors.JobTooLargeError) as info:
            rt.submit(compute.decompress, big, engine=engine.kind, fallback=False)
        assert rt.device.label in str(info.value) and "largest job" in str(info.value)
        fut = rt.submit(compute.decompress, big, engine=engine.kind)  # falls back; zeros are not a zlib stream
        with pytest.raises(errors.CorruptDataError):
            fut.result()
        assert fut.placement.kind != engine.kind
    assert compute.crc32c(b"123456789") == 0xE3069283


def test_device_memory_is_enforced(rt: Runtime) -> None:
    capacity = rt.device.memory_capacity
    assert capacity
    with pytest.raises(errors.DeviceMemoryError) as info:
        rt.alloc(capacity + 1)
    assert rt.device.label in str(info.value)
    before = rt.device.memory_used
    buf = rt.alloc(1 << 20)
    assert rt.device.memory_used == before + (1 << 20)
    view = buf.view()
    view[:5] = b"hello"
    assert rt.submit(compute.crc32c, buf).result() == crc32c_reference(bytes(view))
    del view, buf
    assert rt.device.memory_used == before


def test_corrupt_and_truncated_streams(rt: Runtime) -> None:
    payload = fitting_payload(rt, "deflate_decompress")
    blob = zlib.compress(payload)
    for kind in engines_running(rt, "deflate_decompress"):
        cases = {
            errors.TruncatedDataError: blob[: len(blob) // 2],
            errors.CorruptDataError: b"\x78\x9c" + bytes(range(200)),
        }
        for exc, data in cases.items():
            with pytest.raises(exc) as info:
                rt.submit(compute.decompress, data, engine=kind, fallback=False).result()
            assert rt.device.label in str(info.value) and "deflate_decompress" in str(info.value)
        with pytest.raises(errors.CorruptDataError, match="not a valid"):
            rt.submit(compute.decompress, blob + b"trailing", engine=kind, fallback=False).result()
        assert rt.submit(compute.decompress, blob, engine=kind, fallback=False).result() == payload


def test_output_buffer_too_small(rt: Runtime) -> None:
    blob = zlib.compress(PAYLOAD)
    for kind in engines_running(rt, "deflate_decompress"):
        with pytest.raises(errors.BufferTooSmallError) as info:
            rt.submit(compute.decompress, blob, output_size=100, engine=kind, fallback=False).result()
        assert info.value.needed == len(PAYLOAD)
        assert "deflate_decompress" in str(info.value)
    for kind in engines_running(rt, "memcpy"):
        with pytest.raises(errors.BufferTooSmallError):
            rt.submit(compute.memcpy, bytearray(3), b"four", engine=kind, fallback=False).result()


def test_unknown_op_is_refused_by_the_core(rt: Runtime) -> None:
    with pytest.raises(errors.UnsupportedOpError, match="unknown op"):
        rt.run(Task(op="sha256", src=b"x", nbytes=1))


def test_modeled_time_is_deterministic(profile_name: str) -> None:
    def run() -> list[tuple[str, float, float]]:
        with Runtime(profile_name, workers=2) as runtime:
            futs = [runtime.submit(compute.compress, PAYLOAD[i:], level=1) for i in range(0, 4000, 500)]
            for f in futs:
                f.result()
                assert f.placement.wall_s > 0
            return [(f.placement.engine, f.placement.timeline.start_s, f.placement.timeline.finish_s) for f in futs]

    assert run() == run()


def test_explain_and_stats(rt: Runtime) -> None:
    fut = rt.submit(compute.compress, PAYLOAD)
    fut.result()
    placement = rt.explain(fut)
    labels = {c.engine for c in placement.candidates}
    assert {e.label for e in rt.device.engines} <= labels
    text = str(placement)
    assert placement.engine in text and "<- chosen" in text and "modeled" in text
    stats = rt.stats()
    assert stats.tasks >= 1 and stats.modeled_s > 0 and stats.wall_s > 0
    assert sum(st.bytes_in for st in stats.engines.values()) >= len(PAYLOAD)
    assert placement.engine in stats.engines
    assert "modeled device time" in str(stats)
