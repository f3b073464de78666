"""Device profiles: the capability matrix and cost figures of a device, from TOML.

A profile describes what a device has (engines, lanes, memory, the PCIe link),
what its hardware engines can run, and what each operation costs there.  Every
figure carries its source; figures that are ours rather than measured or
published are marked ``assumption = true`` and shown as such wherever they
are displayed.  The built-in profiles live next to this module in
``profiles/*.toml``; a path to any TOML file of the same shape works too.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ENGINE_KINDS",
    "EngineProfile",
    "Figure",
    "OpCost",
    "Profile",
    "StorageProfile",
    "builtin_profiles",
]

#: Engine kinds, in the order the runtime falls back through them.
ENGINE_KINDS = ("accelerator", "dma", "arm", "host")
_DEVICE_KINDS = ("dpu", "host")
_MIB = 1 << 20


@dataclass(frozen=True)
class Figure:
    """One number (or fact) with where it comes from."""

    value: Any
    source: str
    assumption: bool = False

    def cite(self) -> str:
        """The source, prefixed with ``assumption:`` when it is one of ours."""
        return f"assumption: {self.source}" if self.assumption else self.source


@dataclass(frozen=True)
class OpCost:
    """Cost of one op on one engine lane: ``fixed_s + nbytes * per_byte_s``.

    Built either from a throughput (``mib_per_s`` plus ``fixed_us``) or from
    measured points ``[[job bytes, MiB/s], ...]`` fitted by least squares, in
    both cases optionally scaled by ``scale`` (a throughput multiplier used to
    derive one device's curve from another's).
    """

    op: str
    fixed_s: float
    per_byte_s: float
    source: str
    assumption: bool = False
    note: str = ""

    def seconds(self, nbytes: int) -> float:
        """Modeled time for a job of ``nbytes`` on one lane."""
        return self.fixed_s + nbytes * self.per_byte_s

    @property
    def mib_per_s(self) -> float:
        """Asymptotic throughput of one lane."""
        return math.inf if self.per_byte_s == 0 else 1.0 / (self.per_byte_s * _MIB)


@dataclass(frozen=True)
class EngineProfile:
    """One engine of a device: its kind, lanes, limits and op costs."""

    name: str
    kind: str
    lanes: Figure
    costs: Mapping[str, OpCost]
    dispatch: Figure
    max_job_bytes: Figure | None = None
    python_slowdown: Figure | None = None

    @property
    def ops(self) -> frozenset[str]:
        """Ops the engine runs (``nop`` always; ``python`` where Python code can run)."""
        ops = set(self.costs) | {"nop"}
        if self.python_slowdown is not None:
            ops.add("python")
        return frozenset(ops)

    @property
    def on_device(self) -> bool:
        """True when the engine sits on the DPU (its work occupies device memory)."""
        return self.kind != "host"


@dataclass(frozen=True)
class StorageProfile:
    """The device's storage as the block device model sees it.

    An I/O holds one of ``parallelism`` queue slots for its fixed latency plus
    its transfer, and transfers share one channel at the bandwidth.  The fixed
    read latency is the published small-I/O latency (measured at
    ``latency_io_bytes``) minus that I/O's transfer time.
    """

    medium: Figure
    read_mb_per_s: Figure
    write_mb_per_s: Figure
    read_latency_us: Figure
    write_latency_us: Figure
    flush_us: Figure
    parallelism: Figure
    #: published small random-read throughput, kept to check the model against
    random_read_8k_mb_per_s: Figure | None = None
    latency_io_bytes: int = 8192

    @property
    def read_bytes_per_s(self) -> float:
        """Read bandwidth of the channel."""
        return float(self.read_mb_per_s.value) * 1e6

    @property
    def write_bytes_per_s(self) -> float:
        """Write bandwidth of the channel."""
        return float(self.write_mb_per_s.value) * 1e6

    @property
    def read_fixed_s(self) -> float:
        """Per-read latency apart from the transfer."""
        total = float(self.read_latency_us.value) * 1e-6
        return max(0.0, total - self.latency_io_bytes / self.read_bytes_per_s)

    @property
    def write_fixed_s(self) -> float:
        """Per-write latency apart from the transfer."""
        total = float(self.write_latency_us.value) * 1e-6
        return max(0.0, total - self.latency_io_bytes / self.write_bytes_per_s)

    @property
    def flush_s(self) -> float:
        """Time one flush holds a queue slot."""
        return float(self.flush_us.value) * 1e-6

    @property
    def slots(self) -> int:
        """I/Os the device serves at once."""
        return int(self.parallelism.value)

    def figures(self) -> dict[str, Figure]:
        """Every figure of the section by its TOML key."""
        out = {key: getattr(self, key) for key in _STORAGE_KEYS}
        if self.random_read_8k_mb_per_s is not None:
            out["random_read_8k_mb_per_s"] = self.random_read_8k_mb_per_s
        return out


_STORAGE_KEYS = (
    "medium",
    "read_mb_per_s",
    "write_mb_per_s",
    "read_latency_us",
    "write_latency_us",
    "flush_us",
    "parallelism",
)


@dataclass(frozen=True)
class Profile:
    """Everything the emulator needs to model one device."""

    name: str
    kind: str
    description: str
    memory: Figure
    engines: tuple[EngineProfile, ...]
    pcie: Mapping[str, Figure] | None = None
    hardware: Mapping[str, Figure] = field(default_factory=dict)
    facts: Mapping[str, Figure] = field(default_factory=dict)
    path: str = ""
    storage: StorageProfile | None = None

    def engine(self, name: str) -> EngineProfile:
        """The engine called ``name``."""
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise KeyError(name)

    @property
    def pcie_bytes_per_s(self) -> float | None:
        """Host<->device DMA bandwidth, or None for a host profile."""
        return None if self.pcie is None else float(self.pcie["gb_per_s"].value) * 1e9

    @property
    def pcie_fixed_s(self) -> float:
        """Fixed cost of one host<->device transfer."""
        return 0.0 if self.pcie is None else float(self.pcie["fixed_us"].value) * 1e-6

    def assumptions(self) -> list[str]:
        """Every figure of the profile that is an assumption, as ``what: source``."""
        out = [f"memory: {self.memory.source}"] if self.memory.assumption else []
        for key, fig in (self.pcie or {}).items():
            if fig.assumption:
                out.append(f"pcie.{key}: {fig.source}")
        for engine in self.engines:
            for key in ("lanes", "dispatch", "max_job_bytes", "python_slowdown"):
                fig = getattr(engine, key)
                if fig is not None and fig.assumption:
                    out.append(f"{engine.name}.{key}: {fig.source}")
            for cost in engine.costs.values():
                if cost.assumption:
                    out.append(f"{engine.name}.{cost.op}: {cost.source}")
        if self.storage is not None:
            for key, fig in self.storage.figures().items():
                if fig.assumption:
                    out.append(f"storage.{key}: {fig.source}")
        return out

    @classmethod
    def of(cls, spec: str | Path | Profile) -> Profile:
        """``spec`` itself if it is a profile, else :meth:`load` it (an ``emulator:`` prefix is allowed)."""
        if isinstance(spec, Profile):
            return spec
        return cls.load(str(spec).removeprefix("emulator:"))

    @classmethod
    def load(cls, name_or_path: str | Path) -> Profile:
        """Load a built-in profile by name, or any profile from a TOML path."""
        text, where = _read(name_or_path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{where}: not valid TOML: {exc}") from exc
        return _parse(data, where)


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped with dpdpu."""
    folder = resources.files("dpdpu.runtime") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read(name_or_path: str | Path) -> tuple[str, str]:
    text_name = str(name_or_path)
    if text_name.endswith(".toml") or "/" in text_name or "\\" in text_name:
        path = Path(text_name)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from exc
    if text_name not in builtin_profiles():
        from ..errors import UnknownDeviceError

        raise UnknownDeviceError(f"no profile named {text_name!r}; built-in profiles: {', '.join(builtin_profiles())}")
    res = resources.files("dpdpu.runtime") / "profiles" / f"{text_name}.toml"
    return res.read_text(encoding="utf-8"), f"profile {text_name}"


