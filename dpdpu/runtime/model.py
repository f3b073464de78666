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
* **coalescing**: small tasks of an op whose profile lets it coalesce, arriving
  at an engine within a short delay of each other, are merged into one job
  that pays one set-up and one DMA set-up, up to a bounded count per batch, as
  dpManager merges small requests for the kernels that enable it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .cost import SPLITTABLE, CostModel, EngineClock, Timeline
from .device import EngineInfo, Refusal
from .profile import Figure, Profile
from .units import fmt_bytes

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
    """How small tasks are merged into one job: at most ``max_tasks`` per batch,
    each of at most ``max_bytes``, arriving within ``max_delay_s`` of the
    batch's first task and starting within ``max_delay_s`` of the batch's start
    (one merged job, not a queue of them), the batch no larger than the
    engine's largest job.

    ``max_tasks`` and ``max_delay_s`` are dpManager's (``MAX_COALESCE_INPUT_NUM``
    64 and ``COALESCE_TIMEOUT`` 50 us in ``DPManager/coalescing.hpp``);
    ``max_bytes``, the size below which a task counts as small, is an
    assumption.  Only ops whose profile sets ``coalesce = true`` are merged:
    dpKernels enables it per kernel and not for decompression.
    """

    max_tasks: int = 64
    max_bytes: int = 4096
    max_delay_s: float = 50e-6


#: The coalescing devices use unless told otherwise.
DEFAULT_COALESCING = Coalescing()


@dataclass
class _Batch:
    op: str
    opened_s: float
    start_s: float
    count: int
    nbytes: int


