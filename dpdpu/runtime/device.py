"""The interface a device backend implements.

This module is for backend authors; users meet devices through
:class:`dpdpu.Runtime`.  A backend subclasses :class:`Device` and is made
known to the runtime through :mod:`dpdpu.runtime.registry`.  The emulator
(:mod:`dpdpu.runtime.emulator`) is the reference implementation.
"""

from __future__ import annotations

import abc
import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from .cost import Timeline
    from .future import TaskFuture
    from .native import MemoryMap
    from .placement import Placement
    from .profile import Profile

__all__ = [
    "DATA_LOCATION",
    "DataLocation",
    "data_location",
    "Device",
    "DeviceBuffer",
    "EngineInfo",
    "EngineStats",
    "OutputBudget",
    "Refusal",
    "Task",
]


@dataclass(frozen=True)
class DataLocation:
    """Where the data of the tasks submitted in a context lives (see ``Runtime.data_on``).

    ``device``: the label of the device whose memory already holds the inputs
    (no PCIe transfer in for tasks that run there); ``keep_output``: results
    stay on that device for a next step (no transfer out).
    """

    device: str | None = None
    keep_output: bool = False


#: The data location of the current context, None meaning host memory (pipelines set it per step).
DATA_LOCATION: contextvars.ContextVar[DataLocation | None] = contextvars.ContextVar("dpdpu_data_location", default=None)
_HOST_DATA = DataLocation()


def data_location() -> DataLocation:
    """Where the data of tasks submitted in this context lives."""
    return DATA_LOCATION.get() or _HOST_DATA


