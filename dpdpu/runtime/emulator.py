"""The software DPU emulator: the reference device backend.

Every task runs for real on C worker threads of the core (Python functions on
those threads too, holding the GIL only while they run), so results are real
bytes.  Alongside, the emulator charges each task the time the modeled device
would take, on a virtual clock per engine, using the cost figures of the
device profile.  It enforces what the real device enforces: which engine runs
which op, the largest job, and device memory.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from .. import errors
from . import host_memory
from .cost import PYTHON_PRIOR_S, Timeline
from .device import (
    DATA_LOCATION,
    DataLocation,
    Device,
    DeviceBuffer,
    EngineInfo,
    EngineStats,
    OutputBudget,
    Refusal,
    Task,
    data_location,
    payload_nbytes,
)
from .future import TaskFuture
from .model import DEFAULT_COALESCING, Coalescing, DeviceModel
from .native import (
    CALLBACK_OPS,
    OPS,
    EngineConfig,
    NativeDevice,
    ProgressEngine,
    error_for,
    ffi,
    lib,
    register_callback,
    unregister_callback,
)
from .placement import Placement
from .profile import Profile
from .units import fmt_bytes

__all__ = ["EmulatorDevice", "in_worker"]

_NEEDS_DST = frozenset({"memcpy", "deflate_compress", "deflate_decompress"})
#: Ops cheap enough on small inputs to run on the submitting thread when their
#: engine has nothing queued: handing a sub-microsecond job to a worker thread
#: costs more than the job.  They are charged modeled time like any other.
_INLINE_OPS = frozenset({"nop", "crc32c", "memcpy"})
_INLINE_MAX_BYTES = 4096
#: Ops whose output size depends on the data, so its ratio to the input is learned.
_LEARNED_RATIOS = frozenset(
    {"deflate_compress", "deflate_decompress", "lz4_compress", "lz4_decompress", "zstd_compress",
     "zstd_decompress", "filter", "project", "aggregate", "partition"}
)  # fmt: skip
#: How often the progress thread looks for completions while tasks are in
#: flight.  Callers waiting on their own task take its completion at once;
#: the rest (callbacks, as_completed, await) wait at most this long, and no
#: task costs the progress thread a wake-up (and the caller a GIL contest).
_POLL_INTERVAL_S = 200e-6
#: Outputs up to this size skip asking the kernel how much memory the machine has free.
_SMALL_OUTPUT = 64 << 20

_uids = itertools.count(1)
_raw_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_worker = threading.local()
_OK = int(lib.DPDPU_OK)
_ERR_CALLBACK = int(lib.DPDPU_ERR_CALLBACK)
_ERR_TOO_SMALL = int(lib.DPDPU_ERR_BUFFER_TOO_SMALL)
_ERR_TOO_LARGE = int(lib.DPDPU_ERR_TOO_LARGE)


def in_worker() -> bool:
    """True on a device worker thread running a Python task."""
    return getattr(_worker, "active", False)


class _Record:
    """One native task in flight and what is needed to finish its future."""

    __slots__ = ("crosses", "ctask", "engine", "exc", "future", "keep", "out_addr", "py_wall", "task", "value")

    def __init__(self, task: Task, engine: EngineInfo, future: TaskFuture) -> None:
        self.task = task
        self.engine = engine
        self.future = future
        self.ctask: Any = None
        self.keep: list[Any] = []  # what must outlive the native task
        self.out_addr: Any = None
        self.crosses = False
        self.value: Any = None
        self.exc: BaseException | None = None
        self.py_wall = 0.0


class _HeldOutput(OutputBudget):
    """A metered task's output on an on-device engine: each piece is held as device memory."""

    def __init__(self, limit: int, job: int | None, native: NativeDevice) -> None:
        super().__init__(limit, job)
        self._native = native
        self._held: list[Any] = []

    def charge(self, piece: Any) -> None:
        if len(piece):
            self._held.append(self._native.hold(piece))

    def release(self) -> None:
        for handle in self._held:
            ffi.release(handle)
        self._held.clear()


