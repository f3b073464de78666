"""Placement: choosing an engine for a task, and the record that explains it.

The default policy, ``cost``, is dpManager's rule: among the engines able to
run the task -- the device's and the host CPU's -- pick the one with the
smallest estimated finish time, i.e. estimated execution time plus the
estimated time of what is already queued there plus the PCIe transfers of
data that must cross between host and DPU.  Other policies restrict the
choice (:data:`POLICIES`).  A caller may pin an engine kind; if that engine
cannot run the task the runtime falls back along accelerator -> Arm cores ->
host (DMA -> Arm cores -> host) unless the caller forbids fallback.
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

__all__ = ["FALLBACK_CHAIN", "POLICIES", "Candidate", "Placement", "place"]

#: Placement policies: ``cost`` (smallest estimated finish over the device's
#: engines and the host), ``host-only``, ``dpu-only`` (the host only when no
#: engine of the device can run the op), ``greedy-accelerator`` (the hardware
#: engine whenever it can run the op, however long its queue).
POLICIES = ("cost", "host-only", "dpu-only", "greedy-accelerator")

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
    policy: str = "cost",
) -> tuple[Placement, Device, EngineInfo]:
    """Choose the engine for ``task``; raise the matching DpdpuError if none can run it.

    ``host`` is the host CPU device of a DPU runtime (None when ``device``
    is the host itself).  ``policy`` is one of :data:`POLICIES`; a pinned
    ``engine`` -- a kind (``"arm"``) or a full label (``"bluefield3/arm"``) --
    overrides it.
    """
    if engine is not None and not isinstance(engine, str):
        raise errors.InvalidArgumentError(
            f"engine must be an engine kind or label (a string), not {type(engine).__name__}",
            device=device.label,
            op=task.op,
        )
    if not isinstance(policy, str) or policy not in POLICIES:
        raise errors.InvalidArgumentError(
            f"unknown placement policy {errors.brief(policy)}; choose one of {', '.join(POLICIES)}",
            device=device.label,
        )
    if engine is None and host is None and len(device.engines) == 1:
        # One engine, nothing to choose: skip the comparison (the common host-only case).
        info = device.engines[0]
        refusal = device.can_run(task, info)
        if refusal is None or refusal.kind == "busy":
            timeline = device.estimate(task, info, arrival_s)
            candidate = Candidate(info.label, info.kind, None, timeline)
            placement = Placement(
                task.label, task.op, task.nbytes, info.label, info.kind, policy, [candidate], None, timeline
            )
            return placement, device, info
    exact = None
    if engine is not None and "/" in engine:
        # A full engine label ("bluefield3/arm"): exactly that engine, else its kind's fallback chain.
        exact = engine
        found = [i for d in (device, host) if d is not None for i in d.engines if i.label == engine]
        if not found:
            raise errors.InvalidArgumentError(
                f"no engine {errors.brief(engine)} in this runtime", device=device.label, op=task.op
            )
        engine = found[0].kind
    if engine is not None and engine not in FALLBACK_CHAIN:
        raise errors.InvalidArgumentError(
            f"unknown engine kind {errors.brief(engine)}; choose one of {', '.join(ENGINE_KINDS)}",
            device=device.label,
            op=task.op,
        )
    # Under dpu-only and greedy-accelerator the host is only a fallback; under
    # cost it competes like any engine; under host-only it is all there is.
    host_is_fallback = policy in ("dpu-only", "greedy-accelerator") or engine is not None
    options: list[tuple[Device, EngineInfo, Candidate]] = []
    hardware_refused = hardware_able = False
    for dev, host_side in ((device, host is None), (host, True)):
        if dev is None:
            continue
        for info in dev.engines:
            refusal = dev.can_run(task, info)
            estimate = dev.estimate(task, info, arrival_s) if refusal is None else None
            is_fallback = host_is_fallback and host_side and host is not None
            options.append((dev, info, Candidate(info.label, info.kind, refusal, estimate, is_fallback)))
            if info.kind == "accelerator":
                hardware_able = hardware_able or refusal is None
                hardware_refused = hardware_refused or refusal is not None

    def able(o: tuple[Device, EngineInfo, Candidate]) -> bool:
        return o[2].refusal is None

    def on_host(o: tuple[Device, EngineInfo, Candidate]) -> bool:
        return o[0] is host or (host is None and o[1].kind == "host")

    note = None
    pool: list[tuple[Device, EngineInfo, Candidate]] = []
    considered: Sequence[tuple[Device, EngineInfo, Candidate]]
    if exact is not None and any(able(o) and o[1].label == exact for o in options):
        label = f"pinned to {exact}"
        pool = considered = [o for o in options if able(o) and o[1].label == exact]
    elif engine is not None:
        label = f"pinned to {exact or engine}"

        def pinned(o: tuple[Device, EngineInfo, Candidate]) -> bool:
            return o[1].label == exact if exact is not None else o[1].kind == engine

        chain = FALLBACK_CHAIN[engine] if fallback else (engine,)
        for kind in chain:
            pool = [o for o in options if able(o) and o[1].kind == kind and (exact is None or not pinned(o))]
            if pool:
                if kind != engine or exact is not None:
                    note = f"{exact or engine} cannot run it: " + _reasons(o for o in options if pinned(o))
                break
        considered = [o for o in options if pinned(o)]
    elif policy == "host-only":
        label = policy
        considered = [o for o in options if on_host(o)]
        pool = [o for o in considered if able(o)]
    else:
        label = policy
        dpu = [o for o in options if not on_host(o)] if host is not None else options
        considered = options if policy == "cost" else dpu
        if policy == "cost":
            pool = [o for o in options if able(o)]
        elif policy == "dpu-only":
            pool = [o for o in dpu if able(o)]
        else:  # greedy-accelerator: the most specialised engine that can run it, whatever its queue
            for kind in ("accelerator", "dma", "arm", "host"):
                pool = [o for o in dpu if able(o) and o[1].kind == kind]
                if pool:
                    break
        if not pool and fallback and host is not None and policy != "cost":
            pool = [o for o in options if able(o) and on_host(o)]
            if pool:
                note = f"no engine of {device.label} can run it: " + _reasons(dpu)
        elif hardware_refused and not hardware_able and task.op != "python" and pool:
            note = "no hardware engine can run it: " + _reasons(o for o in options if o[1].kind == "accelerator")

    if not pool:
        # Engines refused only for a full queue still take the task: submitting
        # then waits for room, which is back-pressure, not failure.
        pool = [o for o in considered if o[2].refusal is not None and o[2].refusal.kind == "busy"]
        for o in pool:
            o[2].timeline = o[0].estimate(task, o[1], arrival_s)
    if not pool:
        refusals = [o[2].refusal for o in considered if o[2].refusal is not None]
        kind = "unsupported"
        for k in ("memory", "too_large"):
            if any(r.kind == k for r in refusals):
                kind = k
        detail = _reasons(considered) if considered else f"{device.label} has no {engine or 'host'} engine"
        suffix = " and fallback is forbidden" if not fallback else ""
        raise _ERROR_FOR_REFUSAL[kind](
            f"cannot run {task.label} ({_size(task.nbytes)}): {detail}{suffix}",
            device=device.label,
            op=task.op,
        )

    dev, info, chosen = min(pool, key=lambda o: o[2].timeline.finish_s)  # type: ignore[union-attr]
    placement = Placement(
        task.label, task.op, task.nbytes, info.label, info.kind, label, [o[2] for o in options], note, chosen.timeline
    )
    return placement, dev, info


def _reasons(options: Any) -> str:
    parts = []
    for _, info, cand in options:
        if cand.refusal is not None:
            parts.append(f"{info.label}: {cand.refusal.reason}")
    return "; ".join(parts) or "no engine"
