"""Pipelines: a chain of compute ops placed as a whole.

Placing each step on its own fastest engine can make data cross PCIe back
and forth (decompress on the DPU's hardware engine, filter on the host,
aggregate on the DPU ...).  A :class:`Pipeline` is planned as a whole: every
assignment of steps to engines is costed -- execution and queueing from the
cost model, plus a PCIe transfer wherever consecutive steps sit on different
sides of the link, plus bringing the final result to the host -- and the
cheapest runs.  :meth:`Pipeline.plan` shows the numbers without running
anything; :meth:`Pipeline.run` runs the plan and reports what it cost.

>>> import dpdpu, pyarrow as pa
>>> p = dpdpu.compute.Pipeline().filter("x > 1").aggregate([], [("x", "sum")])
>>> p.run(pa.table({"x": [1, 2, 3]})).value.column("x_sum").to_pylist()
[5]

Bytes flowing into a table step are read as an Arrow IPC stream; a table
flowing into ``compress`` is written as one, so compressed Arrow IPC blocks
can be decompressed, filtered and aggregated in one pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .. import errors
from ..runtime.cost import Timeline
from ..runtime.device import Device, DeviceBuffer, EngineInfo, Task, payload_nbytes
from ..runtime.placement import Candidate
from ..runtime.planner import Planner, Route, Stage
from ..runtime.policies import Option
from ..runtime.runtime import Runtime, current_runtime
from ..runtime.units import fmt_bytes, fmt_seconds

__all__ = ["Pipeline", "PipelinePlan", "PipelineRun", "Step"]

#: Step names a pipeline knows.
STEPS = ("decompress", "compress", "filter", "project", "aggregate", "partition")


@dataclass(frozen=True)
class Step:
    """One step: a compute op by name and its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def op(self) -> str:
        """The op the cost model knows it by, e.g. ``lz4_decompress``."""
        if self.name in ("compress", "decompress"):
            return f"{self.kwargs.get('codec', 'deflate')}_{self.name}"
        return self.name

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


#: Where each step runs under one assignment, and its estimated cost.
Choice = Route


@dataclass
class PipelinePlan:
    """The chosen assignment of steps to engines and the alternatives it beat."""

    steps: list[Step]
    input_bytes: int
    policy: str
    chosen: Choice
    alternatives: list[Choice]
    stepwise: Choice | None = None
    considered: int = 0

    def __str__(self) -> str:
        lines = [
            f"pipeline of {len(self.steps)} steps on {fmt_bytes(self.input_bytes)} ({self.policy}; "
            f"{self.considered} assignments costed)"
        ]
        width = max(len(str(s)) for s in self.steps)
        for step, engine in zip(self.steps, self.chosen.engines, strict=True):
            lines.append(f"  {step!s:<{width}}  -> {engine}")
        lines.append(f"  {'assignment':<60} {'total':>10} {'exec':>10} {'PCIe':>10} {'bytes':>10}")
        rows = [("chosen", self.chosen), *((f"alt {i + 1}", c) for i, c in enumerate(self.alternatives))]
        if self.stepwise is not None:
            rows.append(("each step alone", self.stepwise))
        for name, c in rows:
            route = " > ".join(e.split("/")[-1] + "@" + e.split("/")[0] for e in c.engines)
            lines.append(
                f"  {name + ': ' + route:<60} {fmt_seconds(c.total_s):>10} {fmt_seconds(c.exec_s):>10} "
                f"{fmt_seconds(c.transfer_s):>10} {fmt_bytes(c.pcie_bytes):>10}"
            )
        return "\n".join(lines)


@dataclass
class PipelineRun:
    """What running a pipeline produced and cost."""

    value: Any
    plan: PipelinePlan
    wall_s: float
    modeled_s: float
    pcie_bytes: int
    step_bytes: list[int]

    def __str__(self) -> str:
        return (
            f"{self.plan}\n  ran: wall {fmt_seconds(self.wall_s)}, modeled {fmt_seconds(self.modeled_s)}, "
            f"{fmt_bytes(self.pcie_bytes)} over PCIe"
        )


