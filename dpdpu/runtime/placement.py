"""Placement: choosing an engine for a task, and the record that explains it.

The default policy, ``cost``, is dpManager's rule: among the engines able to
run the task -- the device's and the host CPU's -- pick the one with the
smallest estimated finish time, i.e. estimated execution time plus the
estimated time of what is already queued there plus the PCIe transfers of
data that must cross between host and DPU.  Other policies restrict the
choice (:mod:`dpdpu.runtime.policies`).  A caller may pin an engine kind; if that engine
cannot run the task the runtime falls back along accelerator -> Arm cores ->
host (DMA -> Arm cores -> host) unless the caller forbids fallback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .. import errors
from .policies import FALLBACK_CHAIN, POLICIES, Option, Policy, pinned_policy, policy_for, reasons
from .units import fmt_bytes, fmt_seconds

if TYPE_CHECKING:
    from .cost import Timeline
    from .device import Device, EngineInfo, Refusal, Task

__all__ = ["FALLBACK_CHAIN", "POLICIES", "Candidate", "Placement", "place"]


@dataclass(slots=True)
class Candidate:
    """One engine considered for a task."""

    engine: str
    kind: str
    refusal: Refusal | None
    timeline: Timeline | None
    fallback_only: bool = False

    @property
    def able(self) -> bool:
        """True if the engine could take the task."""
        return self.refusal is None


@dataclass(slots=True)
class Placement:
    """Where a task ran, why, and what it cost (wall and modeled device time)."""

    task: str
    op: str
    nbytes: int
    engine: str
    kind: str
    policy: str
    candidates: list[Candidate]
    fallback: str | None = None
    timeline: Timeline | None = None
    status: str = "pending"
    wall_s: float | None = None
    queued_wall_s: float | None = None
    attempts: int = 1
    notes: list[str] | None = None
    #: pinned with fallback forbidden: the task may run on its engine only
    strict: bool = False

    @property
    def modeled_s(self) -> float | None:
        """Modeled device time from arrival to finish."""
        return None if self.timeline is None else self.timeline.modeled_s

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        data = asdict(self)
        data["modeled_s"] = self.modeled_s
        return data

    def __str__(self) -> str:
        lines = [f"{self.task} of {fmt_bytes(self.nbytes)} -> {self.engine} ({self.policy})"]
        if self.fallback:
            lines.append(f"  fallback: {self.fallback}")
        lines.append(f"  {'engine':<24} {'exec':>10} {'transfer':>10} {'queue':>10} {'finish':>10}")
        for c in self.candidates:
            mark = "  <- chosen" if c.engine == self.engine else ""
            if c.timeline is None:
                why = c.refusal.reason if c.refusal else "not considered"
                lines.append(f"  {c.engine:<24} cannot: {why}")
                continue
            t = c.timeline
            extra = " (host fallback)" if c.fallback_only and not mark else ""
            lines.append(
                f"  {c.engine:<24} {fmt_seconds(t.exec_s):>10} {fmt_seconds(t.transfer_s):>10} "
                f"{fmt_seconds(t.queue_s):>10} {fmt_seconds(t.finish_s):>10}{mark}{extra}"
            )
        if self.timeline is not None:
            t = self.timeline
            wall = "pending" if self.wall_s is None else fmt_seconds(self.wall_s)
            lines.append(
                f"  result: {self.status}; wall {wall} executing; modeled {fmt_seconds(t.modeled_s)} "
                f"(arrival {fmt_seconds(t.arrival_s)}, start {fmt_seconds(t.start_s)}, "
                f"finish {fmt_seconds(t.finish_s)})"
            )
        lines.extend(f"  note: {n}" for n in self.notes or ())
        return "\n".join(lines)


_ERROR_FOR_REFUSAL: dict[str, type[errors.DpdpuError]] = {
    "unsupported": errors.UnsupportedOpError,
    "too_large": errors.JobTooLargeError,
    "memory": errors.DeviceMemoryError,
}


def place(
    task: Task,
    device: Device,
    host: Device | None,
    arrival_s: float,
    *,
    engine: str | None = None,
    fallback: bool = True,
    policy: str | Policy = "cost",
) -> tuple[Placement, Device, EngineInfo]:
    """Choose the engine for ``task``; raise the matching DpdpuError if none can run it.

    ``host`` is the host CPU device of a DPU runtime (None when ``device``
    is the host itself).  ``policy`` is a :class:`~dpdpu.runtime.policies.Policy`
    or the name of one; a pinned ``engine`` -- a kind (``"arm"``) or a full
    label (``"bluefield3/arm"``) -- overrides it.
    """
    if engine is not None and not isinstance(engine, str):
        raise errors.InvalidArgumentError(
            f"engine must be an engine kind or label (a string), not {type(engine).__name__}",
            device=device.label,
            op=task.op,
        )
    if engine is None and host is None and len(device.engines) == 1:
        # One engine, nothing to choose: skip the comparison (the common host-only case).
        info = device.engines[0]
        refusal = device.can_run(task, info)
        if refusal is None or refusal.kind == "busy":
            chooser = policy_for(policy)
            timeline = device.estimate(task, info, arrival_s)
            candidate = Candidate(info.label, info.kind, None, timeline)
            placement = Placement(
                task.label, task.op, task.nbytes, info.label, info.kind, chooser.label(), [candidate], None, timeline
            )
            return placement, device, info
    chooser = policy_for(policy) if engine is None else pinned_policy(engine, device, host, task.op)
    options: list[Option] = []
    for dev, host_side in ((device, host is None), (host, True)):
        if dev is None:
            continue
        for info in dev.engines:
            refusal = dev.can_run(task, info)
            estimate = dev.estimate(task, info, arrival_s) if refusal is None else None
            on_host = dev is host or (host is None and info.kind == "host")
            only_fallback = chooser.host_is_fallback and host_side and host is not None
            candidate = Candidate(info.label, info.kind, refusal, estimate, only_fallback)
            options.append(Option(dev, info, candidate, on_host))
    choice = chooser.choose(options, device, fallback=fallback, op=task.op)
    pool = choice.pool
    if not pool:
        # Engines refused only for a full queue still take the task: submitting
        # then waits for room, which is back-pressure, not failure.
        pool = [o for o in choice.considered if o.candidate.refusal is not None and o.candidate.refusal.kind == "busy"]
        for o in pool:
            o.candidate.timeline = o.device.estimate(task, o.info, arrival_s)
    if not pool:
        refusals = [o.candidate.refusal for o in choice.considered if o.candidate.refusal is not None]
        kind = "unsupported"
        for k in ("memory", "too_large"):
            if any(r.kind == k for r in refusals):
                kind = k
        detail = reasons(choice.considered) if choice.considered else f"{device.label} has no {engine or 'host'} engine"
        suffix = " and fallback is forbidden" if not fallback else ""
        raise _ERROR_FOR_REFUSAL[kind](
            f"cannot run {task.label} ({fmt_bytes(task.nbytes)}): {detail}{suffix}",
            device=device.label,
            op=task.op,
        )
    best = min(pool, key=lambda o: o.candidate.timeline.finish_s)  # type: ignore[union-attr]
    info = best.info
    placement = Placement(
        task.label, task.op, task.nbytes, info.label, info.kind, chooser.label(), [o.candidate for o in options],
        choice.note, best.candidate.timeline,
    )  # fmt: skip
    placement.strict = engine is not None and not fallback
    return placement, best.device, info