def _figure(raw: Any, where: str) -> Figure:
    if not isinstance(raw, dict) or "value" not in raw:
        raise ProfileError(f"{where}: expected a table with 'value' and 'source'")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ProfileError(f"{where}: every figure needs a 'source'")
    return Figure(raw["value"], source, bool(raw.get("assumption", False)))


def _positive(fig: Figure, where: str) -> float:
    value = fig.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ProfileError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def _fit(points: list[list[float]], where: str) -> tuple[float, float]:
    """Least-squares fixed + per-byte fit of [[bytes, MiB/s], ...]."""
    if len(points) < 2 or any(len(p) != 2 or p[0] <= 0 or p[1] <= 0 for p in points):
        raise ProfileError(f"{where}: 'points' needs two or more [bytes, MiB/s] pairs of positive numbers")
    xs = [float(p[0]) for p in points]
    ts = [float(p[0]) / (float(p[1]) * _MIB) for p in points]
    mx, mt = sum(xs) / len(xs), sum(ts) / len(ts)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ProfileError(f"{where}: 'points' need at least two different sizes")
    slope = sum((x - mx) * (t - mt) for x, t in zip(xs, ts, strict=False)) / sxx
    fixed = mt - slope * mx
    if slope <= 0:
        raise ProfileError(f"{where}: the points do not give a positive per-byte cost")
    return max(fixed, 0.0), slope


