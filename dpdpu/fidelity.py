"""The fidelity suite: every published figure the emulator is calibrated on, reproduced.

Each :class:`Check` names one published figure (with its source, from the
device profile) and reproduces it through the public API only -- a
:class:`~dpdpu.Runtime` on the profile, device memory from ``rt.alloc``,
``rt.submit`` of the real op, a :class:`~dpdpu.storage.BlockDevice` on a real
file -- reading the emulator's *modeled* time, never this machine's.

* **calibrated** figures went into the profile's fit; the model must
  reproduce them within 10%;
* **predictions** are published figures kept out of the calibration on
  purpose (``held_out`` points, the storage latencies); they test the model,
  and are expected within 25% unless the check says why not.

``dpdpu fidelity`` prints the table (``--json``, ``--plot FILE.png``);
``tests/fidelity/`` runs the same checks as tests.  ``docs/FIDELITY.md``
explains the choices.
"""

from __future__ import annotations

import heapq
import random
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from . import compute
from .errors import InvalidArgumentError
from .runtime import Runtime
from .runtime.profile import OpCost, Point, Profile, builtin_profiles

__all__ = ["CALIBRATED_BOUND", "PREDICTION_BOUND", "Check", "Result", "checks", "run"]

#: Largest relative error allowed for a calibrated figure.
CALIBRATED_BOUND = 0.10
#: Largest relative error expected of a prediction.
PREDICTION_BOUND = 0.25
#: Equal jobs submitted together for a batch check.
BATCH = 256

_MIB = 1 << 20


@dataclass(frozen=True)
class Check:
    """One published figure and how to reproduce it."""

    device: str
    figure: str
    unit: str
    published: float
    source: str
    kind: str  # "calibrated" or "prediction"
    reproduce: Callable[[], float]
    #: why a prediction is expected to miss (empty: it is expected within the bound)
    known_miss: str = ""

    @property
    def bound(self) -> float:
        """The relative error this figure must (calibrated) or should (prediction) stay within."""
        return CALIBRATED_BOUND if self.kind == "calibrated" else PREDICTION_BOUND

    @property
    def name(self) -> str:
        """``device: figure``, unique within the suite."""
        return f"{self.device}: {self.figure}"


@dataclass(frozen=True)
class Result:
    """A check's published and modeled values."""

    check: Check
    modeled: float

    @property
    def error(self) -> float:
        """Relative error of the modeled value, (modeled - published) / published."""
        return (self.modeled - self.check.published) / self.check.published

    @property
    def ok(self) -> bool:
        """True if the error is within the check's bound."""
        return abs(self.error) <= self.check.bound

    @property
    def status(self) -> str:
        """``ok``, ``FAIL`` (a calibrated figure out of bounds), ``miss`` (a prediction that missed)."""
        if self.ok:
            return "ok"
        return "FAIL" if self.check.kind == "calibrated" else "miss"

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        c = self.check
        return {
            "device": c.device, "figure": c.figure, "unit": c.unit, "kind": c.kind, "published": c.published,
            "modeled": self.modeled, "error": self.error, "bound": c.bound, "status": self.status,
            "source": c.source, "known_miss": c.known_miss,
        }  # fmt: skip


def checks(profiles: list[str] | None = None) -> list[Check]:
    """Every check of the given built-in profiles (default: all of them)."""
    names = builtin_profiles() if profiles is None else profiles
    unknown = sorted(set(names) - set(builtin_profiles()))
    if unknown:
        raise InvalidArgumentError(f"no built-in profile {unknown[0]!r}; choose from {', '.join(builtin_profiles())}")
    out: list[Check] = []
    for name in names:
        profile = Profile.load(name)
        out.extend(_compute_checks(profile))
        out.extend(_memory_checks(profile))
        out.extend(_storage_checks(profile))
    return out


def run(selected: list[Check] | None = None, progress: Callable[[Check], None] | None = None) -> list[Result]:
    """Reproduce every check; ``progress`` is called after each one."""
    results = []
    for check in checks() if selected is None else selected:
        results.append(Result(check, check.reproduce()))
        if progress is not None:
            progress(check)
    return results


# --- compute: published per-job points ---------------------------------------------------


