"""The cost model and the virtual clocks that charge modeled device time.

Modeled time is deterministic: it depends on the profile, the job sizes and
the order of submission, never on how fast the machine running the emulator
is.  Each engine has a clock with one "busy until" time per lane; a task
starts on the lane that frees first and occupies it for its modeled service
time.  A task that runs on the DPU while its data lives in host memory also
occupies the device's DMA engine for the PCIe transfers in and out.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass

from .profile import EngineProfile, Profile

__all__ = ["SPLITTABLE", "ZLIB_LEVEL_SPEED", "CostModel", "EngineClock", "Timeline"]

#: Ops whose output format lets a job larger than an engine's largest run as
#: several independent jobs: deflate compression ends each segment with a full
#: flush, so the segments decode on their own and together form one zlib stream.
SPLITTABLE = frozenset({"deflate_compress"})

#: Software deflate throughput at each zlib level relative to level 6, which
#: the profiles' figures are given for.  Assumption: from zlib 1.2.13 on mixed
#: log text and random data (level 1 runs 2-4x faster than level 6, level 9
#: about 2x slower).  Hardware engines have no levels and ignore this.
ZLIB_LEVEL_SPEED = {0: 20.0, 1: 2.5, 2: 2.2, 3: 1.8, 4: 1.4, 5: 1.2, 6: 1.0, 7: 0.8, 8: 0.5, 9: 0.4}

#: Prior estimate of a Python function's host run time before any run has
#: been observed (assumption: a small function).
PYTHON_PRIOR_S = 50e-6


class CostModel:
    """Per-engine execution and transfer estimates from a profile."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._pcie_rate = profile.pcie_bytes_per_s
        self._pcie_fixed = profile.pcie_fixed_s

    def exec_seconds(
        self,
        engine: EngineProfile,
        op: str,
        nbytes: int,
        out_bytes: int = 0,
        *,
        level: int | None = None,
        host_seconds: float | None = None,
    ) -> float:
        """Modeled time one lane of ``engine`` spends on the job.

        ``out_bytes`` is the job's output (known, or estimated before it
        runs); ops whose profile gives an output ceiling charge for it.
        ``host_seconds`` is the host run time of a Python function (measured
        or estimated); the engine's ``python_slowdown`` scales it.  A job
        larger than the engine's largest that the format lets split
        (:data:`SPLITTABLE`) is charged as that many jobs, one after another.
        """
        dispatch = 0.0 if engine.dispatch is None else float(engine.dispatch.value)
        if op == "python":
            slowdown = engine.python_slowdown.value if engine.python_slowdown is not None else 1.0
            return dispatch + (host_seconds or 0.0) * float(slowdown)
        cost = engine.costs.get(op)
        if cost is None:  # nop: the hand-off only
            return dispatch
        jobs = self.jobs(engine, op, nbytes)
        seconds = cost.seconds(nbytes, out_bytes) + (jobs - 1) * cost.fixed_s
        if op == "deflate_compress" and engine.kind in ("arm", "host"):
            speed = ZLIB_LEVEL_SPEED.get(6 if level is None or level < 0 else level, 1.0)
            setup = jobs * cost.fixed_s
            seconds = setup + (seconds - setup) / speed
        return seconds

    @staticmethod
    def jobs(engine: EngineProfile, op: str, nbytes: int) -> int:
        """How many jobs a task of ``nbytes`` is split into on ``engine`` (1 unless too large and splittable)."""
        limit = engine.max_job_bytes
        if op not in SPLITTABLE or limit is None or nbytes <= int(limit.value):
            return 1
        return -(-nbytes // int(limit.value))

    def transfer_seconds(self, nbytes: int) -> float:
        """Modeled PCIe time to move ``nbytes`` between host and device."""
        if self._pcie_rate is None or nbytes <= 0:
            return 0.0
        return self._pcie_fixed + nbytes / self._pcie_rate

    def link_seconds(self, nbytes: int) -> float:
        """Of :meth:`transfer_seconds`, the time the link is busy moving the bytes.

        The fixed part is latency (descriptor set-up, doorbell, completion)
        during which other transfers proceed, as DMA engines keep many in flight.
        """
        if self._pcie_rate is None or nbytes <= 0:
            return 0.0
        return nbytes / self._pcie_rate


@dataclass(slots=True)
class Timeline:
    """Where a task sits in virtual time (seconds since the runtime started)."""

    arrival_s: float
    start_s: float
    finish_s: float
    exec_s: float
    transfer_in_s: float = 0.0
    transfer_out_s: float = 0.0
    #: of the transfers, the time the link itself is busy (the rest is latency)
    link_in_s: float = 0.0
    link_out_s: float = 0.0
    #: merged into a batch that had already paid the set-up
    coalesced: bool = False

    @property
    def transfer_s(self) -> float:
        """PCIe time in and out."""
        return self.transfer_in_s + self.transfer_out_s

    @property
    def queue_s(self) -> float:
        """Time spent waiting for a lane (or the DMA engine) before running."""
        return max(0.0, self.start_s - self.arrival_s - self.transfer_in_s)

    @property
    def modeled_s(self) -> float:
        """From arrival to finish: what the caller waits for, in device time."""
        return self.finish_s - self.arrival_s


class EngineClock:
    """Virtual clock of one engine: when each lane is next free."""

    def __init__(self, lanes: int) -> None:
        self._free = [0.0] * lanes  # a heap: the lane that frees first is at [0]
        self._lock = threading.Lock()
        self.lanes = lanes
        self.busy_s = 0.0
        self.tasks = 0
        self.last_finish_s = 0.0

    def peek(self, ready_s: float) -> float:
        """When a task ready at ``ready_s`` would start."""
        first = self._free[0]
        return first if first > ready_s else ready_s

    def charge(self, ready_s: float, service_s: float) -> tuple[float, float]:
        """Occupy the lane that frees first; return ``(start, finish)``."""
        with self._lock:
            first = self._free[0]
            start = first if first > ready_s else ready_s
            finish = start + service_s
            heapq.heapreplace(self._free, finish)
            self.busy_s += service_s
            self.tasks += 1
            if finish > self.last_finish_s:
                self.last_finish_s = finish
            return start, finish

    def correct(self, old_finish_s: float, delta_s: float) -> None:
        """Fix a charged task's service time once its real cost is known.

        The lane's horizon moves only if nothing was queued behind the task
        since; tasks already placed keep their times.
        """
        with self._lock:
            self.busy_s += delta_s
            lanes = self._free
            new_finish = max(0.0, old_finish_s + delta_s)
            if old_finish_s in lanes:
                lanes[lanes.index(old_finish_s)] = new_finish
                heapq.heapify(lanes)
            self.last_finish_s = max(self.last_finish_s, new_finish)