def _op_cost(op: str, raw: Any, where: str) -> OpCost:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a table")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ProfileError(f"{where}: every op cost needs a 'source'")
    scale = float(raw.get("scale", 1.0))
    if scale <= 0:
        raise ProfileError(f"{where}: 'scale' must be positive")
    if "points" in raw:
        fixed, per_byte = _fit(raw["points"], where)
    elif "mib_per_s" in raw:
        rate = float(raw["mib_per_s"])
        if rate <= 0:
            raise ProfileError(f"{where}: 'mib_per_s' must be positive")
        fixed, per_byte = float(raw.get("fixed_us", 0.0)) * 1e-6, 1.0 / (rate * _MIB)
    else:
        raise ProfileError(f"{where}: give either 'mib_per_s' or 'points'")
    return OpCost(
        op=op,
        fixed_s=fixed / scale,
        per_byte_s=per_byte / scale,
        source=source,
        assumption=bool(raw.get("assumption", False)),
        note=str(raw.get("note", "")),
    )


def _engine(name: str, raw: Any, where: str) -> EngineProfile:
    from .native import OPS

    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a table")
    kind = raw.get("kind")
    if kind not in ENGINE_KINDS:
        raise ProfileError(f"{where}: 'kind' must be one of {', '.join(ENGINE_KINDS)}, not {kind!r}")
    lanes = _figure(raw.get("lanes"), f"{where}.lanes")
    if not isinstance(lanes.value, int) or lanes.value < 1:
        raise ProfileError(f"{where}.lanes: expected a positive integer")
    dispatch = _figure(raw.get("dispatch_us"), f"{where}.dispatch_us")
    _positive(dispatch, f"{where}.dispatch_us")
    max_job = None
    if "max_job_bytes" in raw:
        max_job = _figure(raw["max_job_bytes"], f"{where}.max_job_bytes")
        _positive(max_job, f"{where}.max_job_bytes")
    slowdown = None
    if "python_slowdown" in raw:
        slowdown = _figure(raw["python_slowdown"], f"{where}.python_slowdown")
        _positive(slowdown, f"{where}.python_slowdown")
    ops = raw.get("ops", {})
    costs = {}
    for op, cost in ops.items():
        if op not in OPS or op in ("nop", "python"):
            raise ProfileError(f"{where}.ops: unknown op {op!r}")
        costs[op] = _op_cost(op, cost, f"{where}.ops.{op}")
    return EngineProfile(
        name=name,
        kind=kind,
        lanes=lanes,
        costs=costs,
        dispatch=Figure(float(dispatch.value) * 1e-6, dispatch.source, dispatch.assumption),
        max_job_bytes=max_job,
        python_slowdown=slowdown,
    )