def _compute_checks(profile: Profile) -> Iterator[Check]:
    for engine in profile.engines:
        for op, cost in engine.costs.items():
            if cost.assumption or not cost.points or op != "deflate_decompress":
                continue  # borrowed or derived curves are assumptions, not calibration
            for kind, points in (("calibrated", cost.points), ("prediction", cost.held_out)):
                for p in points:
                    yield Check(
                        profile.name, f"{_short(engine.name)} inflate {p.in_bytes} B->{_bytes(p.out_bytes)}",
                        "MiB/s in",
                        p.mib_per_s, cost.source, kind, _one_job(profile.name, engine.name, p),
                    )  # fmt: skip
            largest = max(cost.points, key=lambda p: p.in_bytes)
            lanes = int(engine.lanes.value)
            yield Check(
                profile.name, f"{_short(engine.name)} {BATCH} x {largest.in_bytes} B", "MiB/s in",
                largest.mib_per_s * lanes, f"{cost.source}; x {lanes} lanes", "calibrated",
                _batch(profile.name, engine.name, largest, cost),
            )  # fmt: skip


def _short(engine: str) -> str:
    return "accel" if engine == "accelerator" else engine


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n // 1024} KB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


@cache
def _stream(in_bytes: int, out_bytes: int) -> tuple[bytes, bytes]:
    """A real zlib stream of exactly ``in_bytes`` that inflates to ``out_bytes``, and its output."""
    rng = random.Random(out_bytes)
    noise = bytes(rng.getrandbits(8) for _ in range(out_bytes))

    def attempt(k: int, level: int, strategy: int) -> tuple[bytes, bytes]:
        data = noise[:k] + bytes(out_bytes - k)
        c = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
        return c.compress(data) + c.flush(), data

    strategies = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE, zlib.Z_FIXED)
    for strategy in strategies:
        for level in (9, 6, 1):
            lo, hi = 0, out_bytes  # the stream grows with the random part
            while lo < hi:
                mid = (lo + hi) // 2
                if len(attempt(mid, level, strategy)[0]) < in_bytes:
                    lo = mid + 1
                else:
                    hi = mid
            for k in range(max(0, lo - 8), min(out_bytes, lo + 8) + 1):
                blob, data = attempt(k, level, strategy)
                if len(blob) == in_bytes:
                    return blob, data
    raise InvalidArgumentError(f"no zlib stream of {in_bytes} bytes inflates to {out_bytes} bytes here")


def _on_device(rt: Runtime, blob: bytes) -> Any:
    buf = rt.alloc(len(blob))
    buf.view()[:] = blob
    return buf


def _one_job(device: str, engine: str, point: Point) -> Callable[[], float]:
    def reproduce() -> float:
        out = point.out_bytes or 4 * point.in_bytes
        blob, data = _stream(point.in_bytes, out)
        with Runtime(device, workers=1) as rt:
            src = _on_device(rt, blob)
            with rt.data_on(device, keep_output=True):
                fut = rt.submit(compute.decompress, src, output_size=out, engine=f"{device}/{engine}", fallback=False)
            if fut.result() != data:
                raise AssertionError("the decompressed output differs")
            timeline = rt.explain(fut).timeline
            assert timeline is not None
            return point.in_bytes / timeline.modeled_s / _MIB

    return reproduce


def _batch(device: str, engine: str, point: Point, cost: OpCost) -> Callable[[], float]:
    def reproduce() -> float:
        out = point.out_bytes or 4 * point.in_bytes
        blob, data = _stream(point.in_bytes, out)
        with Runtime(device, workers=2) as rt:
            src = _on_device(rt, blob)
            with rt.data_on(device, keep_output=True):
                futures = [
                    rt.submit(compute.decompress, src, output_size=out, engine=f"{device}/{engine}", fallback=False)
                    for _ in range(BATCH)
                ]
            if any(f.result() != data for f in futures):
                raise AssertionError("a decompressed output differs")
            timelines = [rt.explain(f).timeline for f in futures]
            start = min(t.arrival_s for t in timelines if t is not None)
            finish = max(t.finish_s for t in timelines if t is not None)
            return BATCH * point.in_bytes / (finish - start) / _MIB

    return reproduce


# --- memory ----------------------------------------------------------------------------


def _memory_checks(profile: Profile) -> Iterator[Check]:
    fact = profile.facts.get("seq_read_mib_per_s")
    if fact is None or fact.assumption:
        return
    for engine in profile.engines:
        cost = engine.costs.get("crc32c")
        # A checksum reads every byte once: where the profile prices it at the memory
        # bandwidth, it reproduces that bandwidth (the host's runs at its SSE4.2 rate instead).
        if cost is not None and abs(cost.mib_per_s - float(fact.value)) < 1e-6:
            yield Check(
                profile.name, f"{engine.name} memory seq read", "MiB/s", float(fact.value), fact.source,
                "calibrated", _scan(profile.name, engine.name),
            )  # fmt: skip


