"""Placement: choosing an engine for a task, and the record that explains it.

The rule is dpManager's: among the engines able to run the task, pick the
one with the smallest estimated finish time, i.e. estimated execution time
plus the estimated time of what is already queued there (plus PCIe transfers
for data that must cross to the DPU).  The engines of the runtime's device
are considered first; the host CPU is the fallback when none of them can run
the task.  A caller may pin an engine kind; if that engine cannot run the
task the runtime falls back along accelerator -> Arm cores -> host (DMA ->
Arm cores -> host) unless the caller forbids fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .. import errors
from .profile import ENGINE_KINDS

if TYPE_CHECKING:
    from .cost import Timeline
    from .device import Device, EngineInfo, Refusal, Task

__all__ = ["FALLBACK_CHAIN", "Candidate", "Placement", "place"]

#: Where a pinned task goes when its engine cannot run it.
FALLBACK_CHAIN: dict[str, tuple[str, ...]] = {
    "accelerator": ("accelerator", "arm", "host"),
    "dma": ("dma", "arm", "host"),
    "arm": ("arm", "host"),
    "host": ("host",),
}


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
        lines = [f"{self.task} of {_size(self.nbytes)} -> {self.engine} ({self.policy})"]
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
                f"  {c.engine:<24} {_ms(t.exec_s):>10} {_ms(t.transfer_s):>10} {_ms(t.queue_s):>10} "
                f"{_ms(t.finish_s):>10}{mark}{extra}"
            )
        if self.timeline is not None:
            t = self.timeline
            wall = "pending" if self.wall_s is None else _ms(self.wall_s)
            lines.append(
                f"  result: {self.status}; wall {wall} executing; modeled {_ms(t.modeled_s)} "
                f"(arrival {_ms(t.arrival_s)}, start {_ms(t.start_s)}, finish {_ms(t.finish_s)})"
            )
        lines.extend(f"  note: {n}" for n in self.notes or ())
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


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
) -> tuple[Placement, Device, EngineInfo]:
    """Choose the engine for ``task``; raise the matching DpdpuError if none can run it.

    ``host`` is the host CPU device of a DPU runtime (None when ``device``
    is the host itself).
    """
    if engine is not None and engine not in FALLBACK_CHAIN:
        raise errors.InvalidArgumentError(
            f"unknown engine kind {engine!r}; choose one of {', '.join(ENGINE_KINDS)}",
            device=device.label,
            op=task.op,
        )
    options: list[tuple[Device, EngineInfo, Candidate]] = []
    best: tuple[Device, EngineInfo, Candidate] | None = None
    best_finish = 0.0
    hardware_refused = hardware_able = False
    for dev, fallback_only in ((device, False), (host, True)):
        if dev is None:
            continue
        for info in dev.engines:
            refusal = dev.can_run(task, info)
            if refusal is None:
                timeline = dev.estimate(task, info, arrival_s)
                option = (dev, info, Candidate(info.label, info.kind, None, timeline, fallback_only))
                if not fallback_only and (best is None or timeline.finish_s < best_finish):
                    best, best_finish = option, timeline.finish_s
                hardware_able = hardware_able or info.kind == "accelerator"
            else:
                option = (dev, info, Candidate(info.label, info.kind, refusal, None, fallback_only))
                hardware_refused = hardware_refused or info.kind == "accelerator"
            options.append(option)

    note = None
    pool: list[tuple[Device, EngineInfo, Candidate]]
    considered: Sequence[tuple[Device, EngineInfo, Candidate]]
    if engine is None:
        policy = "auto"
        if best is not None:
            pool = [best]
            if hardware_refused and not hardware_able and task.op != "python":
                note = "no hardware engine can run it: " + _reasons(o for o in options if o[1].kind == "accelerator")
        else:
            considered = [o for o in options if not o[2].fallback_only]
            pool = [o for o in options if o[2].refusal is None and o[2].fallback_only] if fallback else []
            if pool:
                note = f"no engine of {device.label} can run it: " + _reasons(considered)
    else:
        policy = f"pinned to {engine}"
        chain = FALLBACK_CHAIN[engine] if fallback else (engine,)
        pool = []
        for kind in chain:
            pool = [o for o in options if o[2].refusal is None and o[1].kind == kind]
            if pool:
                if kind != engine:
                    note = f"{engine} cannot run it: " + _reasons(o for o in options if o[1].kind == engine)
                break
        considered = [o for o in options if o[1].kind == engine]

    if not pool:
        refusals = [o[2].refusal for o in considered if o[2].refusal is not None]
        kind = "unsupported"
        for k in ("memory", "too_large"):
            if any(r.kind == k for r in refusals):
                kind = k
        detail = _reasons(considered) if considered else f"{device.label} has no {engine} engine"
        suffix = " and fallback is forbidden" if not fallback else ""
        raise _ERROR_FOR_REFUSAL[kind](
            f"cannot run {task.label} ({_size(task.nbytes)}): {detail}{suffix}",
            device=device.label,
            op=task.op,
        )

    dev, info, chosen = pool[0] if len(pool) == 1 else min(pool, key=lambda o: o[2].timeline.finish_s)  # type: ignore[union-attr]
    placement = Placement(
        task.label, task.op, task.nbytes, info.label, info.kind, policy, [o[2] for o in options], note, chosen.timeline
    )
    return placement, dev, info


def _reasons(options: Any) -> str:
    parts = []
    for _, info, cand in options:
        if cand.refusal is not None:
            parts.append(f"{info.label}: {cand.refusal.reason}")
    return "; ".join(parts) or "no engine"
