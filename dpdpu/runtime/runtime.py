"""The runtime: one device (plus the host CPU as fallback), placement, futures, stats.

Modeled (virtual) time follows program order: a task arrives at the latest
finish time among the results the program has already taken, so a batch
submitted at once competes for lanes, and a task submitted after another's
result has been read starts after it.  That keeps modeled device time
independent of how fast the machine running the emulator happens to be.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import errors
from .device import DATA_LOCATION, DataLocation, Device, DeviceBuffer, EngineStats, Task
from .emulator import EmulatorDevice
from .future import TaskFuture
from .placement import Placement, place
from .policies import Policy, policy_for
from .profile import Profile
from .registry import open_device
from .units import fmt_bytes, fmt_seconds

__all__ = ["Runtime", "RuntimeStats", "current_runtime", "default_runtime", "python_task"]

_log = logging.getLogger(__name__)

_current: ContextVar[Runtime | None] = ContextVar("dpdpu_runtime", default=None)
#: engine label every task submitted in this context goes to (see Runtime.pinned)
_pinned: ContextVar[str | None] = ContextVar("dpdpu_pinned_engine", default=None)
_default: Runtime | None = None
_default_lock = threading.Lock()
_live: weakref.WeakSet[Runtime] = weakref.WeakSet()


@dataclass
class RuntimeStats:
    """What a runtime has done: per engine counters plus wall and modeled totals."""

    device: str
    wall_s: float
    modeled_s: float
    tasks: int
    errors: int
    pcie_bytes: int
    engines: dict[str, EngineStats] = field(default_factory=dict)
    placements: dict[str, int] = field(default_factory=dict)

    def utilization(self, engine: str) -> float:
        """Modeled busy time of ``engine`` over its lanes and the modeled makespan."""
        st = self.engines[engine]
        if self.modeled_s <= 0:
            return 0.0
        return st.modeled_busy_s / (st.lanes * self.modeled_s)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        data = asdict(self)
        data["utilization"] = {name: self.utilization(name) for name in self.engines}
        return data

    def __str__(self) -> str:
        lines = [
            f"{self.device}: {self.tasks} tasks ({self.errors} failed), wall {fmt_seconds(self.wall_s)}, "
            f"modeled device time {fmt_seconds(self.modeled_s)}, {fmt_bytes(self.pcie_bytes)} over PCIe",
            f"  {'engine':<24} {'tasks':>6} {'in':>10} {'out':>10} {'wall busy':>10} {'modeled busy':>13} {'util':>6}",
        ]
        for name, st in self.engines.items():
            lines.append(
                f"  {name:<24} {st.tasks:>6} {fmt_bytes(st.bytes_in):>10} {fmt_bytes(st.bytes_out):>10} "
                f"{fmt_seconds(st.wall_busy_s):>10} {fmt_seconds(st.modeled_busy_s):>13} {self.utilization(name):>6.0%}"
            )
        return "\n".join(lines)


def python_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str = "") -> Task:
    """A task that runs a Python callable on an engine that runs Python code."""
    nbytes = 0
    for value in (*args, *kwargs.values()):
        if isinstance(value, DeviceBuffer):
            nbytes += value.nbytes
        elif isinstance(value, (bytes, bytearray, memoryview)) or hasattr(value, "__array_interface__"):
            with contextlib.suppress(TypeError):
                nbytes += memoryview(value).nbytes
    label = name or getattr(fn, "__qualname__", None) or type(fn).__name__
    inline = getattr(fn, "__dpdpu_inline__", False) is True
    return Task(op="python", fn=fn, args=args, kwargs=kwargs, name=label, nbytes=nbytes, inline=inline)


class Runtime:
    """Runs tasks on a device (emulated by default) and the host CPU.

    Args:
        device: a device spec (``"bluefield3"``, ``"bluefield2"``, ``"host"``,
            ``"emulator:PROFILE"``, a profile path), a :class:`Profile`, or a
            :class:`Device`.  Default: ``$DPDPU_DEVICE``, else ``bluefield3``.
        workers: worker threads per engine (default: the CPU count).
        queue_depth: tasks an engine queues before ``submit`` blocks.
        policy: how tasks are placed, a :class:`~dpdpu.runtime.policies.Policy`
            or the name of one: ``"cost"`` (default) picks the engine -- device
            or host -- with the smallest estimated finish; ``"dpu-only"`` keeps
            work on the device (the host only as fallback); ``"host-only"``;
            ``"greedy-accelerator"``.

    Use it as a context manager; inside the ``with`` block the plain
    functions of :mod:`dpdpu.compute` and ``@offload`` functions run on it.
    """

    def __init__(
        self,
        device: Device | Profile | str | None = None,
        *,
        workers: int | None = None,
        queue_depth: int = 0,
        policy: str | Policy = "cost",
    ) -> None:
        #: the placement policy, and its name
        self.placement_policy: Policy = policy_for(policy)
        self.policy: str = self.placement_policy.name
        options: dict[str, Any] = {}
        if workers is not None:
            options["workers"] = workers
        if queue_depth:
            options["queue_depth"] = queue_depth
        if isinstance(device, Device) and options:
            raise errors.InvalidArgumentError("workers and queue_depth apply only when the runtime creates the device")
        self.device: Device = open_device(device, **options)
        self.host: Device | None = None
        if self.device.profile.kind != "host":
            # The host reaches data in DPU memory over the device's link: it knows that link's figures.
            host = dataclasses.replace(Profile.load("host"), pcie=self.device.profile.pcie)
            self.host = EmulatorDevice(host, peer=self.device.label, **options)
        self._lock = threading.Lock()
        self._vnow = 0.0
        self._tokens: list[Token[Runtime | None]] = []
        self._decisions: Counter[tuple[str, str]] = Counter()
        self._closed = False
        self.device.start()
        if self.host is not None:
            try:
                self.host.start()
            except BaseException:
                self.device.shutdown(wait=False)
                raise
        self._t0 = time.perf_counter()
        _live.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"Runtime(device={self.device.label!r}, {state})"

    # --- life cycle ------------------------------------------------------------

    def __enter__(self) -> Runtime:
        self._tokens.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tokens:
            _current.reset(self._tokens.pop())
        self.shutdown()

    @property
    def closed(self) -> bool:
        """True after :meth:`shutdown`."""
        return self._closed

    def shutdown(self, wait: bool = True) -> None:
        """Stop the devices; with ``wait`` finish queued work first, else fail it."""
        if self._closed:
            return
        self._closed = True
        for dev in (self.device, self.host):
            if dev is not None:
                dev.shutdown(wait=wait)
        _live.discard(self)

    @property
    def devices(self) -> tuple[Device, ...]:
        """The device, then the host fallback device if separate."""
        return (self.device,) if self.host is None else (self.device, self.host)

    # --- work --------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` as a task and return its future.

        ``fn`` is a built-in op (e.g. :func:`dpdpu.compute.compress`), an
        ``@offload`` function, or any other callable (run as Python code on
        the DPU's Arm cores, or the host when the device has none).
        """
        build = getattr(fn, "__dpdpu_builtin__", None)
        if build is not None:
            try:
                task, options = build(*args, **kwargs)
            except errors.DpdpuError as exc:
                if exc.device is not None:
                    raise
                raise exc.on(self.device.label) from None
        elif hasattr(fn, "__dpdpu_offload__"):
            task = python_task(fn.__wrapped__, args, kwargs, fn.__dpdpu_offload__.get("name", ""))  # type: ignore[attr-defined]
            options = {k: v for k, v in fn.__dpdpu_offload__.items() if k != "name"}  # type: ignore[attr-defined]
        elif callable(fn):
            task, options = python_task(fn, args, kwargs), {}
        else:
            raise errors.InvalidArgumentError(f"cannot run a {type(fn).__name__}; expected a callable")
        return self.run(task, **options)

    def run(
        self, task: Task, *, engine: str | None = None, fallback: bool = True, policy: str | Policy | None = None
    ) -> TaskFuture:
        """Place and submit a prepared :class:`Task` (for engines and libraries built on dpdpu).

        ``policy`` overrides the runtime's placement policy for this task.
        """
        if self._closed:
            raise errors.RuntimeClosedError("the runtime is shut down", device=self.device.label, op=task.op)
        if engine is None:
            engine = _pinned.get()
        if task.op == "python" and task.context is None:
            # Code inside the task (dpdpu.compute calls, other offloads) runs on this runtime.
            task.context = contextvars.copy_context()
            task.context.run(_current.set, self)
        with self._lock:
            arrival = self._vnow
            placement, dev, info = place(
                task,
                self.device,
                self.host,
                arrival,
                engine=engine,
                fallback=fallback,
                policy=policy or self.placement_policy,
            )
            if not task.inline:
                future = dev.submit(task, info, arrival, placement)
                self._decisions[task.op, info.label] += 1
        if task.inline:
            # It may run right here for as long as the work it waits for: not under the lock.
            future = dev.submit(task, info, arrival, placement)
            with self._lock:
                self._decisions[task.op, info.label] += 1
        future._observer = self._observe
        return future

    @contextlib.contextmanager
    def as_current(self) -> Iterator[Runtime]:
        """Make this the current runtime inside the block, without shutting it down after."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    @contextlib.contextmanager
    def pinned(self, engine: str) -> Iterator[None]:
        """Send every task submitted inside the block (by any library) to ``engine``.

        ``engine`` is a full label such as ``"bluefield3/arm"`` or ``"host/cpu"``;
        a task that engine cannot run falls back along its kind's chain.
        Pipelines use this to run each step where their plan put it.
        """
        if not any(e.label == engine for d in self.devices for e in d.engines):
            labels = ", ".join(e.label for d in self.devices for e in d.engines)
            raise errors.InvalidArgumentError(f"no engine {errors.shown(engine)}; this runtime has {labels}")
        token = _pinned.set(engine)
        try:
            yield
        finally:
            _pinned.reset(token)

    @contextlib.contextmanager
    def data_on(self, device: str | None, *, keep_output: bool = False) -> Iterator[None]:
        """Declare where the data of tasks submitted in the block lives.

        ``device`` (a device label) already holds the inputs, so tasks that run
        there pay no PCIe transfer in; with ``keep_output`` their results stay
        there for a next step (no transfer out).  Pipelines set this per step.
        """
        token = DATA_LOCATION.set(DataLocation(device, keep_output))
        try:
            yield
        finally:
            DATA_LOCATION.reset(token)

    @property
    def vnow(self) -> float:
        """The runtime's virtual time: when the next task would arrive (seconds)."""
        return self._vnow

    def _observe(self, future: TaskFuture) -> None:
        timeline = future.placement.timeline if future.placement is not None else None
        if timeline is not None and timeline.finish_s > self._vnow:
            self._vnow = timeline.finish_s

    def alloc(self, nbytes: int) -> DeviceBuffer:
        """Allocate memory on the device (DeviceMemoryError beyond its capacity)."""
        return self.device.alloc(nbytes)

    # --- insight -----------------------------------------------------------------

    def explain(self, future: TaskFuture) -> Placement:
        """Where a task ran, the alternatives with their estimates, and its wall and modeled times.

        The returned :class:`Placement` prints as a table.
        """
        placement: Placement | None = getattr(future, "placement", None)
        if placement is None:
            raise errors.InvalidArgumentError("explain() takes a future returned by this runtime")
        return placement

    def stats(self) -> RuntimeStats:
        """Counters per engine, wall time since start and the modeled makespan."""
        engines: dict[str, EngineStats] = {}
        for dev in self.devices:
            for name, st in dev.stats().items():
                engines[f"{dev.label}/{name}"] = st
        return RuntimeStats(
            device=self.device.label,
            wall_s=time.perf_counter() - self._t0,
            modeled_s=max((st.modeled_horizon_s for st in engines.values()), default=0.0),
            tasks=sum(st.tasks for st in engines.values()),
            errors=sum(st.errors for st in engines.values()),
            pcie_bytes=sum(st.pcie_bytes for st in engines.values()),
            engines=engines,
            placements={f"{op} -> {engine}": n for (op, engine), n in self._decisions.items()},
        )


def current_runtime() -> Runtime:
    """The runtime of the innermost ``with Runtime()`` block, else :func:`default_runtime`."""
    rt = _current.get()
    if rt is not None and not rt.closed:
        return rt
    return default_runtime()


def default_runtime() -> Runtime:
    """The process's default runtime, which calls outside any ``with Runtime()`` block use.

    It is started on first use (``dpdpu.compute.compress(...)`` with no
    runtime, say) on ``$DPDPU_DEVICE``, else ``bluefield3``, with its
    device's worker threads; starting it is logged once at INFO on the
    ``dpdpu.runtime.runtime`` logger, naming the device.  It is shut down when
    the interpreter exits; shutting it down earlier is allowed, and the next
    use starts a new one.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Runtime()
            _log.info(
                "started the default runtime on %s for calls outside a `with Runtime(...)` block "
                "(device worker threads; shut down at exit)",
                _default.device.label,
            )
        return _default


@atexit.register
def _shutdown_all() -> None:
    # Worker threads must not call into Python while the interpreter finalizes.
    for rt in list(_live):
        with contextlib.suppress(Exception):
            rt.shutdown(wait=False)