def _scan(device: str, engine: str) -> Callable[[], float]:
    def reproduce() -> float:
        nbytes = 64 * _MIB  # a checksum reads every byte once: the memory-bound scan
        with Runtime(device, workers=1) as rt:
            buf = rt.alloc(nbytes)
            fut = rt.submit(compute.crc32c, buf, engine=f"{device}/{engine}", fallback=False)
            fut.result()
            timeline = rt.explain(fut).timeline
            assert timeline is not None
            return nbytes / timeline.modeled_s / _MIB

    return reproduce


# --- storage: fio's rows ---------------------------------------------------------------


def _storage_checks(profile: Profile) -> Iterator[Check]:
    s = profile.storage
    if s is None:
        return
    jobs = s.in_flight
    rows = [
        ("random_read_8k_mb_per_s", "8K rand read", "read", 8192, False),
        ("read_mb_per_s", "4M rand read", "read", 4 << 20, False),
        ("write_mb_per_s", "4M seq write", "write", 4 << 20, True),
    ]
    for key, label, op, size, sequential in rows:
        fig = getattr(s, key)
        if fig is None or fig.assumption:
            continue
        yield Check(
            profile.name, f"storage {label} x{jobs}", "MB/s", float(fig.value), fig.source, "calibrated",
            _fio(profile.name, op, size, jobs, sequential),
        )  # fmt: skip
    lat = s.read_latency_us
    if not lat.assumption:
        miss = ""
        if s.random_read_8k_mb_per_s is not None:
            needed = float(s.random_read_8k_mb_per_s.value) * 1e6 * float(lat.value) * 1e-6 / 8192
            if needed > jobs + 0.5:
                miss = (
                    f"the published latency and throughput together need {needed:.0f} I/Os in flight, "
                    f"but fio kept {jobs}: both cannot hold, and the model keeps the throughput"
                )
        yield Check(
            profile.name, "storage 8K read latency x1", "us", float(lat.value), lat.source, "prediction",
            _latency(profile.name), miss,
        )  # fmt: skip


def _fio(device: str, op: str, size: int, jobs: int, sequential: bool) -> Callable[[], float]:
    """fio with ``jobs`` jobs at iodepth 1: each job keeps one I/O in flight and starts the next as it ends."""

    def reproduce() -> float:
        from .storage import BlockDevice

        ios_per_job = 48 if size <= 65536 else 3
        region = max(size * ios_per_job, 1 << 20)
        rng = random.Random(size)
        with (
            tempfile.TemporaryDirectory() as tmp,
            BlockDevice(Path(tmp) / "fio.img", capacity=region * jobs, device=device, block_size=4096) as dev,
        ):
            payload = bytes(size) if op == "write" else None

            def offset(job: int, i: int) -> int:
                if sequential:
                    return job * region + i * size
                return job * region + rng.randrange(region // size) * size

            def submit(job: int, i: int) -> Any:
                at = offset(job, i)
                return dev.write(at, payload) if payload is not None else dev.read(at, size)

            heap: list[tuple[float, int, int, Any]] = []
            for job in range(jobs):
                fut = submit(job, 0)
                heap.append((fut.timing.finish_s, job, 0, fut))
            heapq.heapify(heap)
            start = float(min(h[3].timing.arrival_s for h in heap))
            finish, done = 0.0, 0
            while heap:  # take the I/O that ends first, as fio's job would see it end
                end, job, i, fut = heapq.heappop(heap)
                fut.result()
                finish, done = max(finish, end), done + 1
                if i + 1 < ios_per_job:
                    nxt = submit(job, i + 1)
                    heapq.heappush(heap, (nxt.timing.finish_s, job, i + 1, nxt))
            return done * size / (finish - start) / 1e6

    return reproduce


def _latency(device: str) -> Callable[[], float]:
    def reproduce() -> float:
        from .storage import BlockDevice

        with (
            tempfile.TemporaryDirectory() as tmp,
            BlockDevice(Path(tmp) / "lat.img", capacity=64 << 20, device=device) as dev,
        ):
            fut = dev.read(32 << 20, 8192)
            fut.result()
            assert fut.modeled_s is not None
            return float(fut.modeled_s) * 1e6

    return reproduce
