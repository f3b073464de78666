"""Placement policies, exact pinning, queue-full fallback, coalescing and online correction."""

from __future__ import annotations

import os
import zlib
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import dpdpu
from dpdpu import compute, errors
from dpdpu.compute.pipeline import Pipeline
from dpdpu.runtime.cost import Timeline
from dpdpu.runtime.device import Task
from dpdpu.runtime.model import Coalescing, DeviceModel
from dpdpu.runtime.profile import Profile

MIB = 1 << 20


def test_bluefield3_never_compresses_deflate_in_hardware_and_bluefield2_does() -> None:
    data = os.urandom(MIB // 2) + bytes(MIB // 2)
    for policy in ("cost", "dpu-only", "greedy-accelerator"):
        with dpdpu.Runtime("bluefield3", policy=policy) as rt:
            fut = rt.submit(compute.compress, data)
            assert compute.decompress(fut.result()) == data
            assert rt.explain(fut).kind != "accelerator"
            accel = next(c for c in rt.explain(fut).candidates if c.engine == "bluefield3/accelerator")
            assert accel.refusal is not None and "no deflate_compress in bluefield3 hardware" in accel.refusal.reason
    with dpdpu.Runtime("bluefield2", policy="greedy-accelerator") as rt:
        assert rt.explain(rt.submit(compute.compress, data)).engine == "bluefield2/accelerator"
    with dpdpu.Runtime("bluefield3", policy="greedy-accelerator") as rt:
        page = data[-8192:]  # within the engine's 16 KiB largest job
        blob = compute.compress(page, "lz4")
        fut = rt.submit(compute.decompress, blob, "lz4", output_size=len(page))
        assert fut.result() == page and rt.explain(fut).engine == "bluefield3/accelerator"


def test_cost_policy_weighs_the_host_and_pcie() -> None:
    data = os.urandom(MIB)
    with dpdpu.Runtime("bluefield3") as rt:  # cost: the host's zlib beats the A78 cores
        fut = rt.submit(compute.compress, data, level=1)
        plan = rt.explain(fut)
        assert plan.policy == "cost" and plan.engine == "host/cpu"
        arm = next(c for c in plan.candidates if c.engine == "bluefield3/arm")
        assert arm.timeline is not None and arm.timeline.transfer_in_s > 0  # the data would cross PCIe
        assert plan.timeline is not None and plan.timeline.finish_s <= arm.timeline.finish_s
        text = str(plan)
        assert "host/cpu" in text and "bluefield3/arm" in text and "<- chosen" in text
    with dpdpu.Runtime("bluefield3", policy="dpu-only") as rt:
        assert rt.explain(rt.submit(compute.compress, data, level=1)).engine == "bluefield3/arm"
    with dpdpu.Runtime("bluefield3", policy="host-only") as rt:
        assert rt.explain(rt.submit(compute.decompress, compute.compress(data))).engine == "host/cpu"
    with pytest.raises(errors.InvalidArgumentError, match="unknown placement policy"):
        dpdpu.Runtime("host", policy="fastest")


def test_cost_policy_spreads_a_batch_over_the_accelerator_and_other_engines() -> None:
    jobs = [bytes([i]) * (2 * MIB) for i in range(24)]
    with dpdpu.Runtime("bluefield2", workers=2) as rt:
        futures = [rt.submit(compute.compress, j, level=6) for j in jobs]
        assert [compute.decompress(f.result()) for f in futures] == jobs
        engines = Counter(f.placement.engine for f in futures)
    assert engines["bluefield2/accelerator"] >= 1 and len(engines) >= 2
    finishes = [f.placement.timeline.finish_s for f in futures]
    with dpdpu.Runtime("bluefield2", workers=2, policy="greedy-accelerator") as rt:
        greedy = [rt.submit(compute.compress, j, level=6) for j in jobs]
        [f.result() for f in greedy]
    assert {f.placement.engine for f in greedy} == {"bluefield2/accelerator"}
    assert max(finishes) < max(f.placement.timeline.finish_s for f in greedy)


def test_full_accelerator_queue_falls_back() -> None:
    data = [bytes([i]) * 200_000 for i in range(12)]
    with dpdpu.Runtime("bluefield2", queue_depth=2, workers=1, policy="greedy-accelerator") as rt:
        futures = [rt.submit(compute.compress, d) for d in data]
        assert [compute.decompress(f.result()) for f in futures] == data
    engines = Counter(f.placement.engine for f in futures)
    assert engines["bluefield2/accelerator"] >= 2 and engines["bluefield2/accelerator"] < len(data)
    assert any("queue is full" in (f.placement.fallback or "") for f in futures)


def test_pinning_an_exact_engine() -> None:
    with dpdpu.Runtime("bluefield3") as rt:
        with rt.pinned("bluefield3/arm"):
            fut = rt.submit(compute.crc32c, b"abc")
        assert fut.result() == compute.crc32c(b"abc") and rt.explain(fut).engine == "bluefield3/arm"
        fut = rt.run(Task(op="nop", name="nop"), engine="host/cpu")
        fut.result()
        assert rt.explain(fut).engine == "host/cpu"
        with pytest.raises(errors.InvalidArgumentError, match="no engine"), rt.pinned("bluefield9/arm"):
            pass


def test_small_tasks_coalesce_up_to_a_bound() -> None:
    profile = Profile.load("bluefield3")
    batched, single = DeviceModel(profile), DeviceModel(profile, coalescing=None)
    arm = batched.engines[1]
    assert arm.name == "arm" and profile.engine("arm").costs["crc32c"].coalesces
    bound = Coalescing().max_tasks
    assert bound == 64 and Coalescing().max_delay_s == 50e-6  # dpManager's limits
    costs: dict[str, list[float]] = {"batched": [], "single": []}
    for name, model in (("batched", batched), ("single", single)):
        for _ in range(bound + 6):
            plan = model.estimate(arm, "crc32c", 512, 0.0, bytes_in=512)
            costs[name].append(model.charge(arm, "crc32c", 512, plan, 0.0).exec_s)
    # The first of each batch pays the set-up; the rest share it, up to the bound.
    assert costs["batched"][0] == pytest.approx(costs["single"][0])
    assert all(c < costs["single"][0] for c in costs["batched"][1:bound])
    assert costs["batched"][bound] == pytest.approx(costs["single"][0])
    assert sum(costs["batched"]) < sum(costs["single"])
    late = batched.estimate(arm, "crc32c", 512, 1.0)  # arrives long after the batch opened
    assert late.exec_s == pytest.approx(costs["single"][0])
    big = batched.estimate(arm, "crc32c", 1 << 20, 0.0)  # too large to coalesce
    assert big.exec_s > costs["single"][0]


def test_coalescing_window_counts_from_the_batch_start() -> None:
    def small(model: DeviceModel, at: float) -> Timeline:
        return model.estimate(dma, "memcpy", 512, at)

    model = DeviceModel(Profile.load("bluefield3"))
    dma = next(e for e in model.engines if e.kind == "dma")
    model.charge(dma, "memcpy", 512, small(model, 0.0), 0.0)  # opens a batch
    joined = small(model, 1e-6)
    assert joined.coalesced and joined.exec_s < small(DeviceModel(Profile.load("bluefield3")), 0.0).exec_s
    # Jobs too large to merge fill the one lane: a small task arriving just after
    # the batch opened would start long after the merged job began, so it is a job
    # of its own even though it arrived within the window.
    for _ in range(10):
        model.charge(dma, "memcpy", MIB, model.estimate(dma, "memcpy", MIB, 0.0), 0.0)
    late = small(model, 1e-6)
    assert late.start_s > 50e-6 and not late.coalesced


def test_decompression_is_never_coalesced_and_batches_keep_the_published_rate() -> None:
    model = DeviceModel(Profile.load("bluefield3"))
    accel = model.engines[0]
    assert accel.kind == "accelerator"
    plans = []
    for _ in range(256):
        plan = model.estimate(accel, "deflate_decompress", 1647, 0.0, out_bytes=4096)
        assert not plan.coalesced
        plans.append(model.charge(accel, "deflate_decompress", 1647, plan, 0.0))
    mib_per_s = 256 * 1647 / max(p.finish_s for p in plans) / MIB
    assert mib_per_s == pytest.approx(7351.680786, rel=0.10)  # dpKernels' 4 KB point, one engine


def test_estimates_learn_from_observed_runs() -> None:
    model = DeviceModel(Profile.load("host"))
    cpu = model.engines[0]
    before = model.exec_seconds("cpu", "filter", MIB)
    for _ in range(20):
        model.observe("cpu", "filter", estimated_s=model.exec_seconds("cpu", "filter", MIB), actual_s=2 * before)
    assert model.exec_seconds("cpu", "filter", MIB) == pytest.approx(2 * before, rel=0.05)
    assert model.corrections()["cpu/filter"] == pytest.approx(2.0, rel=0.05)
    assert model.out_ratio("lz4_decompress") == 3.0  # the prior
    with dpdpu.Runtime("host") as rt:
        blob = compute.compress(bytes(MIB), "lz4")
        for _ in range(5):
            rt.submit(compute.decompress, blob, "lz4").result()
        learned = rt.device.model.out_ratio("lz4_decompress")  # type: ignore[attr-defined]
    assert learned > 50  # zeros compress far better than the prior assumed
    assert cpu.label == "host/cpu"


def test_pipeline_is_placed_as_a_whole() -> None:
    table = pa.table({"k": [i % 7 for i in range(50_000)], "v": [float(i) for i in range(50_000)]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    blob = compute.compress(sink.getvalue(), "lz4")
    expected = table.filter(pc.field("v") > 1000).group_by("k").aggregate([("v", "sum")]).sort_by("k")
    pipeline = Pipeline().decompress(codec="lz4").filter("v > 1000").aggregate(["k"], [("v", "sum")])
    for policy in ("cost", "dpu-only", "host-only"):
        with dpdpu.Runtime("bluefield3", policy=policy) as rt:
            plan = pipeline.plan(blob, rt)
            run = pipeline.run(blob, rt)
            assert run.value.sort_by("k").equals(expected.select(run.value.column_names))
            assert plan.chosen.total_s <= min((c.total_s for c in plan.alternatives), default=float("inf"))
            assert plan.stepwise is not None and plan.chosen.total_s <= plan.stepwise.total_s + 1e-12
            if policy == "dpu-only":
                # the decompressed stream exceeds the hardware's largest job: the Arm cores take it
                assert plan.chosen.engines[0] == "bluefield3/arm"
                # decompressed data stays on the DPU: only the compressed input and the tiny result cross
                assert plan.chosen.pcie_bytes < 2 * len(blob)
                assert run.pcie_bytes < 2 * len(blob)  # and the run charged what the plan said
            if policy == "host-only":
                assert set(plan.chosen.engines) == {"host/cpu"} and plan.chosen.pcie_bytes == 0
            assert "decompress(codec='lz4')" in str(run)
    with pytest.raises(errors.UnknownOpError):
        Pipeline([("sort", {})])
    with pytest.raises(errors.InvalidArgumentError, match="no steps"):
        Pipeline().plan(b"x")


def test_a_new_policy_is_one_class() -> None:
    from dpdpu.runtime.policies import Choice, Policy, register_policy, registered_policies

    class ArmFirst(Policy):
        """The Arm cores whenever they can run the task."""

        name = "arm-first"

        def choose(self, options, device, *, fallback, op):  # type: ignore[no-untyped-def]
            arm = [o for o in options if o.able and o.info.kind == "arm"]
            return Choice(options, arm or [o for o in options if o.able])

    register_policy(ArmFirst)
    assert registered_policies()["arm-first"] is ArmFirst
    with dpdpu.Runtime("bluefield3", policy="arm-first") as rt:
        fut = rt.submit(compute.crc32c, b"x" * 100_000)
        assert fut.result() == compute.crc32c(b"x" * 100_000)
        assert rt.explain(fut).kind == "arm" and rt.explain(fut).policy == "arm-first"
    with dpdpu.Runtime("bluefield3", policy=ArmFirst()) as rt:
        assert rt.policy == "arm-first"
    with pytest.raises(errors.InvalidArgumentError, match="already registered"):
        register_policy(type("Other", (ArmFirst,), {}))
    with pytest.raises(errors.InvalidArgumentError, match="unknown placement policy"):
        dpdpu.Runtime("bluefield3", policy="nonsense")


def test_data_in_dpu_memory_stays_there_unless_a_host_core_pulls_it() -> None:
    page = b"GET /y 500\n" * 1000
    blob = zlib.compress(page)

    @dpdpu.offload(engine="arm")
    def inflate_on_arm(b: bytes) -> bytes:
        return compute.decompress(b)

    with dpdpu.Runtime("bluefield3") as rt:
        fut = inflate_on_arm.submit(blob)
        assert fut.result() == page
        # what the Arm function submitted read DPU memory: the hardware engine took it, no PCIe
        assert rt.stats().placements == {
            "python -> bluefield3/arm": 1,
            "deflate_decompress -> bluefield3/accelerator": 1,
        }
        buf = rt.alloc(len(blob))
        buf.view()[:] = blob
        pulled = rt.submit(compute.decompress, buf, engine="host")  # a host core pulls it over PCIe
        assert pulled.result() == page
        assert rt.explain(pulled).timeline.transfer_in_s > 0  # type: ignore[union-attr]
        assert rt.stats().engines["host/cpu"].pcie_bytes == len(blob)