def payload_nbytes(value: Any) -> int:
    """Bytes of a task's data: Arrow tables, arrays and batches, numpy arrays,
    device buffers, any buffer-protocol object, or a list of these (0 if none)."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, list | tuple):
        return sum(payload_nbytes(v) for v in value)
    try:
        return memoryview(value).nbytes
    except TypeError:
        return 0


@dataclass(frozen=True)
class EngineInfo:
    """One engine of a device as the scheduler sees it."""

    device: str
    name: str
    kind: str
    index: int
    lanes: int
    ops: frozenset[str]
    max_job_bytes: int | None
    on_device: bool
    #: ``device/engine``, e.g. ``bluefield3/accelerator``
    label: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.device}/{self.name}")


@dataclass(eq=False, slots=True)
class Task:
    """What to run: a built-in op over buffers, or a Python callable (op ``python``).

    ``src`` and ``dst`` are buffer-protocol objects (bytes, bytearray, numpy
    arrays, Arrow buffers) or :class:`DeviceBuffer`; they are registered, not
    copied.  With ``dst`` unset, the device allocates ``dst_size`` bytes.
    ``convert(result, output)`` turns the native result (bytes written or a
    checksum) and a view of the output into the value the future returns.
    A ``metered`` task's ``fn`` makes output of a size known only as it goes
    (a decompression); the device passes it an :class:`OutputBudget` as its
    last argument.
    """

    op: str
    src: Any = None
    dst: Any = None
    dst_size: int = 0
    param: int = 0
    level: int | None = None
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None
    name: str = ""
    nbytes: int = 0
    out_hint: int = 0
    grow_output: bool = False
    metered: bool = False
    convert: Callable[[int, memoryview | None], Any] | None = None
    #: context vars a Python task runs under (the runtime sets its own as current)
    context: contextvars.Context | None = None
    #: objects the native task reads through raw addresses (kept alive until it completes)
    keep: Any = None
    #: a Python task that only waits for work done elsewhere (another process): run it on
    #: the submitting thread when its engine has nothing queued, as a hand-off to a worker
    #: thread would only add wake-ups (set from the callable's ``__dpdpu_inline__``)
    inline: bool = False

    @property
    def label(self) -> str:
        """What to call the task in messages and explanations."""
        return self.name or self.op


class OutputBudget:
    """Room for the output of a metered task, booked piece by piece where it runs.

    ``limit`` is the most bytes an output of unknown size may reach there
    (device memory still free, and what the machine can spare); the task calls
    :meth:`charge` with each piece it makes, which books it against device
    memory (``DeviceMemoryError`` when that much is not free).  The device
    releases everything when the task ends, as the core does for a task's
    buffers.  This base class books nothing.
    """

    def __init__(self, limit: int, job: int | None = None) -> None:
        self.limit = limit
        #: the engine's largest job: output of unknown size may not pass it there
        self.job = job

    def charge(self, piece: Any) -> None:
        """Book ``piece``, a bytes-like object of output just made, as held by the task."""

    def release(self) -> None:
        """Give back everything booked."""


@dataclass(frozen=True)
class Refusal:
    """Why an engine cannot take a task."""

    kind: Literal["unsupported", "too_large", "memory", "busy"]
    reason: str


@dataclass
class EngineStats:
    """Counters of one engine over a device's life.

    ``tasks`` counts every execution (a decompression rerun at its exact
    output size counts twice); ``errors`` counts tasks whose future failed.
    """

    engine: str
    kind: str
    lanes: int
    tasks: int = 0
    errors: int = 0
    inlined: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    pcie_bytes: int = 0
    wall_busy_s: float = 0.0
    modeled_busy_s: float = 0.0
    modeled_horizon_s: float = 0.0


class DeviceBuffer:
    """Memory allocated on a device and counted against its capacity.

    Pass it as a task's source or destination to keep data on the device
    (no PCIe transfer is charged for it).  :meth:`view` gives a writable
    ``memoryview``; the memory lives as long as the buffer or any view does,
    and the device's accounting is released when the buffer is collected.
    """

    __slots__ = ("_map", "_memory", "device")

    def __init__(self, device: str, mmap: MemoryMap, memory: Any) -> None:
        self.device = device
        self._map = mmap
        self._memory = memory

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return self._map.nbytes

    def __len__(self) -> int:
        return self._map.nbytes

    @property
    def memory_map(self) -> MemoryMap:
        """The registered memory map (for backends)."""
        return self._map

    def view(self) -> memoryview:
        """A writable view of the whole buffer (no copy)."""
        from .native import ffi

        return memoryview(ffi.buffer(self._memory, self._map.nbytes))

    def __repr__(self) -> str:
        return f"DeviceBuffer(device={self.device!r}, nbytes={self.nbytes})"


class Device(abc.ABC):
    """A device: a set of engines that run tasks and report completions.

    Implementations run each task for real and return a
    :class:`~dpdpu.runtime.future.TaskFuture`; they also model how long the
    task takes there (:meth:`estimate`, and the timeline recorded on the
    future's placement) so the runtime can place work and report device time.
    """

    #: Registry name of the backend, e.g. ``"emulator"``.
    backend: ClassVar[str]
    #: Unique label, e.g. ``"bluefield3"``.
    label: str
    profile: Profile
    engines: tuple[EngineInfo, ...]

    @property
    def capabilities(self) -> frozenset[str]:
        """Every op some engine of the device runs."""
        return frozenset().union(*(e.ops for e in self.engines))

    def engine(self, name_or_kind: str) -> EngineInfo:
        """The engine with this name (or, failing that, the first of this kind)."""
        for e in self.engines:
            if e.name == name_or_kind:
                return e
        for e in self.engines:
            if e.kind == name_or_kind:
                return e
        raise KeyError(f"{self.label} has no engine {name_or_kind!r}")

    @abc.abstractmethod
    def start(self) -> None:
        """Start worker threads; called once before the first submit."""

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop; with ``wait`` run what is queued first, else fail it."""

    @abc.abstractmethod
    def can_run(self, task: Task, engine: EngineInfo) -> Refusal | None:
        """None if ``engine`` can take ``task`` now, else why not."""

    @abc.abstractmethod
    def estimate(self, task: Task, engine: EngineInfo, arrival_s: float) -> Timeline:
        """Modeled timeline of ``task`` on ``engine`` if submitted now (no side effects)."""

    @abc.abstractmethod
    def submit(
        self, task: Task, engine: EngineInfo, arrival_s: float, placement: Placement | None = None
    ) -> TaskFuture:
        """Run ``task`` on ``engine``; raise a DpdpuError if the device refuses it.

        The device fills in ``placement`` (timeline, status, wall time) and
        attaches it to the returned future.
        """

    @abc.abstractmethod
    def alloc(self, nbytes: int) -> DeviceBuffer:
        """Allocate device memory; DeviceMemoryError beyond capacity."""

    @property
    @abc.abstractmethod
    def memory_used(self) -> int:
        """Bytes of device memory in use."""

    @property
    @abc.abstractmethod
    def memory_capacity(self) -> int | None:
        """Device memory capacity in bytes (None: unlimited)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, EngineStats]:
        """Counters per engine name."""