def _parse(data: dict[str, Any], where: str) -> Profile:
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{where}: 'name' is required")
    kind = data.get("kind")
    if kind not in _DEVICE_KINDS:
        raise ProfileError(f"{where}: 'kind' must be 'dpu' or 'host', not {kind!r}")
    memory = _figure(data.get("memory"), f"{where}: memory")
    _positive(memory, f"{where}: memory")
    engines_raw = data.get("engines")
    if not isinstance(engines_raw, dict) or not engines_raw:
        raise ProfileError(f"{where}: at least one [engines.NAME] table is required")
    engines = tuple(_engine(n, e, f"{where}: engines.{n}") for n, e in engines_raw.items())
    pcie = None
    if kind == "dpu":
        raw = data.get("pcie")
        if not isinstance(raw, dict):
            raise ProfileError(f"{where}: a dpu profile needs a [pcie] table")
        pcie = {k: _figure(raw.get(k), f"{where}: pcie.{k}") for k in ("gb_per_s", "fixed_us")}
        _positive(pcie["gb_per_s"], f"{where}: pcie.gb_per_s")
    hardware = {k: _figure(v, f"{where}: hardware.{k}") for k, v in data.get("hardware", {}).items()}
    for engine in engines:
        if engine.kind != "accelerator":
            continue
        for op in engine.costs:
            fig = hardware.get(op)
            if fig is None or fig.value is not True:
                raise ProfileError(f"{where}: engines.{engine.name} runs {op} but [hardware] does not list {op} = true")
    facts = {k: _figure(v, f"{where}: facts.{k}") for k, v in data.get("facts", {}).items()}
    storage = _storage(data["storage"], f"{where}: storage") if "storage" in data else None
    return Profile(
        name=name,
        kind=kind,
        description=str(data.get("description", "")),
        memory=memory,
        engines=engines,
        pcie=pcie,
        hardware=hardware,
        facts=facts,
        path=where,
        storage=storage,
    )


def _storage(raw: Any, where: str) -> StorageProfile:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a table")
    figs = {key: _figure(raw.get(key), f"{where}.{key}") for key in _STORAGE_KEYS}
    for key in _STORAGE_KEYS[1:]:
        _positive(figs[key], f"{where}.{key}")
    if not isinstance(figs["parallelism"].value, int):
        raise ProfileError(f"{where}.parallelism: expected a positive integer")
    extra = None
    if "random_read_8k_mb_per_s" in raw:
        extra = _figure(raw["random_read_8k_mb_per_s"], f"{where}.random_read_8k_mb_per_s")
        _positive(extra, f"{where}.random_read_8k_mb_per_s")
    unknown = set(raw) - set(_STORAGE_KEYS) - {"random_read_8k_mb_per_s"}
    if unknown:
        raise ProfileError(f"{where}: unknown keys {sorted(unknown)}")
    return StorageProfile(
        medium=figs["medium"],
        read_mb_per_s=figs["read_mb_per_s"],
        write_mb_per_s=figs["write_mb_per_s"],
        read_latency_us=figs["read_latency_us"],
        write_latency_us=figs["write_latency_us"],
        flush_us=figs["flush_us"],
        parallelism=figs["parallelism"],
        random_read_8k_mb_per_s=extra,
    )
