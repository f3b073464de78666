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
    "Point",
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
class Point:
    """One published measurement of an op: a job's input and output bytes and its throughput."""

    in_bytes: int
    out_bytes: int | None
    mib_per_s: float
    #: which side of the job the throughput counts: ``"input"`` or ``"output"``
    rate_of: str = "input"

    @property
    def seconds(self) -> float:
        """Time of one job at this throughput."""
        nbytes = self.in_bytes if self.rate_of == "input" else self.out_bytes
        return float(nbytes or 0) / (self.mib_per_s * _MIB)


@dataclass(frozen=True)
class OpCost:
    """Cost of one job of an op on one engine lane.

    ``seconds(in, out) = max(setup + in * per_in_s, out * per_out_s)``: a job
    pays its set-up and the time to consume its input, and never less than
    the time to produce its output (an engine streams, decoding and writing
    at once, so the slower side bounds it).  Any term may be zero; a job
    with only a set-up (``fit = "fixed"``) is what the hardware's nearly flat
    published per-job times give.

    The set-up is the op's own fixed part where its figures give one (the
    intercept of measured points, or ``fixed_us``), else the engine's
    ``dispatch_us``: every job pays one set-up, never two.
    """

    op: str
    per_in_s: float
    setup: Figure
    source: str
    assumption: bool = False
    note: str = ""
    #: seconds per output byte: the output ceiling (0: none)
    per_out_s: float = 0.0
    #: the figure behind ``per_out_s``
    out_rate: Figure | None = None
    #: whether small jobs of this op are coalesced into one job (dpManager style)
    coalesce: Figure | None = None
    #: the published points the curve was fitted to (calibrated)
    points: tuple[Point, ...] = ()
    #: published points kept out of the fit on purpose (predictions)
    held_out: tuple[Point, ...] = ()
    #: throughput multiplier applied to the points (a curve derived from another device's)
    scale: float = 1.0

    @property
    def fixed_s(self) -> float:
        """The per-job set-up, in seconds."""
        return float(self.setup.value)

    def seconds(self, nbytes: int, out_bytes: int = 0) -> float:
        """Modeled time for one job of ``nbytes`` of input and ``out_bytes`` of output on one lane."""
        streaming = float(self.setup.value) + nbytes * self.per_in_s
        floor = out_bytes * self.per_out_s
        return floor if floor > streaming else streaming

    @property
    def mib_per_s(self) -> float:
        """Asymptotic input throughput of one lane."""
        return math.inf if self.per_in_s == 0 else 1.0 / (self.per_in_s * _MIB)

    @property
    def coalesces(self) -> bool:
        """True if the profile lets small jobs of this op share one job."""
        return self.coalesce is not None and self.coalesce.value is True


