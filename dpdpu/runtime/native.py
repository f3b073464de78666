"""The binding boundary: thin typed wrappers over the compiled core.

Everything that calls ``dpdpu._native`` lives here.  Every native return code
passes through :func:`check` (or :func:`error_for` for completion statuses),
which turns it into the matching :class:`~dpdpu.errors.DpdpuError` subclass.
Native handles are released by ``ffi.gc`` destructors or explicit ``close``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import errors
from .._version import __version__

try:
    from .._native import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise errors.NativeBuildError(
        "the compiled core dpdpu._native is missing; install the package with "
        "'pip install .' (or 'pip install -e .') so it is compiled"
    ) from exc

_built_for = ffi.string(lib.dpdpu_version()).decode()
if _built_for != __version__:  # pragma: no cover - needs a stale build
    raise errors.NativeBuildError(
        f"dpdpu._native was built for dpdpu {_built_for} but this is dpdpu {__version__}; "
        "reinstall the package to rebuild it"
    )

__all__ = [
    "CALLBACK_OPS",
    "OPS",
    "EngineConfig",
    "MemoryMap",
    "NativeDevice",
    "ProgressEngine",
    "check",
    "error_for",
    "ffi",
    "lib",
]

#: op name -> native op id
OPS: dict[str, int] = {
    "nop": lib.DPDPU_OP_NOP,
    "memcpy": lib.DPDPU_OP_MEMCPY,
    "deflate_compress": lib.DPDPU_OP_DEFLATE_COMPRESS,
    "deflate_decompress": lib.DPDPU_OP_DEFLATE_DECOMPRESS,
    "crc32c": lib.DPDPU_OP_CRC32C,
    "python": lib.DPDPU_OP_CALLBACK,
    "lz4_compress": lib.DPDPU_OP_LZ4_COMPRESS,
    "lz4_decompress": lib.DPDPU_OP_LZ4_DECOMPRESS,
    "zstd_compress": lib.DPDPU_OP_ZSTD_COMPRESS,
    "zstd_decompress": lib.DPDPU_OP_ZSTD_DECOMPRESS,
    "filter": lib.DPDPU_OP_FILTER,
    "project": lib.DPDPU_OP_PROJECT,
    "aggregate": lib.DPDPU_OP_AGGREGATE,
    "partition": lib.DPDPU_OP_PARTITION,
}

#: ops a worker runs by calling back into Python (``Task.fn``)
CALLBACK_OPS = frozenset({"python", "lz4_compress", "lz4_decompress", "zstd_compress", "zstd_decompress"})


def _check_op_table() -> None:
    """Refuse a core whose op table (``dpdpu_op_info``) disagrees with OPS and CALLBACK_OPS."""
    info = ffi.new("struct dpdpu_op_info *")
    wrong = []
    if sorted(OPS.values()) != list(range(lib.DPDPU_OP_COUNT)):
        wrong.append(f"OPS names {len(OPS)} ops, the core has {lib.DPDPU_OP_COUNT}")
    for name, op in OPS.items():
        if lib.dpdpu_op_info(op, info) != lib.DPDPU_OK:
            wrong.append(f"{name}: unknown to the core")
            continue
        c_name = ffi.string(info.name).decode()
        if c_name != ("callback" if name == "python" else name):  # the core calls Python functions "callback"
            wrong.append(f"{name}: the core calls op {op} {c_name!r}")
        if bool(info.callback) != (name in CALLBACK_OPS):
            wrong.append(f"{name}: CALLBACK_OPS and the core disagree on running it through the callback")
    if wrong:
        raise errors.NativeBuildError("dpdpu._native does not match dpdpu's op table: " + "; ".join(wrong))


_check_op_table()

_STATUS_ERRORS: dict[int, type[errors.DpdpuError]] = {
    lib.DPDPU_ERR_INVALID_ARGUMENT: errors.InvalidArgumentError,
    lib.DPDPU_ERR_NO_MEMORY: errors.InternalError,
    lib.DPDPU_ERR_NOT_SUPPORTED: errors.UnsupportedOpError,
    lib.DPDPU_ERR_TOO_LARGE: errors.JobTooLargeError,
    lib.DPDPU_ERR_NO_DEVICE_MEMORY: errors.DeviceMemoryError,
    lib.DPDPU_ERR_CORRUPT_DATA: errors.CorruptDataError,
    lib.DPDPU_ERR_TRUNCATED_DATA: errors.TruncatedDataError,
    lib.DPDPU_ERR_BUFFER_TOO_SMALL: errors.BufferTooSmallError,
    lib.DPDPU_ERR_UNKNOWN_OP: errors.UnknownOpError,
    lib.DPDPU_ERR_SHUTDOWN: errors.RuntimeClosedError,
    lib.DPDPU_ERR_AGAIN: errors.QueueFullError,
    lib.DPDPU_ERR_TIMEOUT: errors.QueueFullError,
    lib.DPDPU_ERR_CALLBACK: errors.InternalError,
    lib.DPDPU_ERR_OUT_OF_RANGE: errors.InvalidArgumentError,
    lib.DPDPU_ERR_IN_USE: errors.InvalidArgumentError,
    lib.DPDPU_ERR_INTERNAL: errors.InternalError,
}


def status_name(status: int) -> str:
    """Name of a native status code, e.g. ``"CORRUPT_DATA"``."""
    return ffi.string(lib.dpdpu_status_name(status)).decode()


def error_for(
    status: int,
    *,
    device: str | None = None,
    engine: str | None = None,
    op: str | None = None,
    detail: str | None = None,
) -> errors.DpdpuError:
    """Build the exception for a negative native status code."""
    cls = _STATUS_ERRORS.get(status, errors.InternalError)
    message = ffi.string(lib.dpdpu_status_describe(status)).decode()
    if detail:
        message = f"{message} ({detail})"
    return cls(message, device=device, engine=engine, op=op, code=status_name(status))


def check(
    status: int,
    *,
    device: str | None = None,
    engine: str | None = None,
    op: str | None = None,
    detail: str | None = None,
) -> int:
    """Return a non-negative status unchanged; raise the matching error otherwise."""
    if status < 0:
        raise error_for(status, device=device, engine=engine, op=op, detail=detail)
    return status


@dataclass(frozen=True)
class EngineConfig:
    """How to open one engine of a native device."""

    name: str
    ops: frozenset[str]
    workers: int
    max_job_bytes: int | None = None
    on_device: bool = False
    queue_depth: int = 0


class MemoryMap:
    """A registered memory range: caller memory (not copied) or a device allocation."""

    __slots__ = ("__weakref__", "_handle", "address", "device_resident", "nbytes", "owner")

    def __init__(self, handle: Any, owner: Any, nbytes: int, device_resident: bool) -> None:
        self._handle = handle
        #: what keeps the memory alive (the caller's object, or a cffi array)
        self.owner = owner
        self.nbytes = nbytes
        self.device_resident = device_resident
        self.address = lib.dpdpu_mmap_addr(handle)

    @property
    def handle(self) -> Any:
        """The ``struct dpdpu_mmap *``."""
        return self._handle


def _destroy_mmap(handle: Any) -> None:
    # Runs from ffi.gc once no Python object (and hence no task) refers to the map.
    lib.dpdpu_mmap_destroy(handle)


class NativeDevice:
    """An open ``struct dpdpu_dev``: engines with worker threads, device memory."""

    def __init__(
        self,
        name: str,
        engines: Sequence[EngineConfig],
        *,
        memory_bytes: int = 0,
        with_callback: bool = False,
    ) -> None:
        if not 0 < len(engines) <= lib.DPDPU_MAX_ENGINES:
            raise errors.InvalidArgumentError(
                f"a device has 1 to {lib.DPDPU_MAX_ENGINES} engines, not {len(engines)}", device=name
            )
        self.name = name
        self.engine_names = tuple(e.name for e in engines)
        cfg = ffi.new("struct dpdpu_dev_cfg *")
        keep = [ffi.new("char[]", name.encode())]
        cfg.name = keep[0]
        cfg.memory_bytes = memory_bytes
        cfg.n_engines = len(engines)
        for i, spec in enumerate(engines):
            unknown = spec.ops - OPS.keys()
            if unknown:
                raise errors.UnknownOpError(f"unknown ops {sorted(unknown)}", device=name, engine=spec.name)
            keep.append(ffi.new("char[]", spec.name.encode()))
            ecfg = cfg.engines[i]
            ecfg.name = keep[-1]
            ecfg.ops_mask = sum(1 << OPS[op] for op in spec.ops)
            ecfg.workers = spec.workers
            ecfg.queue_depth = spec.queue_depth
            ecfg.max_job_bytes = spec.max_job_bytes or 0
            ecfg.on_device = int(spec.on_device)
        if with_callback:
            cfg.callback = lib.dpdpu_py_callback
        out = ffi.new("struct dpdpu_dev **")
        check(lib.dpdpu_dev_open(cfg, out), device=name)
        self._dev = ffi.gc(out[0], lib.dpdpu_dev_release)
        self._closed = False
        self._lock = threading.Lock()

    @property
    def handle(self) -> Any:
        """The ``struct dpdpu_dev *``."""
        return self._dev

    def supports(self, engine: int, op: str) -> bool:
        """Capability query: does engine ``engine`` run ``op``?"""
        return bool(check(lib.dpdpu_dev_cap_op_supported(self._dev, engine, OPS[op]), device=self.name, op=op))

    def max_job_bytes(self, engine: int, op: str) -> int | None:
        """Largest job engine ``engine`` accepts for ``op`` (None: unlimited)."""
        out = ffi.new("uint64_t *")
        check(
            lib.dpdpu_dev_cap_max_job_bytes(self._dev, engine, OPS[op], out),
            device=self.name,
            engine=self.engine_names[engine],
            op=op,
        )
        return None if out[0] == 2**64 - 1 else int(out[0])

    def engine_stats(self, engine: int) -> dict[str, int]:
        """Counters the core keeps for engine ``engine``."""
        out = ffi.new("struct dpdpu_engine_stats *")
        check(lib.dpdpu_dev_engine_stats(self._dev, engine, out), device=self.name)
        keys = ("tasks", "failed", "inlined", "bytes_in", "bytes_out", "exec_ns", "in_flight", "capacity")
        return {k: int(getattr(out, k)) for k in keys}

    def queue_full(self, engine: int) -> tuple[int, int] | None:
        """``(in flight, capacity)`` if engine ``engine``'s queue is full now, else None."""
        if lib.dpdpu_dev_engine_room(self._dev, engine) > 0:
            return None
        out = ffi.new("struct dpdpu_engine_stats *")
        lib.dpdpu_dev_engine_stats(self._dev, engine, out)
        return (int(out.in_flight), int(out.capacity))

    @property
    def memory_used(self) -> int:
        """Bytes of device memory in use."""
        return int(lib.dpdpu_dev_mem_used(self._dev))

    @property
    def memory_capacity(self) -> int | None:
        """Device memory capacity in bytes (None: unlimited)."""
        cap = int(lib.dpdpu_dev_mem_capacity(self._dev))
        return cap or None

    def map_host(self, task: Any, obj: Any, *, dst: bool) -> Any:
        """Point a task's source (or destination) at the memory of ``obj``, without copying.

        ``obj`` is any contiguous buffer-protocol object (bytes, bytearray,
        numpy arrays, Arrow buffers); the returned cffi buffer must be kept
        alive until the task completes.
        """
        try:
            cbuf = ffi.from_buffer(obj, require_writable=dst)
        except TypeError as exc:
            kind = "a writable" if dst else "a"
            raise errors.InvalidArgumentError(
                f"expected {kind} contiguous bytes-like object, got {type(obj).__name__}", device=self.name
            ) from exc
        rc = lib.dpdpu_task_map_host(task, self._dev, dst, cbuf, len(cbuf))
        if rc:
            check(rc, device=self.name)
        return cbuf

    def map_raw(self, task: Any, memory: Any, nbytes: int, *, dst: bool) -> None:
        """Point a task's source (or destination) at memory dpdpu allocated (a cffi array)."""
        check(lib.dpdpu_task_map_host(task, self._dev, int(dst), memory, nbytes), device=self.name)

    def alloc(self, nbytes: int) -> MemoryMap:
        """Allocate zeroed memory accounted as device memory; DeviceMemoryError beyond capacity.

        The memory belongs to the returned map's ``owner`` (a cffi array), so
        views of it stay valid for as long as they exist; the device's
        accounting is released when the map is collected.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise errors.InvalidArgumentError(f"cannot allocate {errors.shown(nbytes)} bytes", device=self.name)
        capacity = self.memory_capacity
        if capacity is not None and nbytes > capacity - self.memory_used:
            # Refuse before allocating: the host may not have that much either.
            raise error_for(
                lib.DPDPU_ERR_NO_DEVICE_MEMORY,
                device=self.name,
                detail=f"{nbytes} bytes requested, {capacity - self.memory_used} of {capacity} free",
            )
        memory = ffi.new("char[]", nbytes)
        out = ffi.new("struct dpdpu_mmap **")
        check(
            lib.dpdpu_mmap_create(self._dev, memory, nbytes, lib.DPDPU_MMAP_DEVICE, out),
            device=self.name,
            detail=f"{nbytes} bytes requested",
        )
        return MemoryMap(ffi.gc(out[0], _destroy_mmap), memory, nbytes, True)

    def hold(self, obj: Any) -> Any:
        """Count the memory of bytes-like ``obj`` as device memory until the returned handle is
        released (``ffi.release``) or collected; DeviceMemoryError if that much is not free.

        For output made outside the core (a codec's) that the device holds
        while a task runs; the caller keeps ``obj`` alive meanwhile.
        """
        cbuf = ffi.from_buffer(obj)
        out = ffi.new("struct dpdpu_mmap **")
        check(
            lib.dpdpu_mmap_create(self._dev, cbuf, len(cbuf), lib.DPDPU_MMAP_DEVICE, out),
            device=self.name,
            detail=f"{len(cbuf)} bytes of output, {self.memory_used} in use",
        )
        return ffi.gc(out[0], _destroy_mmap)

    def close(self, *, drain: bool = True) -> None:
        """Stop the worker threads (running queued tasks first when ``drain``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        check(lib.dpdpu_dev_close(self._dev, int(drain)), device=self.name)


class ProgressEngine:
    """A ``struct dpdpu_pe``: the completion queue tasks report to."""

    def __init__(self, batch: int = 64) -> None:
        out = ffi.new("struct dpdpu_pe **")
        check(lib.dpdpu_pe_create(out))
        self._pe = out[0]
        self._batch = ffi.new("struct dpdpu_task *[]", batch)
        self._batch_len = batch

    @property
    def handle(self) -> Any:
        """The ``struct dpdpu_pe *``."""
        return self._pe

    def submit(
        self, device: NativeDevice, task: Any, *, timeout_s: float | None = None, op: str = "", inline: bool = False
    ) -> bool:
        """Submit a native task; raise the matching error if the device refuses it.

        ``inline`` runs it on this thread when its engine has nothing queued;
        returns True if that happened (the task is then complete and never
        appears on the completion queue).
        """
        rc = lib.dpdpu_task_submit(
            self._pe, device._dev, task, -1 if timeout_s is None else int(timeout_s * 1e6), 1 if inline else 0
        )
        if rc < 0:
            names = device.engine_names
            engine = names[task.engine] if task.engine < len(names) else f"engine {task.engine}"
            check(rc, device=device.name, engine=engine, op=op or ffi.string(lib.dpdpu_op_name(task.op)).decode())
        return rc == 1

    def wait(self, timeout_s: float | None, interval_s: float = 0.0) -> int:
        """Block until completions are queued (or a kick); return how many (0 on timeout).

        With ``interval_s`` the call polls at that interval while tasks are
        outstanding instead of waking at every completion (see dpdpu_pe_wait).
        """
        timeout_us = -1 if timeout_s is None else int(timeout_s * 1e6)
        rc = lib.dpdpu_pe_wait(self._pe, timeout_us, int(interval_s * 1e6))
        return 0 if rc == lib.DPDPU_ERR_TIMEOUT else check(rc)

    def progress_user_data(self) -> list[int]:
        """Take every completed task off the queue (never blocks); return their ``user_data``.

        Not thread-safe: callers serialize it (it reuses one batch array).
        """
        out: list[int] = []
        batch, size = self._batch, self._batch_len
        while True:
            n = check(lib.dpdpu_pe_progress(self._pe, batch, size))
            out.extend(batch[i].user_data for i in range(n))
            if n < size:
                return out

    def wait_task(self, task: Any, timeout_s: float | None) -> bool:
        """Block until ``task`` completes; False on timeout."""
        timeout_us = -1 if timeout_s is None else max(0, int(timeout_s * 1e6))
        return lib.dpdpu_task_wait(self._pe, task, timeout_us) == lib.DPDPU_OK

    def kick(self) -> None:
        """Wake threads blocked in :meth:`wait`."""
        lib.dpdpu_pe_kick(self._pe)

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not yet taken off the completion queue."""
        return int(lib.dpdpu_pe_outstanding(self._pe))

    def destroy(self) -> None:
        """Free the progress engine; every task must have been taken off it."""
        check(lib.dpdpu_pe_destroy(self._pe))


# --- Python callbacks -------------------------------------------------------

_callbacks: dict[int, Callable[[], int]] = {}


def register_callback(key: int, run: Callable[[], int]) -> None:
    """Make ``run`` the body of the callback task whose ``user_data`` is ``key``."""
    _callbacks[key] = run


def unregister_callback(key: int) -> None:
    """Forget the callback registered under ``key``."""
    _callbacks.pop(key, None)


@ffi.def_extern(error=lib.DPDPU_ERR_INTERNAL)
def dpdpu_py_callback(task: Any) -> int:
    """Run on a C worker thread (which takes the GIL) for DPDPU_OP_CALLBACK tasks."""
    run = _callbacks.get(task.user_data)
    if run is None:
        return lib.DPDPU_ERR_INVALID_ARGUMENT
    return run()


def crc32c(data: Any, value: int = 0) -> int:
    """CRC-32C computed inline on the calling thread (used for verification)."""
    buf = ffi.from_buffer(data)
    return int(lib.dpdpu_crc32c(value, buf, len(buf)))


def deflate_bound(nbytes: int) -> int:
    """Largest deflate output for ``nbytes`` of input."""
    return int(lib.dpdpu_deflate_bound(nbytes))
