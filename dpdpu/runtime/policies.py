"""Placement policies: which of the able engines a task may go to.

A policy sees every engine of the device and of the host, each as an
:class:`Option` with the engine's refusal (None if it could take the task)
and its estimated timeline, and returns a :class:`Choice`: the engines it
considers, those of them it would place the task on (the runtime picks the
smallest estimated finish among them) and a note for ``explain``.  Adding a
policy is one subclass of :class:`Policy` and a :func:`register_policy` call;
``Runtime(policy=...)`` takes its name or an instance.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

from .. import errors
from .profile import ENGINE_KINDS

if TYPE_CHECKING:
    from .device import Device, EngineInfo
    from .placement import Candidate

__all__ = [
    "FALLBACK_CHAIN", "POLICIES", "Choice", "Cost", "DpuOnly", "GreedyAccelerator", "HostOnly", "Option", "Pinned",
    "Policy", "policy_for", "register_policy", "registered_policies",
]  # fmt: skip

#: Where a pinned task goes when its engine cannot run it.
FALLBACK_CHAIN: dict[str, tuple[str, ...]] = {
    "accelerator": ("accelerator", "arm", "host"),
    "dma": ("dma", "arm", "host"),
    "arm": ("arm", "host"),
    "host": ("host",),
}


@dataclass(slots=True)
class Option:
    """One engine a task could go to."""

    device: Device
    info: EngineInfo
    candidate: Candidate
    #: the engine is the host CPU's (of a DPU runtime, or the host device itself)
    on_host: bool

    @property
    def able(self) -> bool:
        """True if the engine could take the task."""
        return self.candidate.refusal is None


@dataclass(slots=True)
class Choice:
    """What a policy allows: the engines considered, those it would pick from, and why."""

    considered: Sequence[Option]
    pool: list[Option]
    note: str | None = None


def reasons(options: Iterable[Option]) -> str:
    """Why each of ``options`` refused, as ``engine: reason; ...``."""
    parts = [f"{o.info.label}: {o.candidate.refusal.reason}" for o in options if o.candidate.refusal is not None]
    return "; ".join(parts) or "no engine"


class Policy(abc.ABC):
    """Chooses among the engines able to run a task."""

    #: the name ``Runtime(policy=...)`` and the CLI know the policy by
    name: ClassVar[str]
    #: True if the host CPU is only a fallback under this policy (shown in ``explain``)
    host_is_fallback: ClassVar[bool] = False

    @abc.abstractmethod
    def choose(self, options: Sequence[Option], device: Device, *, fallback: bool, op: str) -> Choice:
        """The engines the task may go to (``fallback``: the host may take what the device cannot)."""

    def label(self) -> str:
        """How ``explain`` names the decision."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Cost(Policy):
    """dpManager's rule: the smallest estimated finish over the device's engines and the host."""

    name = "cost"

    def choose(self, options: Sequence[Option], device: Device, *, fallback: bool, op: str) -> Choice:
        pool = [o for o in options if o.able]
        return Choice(options, pool, _hardware_note(options, pool, op))


class HostOnly(Policy):
    """The host CPU only."""

    name = "host-only"

    def choose(self, options: Sequence[Option], device: Device, *, fallback: bool, op: str) -> Choice:
        considered = [o for o in options if o.on_host]
        return Choice(considered, [o for o in considered if o.able])


class _DeviceFirst(Policy):
    """Keeps work on the device; the host only when no engine of the device can run the task."""

    host_is_fallback = True

    def choose(self, options: Sequence[Option], device: Device, *, fallback: bool, op: str) -> Choice:
        dpu = [o for o in options if not o.on_host] or list(options)
        pool = self.pick(dpu)
        if not pool and fallback:
            pool = [o for o in options if o.able and o.on_host]
            if pool:
                return Choice(dpu, pool, f"no engine of {device.label} can run it: " + reasons(dpu))
        return Choice(dpu, pool, _hardware_note(options, pool, op))

    @abc.abstractmethod
    def pick(self, dpu: Sequence[Option]) -> list[Option]:
        """Of the device's engines, those the task may go to."""


class DpuOnly(_DeviceFirst):
    """The smallest estimated finish among the device's engines."""

    name = "dpu-only"

    def pick(self, dpu: Sequence[Option]) -> list[Option]:
        return [o for o in dpu if o.able]