@dataclass(frozen=True)
class EngineProfile:
    """One engine of a device: its kind, lanes, limits and op costs."""

    name: str
    kind: str
    lanes: Figure
    costs: Mapping[str, OpCost]
    #: handing one task to the engine (seconds): the set-up of Python tasks and of ops without one of their own
    dispatch: Figure | None
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
    its transfer, and transfers share one channel at the bandwidth.  The
    figures are fio's: ``fio_jobs`` I/Os kept in flight (fio's ``numjobs`` x
    ``iodepth``), 4 MB random reads and sequential writes for the bandwidths,
    8 KB random reads for the fixed read latency: at the run's I/Os in
    flight, the model serves 8 KB random reads at the published throughput.
    Writes and sequential reads scale that latency by their factors.  The
    published 8 KB latency (``read_latency_us``) is kept out of the
    calibration where the throughput is given, as a prediction.
    """

    medium: Figure
    read_mb_per_s: Figure
    write_mb_per_s: Figure
    read_latency_us: Figure
    flush_us: Figure
    parallelism: Figure
    #: published small random-read throughput, which the fixed read latency reproduces
    random_read_8k_mb_per_s: Figure | None = None
    fio_jobs: Figure | None = None
    write_latency_us: Figure | None = None
    write_fixed_factor: Figure | None = None
    seq_read_fixed_factor: Figure | None = None
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
    def in_flight(self) -> int:
        """I/Os the published runs kept in flight (fio's jobs x iodepth)."""
        return self.slots if self.fio_jobs is None else int(self.fio_jobs.value)

    @property
    def read_fixed_s(self) -> float:
        """Per-read latency of a random read apart from the transfer."""
        io = self.latency_io_bytes
        if self.random_read_8k_mb_per_s is not None:
            served = min(self.slots, self.in_flight)
            total = served * io / (float(self.random_read_8k_mb_per_s.value) * 1e6)
        else:
            total = float(self.read_latency_us.value) * 1e-6
        return max(0.0, total - io / self.read_bytes_per_s)

    @property
    def seq_read_fixed_s(self) -> float:
        """Per-read latency of a read that continues an earlier one, apart from the transfer."""
        factor = 1.0 if self.seq_read_fixed_factor is None else float(self.seq_read_fixed_factor.value)
        return self.read_fixed_s * factor

    @property
    def write_fixed_s(self) -> float:
        """Per-write latency apart from the transfer."""
        if self.write_latency_us is not None:
            total = float(self.write_latency_us.value) * 1e-6
            return max(0.0, total - self.latency_io_bytes / self.write_bytes_per_s)
        factor = 1.0 if self.write_fixed_factor is None else float(self.write_fixed_factor.value)
        return self.read_fixed_s * factor

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
        for key in _STORAGE_OPTIONAL:
            fig = getattr(self, key)
            if fig is not None:
                out[key] = fig
        return out


_STORAGE_KEYS = ("medium", "read_mb_per_s", "write_mb_per_s", "read_latency_us", "flush_us", "parallelism")
_STORAGE_OPTIONAL = (
    "random_read_8k_mb_per_s", "fio_jobs", "write_latency_us", "write_fixed_factor", "seq_read_fixed_factor",
)  # fmt: skip


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
                # The op's own set-up and its output ceiling are figures of their own.
                if cost.setup.assumption and cost.setup is not engine.dispatch and cost.setup.source != cost.source:
                    out.append(f"{engine.name}.{cost.op}.fixed_us: {cost.setup.source}")
                for key, extra in (("out_mib_per_s", cost.out_rate), ("coalesce", cost.coalesce)):
                    if extra is not None and extra.assumption:
                        out.append(f"{engine.name}.{cost.op}.{key}: {extra.source}")
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


def _number_figure(raw: Any, where: str, unit: str) -> Figure:
    """A figure given as a table with its source, or a bare number (then an unsourced assumption)."""
    if isinstance(raw, dict):
        return _figure(raw, where)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ProfileError(f"{where}: expected a number of {unit} or a table with 'value' and 'source'")
    return Figure(raw, "no source given", assumption=True)


def _points(raw: Any, rate_of: str, where: str) -> tuple[Point, ...]:
    if not isinstance(raw, list) or not raw:
        raise ProfileError(f"{where}: expected a list of [input bytes, output bytes, MiB/s] (or [bytes, MiB/s])")
    out = []
    for p in raw:
        if (
            not isinstance(p, list)
            or len(p) not in (2, 3)
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in p)
        ):
            raise ProfileError(f"{where}: every point is [input bytes, output bytes, MiB/s] of positive numbers")
        if len(p) == 2:
            if rate_of == "output":
                raise ProfileError(f"{where}: throughput of the output needs [input bytes, output bytes, MiB/s]")
            out.append(Point(int(p[0]), None, float(p[1]), rate_of))
        else:
            out.append(Point(int(p[0]), int(p[1]), float(p[2]), rate_of))
    return tuple(out)


def _fit(points: tuple[Point, ...], form: str, where: str) -> tuple[float, float]:
    """Set-up and per-input-byte cost that fit the points with the least squared relative error."""
    xs = [float(p.in_bytes) for p in points]
    ts = [p.seconds for p in points]
    ws = [1.0 / (t * t) for t in ts]
    if form == "fixed":
        return sum(w * t for w, t in zip(ws, ts, strict=True)) / sum(ws), 0.0
    if len(points) < 2 or len(set(xs)) < 2:
        raise ProfileError(f"{where}: a linear fit needs points of at least two different sizes")
    sw = sum(ws)
    sx = sum(w * x for w, x in zip(ws, xs, strict=True))
    st = sum(w * t for w, t in zip(ws, ts, strict=True))
    sxx = sum(w * x * x for w, x in zip(ws, xs, strict=True))
    sxt = sum(w * x * t for w, x, t in zip(ws, xs, ts, strict=True))
    slope = (sw * sxt - sx * st) / (sw * sxx - sx * sx)
    fixed = (st - slope * sx) / sw
    if fixed < 0:  # no negative set-up: refit through the origin
        fixed, slope = 0.0, sxt / sxx
    if slope <= 0:
        raise ProfileError(
            f'{where}: the points do not give a positive per-byte cost; if the per-job time is flat, use fit = "fixed"'
        )
    return fixed, slope


_OP_KEYS = {
    "mib_per_s", "fixed_us", "points", "held_out", "rate_of", "fit", "out_mib_per_s", "coalesce", "scale",
    "source", "assumption", "note",
}  # fmt: skip


