"""A device as the cost model sees it: engines, virtual clocks, estimates and charges.

:class:`DeviceModel` is what the emulator and the workload simulator share.
Given an op, its size and the bytes that must cross PCIe, it estimates when
the task would start and finish on an engine (without side effects) and
charges the engine's virtual clock when the task is really placed there.

Two refinements make the model more than a table lookup:

* **online correction**: :meth:`DeviceModel.observe` feeds back what a task
  really cost (its execution time and its output size); estimates of later
  tasks of the same op on the same engine are scaled by the learned factor,
  and output sizes (hence PCIe bytes) by the learned output ratio;
* **coalescing**: small tasks of the same op arriving at an engine within a
  short delay of each other share one dispatch and one DMA set-up, up to a
  bounded count per batch, as dpManager batches small requests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .cost import CostModel, EngineClock, Timeline
from .device import EngineInfo, Refusal
from .placement import _size
from .profile import Profile

__all__ = ["DEFAULT_COALESCING", "Coalescing", "DeviceModel"]

#: Weight of the newest observation in the online corrections.
_LEARN_RATE = 0.2
#: Learned factors stay within these bounds, so one odd run cannot wreck placement.
_FACTOR_BOUNDS = (0.1, 10.0)
#: Output/input ratios assumed before any run of the op was seen (assumptions).
DEFAULT_OUT_RATIO = {
    "deflate_compress": 0.5, "lz4_compress": 0.6, "zstd_compress": 0.45,
    "deflate_decompress": 4.0, "lz4_decompress": 3.0, "zstd_decompress": 4.0,
    "filter": 0.5, "project": 1.0, "aggregate": 0.01, "partition": 1.0,
    "memcpy": 1.0, "crc32c": 0.0, "nop": 0.0, "python": 0.0,
}  # fmt: skip


@dataclass(frozen=True)
class Coalescing:
    """How small tasks are batched: at most ``max_tasks`` per batch, each of
    at most ``max_bytes``, arriving within ``max_delay_s`` of the batch's first.

    Defaults are assumptions in the spirit of dpManager: batch what is
    smaller than a page and arrives within a few microseconds.
    """

    max_tasks: int = 32
    max_bytes: int = 4096
    max_delay_s: float = 5e-6


#: The coalescing devices use unless told otherwise.
DEFAULT_COALESCING = Coalescing()


@dataclass
class _Batch:
    op: str
    opened_s: float
    count: int


class DeviceModel:
    """Engines, clocks and cost figures of one device profile."""

    def __init__(self, profile: Profile, coalescing: Coalescing | None = DEFAULT_COALESCING) -> None:
        self.profile = profile
        self.label = profile.name
        self.cost = CostModel(profile)
        self.coalescing = coalescing
        self.engines = tuple(
            EngineInfo(
                device=self.label,
                name=e.name,
                kind=e.kind,
                index=i,
                lanes=int(e.lanes.value),
                ops=e.ops,
                max_job_bytes=int(e.max_job_bytes.value) if e.max_job_bytes is not None else None,
                on_device=e.on_device,
            )
            for i, e in enumerate(profile.engines)
        )
        self._eprof = {e.name: e for e in profile.engines}
        self.clocks = {e.name: EngineClock(e.lanes) for e in self.engines}
        #: the link's inbound direction, shared with the DMA engine's own copies
        self.dma_clock = next((self.clocks[e.name] for e in self.engines if e.kind == "dma"), None)
        #: PCIe is full duplex: results flow back on a lane of their own
        self.dma_out_clock = EngineClock(1) if self.dma_clock is not None else None
        #: engines whose work makes host-resident data cross PCIe
        self.crossing = {e.name: e.on_device and e.kind != "dma" and profile.pcie is not None for e in self.engines}
        self._factor: dict[tuple[str, str], float] = {}
        self._out_ratio: dict[str, float] = {}
        self._batches: dict[str, _Batch] = {}
        # The DPU's manager batches small requests to its engines; host threads take them one by one.
        self._batching = {e.name: e.on_device for e in self.engines}
        self._lock = threading.Lock()

    # --- estimates ---------------------------------------------------------------

    def refusal(self, op: str, nbytes: int, engine: EngineInfo, out_bytes: int = 0) -> Refusal | None:
        """Why ``engine`` cannot run the op at this size (capability and job size), or None."""
        if op not in engine.ops:
            if engine.kind == "accelerator":
                fig = self.profile.hardware.get(op)
                why = f"no {op} in {self.label} hardware"
                return Refusal("unsupported", f"{why} ({fig.cite()})" if fig is not None else why)
            if op == "python":
                return Refusal("unsupported", "runs no Python code")
            return Refusal("unsupported", f"does not run {op}")
        limit = engine.max_job_bytes
        if limit is not None:
            size = max(nbytes, out_bytes) if op.endswith("_decompress") else nbytes
            if size > limit:
                return Refusal("too_large", f"a {_size(size)} job exceeds the {_size(limit)} maximum job size")
        return None

    def fixed_seconds(self, engine: str, op: str) -> float:
        """The per-task part of an op's cost on an engine."""
        eprof = self._eprof[engine]
        cost = eprof.costs.get(op)
        return float(eprof.dispatch.value) if cost is None else cost.fixed_s

    def exec_seconds(
        self, engine: str, op: str, nbytes: int, *, level: int | None = None, host_seconds: float | None = None
    ) -> float:
        """Modeled time one lane of ``engine`` spends on the job, with the learned correction."""
        seconds = self.cost.exec_seconds(self._eprof[engine], op, nbytes, level=level, host_seconds=host_seconds)
        return seconds * self._factor.get((engine, op), 1.0)

    def out_ratio(self, op: str) -> float:
        """Learned (else assumed) output bytes per input byte of ``op``."""
        return self._out_ratio.get(op, DEFAULT_OUT_RATIO.get(op, 1.0))

    def _coalesced(self, engine: str, op: str, nbytes: int, ready_s: float) -> bool:
        c = self.coalescing
        if c is None or nbytes > c.max_bytes or not self._batching[engine]:
            return False
        batch = self._batches.get(engine)
        return (
            batch is not None
            and batch.op == op
            and batch.count < c.max_tasks
            and batch.opened_s <= ready_s <= batch.opened_s + c.max_delay_s
        )

    def estimate(
        self,
        engine: EngineInfo,
        op: str,
        nbytes: int,
        arrival_s: float,
        *,
        bytes_in: int = 0,
        bytes_out: int = 0,
        level: int | None = None,
        host_seconds: float | None = None,
        cross: bool | None = None,
    ) -> Timeline:
        """Modeled timeline of a task on ``engine`` if submitted now (charges nothing).

        ``bytes_in``/``bytes_out`` cross PCIe before and after it runs (only
        on engines that are on the other side of the link).  ``cross``
        overrides which side that is: True charges the transfers on any
        engine (a host engine pulling data that lives on the DPU), False
        never; None leaves it to the engine.
        """
        exec_s = self.exec_seconds(engine.name, op, nbytes, level=level, host_seconds=host_seconds)
        joins = self._coalesced(engine.name, op, nbytes, arrival_s)
        if joins:  # the batch already paid the dispatch and the DMA set-up
            exec_s = max(0.0, exec_s - self.fixed_seconds(engine.name, op))
        crosses = self.crossing[engine.name] if cross is None else cross
        link_in = link_out = in_s = out_s = 0.0
        if crosses:
            link_in, link_out = self.cost.link_seconds(bytes_in), self.cost.link_seconds(bytes_out)
            in_s = link_in if joins else self.cost.transfer_seconds(bytes_in)
            out_s = link_out if joins else self.cost.transfer_seconds(bytes_out)
        ready = arrival_s + in_s
        if link_in and self.dma_clock is not None:
            ready = self.dma_clock.peek(arrival_s) + in_s
        start = self.clocks[engine.name].peek(ready)
        end = start + exec_s
        if link_out and self.dma_out_clock is not None:
            end = self.dma_out_clock.peek(end)
        return Timeline(arrival_s, start, end + out_s, exec_s, in_s, out_s, link_in, link_out)

    # --- charges -------------------------------------------------------------------

    def charge(self, engine: EngineInfo, op: str, nbytes: int, plan: Timeline, arrival_s: float) -> Timeline:
        """Occupy the lanes ``plan`` (an estimate) needs; return the charged timeline.

        The link is busy only while bytes move (``link_*``); the rest of a
        transfer is latency.  Results go back on the link's outbound lane
        once the task has run.
        """
        in_s, out_s = plan.transfer_in_s, plan.transfer_out_s
        ready = plan.arrival_s + in_s
        if plan.link_in_s and self.dma_clock is not None:
            ready = self.dma_clock.charge(plan.arrival_s, plan.link_in_s)[1] + (in_s - plan.link_in_s)
        start, end = self.clocks[engine.name].charge(ready, plan.exec_s)
        finish = end + out_s
        if plan.link_out_s and self.dma_out_clock is not None:
            finish = self.dma_out_clock.charge(end, plan.link_out_s)[1] + (out_s - plan.link_out_s)
        if self.coalescing is not None and nbytes <= self.coalescing.max_bytes and self._batching[engine.name]:
            with self._lock:
                if self._coalesced(engine.name, op, nbytes, plan.arrival_s):
                    self._batches[engine.name].count += 1
                else:
                    self._batches[engine.name] = _Batch(op, plan.arrival_s, 1)
        return Timeline(arrival_s, start, finish, plan.exec_s, in_s, out_s, plan.link_in_s, plan.link_out_s)

    def uncharge(self, engine: EngineInfo, timeline: Timeline) -> None:
        """Give back a charge whose task never ran (its submission failed)."""
        self.clocks[engine.name].correct(timeline.start_s + timeline.exec_s, -timeline.exec_s)

    def adjust(self, engine: EngineInfo, timeline: Timeline, exec_s: float) -> None:
        """Replace a charged task's execution time by its real one (moves the lane's horizon)."""
        delta = exec_s - timeline.exec_s
        if delta:
            self.clocks[engine.name].correct(timeline.start_s + timeline.exec_s, delta)
            timeline.exec_s = exec_s
            timeline.finish_s += delta

    # --- online correction ------------------------------------------------------------

    def observe(
        self,
        engine: str,
        op: str,
        *,
        estimated_s: float | None = None,
        actual_s: float | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
    ) -> None:
        """Learn from a finished task: its real cost against the estimate, its output ratio."""
        with self._lock:
            if estimated_s and actual_s is not None and estimated_s > 0:
                old = self._factor.get((engine, op), 1.0)
                new = old * (1 - _LEARN_RATE) + old * (actual_s / estimated_s) * _LEARN_RATE
                self._factor[engine, op] = min(max(new, _FACTOR_BOUNDS[0]), _FACTOR_BOUNDS[1])
            if bytes_in and bytes_out is not None:
                ratio = bytes_out / bytes_in
                old_ratio = self._out_ratio.get(op)
                self._out_ratio[op] = (
                    ratio if old_ratio is None else old_ratio * (1 - _LEARN_RATE) + ratio * _LEARN_RATE
                )

    def corrections(self) -> dict[str, float]:
        """Learned factors per ``engine/op`` (1.0: the profile's figure holds)."""
        return {f"{e}/{op}": f for (e, op), f in sorted(self._factor.items())}

    def learned_out_ratios(self) -> dict[str, float]:
        """Learned output/input ratios per op."""
        return dict(sorted(self._out_ratio.items()))
