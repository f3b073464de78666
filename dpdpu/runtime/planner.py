"""One planner for chains of steps: which engine runs each step, costed end to end.

A chain (decompress -> filter -> aggregate, say) is placed as a whole: every
assignment of its steps to the engines able to run them is costed with each
step's execution and queueing, a PCIe hop wherever consecutive steps sit on
different sides of the link, and the hops that bring the input in and the
result out.  Beyond :data:`MAX_ASSIGNMENTS` assignments the planner settles
for placing each step on its own best engine, given where its input is.
``dpdpu.compute.Pipeline`` (real runs) and the workload simulator (modeled
runs) both plan with it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .cost import CostModel, Timeline
from .device import Device, EngineInfo

__all__ = ["MAX_ASSIGNMENTS", "Planner", "Route", "Stage"]

#: Most engine assignments a plan enumerates before it places each step on its own.
MAX_ASSIGNMENTS = 20_000

#: An engine a step may run on.
Option = tuple[Device, EngineInfo]
#: The modeled timeline of a stage on an engine from a ready time, transfers excluded.
Estimate = Callable[[Device, EngineInfo, "Stage", float], Timeline]
#: Which side of the link an engine computes on: ``"host"`` or ``"device"``.
SideOf = Callable[[Device, EngineInfo], str]


@dataclass(frozen=True)
class Stage:
    """One step of a chain as the planner sees it."""

    op: str
    nbytes: int
    out_bytes: int
    level: int | None = None


@dataclass(frozen=True)
class Route:
    """Where each step runs under one assignment, and its estimated cost."""

    engines: tuple[str, ...]
    total_s: float
    exec_s: float
    transfer_s: float
    pcie_bytes: int


class Planner:
    """Costs and chooses assignments of a chain's steps to engines."""

    def __init__(self, link: CostModel | None, side_of: SideOf, estimate: Estimate) -> None:
        self._link = link
        self._side_of = side_of
        self._estimate = estimate

    def _hop(self, nbytes: int) -> float:
        return 0.0 if self._link is None else self._link.transfer_seconds(nbytes)

    def route(
        self, stages: Sequence[Stage], combo: Sequence[Option], arrival_s: float, *, start: str = "host",
        end: str | None = "host",
    ) -> Route:  # fmt: skip
        """The cost of one assignment: the input starts on ``start``, the result ends on ``end`` (None: stays)."""
        t, where = arrival_s, start
        exec_total = transfer_total = 0.0
        pcie = 0
        for stage, (dev, info) in zip(stages, combo, strict=True):
            side = self._side_of(dev, info)
            if side != where:
                hop = self._hop(stage.nbytes)
                t += hop
                transfer_total += hop
                pcie += stage.nbytes
                where = side
            timeline = self._estimate(dev, info, stage, t)
            exec_total += timeline.exec_s
            t = timeline.finish_s
        if end is not None and where != end:
            hop = self._hop(stages[-1].out_bytes)
            t += hop
            transfer_total += hop
            pcie += stages[-1].out_bytes
        return Route(tuple(info.label for _, info in combo), t - arrival_s, exec_total, transfer_total, pcie)

    def stepwise(
        self, stages: Sequence[Stage], options: Sequence[Sequence[Option]], arrival_s: float, *,
        start: str = "host", end: str | None = "host",
    ) -> Route:  # fmt: skip
        """Each step on its own best engine, given where its input is (blind to the steps after it)."""
        combo: list[Option] = []
        where = start
        for k, (stage, opts) in enumerate(zip(stages, options, strict=True)):
            last = k == len(stages) - 1
            tail = end if last else None
            best = min(opts, key=lambda o: self.route([stage], [o], arrival_s, start=where, end=tail).total_s)
            combo.append(best)
            where = self._side_of(*best)
        return self.route(stages, combo, arrival_s, start=start, end=end)

    def plan(
        self, stages: Sequence[Stage], options: Sequence[Sequence[Option]], arrival_s: float, *,
        start: str = "host", end: str | None = "host",
    ) -> list[Route]:  # fmt: skip
        """Every assignment costed, best first (the stepwise one alone when there are too many)."""
        if math.prod(len(o) for o in options) > MAX_ASSIGNMENTS:
            return [self.stepwise(stages, options, arrival_s, start=start, end=end)]
        routes = [self.route(stages, combo, arrival_s, start=start, end=end) for combo in itertools.product(*options)]
        routes.sort(key=lambda r: r.total_s)
        return routes