def _op_cost(op: str, raw: Any, dispatch: Figure | None, where: str) -> OpCost:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a table")
    unknown = set(raw) - _OP_KEYS
    if unknown:
        raise ProfileError(f"{where}: unknown keys {sorted(unknown)}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ProfileError(f"{where}: every op cost needs a 'source'")
    assumption = bool(raw.get("assumption", False))
    scale = raw.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ProfileError(f"{where}: 'scale' must be a positive number")
    scale = float(scale)
    rate_of = raw.get("rate_of", "input")
    if rate_of not in ("input", "output"):
        raise ProfileError(f"{where}: 'rate_of' is 'input' or 'output'")
    points: tuple[Point, ...] = ()
    held_out: tuple[Point, ...] = ()
    setup: Figure | None = None
    if "points" in raw:
        if "mib_per_s" in raw:
            raise ProfileError(f"{where}: give either 'mib_per_s' or 'points', not both")
        form = raw.get("fit", "linear")
        if form not in ("linear", "fixed"):
            raise ProfileError(f"{where}: 'fit' is 'linear' (set-up + per input byte) or 'fixed' (set-up only)")
        points = _points(raw["points"], rate_of, f"{where}.points")
        if "held_out" in raw:
            held_out = _points(raw["held_out"], rate_of, f"{where}.held_out")
        fixed, per_in = _fit(points, form, where)
        # The intercept of per-job measurements is the job's set-up, from the same source.
        setup = Figure(fixed / scale, source, assumption)
        per_in /= scale
    elif "mib_per_s" in raw:
        rate = raw["mib_per_s"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
            raise ProfileError(f"{where}: 'mib_per_s' must be a positive number")
        per_in = 1.0 / (float(rate) * scale * _MIB)
    else:
        raise ProfileError(f"{where}: give either 'mib_per_s' or 'points'")
    if "fixed_us" in raw:
        if setup is not None:
            raise ProfileError(f"{where}: the points give the set-up; drop 'fixed_us'")
        fig = _number_figure(raw["fixed_us"], f"{where}.fixed_us", "microseconds")
        if isinstance(fig.value, bool) or not isinstance(fig.value, (int, float)) or fig.value < 0:
            raise ProfileError(f"{where}.fixed_us: expected a non-negative number")
        setup = Figure(float(fig.value) * 1e-6, fig.source, fig.assumption)
    if setup is None:
        setup = dispatch or Figure(0.0, "no set-up: neither the op nor its engine gives one", assumption=True)
    per_out, out_rate = 0.0, None
    if "out_mib_per_s" in raw:
        out_rate = _number_figure(raw["out_mib_per_s"], f"{where}.out_mib_per_s", "MiB/s")
        per_out = 1.0 / (_positive(out_rate, f"{where}.out_mib_per_s") * scale * _MIB)
    coalesce = None
    if "coalesce" in raw:
        coalesce = _figure(raw["coalesce"], f"{where}.coalesce")
        if not isinstance(coalesce.value, bool):
            raise ProfileError(f"{where}.coalesce: 'value' is true or false")
    return OpCost(
        op=op,
        per_in_s=per_in,
        setup=setup,
        source=source,
        assumption=assumption,
        note=str(raw.get("note", "")),
        per_out_s=per_out,
        out_rate=out_rate,
        coalesce=coalesce,
        points=points,
        held_out=held_out,
        scale=scale,
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
    dispatch = None
    if "dispatch_us" in raw:
        fig = _figure(raw["dispatch_us"], f"{where}.dispatch_us")
        dispatch = Figure(_positive(fig, f"{where}.dispatch_us") * 1e-6, fig.source, fig.assumption)
    max_job = None
    if "max_job_bytes" in raw:
        max_job = _figure(raw["max_job_bytes"], f"{where}.max_job_bytes")
        _positive(max_job, f"{where}.max_job_bytes")
    slowdown = None
    if "python_slowdown" in raw:
        slowdown = _figure(raw["python_slowdown"], f"{where}.python_slowdown")
        _positive(slowdown, f"{where}.python_slowdown")
        if dispatch is None:
            raise ProfileError(f"{where}: an engine that runs Python needs 'dispatch_us'")
    ops = raw.get("ops", {})
    costs = {}
    for op, cost in ops.items():
        if op not in OPS or op in ("nop", "python"):
            raise ProfileError(f"{where}.ops: unknown op {op!r}")
        costs[op] = _op_cost(op, cost, dispatch, f"{where}.ops.{op}")
    return EngineProfile(
        name=name,
        kind=kind,
        lanes=lanes,
        costs=costs,
        dispatch=dispatch,
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
    unknown = set(raw) - set(_STORAGE_KEYS) - set(_STORAGE_OPTIONAL)
    if unknown:
        raise ProfileError(f"{where}: unknown keys {sorted(unknown)}")
    figs = {key: _figure(raw.get(key), f"{where}.{key}") for key in _STORAGE_KEYS}
    for key in _STORAGE_OPTIONAL:
        if key in raw:
            figs[key] = _figure(raw[key], f"{where}.{key}")
    for key, fig in figs.items():
        if key != "medium":
            _positive(fig, f"{where}.{key}")
    for key in ("parallelism", "fio_jobs"):
        if key in figs and not isinstance(figs[key].value, int):
            raise ProfileError(f"{where}.{key}: expected a positive integer")
    return StorageProfile(**figs)  # type: ignore[arg-type]
