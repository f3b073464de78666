"""The workload simulator: replay a mix of tasks against a device in virtual time.

Nothing executes.  Each task of a *mix* (ops, sizes, arrival times, where
the data starts) is placed by the runtime's own placement code
(:func:`dpdpu.runtime.placement.place`) over a :class:`DeviceModel` of the
DPU and one of the host, and charged on the chosen engine's virtual clock.
The :class:`SimReport` says what the mix costs under a placement policy:
modeled makespan, per-engine utilization, bytes over PCIe, host core-seconds
and host cores saved against running everything on the host.

Mix format
----------

A mix is a TOML file (the shipped ones live in ``workloads/*.toml`` next to
this module; :func:`builtin_mixes` lists them)::

    name = "log-ingest"
    description = "compressed log blocks from the network: decompress, filter, aggregate"
    seed = 7                 # arrivals and sizes are drawn from it (default 0)
    duration_s = 0.2         # Poisson arrivals stop here ...
    tasks = 5000             # ... and/or after this many tasks (at least one of the two
                             # when a class arrives as a Poisson process)

    [[classes]]
    name = "blocks"          # unique; defaults to the op
    data = "device"          # where the input starts: "host" (default) or "device"
    size = { dist = "lognormal", median = "128 KiB", sigma = 0.6, min = "16 KiB", max = "1 MiB" }
    arrival = { process = "poisson", rate_per_s = 10000 }
    pipeline = [
        { op = "deflate_decompress", ratio = 6.0 },  # ratio: output bytes per input byte
        { op = "filter", ratio = 0.05 },             # e.g. a filter's selectivity
        { op = "aggregate", ratio = 0.02 },
    ]

    [[classes]]
    name = "archive"
    op = "deflate_compress"  # a single op instead of a pipeline (with an optional ratio)
    level = 6                # compression level (zlib levels matter on Arm and host cores)
    size = "4 MiB"           # bytes, or a string with a unit (B, KB, KiB, MB, MiB, GB, GiB)
    arrival = { process = "burst", count = 64 }   # all at t = 0 (or at_s)

Sizes are fixed, or drawn from ``{ dist = "uniform", min, max }`` or
``{ dist = "lognormal", median, sigma, min, max }`` (bounds optional for the
lognormal; draws are clamped to them).  A ratio defaults to the model's
assumed output ratio of the op.

Semantics
---------

* Every task arrives at its arrival time; the steps of a pipeline arrive one
  after the other, each when the previous one finishes, with its input
  living where the previous step ran (the DPU for any DPU engine, else the
  host).
* Data on the host that a DPU engine processes crosses PCIe first; data on
  the DPU (arrived at its network port, or read from its storage) that a host
  engine processes is pulled over PCIe by the DPU's DMA engine, and the host
  side pays that transfer.  Results end on the host: when a task's last step
  runs on the DPU its output is sent back over PCIe.
* Tasks are placed in arrival order, each by the policy's rule at its
  arrival, with fresh virtual clocks for every run: runs are deterministic
  for a given seed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .. import errors
from .device import Device, DeviceBuffer, EngineInfo, EngineStats, Refusal, Task
from .model import DEFAULT_OUT_RATIO, DeviceModel
from .placement import POLICIES, place
from .planner import Planner, Stage
from .profile import Profile
from .units import fmt_bytes, fmt_seconds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from .cost import Timeline
    from .future import TaskFuture
    from .placement import Placement

__all__ = [
    "MIX_OPS",
    "Arrival",
    "BruteForceResult",
    "EngineUsage",
    "Job",
    "Mix",
    "MixError",
    "SimReport",
    "SimulatedDevice",
    "SizeDist",
    "Step",
    "TaskClass",
    "brute_force_optimum",
    "builtin_mixes",
    "compare",
    "load_mix",
    "simulate",
    "steps_of",
]

#: Ops a mix may use: every data-processing op of the profiles.
MIX_OPS = frozenset(DEFAULT_OUT_RATIO) - {"nop", "python"}
#: A mix generating more tasks than this is refused: a runaway rate or duration, not a workload.
MAX_TASKS = 1_000_000
#: Progress is reported after this many placements.
_PROGRESS_EVERY = 2048
_UNITS = {
    "": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


class MixError(errors.ProfileError, errors.InvalidArgumentError):
    """A workload mix is malformed: not TOML, a missing or mistyped field, a bad value."""


# --- the mix -------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeDist:
    """Input size of a task class: fixed, uniform in [min, max], or lognormal clamped to [min, max]."""

    dist: Literal["fixed", "uniform", "lognormal"]
    value: int = 0
    min: int = 1
    max: int = 0
    median: int = 0
    sigma: float = 0.0

    def draw(self, rng: random.Random) -> int:
        """One size in bytes."""
        if self.dist == "fixed":
            return self.value
        if self.dist == "uniform":
            return rng.randint(self.min, self.max)
        n = round(self.median * math.exp(rng.gauss(0.0, self.sigma)))
        return min(max(n, self.min), self.max or n)

    def describe(self) -> str:
        """Short human form, e.g. ``4.0 KiB-16.0 KiB``."""
        if self.dist == "fixed":
            return fmt_bytes(self.value)
        if self.dist == "uniform":
            return f"{fmt_bytes(self.min)}-{fmt_bytes(self.max)}"
        return f"~{fmt_bytes(self.median)} (lognormal, sigma {self.sigma:g})"


@dataclass(frozen=True)
class Arrival:
    """When tasks of a class arrive: a Poisson process, or ``count`` at once at ``at_s``."""

    process: Literal["poisson", "burst"]
    rate_per_s: float = 0.0
    count: int = 0
    at_s: float = 0.0

    def times(self, rng: random.Random) -> Iterator[float]:
        """Arrival times, in order (endless for a Poisson process)."""
        if self.process == "burst":
            yield from itertools.repeat(self.at_s, self.count)
            return
        t = 0.0
        while True:
            t += rng.expovariate(self.rate_per_s)
            yield t

    def describe(self) -> str:
        """Short human form."""
        if self.process == "burst":
            return f"burst of {self.count} at {fmt_seconds(self.at_s)}" if self.at_s else f"burst of {self.count}"
        return f"Poisson {self.rate_per_s:g}/s"


@dataclass(frozen=True)
class Step:
    """One op of a task class; ``ratio`` is its output bytes per input byte."""

    op: str
    ratio: float
    level: int | None = None

    def out_bytes(self, nbytes: int) -> int:
        """Output size for an input of ``nbytes``."""
        if self.ratio <= 0 or nbytes <= 0:
            return 0
        return max(1, round(nbytes * self.ratio))


@dataclass(frozen=True)
class TaskClass:
    """A kind of task in a mix: its steps, sizes, arrivals and where its data starts."""

    name: str
    steps: tuple[Step, ...]
    size: SizeDist
    arrival: Arrival
    data: Literal["host", "device"] = "host"

    def describe(self) -> str:
        """Short human form, e.g. ``deflate_decompress -> filter``."""
        return " -> ".join(s.op for s in self.steps)


@dataclass(frozen=True)
class Job:
    """One top-level task of a generated mix."""

    cls: TaskClass
    index: int  # its number within the class
    arrival_s: float
    nbytes: int

    @property
    def label(self) -> str:
        return f"{self.cls.name}#{self.index}"


@dataclass(frozen=True)
class Mix:
    """A workload: task classes with their ops, sizes and arrivals (see the module docstring)."""

    name: str
    description: str
    classes: tuple[TaskClass, ...]
    seed: int = 0
    duration_s: float | None = None
    tasks: int | None = None
    path: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "mix") -> Mix:
        """Build a mix from parsed TOML (or any mapping of the same shape); MixError if malformed."""
        return _parse_mix(data, where)

    def generate(self, seed: int | None = None) -> list[Job]:
        """The mix's top-level tasks in arrival order (deterministic for a seed)."""
        seed = self.seed if seed is None else seed
        # One generator per class and purpose: adding a class or capping the
        # task count does not reshuffle the others' draws.
        streams = [
            _stream(ci, c.arrival.times(random.Random(f"{seed}/{c.name}/arrival"))) for ci, c in enumerate(self.classes)
        ]
        sizers = [random.Random(f"{seed}/{c.name}/size") for c in self.classes]
        jobs: list[Job] = []
        for t, ci, k in heapq.merge(*streams):
            if self.duration_s is not None and t >= self.duration_s:
                break
            if self.tasks is not None and len(jobs) >= self.tasks:
                break
            if len(jobs) >= MAX_TASKS:
                raise MixError(f"{self.name}: generates more than {MAX_TASKS} tasks; shorten duration_s or set tasks")
            c = self.classes[ci]
            jobs.append(Job(c, k, t, c.size.draw(sizers[ci])))
        return jobs

    def describe(self) -> str:
        """How long the mix runs, in words."""
        parts = []
        if self.duration_s is not None:
            parts.append(fmt_seconds(self.duration_s))
        if self.tasks is not None:
            parts.append(f"{self.tasks} tasks")
        return " or ".join(parts) or "bursts only"

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "tasks": self.tasks,
            "path": self.path,
            "classes": [asdict(c) for c in self.classes],
        }