def _short_cite(fig: Figure) -> str:
    """Where a figure comes from, in a few words (its source up to the first colon)."""
    short = fig.source.split(":")[0].strip()
    return f"assumption: {short}" if fig.assumption else short


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
        # The DPU's manager merges small requests of the ops that allow it; host threads take them one by one.
        self._merges = {
            e.name: frozenset(op for op, c in self._eprof[e.name].costs.items() if c.coalesces) if e.on_device
            else frozenset()
            for e in self.engines
        }  # fmt: skip
        self._limits = {e.name: e.max_job_bytes for e in self.engines}
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
        if limit is not None and op not in SPLITTABLE:
            size = max(nbytes, out_bytes) if op.endswith("_decompress") else nbytes
            if size > limit:
                fig = self._eprof[engine.name].max_job_bytes
                cite = f" ({_short_cite(fig)})" if fig is not None else ""
                big, cap = fmt_bytes(size), fmt_bytes(limit)
                if big == cap:  # too close to tell apart in rounded units
                    big, cap = f"{size:,} B", f"{limit:,} B"
                return Refusal("too_large", f"a {big} job exceeds the {cap} largest job{cite}")
        return None

    def fixed_seconds(self, engine: str, op: str) -> float:
        """The per-job set-up of an op on an engine."""
        eprof = self._eprof[engine]
        cost = eprof.costs.get(op)
        if cost is not None:
            return cost.fixed_s
        return 0.0 if eprof.dispatch is None else float(eprof.dispatch.value)

    def exec_seconds(
        self,
        engine: str,
        op: str,
        nbytes: int,
        out_bytes: int = 0,
        *,
        level: int | None = None,
        host_seconds: float | None = None,
    ) -> float:
        """Modeled time one lane of ``engine`` spends on the job, with the learned correction."""
        eprof = self._eprof[engine]
        seconds = self.cost.exec_seconds(eprof, op, nbytes, out_bytes, level=level, host_seconds=host_seconds)
        return seconds * self._factor.get((engine, op), 1.0)

    def jobs(self, engine: str, op: str, nbytes: int) -> int:
        """How many jobs a task is split into on ``engine``."""
        return self.cost.jobs(self._eprof[engine], op, nbytes)

    def out_ratio(self, op: str) -> float:
        """Learned (else assumed) output bytes per input byte of ``op``."""
        return self._out_ratio.get(op, DEFAULT_OUT_RATIO.get(op, 1.0))

    def _coalesced(self, engine: str, op: str, nbytes: int, ready_s: float) -> bool:
        c = self.coalescing
        if c is None or nbytes > c.max_bytes or op not in self._merges[engine]:
            return False
        batch = self._batches.get(engine)
        if batch is None or batch.op != op or batch.count >= c.max_tasks:
            return False
        limit = self._limits[engine]
        if limit is not None and batch.nbytes + nbytes > limit:
            return False
        # The manager's window counts from the batch's first arrival, and a
        # member must start while the merged job does: a task that would queue
        # behind it on the lane belongs to a later job.
        if not batch.opened_s <= ready_s <= batch.opened_s + c.max_delay_s:
            return False
        return self.clocks[engine].peek(ready_s) <= batch.start_s + c.max_delay_s

    def estimate(
        self,
        engine: EngineInfo,
        op: str,
        nbytes: int,
        arrival_s: float,
        *,
        bytes_in: int = 0,
        bytes_out: int = 0,
        out_bytes: int = 0,
        level: int | None = None,
        host_seconds: float | None = None,
        cross: bool | None = None,
    ) -> Timeline:
        """Modeled timeline of a task on ``engine`` if submitted now (charges nothing).

        ``out_bytes`` is the task's output, for ops whose cost depends on
        it.  ``bytes_in``/``bytes_out`` cross PCIe before and after it runs
        (only on engines that are on the other side of the link).  ``cross``
        overrides which side that is: True charges the transfers on any
        engine (a host engine pulling data that lives on the DPU), False
        never; None leaves it to the engine.
        """
        exec_s = self.exec_seconds(engine.name, op, nbytes, out_bytes, level=level, host_seconds=host_seconds)
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
        return Timeline(arrival_s, start, end + out_s, exec_s, in_s, out_s, link_in, link_out, coalesced=joins)

    # --- charges -------------------------------------------------------------------

    def charge(self, engine: EngineInfo, op: str, nbytes: int, plan: Timeline, arrival_s: float) -> Timeline:
        """Occupy the lanes ``plan`` (an estimate) needs; return the charged timeline.

        The link is busy only while bytes move (``link_*``); the rest of a
        transfer is latency.  Results go back on the link's outbound lane
        once the task has run.
        """
        exec_s, coalesced = plan.exec_s, False
        c = self.coalescing
        merges = c is not None and nbytes <= c.max_bytes and op in self._merges[engine.name]
        if merges:
            with self._lock:
                coalesced = plan.coalesced and self._coalesced(engine.name, op, nbytes, plan.arrival_s)
            if plan.coalesced and not coalesced:  # the batch closed since the estimate: pay the set-up
                exec_s += self.fixed_seconds(engine.name, op) * self._factor.get((engine.name, op), 1.0)
        in_s, out_s = plan.transfer_in_s, plan.transfer_out_s
        ready = plan.arrival_s + in_s
        if plan.link_in_s and self.dma_clock is not None:
            ready = self.dma_clock.charge(plan.arrival_s, plan.link_in_s)[1] + (in_s - plan.link_in_s)
        start, end = self.clocks[engine.name].charge(ready, exec_s)
        finish = end + out_s
        if plan.link_out_s and self.dma_out_clock is not None:
            finish = self.dma_out_clock.charge(end, plan.link_out_s)[1] + (out_s - plan.link_out_s)
        if merges:
            with self._lock:
                batch = self._batches.get(engine.name)
                if coalesced and batch is not None:
                    batch.count += 1
                    batch.nbytes += nbytes
                else:
                    self._batches[engine.name] = _Batch(op, plan.arrival_s, start, 1, nbytes)
        return Timeline(
            arrival_s, start, finish, exec_s, in_s, out_s, plan.link_in_s, plan.link_out_s, coalesced=coalesced
        )

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