def _as_table(value: Any) -> Any:
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        return value
    if isinstance(value, DeviceBuffer):
        value = value.view()
    try:
        return pa.ipc.open_stream(pa.py_buffer(value)).read_all()
    except (pa.ArrowInvalid, TypeError) as exc:
        raise errors.InvalidArgumentError(f"a table step needs Arrow data or an Arrow IPC stream ({exc})") from None


def _as_bytes(value: Any) -> Any:
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write(value)
        return sink.getvalue()
    return value


def _functions() -> dict[str, Callable[..., Any]]:
    from . import codecs, kernels

    return {
        "compress": codecs.compress,
        "decompress": codecs.decompress,
        "filter": kernels.filter,
        "project": kernels.project,
        "aggregate": kernels.aggregate,
        "partition": kernels.partition,
    }


class Pipeline:
    """A chain of compute steps, planned and placed as a whole.

    Build it step by step (``Pipeline().decompress(codec="lz4").filter("x > 1")``)
    or from a list of :class:`Step` / ``(name, kwargs)`` pairs.
    """

    def __init__(self, steps: Sequence[Step | tuple[str, dict[str, Any]]] = ()) -> None:
        self.steps: list[Step] = []
        for step in steps:
            self._add(step if isinstance(step, Step) else Step(step[0], dict(step[1])))

    def _add(self, step: Step) -> Pipeline:
        if step.name not in STEPS:
            raise errors.UnknownOpError(f"unknown pipeline step {step.name!r}; available: {', '.join(STEPS)}")
        if self.steps and self.steps[-1].name == "partition":
            raise errors.InvalidArgumentError("partition must be the last step of a pipeline")
        self.steps.append(step)
        return self

    def decompress(self, codec: str = "deflate", **kwargs: Any) -> Pipeline:
        """Append a decompression (see :func:`dpdpu.compute.decompress`)."""
        return self._add(Step("decompress", {"codec": codec, **kwargs}))

    def compress(self, codec: str = "deflate", **kwargs: Any) -> Pipeline:
        """Append a compression (see :func:`dpdpu.compute.compress`)."""
        return self._add(Step("compress", {"codec": codec, **kwargs}))

    def filter(self, predicate: Any) -> Pipeline:
        """Append a filter (see :func:`dpdpu.compute.filter`)."""
        return self._add(Step("filter", {"predicate": predicate}))

    def project(self, columns: Any) -> Pipeline:
        """Append a projection (see :func:`dpdpu.compute.project`)."""
        return self._add(Step("project", {"columns": columns}))

    def aggregate(self, keys: Sequence[str], aggregations: Sequence[tuple[str | None, str]]) -> Pipeline:
        """Append a hash aggregation (see :func:`dpdpu.compute.aggregate`)."""
        return self._add(Step("aggregate", {"keys": list(keys), "aggregations": list(aggregations)}))

    def partition(self, keys: Sequence[str], n: int) -> Pipeline:
        """Append a hash partitioning into ``n`` parts; it must be the last step."""
        return self._add(Step("partition", {"keys": list(keys), "n": n}))

    def __repr__(self) -> str:
        return "Pipeline(" + " > ".join(str(s) for s in self.steps) + ")"

    # --- planning --------------------------------------------------------------------

    def plan(self, data: Any, runtime: Runtime | None = None) -> PipelinePlan:
        """Cost every assignment of steps to engines for ``data``; nothing runs.

        ``data`` in host memory crosses PCIe before a step on the DPU; a
        :class:`~dpdpu.runtime.device.DeviceBuffer` (data that arrived in DPU
        memory, from the network say) crosses only if a step runs on the host.
        """
        if not self.steps:
            raise errors.InvalidArgumentError("the pipeline has no steps")
        rt = runtime or current_runtime()
        size = payload_nbytes(data)
        model = getattr(rt.device, "model", None)
        stages: list[Stage] = []
        options: list[list[tuple[Device, EngineInfo]]] = []
        for step in self.steps:
            ratio = model.out_ratio(step.op) if model is not None else 1.0
            level = step.kwargs.get("level")
            stage = Stage(step.op, size, max(1, int(size * ratio)), level if isinstance(level, int) else None)
            stages.append(stage)
            options.append(_allowed(rt, stage, step))
            size = stage.out_bytes
        planner = _planner(rt)
        arrival = rt.vnow
        start = "device" if isinstance(data, DeviceBuffer) else "host"  # data the NIC put in DPU memory
        routes = planner.plan(stages, options, arrival, start=start)
        return PipelinePlan(
            steps=list(self.steps),
            input_bytes=stages[0].nbytes,
            policy=rt.policy,
            chosen=routes[0],
            alternatives=routes[1:4],
            stepwise=planner.stepwise(stages, options, arrival, start=start),
            considered=len(routes),
        )

    # --- running -----------------------------------------------------------------------

    def run(self, data: Any, runtime: Runtime | None = None) -> PipelineRun:
        """Plan, then run every step on the engine the plan chose; returns the result and its costs."""
        rt = runtime or current_runtime()
        plan = self.plan(data, rt)
        functions = _functions()
        start_v, start_pcie, t0 = rt.vnow, rt.stats().pcie_bytes, time.perf_counter()
        value, step_bytes = data, []
        labels = {info.label: _side(rt, dev, info) for dev in rt.devices for info in dev.engines}
        sides = [labels[e] for e in plan.chosen.engines]
        with rt.as_current():
            for i, (step, engine) in enumerate(zip(self.steps, plan.chosen.engines, strict=True)):
                value = _as_bytes(value) if step.name == "decompress" or step.name == "compress" else _as_table(value)
                # Intermediate results stay where they were made; only side changes cross PCIe.
                made_on_device = sides[i - 1] == "device" if i > 0 else isinstance(data, DeviceBuffer)
                resident = rt.device.label if made_on_device else None
                keep = i + 1 < len(sides) and sides[i] == sides[i + 1] == "device"
                with rt.pinned(engine), rt.data_on(resident, keep_output=keep):
                    value = functions[step.name](value, **step.kwargs)
                step_bytes.append(payload_nbytes(value))
        return PipelineRun(
            value=value,
            plan=plan,
            wall_s=time.perf_counter() - t0,
            modeled_s=rt.vnow - start_v,
            pcie_bytes=rt.stats().pcie_bytes - start_pcie,
            step_bytes=step_bytes,
        )

    __call__ = run