class EmulatorDevice(Device):
    """A device modeled from a profile, executing everything on this machine.

    Args:
        profile: a :class:`Profile`, a built-in profile name or a TOML path.
        workers: worker threads per engine (default: the CPU count).
        queue_depth: most tasks queued per engine before submit blocks.
        coalescing: how small tasks share modeled dispatch costs (None: never).
        peer: the label of the device at the far end of this one's PCIe link
            (the host device of a DPU runtime): its engines may pull that
            device's data, paying the transfer.
    """

    backend = "emulator"

    def __init__(
        self,
        profile: Profile | str | Path,
        *,
        workers: int | None = None,
        queue_depth: int = 0,
        coalescing: Coalescing | None = DEFAULT_COALESCING,
        peer: str | None = None,
    ) -> None:
        profile = Profile.of(profile)
        if peer is not None and profile.pcie is None:
            raise errors.InvalidArgumentError("a device reaches a peer only over a link its profile describes")
        #: the device at the far end of this one's link, whose memory its engines may pull from
        self.peer = peer
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
            raise errors.InvalidArgumentError(f"workers must be an integer from 1 to 256, not {errors.shown(workers)}")
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or not 0 <= queue_depth < 1 << 32:
            raise errors.InvalidArgumentError(
                f"queue_depth must be an integer from 0 (the default, 1024) to 2**32-1, not {errors.shown(queue_depth)}"
            )
        self.profile = profile
        self.label = profile.name
        self.workers = workers
        self.model = DeviceModel(profile, coalescing)
        self.engines = self.model.engines
        self._clocks = self.model.clocks
        self._queue_depth = queue_depth
        self._depth = queue_depth or 1024  # the core's default depth
        self._inflight = [0] * len(self.engines)
        self._errors = dict.fromkeys(self._clocks, 0)
        self._pcie_bytes = dict.fromkeys(self._clocks, 0)
        self._py_history: dict[str, float] = {}
        self._output_costs = {(e.name, op) for e in profile.engines for op, c in e.costs.items() if c.per_out_s > 0}
        self._records: dict[int, _Record] = {}
        self._submit_lock = threading.Lock()
        # Inline Python tasks run outside the submit lock (they may take long); shutdown waits for them.
        self._inline_running = 0
        self._inline_done = threading.Condition(self._submit_lock)
        self._drain_lock = threading.Lock()
        self._state = "new"
        self._native: NativeDevice | None = None
        self._pe: ProgressEngine | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"EmulatorDevice({self.label!r}, workers={self.workers}, state={self._state!r})"

    # --- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Open the native device and start the progress thread."""
        if self._state != "new":
            return
        configs = [
            EngineConfig(
                name=e.name,
                ops=e.ops,
                workers=self.workers,
                max_job_bytes=e.max_job_bytes,
                on_device=e.on_device,
                queue_depth=self._queue_depth,
            )
            for e in self.engines
        ]
        with_callback = any(e.ops & CALLBACK_OPS for e in self.engines)
        self._native = NativeDevice(
            self.label, configs, memory_bytes=int(self.profile.memory.value), with_callback=with_callback
        )
        self._pe = ProgressEngine()
        self._thread = threading.Thread(target=self._progress_loop, name=f"dpdpu-progress-{self.label}", daemon=True)
        self._state = "running"
        self._thread.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop: run (``wait``) or fail what is queued, then release everything."""
        if in_worker():
            raise errors.InvalidArgumentError(
                "a device cannot be shut down from a task running on it", device=self.label
            )
        with self._submit_lock:
            if self._state != "running":
                self._state = "closed"
                return
            self._state = "stopping"
            while self._inline_running:
                self._inline_done.wait()
        assert self._native is not None and self._pe is not None and self._thread is not None
        self._native.close(drain=wait)
        self._pe.kick()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._drain()
        self._pe.destroy()
        self._state = "closed"

    @property
    def running(self) -> bool:
        """True between start() and shutdown()."""
        return self._state == "running"

    @property
    def native(self) -> NativeDevice:
        """The open native device (for tests and backends built on this one)."""
        if self._native is None:
            raise errors.RuntimeClosedError("the device has not been started", device=self.label)
        return self._native

    # --- memory --------------------------------------------------------------

    @property
    def memory_used(self) -> int:
        """Bytes of device memory in use (allocations and running tasks)."""
        return self.native.memory_used

    @property
    def memory_capacity(self) -> int | None:
        """Device memory from the profile."""
        return int(self.profile.memory.value)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        """Allocate zeroed device memory; DeviceMemoryError beyond what is free."""
        mmap = self.native.alloc(nbytes)
        return DeviceBuffer(self.label, mmap, mmap.owner)

    # --- scheduling interface -----------------------------------------------

    def _footprint(self, task: Task) -> int:
        total = 0 if isinstance(task.src, DeviceBuffer) else payload_nbytes(task.src)
        if (task.op in _NEEDS_DST or task.metered) and not isinstance(task.dst, DeviceBuffer):
            total += payload_nbytes(task.dst) if task.dst is not None else task.dst_size
        return total

    def output_room(self, engine: EngineInfo) -> int:
        """Most bytes of output of unknown size a task may make on ``engine`` now: the device
        memory still free (on-device engines), and a quarter of what this machine has available."""
        room = host_memory.available() // 4
        if engine.on_device and self._native is not None:
            room = min(room, int(self.profile.memory.value) - self._native.memory_used)
        return max(room, 0)

    def can_run(self, task: Task, engine: EngineInfo) -> Refusal | None:
        """None if ``engine`` can take ``task`` now, else why not."""
        op = task.op
        src, dst = task.src, task.dst
        if type(src) is DeviceBuffer or type(dst) is DeviceBuffer:
            for obj in (src, dst):
                pulled = obj is src and self._pulls(engine, task)
                if type(obj) is DeviceBuffer and obj.device != self.label and not pulled:
                    return Refusal("unsupported", f"its data lives in {obj.device} memory")
        if op not in OPS:
            return Refusal("unsupported", f"unknown op {op!r}")
        # A guessed output does not refuse: a hardware engine tries its largest job, then hands over.
        if task.grow_output:
            out = 0
        else:  # a codec run as a callback gives its output size as a hint
            out = (task.dst_size or task.out_hint) if task.dst is None else payload_nbytes(task.dst)
        refusal = self.model.refusal(op, task.nbytes, engine, out)
        if refusal is not None:
            return refusal
        # Our own count (which lags completions) gates the exact check in the core,
        # so an idle engine costs no native call here.
        if self._native is not None and self._inflight[engine.index] >= self._depth:
            full = self._native.queue_full(engine.index)
            if full is not None:
                return Refusal("busy", f"its queue is full ({full[0]} of {full[1]} tasks)")
        if engine.on_device and self._native is not None:
            need = self._footprint(task)
            if need:
                free = int(self.profile.memory.value) - self._native.memory_used
                if need > free:
                    return Refusal(
                        "memory", f"needs {fmt_bytes(need)} of device memory, {fmt_bytes(max(free, 0))} free"
                    )
        if task.dst is None and out > _SMALL_OUTPUT:
            # Device memory is this machine's memory in the emulator, whatever the profile says.
            room = host_memory.available()
            if out > room:
                return Refusal(
                    "memory", f"its {fmt_bytes(out)} output exceeds the {fmt_bytes(room)} this machine has free"
                )
        return None

    def _host_seconds(self, task: Task) -> float | None:
        if task.op != "python":
            return None
        return self._py_history.get(_fn_key(task.fn), PYTHON_PRIOR_S)

    def _pulls(self, engine: EngineInfo, task: Task | None = None) -> bool:
        """True if ``engine`` sits on the near side of a link and the task's data lives on the far one
        (a host core working on data in DPU memory pulls it over PCIe, and sends its result back)."""
        if self.peer is None or self.model.crossing[engine.name]:
            return False
        if task is not None and type(task.src) is DeviceBuffer and task.src.device == self.peer:
            return True
        return data_location().device == self.peer

    def _transfers(self, task: Task, engine: EngineInfo) -> tuple[int, int]:
        """Bytes that cross PCIe in and out if ``task`` runs on ``engine``."""
        where = data_location()
        if self._pulls(engine, task):
            src = self._input_nbytes(task) or task.nbytes
            return src, self._out_estimate(task) if where.keep_output else 0
        if not self.model.crossing[engine.name]:
            return 0, 0
        src = self._input_nbytes(task)
        out = 0 if _keeps_output(task, self.label) else self._out_estimate(task)
        if where.device == self.label:
            src = 0
        return src, out

    @staticmethod
    def _input_nbytes(task: Task) -> int:
        if task.op == "python":
            return sum(payload_nbytes(a) for a in (*task.args, *(task.kwargs or {}).values()))
        return 0 if isinstance(task.src, DeviceBuffer) else task.nbytes

    def _out_estimate(self, task: Task) -> int:
        """The task's output size: given, else the op's learned (or assumed) ratio to its input."""
        return task.out_hint or int(task.nbytes * self.model.out_ratio(task.op))

    def estimate(self, task: Task, engine: EngineInfo, arrival_s: float) -> Timeline:
        """Modeled timeline on ``engine`` if submitted now (charges nothing)."""
        b_in, b_out = self._transfers(task, engine)
        return self.model.estimate(
            engine, task.op, task.nbytes, arrival_s, bytes_in=b_in, bytes_out=b_out,
            out_bytes=self._out_estimate(task), level=task.level, host_seconds=self._host_seconds(task),
            cross=True if self._pulls(engine, task) else None,
        )  # fmt: skip

    def submit(
        self, task: Task, engine: EngineInfo, arrival_s: float, placement: Placement | None = None
    ) -> TaskFuture:
        """Run ``task`` on ``engine`` for real and charge its modeled time."""
        if placement is None:
            placement = Placement(task.label, task.op, task.nbytes, engine.label, engine.kind, "direct", [])
        jobs = self.model.jobs(engine.name, task.op, task.nbytes)
        if jobs > 1:
            note = f"ran as {jobs} jobs of at most {fmt_bytes(engine.max_job_bytes or 0)} (independent segments)"
            placement.notes = [*(placement.notes or ()), note]
        future = TaskFuture()
        future.placement = placement
        future._waiter = self._wait_for
        self._submit_record(_Record(task, engine, future), arrival_s, arrival_s, published=False)
        return future

    def _bind(self, rec: _Record, obj: Any, *, dst: bool) -> None:
        """Point the native task's source or destination at ``obj`` (no copy)."""
        ct = rec.ctask
        if type(obj) is DeviceBuffer:
            if obj.device != self.label:
                if not self._pulls(rec.engine, rec.task):
                    raise errors.InvalidArgumentError(
                        f"the buffer lives on {obj.device}, not on this device", device=self.label
                    )
                # A host core pulls the other device's data over the link (charged as a transfer).
                rec.keep.append(self.native.map_host(ct, obj.view(), dst=dst))
                return
            m = obj.memory_map
            rec.keep.append(m)
            lib.dpdpu_buf_init(ffi.addressof(ct, "dst" if dst else "src"), m.handle, m.address, m.nbytes)
        else:
            assert self._native is not None
            rec.keep.append(self._native.map_host(ct, obj, dst=dst))

    def _submit_record(self, rec: _Record, ready_s: float, arrival_s: float, *, published: bool = True) -> None:
        """Charge and submit one native task; ``arrival_s`` is when the caller started waiting.

        ``published`` says whether the future has been handed out yet.
        """
        task, engine = rec.task, rec.engine
        ct = ffi.new("struct dpdpu_task *")
        ct.op = OPS[task.op]
        ct.engine = engine.index
        ct.param = task.param
        uid = ct.user_data = next(_uids)
        rec.ctask = ct
        if task.src is not None:
            self._bind(rec, task.src, dst=False)
        if task.op in _NEEDS_DST:
            if task.dst is None:
                size = task.dst_size
                if task.grow_output and engine.max_job_bytes is not None:
                    size = min(size, engine.max_job_bytes)
                try:
                    memory = _raw_alloc("char[]", max(size, 1))
                except (MemoryError, OverflowError):
                    raise errors.DeviceMemoryError(
                        f"cannot allocate its {size}-byte output", device=self.label, op=task.op
                    ) from None
                self.native.map_raw(ct, memory, size, dst=True)
                rec.keep.append(memory)
            else:
                self._bind(rec, task.dst, dst=True)
            rec.out_addr = ct.dst.addr
        if task.op in CALLBACK_OPS:
            register_callback(uid, self._runner(rec, uid))
        if task.keep is not None:
            rec.keep.append(task.keep)
        future = rec.future
        future._record = rec  # type: ignore[attr-defined]
        placement = future.placement
        assert placement is not None
        plan = placement.timeline
        if plan is None or plan.arrival_s != ready_s or placement.engine != engine.label:
            plan = self.estimate(task, engine, ready_s)
        crossing = self.model.crossing[engine.name]
        pulls = self._pulls(engine, task)
        with self._submit_lock:
            if self._state != "running":
                unregister_callback(uid)
                raise errors.RuntimeClosedError("the device is shut down", device=self.label, op=task.op)
            timeline = placement.timeline = self.model.charge(engine, task.op, task.nbytes, plan, arrival_s)
            if crossing or pulls:
                self._pcie_bytes[engine.name] += self._transfers(task, engine)[0]
                rec.crosses = data_location().keep_output if pulls else not _keeps_output(task, self.label)
            self._records[uid] = rec
            self._inflight[engine.index] += 1
            outside = task.inline and task.op == "python"
            if outside:
                self._inline_running += 1
            else:
                try:
                    assert self._pe is not None and self._native is not None
                    inline = task.op in _INLINE_OPS and task.nbytes <= _INLINE_MAX_BYTES
                    ran_inline = self._pe.submit(self._native, ct, op=task.op, inline=inline)
                except BaseException:
                    self._undo_submit(rec, timeline)
                    raise
        if outside:
            # It runs for as long as the work it waits for: not under the lock (shutdown waits for it).
            try:
                assert self._pe is not None and self._native is not None
                ran_inline = self._pe.submit(self._native, ct, op=task.op, inline=True)
            except BaseException:
                with self._submit_lock:
                    self._undo_submit(rec, timeline)
                raise
            finally:
                with self._submit_lock:
                    self._inline_running -= 1
                    if not self._inline_running:
                        self._inline_done.notify_all()
        if ran_inline:  # complete already, and never on the completion queue
            del self._records[uid]
            self._finish(rec, published=published)

    def _undo_submit(self, rec: _Record, timeline: Any) -> None:
        """Forget a charged record whose task the core refused (the caller holds the submit lock)."""
        uid = rec.ctask.user_data
        self._records.pop(uid, None)
        self._inflight[rec.engine.index] -= 1
        unregister_callback(uid)
        self.model.uncharge(rec.engine, timeline)

    def _budget(self, engine: EngineInfo) -> OutputBudget:
        room = self.output_room(engine)
        if engine.on_device and self._native is not None:
            return _HeldOutput(room, engine.max_job_bytes, self._native)
        return OutputBudget(room, engine.max_job_bytes)

    def _runner(self, rec: _Record, uid: int) -> Any:
        def run() -> int:
            task = rec.task
            assert task.fn is not None
            outer = in_worker()  # an inline task may run inside another task
            _worker.active = True
            start = time.perf_counter()
            budget = None
            try:
                args = task.args
                if task.metered:
                    budget = self._budget(rec.engine)
                    args = (*args, budget)
                fn = task.fn
                if task.op == "python" and rec.engine.on_device:
                    # A function running on the DPU holds its data there: what it submits reads
                    # DPU memory and hands its result back to it, so none of that crosses PCIe.
                    fn = partial(_on_device_data, DataLocation(self.label, keep_output=True), task.fn)
                if task.context is None:
                    rec.value = fn(*args, **(task.kwargs or {}))
                else:
                    rec.value = task.context.run(fn, *args, **(task.kwargs or {}))
                return _OK
            except BaseException as exc:  # the task's failure, handed to its future
                rec.exc = exc
                return _ERR_CALLBACK
            finally:
                if budget is not None:
                    budget.release()
                rec.py_wall = time.perf_counter() - start
                _worker.active = outer
                unregister_callback(uid)

        return run

    # --- completions ---------------------------------------------------------

    def _progress_loop(self) -> None:
        assert self._pe is not None
        while True:
            self._pe.wait(0.05, _POLL_INTERVAL_S)
            self._drain()
            if self._state != "running" and self._pe.outstanding == 0:
                return

    def _drain(self) -> None:
        """Finish every completed task on the queue (whoever calls this)."""
        assert self._pe is not None
        with self._drain_lock:
            uids = self._pe.progress_user_data()
        pop = self._records.pop
        for uid in uids:
            # Popping is the claim: exactly one thread finishes each record.
            rec = pop(uid, None)
            if rec is not None:
                self._finish(rec)

    def _wait_for(self, future: TaskFuture, timeout: float | None) -> float | None:
        """``TaskFuture.result`` fast path: wait in C for the task, then finish it here.

        Returns what is left of ``timeout``.
        """
        assert self._pe is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        rec: _Record | None = future._record  # type: ignore[attr-defined]
        while rec is not None:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._pe.wait_task(rec.ctask, remaining):
                break
            self._drain()
            following = future._record  # type: ignore[attr-defined]
            if following is rec:  # another thread is finishing it; the future's own wait covers that
                break
            rec = following  # None when done, a new record when the task was rerun
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _finish(self, rec: _Record, *, published: bool = True) -> None:
        """Settle the future of a completed task.  ``published=False``: nobody
        has seen the future yet (an inline task), so no one can be waiting."""
        future = rec.future
        self._inflight[rec.engine.index] -= 1
        try:
            self._resolve(rec, published)
        finally:
            # Let go of the caller's buffers now, and break the record <->
            # future cycle, rather than whenever the cycle collector runs.
            rec.keep.clear()
            if future._record is rec:  # type: ignore[attr-defined]
                future._record = None  # type: ignore[attr-defined]

    def _resolve(self, rec: _Record, published: bool) -> None:
        ct, task, future = rec.ctask, rec.task, rec.future
        placement = future.placement
        assert placement is not None
        status = ct.status
        wall = ct.exec_ns * 1e-9
        placement.wall_s = wall if placement.wall_s is None else placement.wall_s + wall
        placement.queued_wall_s = ct.queued_ns * 1e-9
        if task.op == "python":
            self._correct_python(rec, placement)
        if status == _OK:
            if task.op in CALLBACK_OPS:
                value = rec.value
            elif task.convert is None:
                value = ct.result
            else:
                try:
                    out = None if rec.out_addr is None else memoryview(ffi.buffer(rec.out_addr, ct.result))
                    value = task.convert(ct.result, out)
                except BaseException as exc:  # a converter bug must still finish the future
                    self._fail(rec, placement, exc)
                    return
            learns = task.op in _LEARNED_RATIOS and task.nbytes
            charged_out = self._charges_output(rec)
            if rec.crosses or learns or charged_out:
                out_bytes = ct.result if task.op in _NEEDS_DST else _out_bytes(task, value)
                if rec.crosses:
                    self._pcie_bytes[rec.engine.name] += out_bytes
                if learns:
                    self.model.observe(rec.engine.name, task.op, bytes_in=task.nbytes, bytes_out=out_bytes)
                if charged_out and placement.timeline is not None and out_bytes != self._out_estimate(task):
                    # The charge assumed an output size; the job's real one is known now.
                    real = self.model.exec_seconds(rec.engine.name, task.op, task.nbytes, out_bytes)
                    self.model.adjust(rec.engine, placement.timeline, real)
            placement.status = "ok"
            if published:
                future.set_result(value)
            else:  # no waiters or callbacks can exist yet, so skip the condition
                future._result = value
                future._state = "FINISHED"
            return
        if status == _ERR_TOO_SMALL and task.grow_output and ct.needed > 0 and self._rerun_larger(rec, int(ct.needed)):
            return
        if status == _ERR_CALLBACK and rec.exc is not None:
            err = rec.exc
            if task.metered and isinstance(err, errors.JobTooLargeError) and self._rerun_elsewhere(rec, err):
                return
            if task.op != "python" and isinstance(err, errors.DpdpuError):
                # A codec's own error: say where it ran, like the core's errors do.
                self._fail(rec, placement, err.on(self.label, rec.engine.name))
                return
            self._fail(rec, placement, err, f"raised {type(err).__name__}")
            return
        if status == _ERR_TOO_LARGE and task.op == "deflate_decompress" and not task.grow_output:
            # The core stopped measuring how far past the caller's output_size the stream goes at the
            # engine's largest job: the caller's buffer is what is too small.
            status = _ERR_TOO_SMALL
        detail = (
            f"needs {int(ct.needed)} bytes, has {int(ct.dst.len)}"
            if status == _ERR_TOO_SMALL and ct.needed
            else f"needs more than {int(ct.dst.len)} bytes"
            if status == _ERR_TOO_SMALL
            else None
        )
        err = error_for(status, device=self.label, engine=rec.engine.name, op=task.op, detail=detail)
        if isinstance(err, errors.BufferTooSmallError):
            err.needed = int(ct.needed) or None
        self._fail(rec, placement, err)

    def _charges_output(self, rec: _Record) -> bool:
        """True if the op's cost on the task's engine depends on its output size."""
        return (rec.engine.name, rec.task.op) in self._output_costs

    def _fail(self, rec: _Record, placement: Placement, exc: BaseException, status: str | None = None) -> None:
        self._errors[rec.engine.name] += 1
        placement.status = status or getattr(exc, "code", None) or "error"
        rec.future.set_exception(exc)

    def _rerun_larger(self, rec: _Record, needed: int) -> bool:
        """Rerun a decompression whose guessed output was too small, at the exact size.

        If the exact size exceeds the engine's largest job, the rerun goes to
        another engine of the device that takes it (the Arm cores).
        """
        task, engine, future = rec.task, rec.engine, rec.future
        placement = future.placement
        assert placement is not None and placement.timeline is not None
        rerun = Task(
            op=task.op, src=task.src, dst=None, dst_size=needed, param=task.param, level=task.level,
            name=task.name, nbytes=task.nbytes, out_hint=needed, convert=task.convert,
        )  # fmt: skip
        refusal = self._cannot_grow(rerun, engine)
        if refusal is not None:
            other = (
                None
                if placement.strict
                else next((e for e in self.engines if self._cannot_grow(rerun, e) is None), None)
            )
            if other is None:
                # Its output has no room where it may run: say so, rather than blame a buffer the caller never gave.
                engines = [engine] if placement.strict else list(self.engines)
                refusals = [(e, r) for e in engines if (r := self._cannot_grow(rerun, e)) is not None]
                kind = next((k for k in ("memory", "too_large") if any(r.kind == k for _, r in refusals)), None)
                if kind is None:
                    return False
                cls = errors.DeviceMemoryError if kind == "memory" else errors.JobTooLargeError
                reasons = "; ".join(f"{e.label}: {r.reason}" for e, r in refusals if r.kind == kind)
                suffix = " and fallback is forbidden" if placement.strict else ""
                err = cls(
                    f"its {fmt_bytes(needed)} output fits no engine: {reasons}{suffix}", device=self.label, op=task.op
                )
                self._fail(rec, placement, err)
                return True
            placement.fallback = f"{engine.label} cannot take the {fmt_bytes(needed)} output: {refusal.reason}"
            placement.engine, placement.kind, engine = other.label, other.kind, other
        placement.attempts += 1
        placement.notes = [
            *(placement.notes or ()),
            f"output guess too small; reran with the exact size, {needed} bytes",
        ]
        timeline = placement.timeline
        try:
            self._submit_record(_Record(rerun, engine, future), timeline.finish_s, timeline.arrival_s)
        except errors.DpdpuError as exc:
            self._fail(rec, placement, exc)
        return True

    def _rerun_elsewhere(self, rec: _Record, err: errors.JobTooLargeError) -> bool:
        """Rerun a metered task whose output outgrew its engine's largest job on an engine without that limit."""
        placement = rec.future.placement
        assert placement is not None and placement.timeline is not None
        limit = rec.engine.max_job_bytes
        others = [
            e for e in self.engines
            if e is not rec.engine and (e.max_job_bytes is None or (limit is not None and e.max_job_bytes > limit))
            and self.can_run(rec.task, e) is None
        ]  # fmt: skip
        if placement.strict or not others:
            return False
        other = others[0]
        placement.fallback = f"{rec.engine.label} cannot take the output: {err.detail}"
        placement.engine, placement.kind = other.label, other.kind
        placement.attempts += 1
        timeline = placement.timeline
        try:
            self._submit_record(_Record(rec.task, other, rec.future), timeline.finish_s, timeline.arrival_s)
        except errors.DpdpuError as exc:
            self._fail(rec, placement, exc)
        return True

    def _cannot_grow(self, rerun: Task, engine: EngineInfo) -> Refusal | None:
        """Why ``engine`` cannot rerun a decompression at its exact output size, or None."""
        room = self.output_room(engine)
        if rerun.dst_size > room:
            return Refusal("memory", f"{fmt_bytes(room)} free for output of unknown size")
        refusal = self.can_run(rerun, engine)
        # A full queue only delays the rerun: its submission waits for room (workers make it).
        return None if refusal is not None and refusal.kind == "busy" else refusal

    def _correct_python(self, rec: _Record, placement: Placement) -> None:
        """Replace the estimated run time of a Python task by the measured one."""
        key = _fn_key(rec.task.fn)
        old = self._py_history.get(key)
        self._py_history[key] = rec.py_wall if old is None else 0.7 * old + 0.3 * rec.py_wall
        timeline = placement.timeline
        if timeline is not None:
            actual = self.model.exec_seconds(rec.engine.name, "python", 0, host_seconds=rec.py_wall)
            self.model.adjust(rec.engine, timeline, actual)

    # --- statistics ------------------------------------------------------------

    def stats(self) -> dict[str, EngineStats]:
        """Counters per engine (from the core), with modeled busy time from the virtual clocks."""
        out = {}
        for e in self.engines:
            clock = self._clocks[e.name]
            native = self._native.engine_stats(e.index) if self._native is not None else {}
            out[e.name] = EngineStats(
                engine=e.name, kind=e.kind, lanes=e.lanes,
                tasks=native.get("tasks", 0), errors=self._errors[e.name], inlined=native.get("inlined", 0),
                bytes_in=native.get("bytes_in", 0), bytes_out=native.get("bytes_out", 0),
                pcie_bytes=self._pcie_bytes[e.name], wall_busy_s=native.get("exec_ns", 0) * 1e-9,
                modeled_busy_s=clock.busy_s, modeled_horizon_s=clock.last_finish_s,
            )  # fmt: skip
        return out


def _on_device_data(where: DataLocation, fn: Any, *args: Any, **kwargs: Any) -> Any:
    token = DATA_LOCATION.set(where)
    try:
        return fn(*args, **kwargs)
    finally:
        DATA_LOCATION.reset(token)


def _keeps_output(task: Task, device: str) -> bool:
    """True if the task's result stays in ``device`` memory (no transfer back)."""
    where = data_location()
    return isinstance(task.dst, DeviceBuffer) or (where.keep_output and where.device in (None, device))


def _out_bytes(task: Task, value: Any) -> int:
    """Bytes of a task's result (what crosses back over PCIe)."""
    # Codec results are bytes; kernel results are Arrow data (or lists of it); the
    # rest (checksums, Python values) are sized by the task's hint.
    sized = task.op in CALLBACK_OPS and task.op != "python"
    if sized or hasattr(value, "nbytes") or (isinstance(value, list | tuple) and value):
        return payload_nbytes(value)
    return task.out_hint


def _fn_key(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