class GreedyAccelerator(_DeviceFirst):
    """The most specialised engine able to run the task (accelerator, DMA, Arm), however long its queue."""

    name = "greedy-accelerator"

    def pick(self, dpu: Sequence[Option]) -> list[Option]:
        for kind in ENGINE_KINDS:
            pool = [o for o in dpu if o.able and o.info.kind == kind]
            if pool:
                return pool
        return []


class Pinned(Policy):
    """An engine kind (``"arm"``) or an exact engine (``"bluefield3/arm"``) chosen by the caller.

    If it cannot run the task the task falls back along :data:`FALLBACK_CHAIN`
    (an exact engine first to the rest of its kind) unless fallback is forbidden.
    """

    name = "pinned"
    host_is_fallback = True

    def __init__(self, kind: str, exact: str | None = None) -> None:
        self.kind = kind
        self.exact = exact

    def label(self) -> str:
        return f"pinned to {self.exact or self.kind}"

    def _pinned(self, o: Option) -> bool:
        return o.info.label == self.exact if self.exact is not None else o.info.kind == self.kind

    def choose(self, options: Sequence[Option], device: Device, *, fallback: bool, op: str) -> Choice:
        considered = [o for o in options if self._pinned(o)]
        if self.exact is not None and any(o.able for o in considered):
            return Choice(considered, [o for o in considered if o.able])
        chain = FALLBACK_CHAIN[self.kind] if fallback else (self.kind,)
        for kind in chain:
            # an exact engine that cannot run it hands over to the rest of its kind first
            pool = [o for o in options if o.able and o.info.kind == kind and not (self.exact and self._pinned(o))]
            if pool:
                moved = kind != self.kind or self.exact is not None
                note = f"{self.exact or self.kind} cannot run it: " + reasons(considered) if moved else None
                return Choice(considered, pool, note)
        return Choice(considered, [])

    def __repr__(self) -> str:
        return f"Pinned({self.exact or self.kind!r})"


def _hardware_note(options: Sequence[Option], pool: Sequence[Option], op: str) -> str | None:
    hardware = [o for o in options if o.info.kind == "accelerator"]
    if pool and op != "python" and hardware and not any(o.able for o in hardware):
        return "no hardware engine can run it: " + reasons(hardware)
    return None


_REGISTRY: dict[str, type[Policy]] = {p.name: p for p in (Cost, HostOnly, DpuOnly, GreedyAccelerator)}

#: Names of the registered placement policies, the built-in ones first.
POLICIES: tuple[str, ...] = tuple(_REGISTRY)


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Register a policy class under its ``name`` (usable as a decorator); names are never overwritten."""
    global POLICIES
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name or name == Pinned.name:
        raise errors.InvalidArgumentError(f"a policy needs a name of its own, not {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise errors.InvalidArgumentError(f"a placement policy named {name!r} is already registered")
    _REGISTRY[name] = cls
    POLICIES = tuple(_REGISTRY)
    return cls


def registered_policies() -> Mapping[str, type[Policy]]:
    """Every registered policy class by name (read-only)."""
    return MappingProxyType(_REGISTRY)


def policy_for(spec: str | Policy) -> Policy:
    """A policy instance from its name, or ``spec`` itself."""
    if isinstance(spec, Policy):
        return spec
    cls = _REGISTRY.get(spec) if isinstance(spec, str) else None
    if cls is None:
        raise errors.InvalidArgumentError(
            f"unknown placement policy {errors.shown(spec)}; choose one of {', '.join(_REGISTRY)}"
        )
    return cls()


def pinned_policy(engine: str, device: Device, host: Device | None, op: str) -> Pinned:
    """The policy for a task pinned to ``engine``: a kind, or an exact engine label."""
    if "/" in engine:
        found = [i for d in (device, host) if d is not None for i in d.engines if i.label == engine]
        if not found:
            raise errors.InvalidArgumentError(
                f"no engine {errors.shown(engine)} in this runtime", device=device.label, op=op
            )
        return Pinned(found[0].kind, engine)
    if engine not in FALLBACK_CHAIN:
        raise errors.InvalidArgumentError(
            f"unknown engine kind {errors.shown(engine)}; choose one of {', '.join(ENGINE_KINDS)}",
            device=device.label,
            op=op,
        )
    return Pinned(engine)