def _allowed(rt: Runtime, stage: Stage, step: Step) -> list[tuple[Device, EngineInfo]]:
    """The engines the runtime's policy lets the step run on (any able engine if it leaves none)."""
    probe = Task(op=stage.op, nbytes=stage.nbytes, out_hint=stage.out_bytes, level=stage.level, name=stage.op)
    options = []
    for dev in rt.devices:
        for info in dev.engines:
            refusal = dev.can_run(probe, info)
            timeline = dev.estimate(probe, info, rt.vnow) if refusal is None else None
            on_host = dev is rt.host or (rt.host is None and info.kind == "host")
            options.append(Option(dev, info, Candidate(info.label, info.kind, refusal, timeline), on_host))
    pool = rt.placement_policy.choose(options, rt.device, fallback=True, op=stage.op).pool
    able = [(o.device, o.info) for o in (pool or [o for o in options if o.able])]
    if not able:
        raise errors.UnsupportedOpError(f"no engine of this runtime can run {step}", op=stage.op)
    return able


def _side(rt: Runtime, dev: Device, info: EngineInfo) -> str:
    return "device" if dev is not rt.host and info.on_device else "host"


def _planner(rt: Runtime) -> Planner:
    def estimate(dev: Device, info: EngineInfo, stage: Stage, t: float) -> Timeline:
        model = getattr(dev, "model", None)
        if model is not None:  # execution and queueing only: the planner charges the hops
            return model.estimate(info, stage.op, stage.nbytes, t, out_bytes=stage.out_bytes, level=stage.level)  # type: ignore[no-any-return]
        return dev.estimate(Task(op=stage.op, nbytes=stage.nbytes, out_hint=stage.out_bytes), info, t)

    model = getattr(rt.device, "model", None)
    return Planner(None if model is None else model.cost, lambda d, i: _side(rt, d, i), estimate)