def _stream(ci: int, times: Iterator[float]) -> Iterator[tuple[float, int, int]]:
    for k, t in enumerate(times):
        yield t, ci, k


def builtin_mixes() -> list[str]:
    """Names of the mixes shipped with dpdpu."""
    folder = resources.files("dpdpu.runtime") / "workloads"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_mix(name_or_path: str | Path | Mix) -> Mix:
    """A shipped mix by name, or a mix from a TOML path (a Mix is returned as is).

    Raises InvalidArgumentError for an unknown name and MixError for a file
    that cannot be read or is malformed.
    """
    if isinstance(name_or_path, Mix):
        return name_or_path
    text_name = str(name_or_path)
    if isinstance(name_or_path, Path) or text_name.endswith(".toml") or "/" in text_name or "\\" in text_name:
        path = Path(text_name)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MixError(f"cannot read mix {path}: {exc.strerror}") from exc
        where = str(path)
    elif text_name in builtin_mixes():
        text = (resources.files("dpdpu.runtime") / "workloads" / f"{text_name}.toml").read_text(encoding="utf-8")
        where = f"mix {text_name}"
    else:
        raise errors.InvalidArgumentError(
            f"no mix named {text_name!r}; built-in mixes: {', '.join(builtin_mixes())} (or give a TOML path)"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MixError(f"{where}: not valid TOML: {exc}") from exc
    return replace(_parse_mix(data, where), path=where)


# --- parsing ---------------------------------------------------------------------------

_MIX_KEYS = {"name", "description", "seed", "duration_s", "tasks", "classes"}
_CLASS_KEYS = {"name", "op", "ratio", "level", "pipeline", "size", "arrival", "data"}
_STEP_KEYS = {"op", "ratio", "level"}


def _table(raw: Any, where: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise MixError(f"{where}: expected a table, got {raw!r}")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise MixError(f"{where}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(keys))}")
    return raw


def _number(raw: Any, where: str, *, positive: bool = False, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(raw, bool) or not isinstance(raw, kinds) or not math.isfinite(raw):
        raise MixError(f"{where}: expected {'an integer' if integer else 'a number'}, got {raw!r}")
    if raw < 0 or (positive and raw == 0):
        raise MixError(f"{where}: must be {'positive' if positive else 'zero or more'}, got {raw!r}")
    return raw


def _bytes(raw: Any, where: str) -> int:
    """A size in bytes from an integer or a string with a unit."""
    if isinstance(raw, str):
        m = _SIZE_RE.match(raw)
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise MixError(f"{where}: {raw!r} is not a size (use bytes, or a number with B, KiB, MiB, GiB, KB, MB, GB)")
        value = float(m.group(1)) * _UNITS[unit]
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = raw
    else:
        raise MixError(f"{where}: expected a size (bytes, or a string such as '64 KiB'), got {raw!r}")
    if not math.isfinite(value) or value < 1:
        raise MixError(f"{where}: sizes must be positive, got {raw!r}")
    return round(value)


def _size_dist(raw: Any, where: str) -> SizeDist:
    if not isinstance(raw, Mapping):
        return SizeDist("fixed", value=_bytes(raw, where))
    dist = raw.get("dist")
    if dist == "uniform":
        _table(raw, where, {"dist", "min", "max"})
        for key in ("min", "max"):
            if key not in raw:
                raise MixError(f"{where}.{key}: required for a uniform size")
        lo, hi = _bytes(raw["min"], f"{where}.min"), _bytes(raw["max"], f"{where}.max")
        if lo > hi:
            raise MixError(f"{where}: min ({fmt_bytes(lo)}) exceeds max ({fmt_bytes(hi)})")
        return SizeDist("uniform", min=lo, max=hi)
    if dist == "lognormal":
        _table(raw, where, {"dist", "median", "sigma", "min", "max"})
        if "median" not in raw or "sigma" not in raw:
            raise MixError(f"{where}: a lognormal size needs 'median' and 'sigma'")
        median = _bytes(raw["median"], f"{where}.median")
        sigma = float(_number(raw["sigma"], f"{where}.sigma"))
        lo = _bytes(raw["min"], f"{where}.min") if "min" in raw else 1
        hi = _bytes(raw["max"], f"{where}.max") if "max" in raw else 0
        if hi and lo > hi:
            raise MixError(f"{where}: min ({fmt_bytes(lo)}) exceeds max ({fmt_bytes(hi)})")
        return SizeDist("lognormal", min=lo, max=hi, median=median, sigma=sigma)
    raise MixError(f"{where}.dist: expected 'uniform' or 'lognormal', got {dist!r} (or give a fixed size)")


def _arrival(raw: Any, where: str) -> Arrival:
    process = raw.get("process") if isinstance(raw, Mapping) else None
    if process == "poisson":
        _table(raw, where, {"process", "rate_per_s"})
        if "rate_per_s" not in raw:
            raise MixError(f"{where}.rate_per_s: required for a Poisson arrival")
        return Arrival("poisson", rate_per_s=float(_number(raw["rate_per_s"], f"{where}.rate_per_s", positive=True)))
    if process == "burst":
        _table(raw, where, {"process", "count", "at_s"})
        if "count" not in raw:
            raise MixError(f"{where}.count: required for a burst")
        count = int(_number(raw["count"], f"{where}.count", positive=True, integer=True))
        at_s = float(_number(raw.get("at_s", 0.0), f"{where}.at_s"))
        return Arrival("burst", count=count, at_s=at_s)
    raise MixError(
        f"{where}: expected {{ process = 'poisson', rate_per_s = ... }} or {{ process = 'burst', count = ... }}"
    )


def _op(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise MixError(f"{where}: expected an op name, got {raw!r}")
    if raw not in MIX_OPS:
        raise errors.UnknownOpError(f"{where}: unknown op {raw!r}; ops: {', '.join(sorted(MIX_OPS))}")
    return raw


def _level(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not -1 <= raw <= 22:
        raise MixError(f"{where}: expected an integer level from -1 to 22, got {raw!r}")
    return raw


def _step(raw: Mapping[str, Any], where: str, default_level: int | None) -> Step:
    op = _op(raw.get("op"), f"{where}.op")
    ratio = float(_number(raw["ratio"], f"{where}.ratio")) if "ratio" in raw else DEFAULT_OUT_RATIO.get(op, 1.0)
    level = _level(raw.get("level", default_level), f"{where}.level")
    return Step(op, ratio, level)


def _class(raw: Any, where: str) -> TaskClass:
    raw = _table(raw, where, _CLASS_KEYS)
    level = _level(raw.get("level"), f"{where}.level")
    if ("op" in raw) == ("pipeline" in raw):
        raise MixError(f"{where}: give either 'op' or 'pipeline'")
    steps: tuple[Step, ...]
    if "op" in raw:
        steps = (_step(raw, where, level),)
    else:
        if "ratio" in raw:
            raise MixError(f"{where}.ratio: give each pipeline step its own ratio")
        pipeline = raw["pipeline"]
        if not isinstance(pipeline, list) or not pipeline:
            raise MixError(f"{where}.pipeline: expected a non-empty list of steps")
        steps = tuple(
            _step(_table(s, f"{where}.pipeline[{i}]", _STEP_KEYS), f"{where}.pipeline[{i}]", level)
            for i, s in enumerate(pipeline)
        )
    name = raw.get("name", steps[0].op if len(steps) == 1 else "pipeline")
    if not isinstance(name, str) or not name:
        raise MixError(f"{where}.name: expected a non-empty string, got {name!r}")
    data = raw.get("data", "host")
    if data not in ("host", "device"):
        raise MixError(f"{where}.data: expected 'host' or 'device', got {data!r}")
    for key in ("size", "arrival"):
        if key not in raw:
            raise MixError(f"{where}.{key}: required")
    return TaskClass(
        name, steps, _size_dist(raw["size"], f"{where}.size"), _arrival(raw["arrival"], f"{where}.arrival"), data
    )


def _parse_mix(data: Mapping[str, Any], where: str) -> Mix:
    data = _table(data, where, _MIX_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise MixError(f"{where}.name: required (a non-empty string)")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise MixError(f"{where}.description: expected a string")
    seed = int(_number(data.get("seed", 0), f"{where}.seed", integer=True))
    duration = (
        float(_number(data["duration_s"], f"{where}.duration_s", positive=True)) if "duration_s" in data else None
    )
    tasks = int(_number(data["tasks"], f"{where}.tasks", positive=True, integer=True)) if "tasks" in data else None
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list) or not raw_classes:
        raise MixError(f"{where}.classes: at least one [[classes]] table is required")
    classes = tuple(_class(c, f"{where}.classes[{i}]") for i, c in enumerate(raw_classes))
    seen: set[str] = set()
    for i, c in enumerate(classes):
        if c.name in seen:
            raise MixError(f"{where}.classes[{i}].name: {c.name!r} is used twice (name the classes)")
        seen.add(c.name)
        if c.arrival.process == "poisson" and duration is None and tasks is None:
            raise MixError(f"{where}: class {c.name!r} arrives as a Poisson process; set duration_s or tasks")
    return Mix(name, description, classes, seed, duration, tasks)


# --- the devices as placement sees them ---------------------------------------------------------


@dataclass(eq=False, slots=True)
class _SimTask(Task):
    """A task with where its input lives and whether its output must end on the host."""

    data_on: str = "host"
    final: bool = True


class SimulatedDevice(Device):
    """A device that only models time: :meth:`can_run` and :meth:`estimate` over a DeviceModel.

    ``side`` says which side of the PCIe link its engines sit on.  Nothing
    can be submitted to it or allocated on it.
    """

    backend = "simulator"

    def __init__(self, model: DeviceModel, side: Literal["device", "host"]) -> None:
        self.model = model
        self.profile = model.profile
        self.label = model.label
        self.engines = model.engines
        self.side = side

    def start(self) -> None:
        """Nothing to start."""

    def shutdown(self, wait: bool = True) -> None:
        """Nothing to stop."""

    def can_run(self, task: Task, engine: EngineInfo) -> Refusal | None:
        """Capability and job size, as the profile says."""
        return self.model.refusal(task.op, task.nbytes, engine, task.out_hint)

    def transfers(self, task: Task, engine: EngineInfo) -> tuple[int, int]:
        """Bytes that cross PCIe before and after ``task`` runs on ``engine``."""
        data_on = getattr(task, "data_on", "host")
        if self.side == "host":
            return (task.nbytes if data_on == "device" else 0), 0
        if not self.model.crossing[engine.name]:
            return 0, 0
        final = getattr(task, "final", True)
        return (task.nbytes if data_on == "host" else 0), (task.out_hint if final else 0)

    def estimate(self, task: Task, engine: EngineInfo, arrival_s: float) -> Timeline:
        """Modeled timeline on ``engine`` if the task arrived now (charges nothing)."""
        b_in, b_out = self.transfers(task, engine)
        # A host engine sits on the near side of the link; only a pull makes it cross.
        cross = True if self.side == "host" and b_in else None
        return self.model.estimate(
            engine,
            task.op,
            task.nbytes,
            arrival_s,
            bytes_in=b_in,
            bytes_out=b_out,
            out_bytes=task.out_hint,
            level=task.level,
            cross=cross,
        )

    def submit(
        self, task: Task, engine: EngineInfo, arrival_s: float, placement: Placement | None = None
    ) -> TaskFuture:
        """Refused: a simulated device runs nothing."""
        raise errors.UnsupportedOpError("a simulated device models time only; nothing runs on it", device=self.label)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        """Refused: a simulated device has no memory."""
        raise errors.UnsupportedOpError("a simulated device has no memory to allocate", device=self.label)

    @property
    def memory_used(self) -> int:
        """Always 0: memory is not modeled."""
        return 0

    @property
    def memory_capacity(self) -> int | None:
        """The profile's memory."""
        return int(self.profile.memory.value)

    def stats(self) -> dict[str, EngineStats]:
        """Modeled counters per engine."""
        out = {}
        for e in self.engines:
            clock = self.model.clocks[e.name]
            out[e.name] = EngineStats(
                e.name, e.kind, e.lanes, tasks=clock.tasks, modeled_busy_s=clock.busy_s,
                modeled_horizon_s=clock.last_finish_s,
            )  # fmt: skip
        return out


def _devices(dpu_profile: Profile, host_profile: Profile) -> tuple[SimulatedDevice, SimulatedDevice]:
    """Fresh models of the DPU and the host, their clocks at 0, sharing one PCIe link."""
    dpu = DeviceModel(dpu_profile)
    # The host reaches DPU-resident data over the same link, moved by the DPU's DMA engine.
    host = DeviceModel(replace(host_profile, pcie=dpu_profile.pcie))
    host.dma_clock, host.dma_out_clock = dpu.dma_clock, dpu.dma_out_clock
    return SimulatedDevice(dpu, "device"), SimulatedDevice(host, "host")


# --- running a mix -----------------------------------------------------------------------------

_Chooser = Callable[[_SimTask, float, int], tuple[SimulatedDevice, EngineInfo, "Timeline"]]


@dataclass
class _Run:
    makespan_s: float
    latencies: list[float]
    counts: dict[str, int]
    engines: list[tuple[EngineInfo, float]]  # (engine, busy seconds)
    pcie_bytes: int
    host_busy_s: float
    steps: int
    assignment: list[tuple[str, str]]


def _steps_of(jobs: Sequence[Job]) -> int:
    return sum(len(j.cls.steps) for j in jobs)


def _run(
    jobs: Sequence[Job],
    dpu: SimulatedDevice,
    host: SimulatedDevice,
    choose: _Chooser,
    progress: Callable[[int], None] | None = None,
) -> _Run:
    """Place and charge every step of ``jobs`` in arrival order; ``choose`` picks the engine.

    Step ids given to ``choose`` number the steps job by job (a job's steps
    consecutively), whatever order they are placed in.
    """
    first_step = list(itertools.accumulate((len(j.cls.steps) for j in jobs), initial=0))
    # (arrival, tie-breaker, job, step, where the input lives, input bytes)
    pending = [(job.arrival_s, i, i, 0, job.cls.data, job.nbytes) for i, job in enumerate(jobs)]
    heapq.heapify(pending)
    seq = len(jobs)
    finish = [0.0] * len(jobs)
    counts: dict[str, int] = {}
    assignment: list[tuple[str, str]] = []
    pcie = done = 0
    while pending:
        arrival, _, ji, si, data_on, nbytes = heapq.heappop(pending)
        job = jobs[ji]
        step = job.cls.steps[si]
        final = si == len(job.cls.steps) - 1
        out = step.out_bytes(nbytes)
        task = _SimTask(
            op=step.op, name=f"{job.label}/{step.op}", nbytes=nbytes, out_hint=out, level=step.level,
            data_on=data_on, final=final,
        )  # fmt: skip
        dev, info, plan = choose(task, arrival, first_step[ji] + si)
        timeline = dev.model.charge(info, task.op, nbytes, plan, arrival)
        b_in, b_out = dev.transfers(task, info)
        pcie += b_in + b_out
        counts[info.label] = counts.get(info.label, 0) + 1
        assignment.append((task.label, info.label))
        if final:
            finish[ji] = timeline.finish_s
        else:
            seq += 1
            heapq.heappush(pending, (timeline.finish_s, seq, ji, si + 1, dev.side, out))
        done += 1
        if progress is not None and done % _PROGRESS_EVERY == 0:
            progress(_PROGRESS_EVERY)
    if progress is not None and done % _PROGRESS_EVERY:
        progress(done % _PROGRESS_EVERY)
    engines = [(e, dpu.model.clocks[e.name].busy_s) for e in dpu.engines]
    engines += [(e, host.model.clocks[e.name].busy_s) for e in host.engines]
    return _Run(
        makespan_s=max(finish, default=0.0),
        latencies=[f - j.arrival_s for f, j in zip(finish, jobs, strict=True)],
        counts=counts,
        engines=engines,
        pcie_bytes=pcie,
        host_busy_s=sum(busy for _, busy in engines[len(dpu.engines) :]),
        steps=done,
        assignment=assignment,
    )


def _policy_chooser(policy: str, dpu: SimulatedDevice, host: SimulatedDevice) -> _Chooser:
    def choose(task: _SimTask, arrival_s: float, step_id: int) -> tuple[SimulatedDevice, EngineInfo, Timeline]:
        placement, dev, info = place(task, dpu, host, arrival_s, policy=policy)
        assert isinstance(dev, SimulatedDevice) and placement.timeline is not None
        return dev, info, placement.timeline

    return choose


def _run_policy(
    jobs: Sequence[Job],
    dpu_profile: Profile,
    host_profile: Profile,
    policy: str,
    progress: Callable[[int], None] | None,
) -> _Run:
    dpu, host = _devices(dpu_profile, host_profile)
    chooser = _chain_chooser(jobs, dpu, host) if policy == "cost" else _policy_chooser(policy, dpu, host)
    return _run(jobs, dpu, host, chooser, progress)


def _chain_chooser(jobs: Sequence[Job], dpu: SimulatedDevice, host: SimulatedDevice) -> _Chooser:
    """``cost`` with pipelines placed as a whole, by the planner the runtime's Pipeline uses.

    When a pipeline's first step arrives, every assignment of its steps to
    engines is estimated end to end (execution, queues, and a PCIe hop
    wherever the data changes sides); later steps go where that plan put them.
    """
    owner = [(ji, si) for ji, job in enumerate(jobs) for si in range(len(job.cls.steps))]
    planned: dict[int, str] = {}

    def estimate(dev: Device, info: EngineInfo, stage: Stage, t: float) -> Timeline:
        assert isinstance(dev, SimulatedDevice)  # execution and queueing only: the planner charges the hops
        return dev.model.estimate(info, stage.op, stage.nbytes, t, out_bytes=stage.out_bytes, level=stage.level)

    planner = Planner(dpu.model.cost, lambda dev, info: dev.side, estimate)  # type: ignore[attr-defined]

    def plan(job: Job, first: _SimTask, arrival_s: float) -> list[str]:
        stages, nbytes = [], first.nbytes
        for step in job.cls.steps:
            stages.append(Stage(step.op, nbytes, step.out_bytes(nbytes), step.level))
            nbytes = step.out_bytes(nbytes)
        options = []
        for stage in stages:
            probe = _SimTask(op=stage.op, nbytes=stage.nbytes, out_hint=stage.out_bytes, level=stage.level)
            options.append([(d, i) for d in (dpu, host) for i in d.engines if d.can_run(probe, i) is None])
        if not all(options):
            return []
        return list(planner.plan(stages, options, arrival_s, start=first.data_on)[0].engines)

    def choose(task: _SimTask, arrival_s: float, step_id: int) -> tuple[SimulatedDevice, EngineInfo, Timeline]:
        ji, si = owner[step_id]
        job = jobs[ji]
        if si == 0 and len(job.cls.steps) > 1:
            for k, label in enumerate(plan(job, task, arrival_s)):
                planned[step_id + k] = label
        placement, dev, info = place(task, dpu, host, arrival_s, policy="cost", engine=planned.pop(step_id, None))
        assert isinstance(dev, SimulatedDevice) and placement.timeline is not None
        return dev, info, placement.timeline

    return choose


# --- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineUsage:
    """What one engine did in a run."""

    engine: str
    kind: str
    lanes: int
    tasks: int
    busy_s: float
    utilization: float


@dataclass
class SimReport:
    """What a mix costs on a device under one placement policy (modeled time only).

    ``utilization`` of an engine is its busy time over ``lanes x makespan``
    (the DMA engine's busy time is the PCIe transfers it moved);
    ``host_cores_saved`` is the host busy time of the host-only run minus
    this run's, over this run's makespan; latencies run from a task's arrival
    to the finish of its last step.  ``assignment`` lists ``(step, engine
    label)`` for every placement, in placement order.
    """

    mix: str
    device: str
    policy: str
    seed: int
    tasks: int
    steps: int
    makespan_s: float
    engines: dict[str, EngineUsage]
    pcie_bytes: int
    host_busy_s: float
    host_cores_saved: float
    latency_mean_s: float
    latency_p99_s: float
    assignment: list[tuple[str, str]] = field(default_factory=list, repr=False)

    @property
    def utilization(self) -> dict[str, float]:
        """Busy fraction per engine label."""
        return {k: e.utilization for k, e in self.engines.items()}

    @property
    def engine_tasks(self) -> dict[str, int]:
        """Steps placed per engine label."""
        return {k: e.tasks for k, e in self.engines.items()}

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output (without the per-step assignment)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "assignment"}
        data["engines"] = {k: asdict(e) for k, e in self.engines.items()}
        return data

    def __str__(self) -> str:
        lines = [
            f"{self.mix} on {self.device}, policy {self.policy} (seed {self.seed}): "
            f"{self.tasks} tasks, {self.steps} steps",
            f"  makespan {fmt_seconds(self.makespan_s)}; latency mean {fmt_seconds(self.latency_mean_s)}, "
            f"p99 {fmt_seconds(self.latency_p99_s)}",
            f"  PCIe {fmt_bytes(self.pcie_bytes)}; host busy {fmt_seconds(self.host_busy_s)}; "
            f"host cores saved {self.host_cores_saved:.2f}",
            f"  {'engine':<26} {'kind':<12} {'lanes':>5} {'tasks':>8} {'busy':>11} {'utilization':>11}",
        ]
        for e in self.engines.values():
            lines.append(
                f"  {e.engine:<26} {e.kind:<12} {e.lanes:>5} {e.tasks:>8} {fmt_seconds(e.busy_s):>11} "
                f"{e.utilization:>11.1%}"
            )
        return "\n".join(lines)


def _report(mix: Mix, device: str, policy: str, seed: int, run: _Run, baseline_host_busy_s: float) -> SimReport:
    span = run.makespan_s
    engines = {
        e.label: EngineUsage(
            e.label,
            e.kind,
            e.lanes,
            run.counts.get(e.label, 0),
            busy,
            min(1.0, busy / (e.lanes * span)) if span else 0.0,
        )
        for e, busy in run.engines
    }
    lat = sorted(run.latencies)
    p99 = lat[max(0, math.ceil(0.99 * len(lat)) - 1)] if lat else 0.0
    saved = 0.0 if policy == "host-only" or not span else (baseline_host_busy_s - run.host_busy_s) / span
    return SimReport(
        mix=mix.name,
        device=device,
        policy=policy,
        seed=seed,
        tasks=len(lat),
        steps=run.steps,
        makespan_s=span,
        engines=engines,
        pcie_bytes=run.pcie_bytes,
        host_busy_s=run.host_busy_s,
        host_cores_saved=saved,
        latency_mean_s=sum(lat) / len(lat) if lat else 0.0,
        latency_p99_s=p99,
        assignment=run.assignment,
    )


def _profiles(device: str | Path | Profile) -> tuple[Profile, Profile]:
    dpu = Profile.of(device)
    if dpu.kind != "dpu":
        raise errors.InvalidArgumentError(
            f"device {dpu.name!r} is a {dpu.kind} profile; the simulator needs a DPU profile (the host is always there)"
        )
    return dpu, Profile.load("host")


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise errors.InvalidArgumentError(f"unknown placement policy {policy!r}; choose one of {', '.join(POLICIES)}")


def simulate(
    mix: Mix | str | Path,
    device: str | Path | Profile = "bluefield3",
    policy: str = "cost",
    seed: int | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> SimReport:
    """Replay ``mix`` on ``device`` (a DPU profile name, path or Profile) under ``policy``.

    ``seed`` overrides the mix's.  ``progress`` is called with the number of
    steps placed since its last call (the host-only baseline run counts too).
    """
    mix = load_mix(mix)
    _check_policy(policy)
    dpu_profile, host_profile = _profiles(device)
    seed = mix.seed if seed is None else seed
    jobs = mix.generate(seed)
    run = _run_policy(jobs, dpu_profile, host_profile, policy, progress)
    baseline = run if policy == "host-only" else _run_policy(jobs, dpu_profile, host_profile, "host-only", progress)
    return _report(mix, dpu_profile.name, policy, seed, run, baseline.host_busy_s)


def compare(
    mix: Mix | str | Path,
    device: str | Path | Profile = "bluefield3",
    seed: int | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, SimReport]:
    """:func:`simulate` under every policy of :data:`~dpdpu.runtime.placement.POLICIES`, same tasks."""
    mix = load_mix(mix)
    dpu_profile, host_profile = _profiles(device)
    seed = mix.seed if seed is None else seed
    jobs = mix.generate(seed)
    runs = {p: _run_policy(jobs, dpu_profile, host_profile, p, progress) for p in POLICIES}
    base = runs["host-only"].host_busy_s
    return {p: _report(mix, dpu_profile.name, p, seed, r, base) for p, r in runs.items()}


def steps_of(mix: Mix | str | Path, seed: int | None = None) -> int:
    """How many placements one run of ``mix`` makes (for progress bars)."""
    mix = load_mix(mix)
    return _steps_of(mix.generate(seed))


# --- the optimum, by enumeration ----------------------------------------------------------------


def _fixed_chooser(combo: Sequence[tuple[int, EngineInfo]], sides: tuple[SimulatedDevice, SimulatedDevice]) -> _Chooser:
    def choose(task: _SimTask, arrival_s: float, step_id: int) -> tuple[SimulatedDevice, EngineInfo, Timeline]:
        side, info = combo[step_id]
        dev = sides[side]
        return dev, info, dev.estimate(task, info, arrival_s)

    return choose


@dataclass(frozen=True)
class BruteForceResult:
    """The best makespan over every engine assignment, and one assignment reaching it."""

    makespan_s: float
    #: (step, engine label) in placement order of the best schedule
    assignment: tuple[tuple[str, str], ...]
    evaluated: int


def brute_force_optimum(
    mix: Mix | str | Path,
    device: str | Path | Profile = "bluefield3",
    seed: int | None = None,
    *,
    max_steps: int = 10,
    max_assignments: int = 1_000_000,
) -> BruteForceResult:
    """Try every engine for every step of a small mix; return the best makespan.

    Each assignment is scheduled like :func:`simulate` schedules (arrival
    order, the same model and clocks), only the engine is given instead of
    chosen.  Engines are those able to run the step (DPU and host alike).
    InvalidArgumentError if the mix has more than ``max_steps`` steps or
    more than ``max_assignments`` assignments.
    """
    mix = load_mix(mix)
    dpu_profile, host_profile = _profiles(device)
    jobs = mix.generate(seed)
    n_steps = _steps_of(jobs)
    if n_steps > max_steps:
        raise errors.InvalidArgumentError(
            f"{mix.name} has {n_steps} steps; brute force takes at most max_steps={max_steps}"
        )
    dpu, host = _devices(dpu_profile, host_profile)
    options: list[list[tuple[int, EngineInfo]]] = []  # per step id: (0 = DPU, 1 = host, engine)
    for job in jobs:
        nbytes = job.nbytes
        for step in job.cls.steps:
            task = _SimTask(op=step.op, name=step.op, nbytes=nbytes, out_hint=step.out_bytes(nbytes))
            able = [
                (side, e) for side, dev in enumerate((dpu, host)) for e in dev.engines if dev.can_run(task, e) is None
            ]
            if not able:
                raise errors.UnsupportedOpError(f"no engine of {dpu.label} or the host can run {job.label}/{step.op}")
            options.append(able)
            nbytes = step.out_bytes(nbytes)
    total = math.prod(len(o) for o in options)
    if total > max_assignments:
        raise errors.InvalidArgumentError(
            f"{mix.name} has {total} engine assignments; brute force tries at most max_assignments={max_assignments}"
        )
    best: _Run | None = None
    for combo in itertools.product(*options):
        dpu, host = _devices(dpu_profile, host_profile)
        run = _run(jobs, dpu, host, _fixed_chooser(combo, (dpu, host)))
        if best is None or run.makespan_s < best.makespan_s:
            best = run
    assert best is not None
    return BruteForceResult(best.makespan_s, tuple(best.assignment), total)
