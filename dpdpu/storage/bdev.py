"""A block device over a file: asynchronous reads, writes and flushes, SPDK-style.

:class:`BlockDevice` wraps the C bdev (``csrc/bdev.c``): every call fills an
I/O descriptor and submits it to a queue of bounded depth; the bdev's worker
threads run it with ``pread``/``pwrite``/``fdatasync`` without the GIL, and the
completion settles an :class:`IOFuture`.  Completions are collected by a
poller thread (so futures, callbacks and ``await`` just work), by whoever
waits on a future (it waits in C for its own I/O and takes it), or by the
caller through :meth:`BlockDevice.poll` when the device was opened with
``poller=False``.

Buffers are used in place: a bytes-like object passed to :meth:`~BlockDevice.write`
or :meth:`~BlockDevice.read_into` is registered for as long as the I/O is in
flight (a ``bytearray`` cannot be resized meanwhile) and is never copied.

Each I/O is also charged on a virtual clock from the ``[storage]`` section of
a device profile (BlueField-2 eMMC-class, BlueField-3 and host NVMe-class):
a fixed latency on one of the device's queue slots plus the transfer over a
shared channel at the profile's bandwidth.  The charge is on the future
(:attr:`IOFuture.timing`) and in :meth:`BlockDevice.stats`; like the runtime's
clocks it depends on the profile and the order of the program, not on this
machine.  An I/O arrives at the device's virtual "now", the latest finish
among completions the program has already taken.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import errno
import itertools
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from .. import errors
from ..runtime.cost import EngineClock
from ..runtime.native import error_for, ffi, lib
from ..runtime.profile import Profile, StorageProfile

__all__ = ["BlockDevice", "IOFuture", "IOTiming", "StorageModel", "aligned_buffer"]

T = TypeVar("T")

#: ``(fn, arg)``: ``fn(future, arg)`` runs once the I/O has completed.
IOCallback = tuple[Callable[["IOFuture[Any]", Any], None], Any]

_log = logging.getLogger("dpdpu.storage")

_OK = lib.DPDPU_OK
_ERRNO_ERRORS: dict[int, type[errors.StorageError]] = {
    errno.ENOENT: errors.NoSuchFileError,
    errno.EISDIR: errors.FileTypeError,
    errno.ENOSPC: errors.DeviceFullError,
    errno.EDQUOT: errors.DeviceFullError,
}
_OPS = {lib.DPDPU_BDEV_IO_READ: "read", lib.DPDPU_BDEV_IO_WRITE: "write", lib.DPDPU_BDEV_IO_FLUSH: "flush"}

#: While I/O is in flight the poller looks for completions this often instead
#: of being woken by each one; a caller waiting on its own future takes its
#: completion at once.  Callbacks and ``as_completed`` wait at most this long.
_POLL_INTERVAL_S = 200e-6
_POLL_BATCH = 64
_uids = itertools.count(1)


def aligned_buffer(nbytes: int) -> memoryview:
    """A writable, page-aligned, zeroed buffer of ``nbytes`` (for direct I/O without copies)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise errors.InvalidArgumentError(f"cannot allocate a buffer of {nbytes!r} bytes")
    return memoryview(mmap.mmap(-1, nbytes))


class IOTiming(NamedTuple):
    """Where one I/O sits on the device's virtual clock (seconds)."""

    op: str
    nbytes: int
    arrival_s: float
    start_s: float
    finish_s: float

    @property
    def modeled_s(self) -> float:
        """From arrival to finish: what the caller waits for, in device time."""
        return self.finish_s - self.arrival_s

    @property
    def queue_s(self) -> float:
        """Time spent waiting for a queue slot."""
        return self.start_s - self.arrival_s


class StorageModel:
    """Virtual clock of a device's storage, from a profile's ``[storage]`` section.

    An I/O takes the queue slot that frees first, holds it for the fixed
    latency and its transfer, and the transfer also occupies the one shared
    channel (so large I/Os are bandwidth-bound whatever the queue depth, and
    small ones latency-bound up to ``parallelism`` at once).  A read that
    starts where a recent one ended is sequential and pays the profile's
    shorter sequential latency.  A flush holds a slot for the profile's flush
    time.  The I/Os a program keeps in flight map onto fio's ``numjobs`` x
    ``iodepth``: the profile's figures were measured at ``fio_jobs`` of them.
    """

    #: how many read streams are remembered to tell sequential reads from random ones
    STREAMS = 16

    def __init__(self, storage: StorageProfile, name: str = "") -> None:
        self.storage = storage
        self.name = name
        # The queue slots and the shared channel are virtual clocks like an engine's lanes.
        self._slots = EngineClock(storage.slots)
        self._channel = EngineClock(1)
        self._lock = threading.Lock()
        self._read_ends: collections.deque[int] = collections.deque(maxlen=self.STREAMS)
        self.busy_s = 0.0
        self.ios = 0

    def _parts(self, op: str, nbytes: int, sequential: bool) -> tuple[float, float]:
        s = self.storage
        if op == "read":
            fixed = s.seq_read_fixed_s if sequential else s.read_fixed_s
            return fixed, nbytes / s.read_bytes_per_s
        if op == "write":
            return s.write_fixed_s, nbytes / s.write_bytes_per_s
        return s.flush_s, 0.0

    def service_s(self, op: str, nbytes: int, *, sequential: bool = False) -> float:
        """Time one I/O of ``nbytes`` takes on an idle device."""
        fixed, transfer = self._parts(op, nbytes, sequential)
        return fixed + transfer

    def charge(self, op: str, nbytes: int, arrival_s: float, offset: int | None = None) -> IOTiming:
        """Occupy a slot (and the channel) for one I/O arriving at ``arrival_s``.

        ``offset`` (of a read) tells a sequential read from a random one.
        """
        with self._lock:
            sequential = False
            if op == "read" and offset is not None:
                sequential = offset in self._read_ends
                if sequential:
                    self._read_ends.remove(offset)
                self._read_ends.append(offset + nbytes)
            fixed, transfer = self._parts(op, nbytes, sequential)
            start = self._slots.peek(arrival_s)
            finish = start + fixed
            if transfer:  # the slot is held until the channel has moved the bytes
                finish = self._channel.charge(finish, transfer)[1]
            self._slots.charge(arrival_s, finish - start)
            self.busy_s += fixed + transfer
            self.ios += 1
        return IOTiming(op, nbytes, arrival_s, start, finish)


class IOFuture(concurrent.futures.Future[T]):
    """The outcome of one submitted I/O.

    Works with ``concurrent.futures.wait``/``as_completed``, ``add_done_callback``
    and ``await``.  ``result()`` on an unfinished I/O waits in C for that very
    I/O (without the GIL) and takes its completion itself.

    Attributes:
        op: ``"read"``, ``"write"`` or ``"flush"``.
        offset, length: the byte range (0, 0 for a flush).
        timing: the modeled charge on the device's virtual clock (None when the
            device has no storage model).
        wall_s: time a worker spent executing the I/O on this machine.
        queued_wall_s: time it waited for a worker.
    """

    def __init__(self, device: BlockDevice, op: str, offset: int, length: int) -> None:
        super().__init__()
        # An I/O handed to the queue cannot be withdrawn: cancel() is refused.
        self._state = "RUNNING"
        self._device = device
        self._rec: _Pending | None = None
        self.op = op
        self.offset = offset
        self.length = length
        self.timing: IOTiming | None = None
        self.wall_s: float | None = None
        self.queued_wall_s: float | None = None

    @property
    def modeled_s(self) -> float | None:
        """Modeled device time from arrival to finish (None without a model)."""
        return None if self.timing is None else self.timing.modeled_s

    def result(self, timeout: float | None = None) -> T:
        """The I/O's value; re-raises its error; TimeoutError after ``timeout`` seconds."""
        if self._state != "FINISHED":
            timeout = self._device._wait_for(self, timeout)
        value: T = super().result(timeout)
        self._device._observe(self)
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The I/O's error (None if it succeeded)."""
        if self._state != "FINISHED":
            timeout = self._device._wait_for(self, timeout)
        return super().exception(timeout)

    def __await__(self) -> Generator[Any, None, T]:
        import asyncio

        return asyncio.wrap_future(self).__await__()


class _Pending:
    """What must stay alive while an I/O is in flight, and how to settle it."""

    __slots__ = ("callback", "cio", "convert", "future", "keep")

    def __init__(
        self,
        cio: Any,
        keep: Any,
        future: IOFuture[Any],
        convert: Callable[[Any], Any],
        callback: IOCallback | None,
    ) -> None:
        self.cio = cio
        self.keep = keep
        self.future = future
        self.convert = convert
        self.callback = callback


def _load_model(device: str | Profile | None) -> StorageModel | None:
    if device is None:
        return None
    profile = Profile.of(device)
    if profile.storage is None:
        return None
    return StorageModel(profile.storage, profile.name)


class BlockDevice:
    """A block device over the file at ``path``.

    Args:
        path: the backing file (created when missing, unless ``create=False``).
        block_size: bytes per block, a power of two from 512 to 1 MiB; every
            offset and length is a multiple of it.
        capacity: size of the device in bytes (a multiple of ``block_size``);
            None takes the file's size.  A shorter file is extended sparsely.
        direct: bypass the page cache (``O_DIRECT``); buffers must then be
            aligned (see :func:`aligned_buffer`).  A file system that refuses it
            falls back to buffered I/O (:attr:`direct` then reads False and
            :attr:`direct_fallback` True).
        queue_depth: most I/Os in flight at once.
        workers: I/O threads.  By default ``min(queue_depth, 16)`` for a
            direct device (each thread keeps one I/O outstanding on the
            medium) and ``min(queue_depth, 4, CPUs)`` for a buffered one
            (page-cache copies are CPU work: more threads than cores only
            contend).
        device: profile whose ``[storage]`` figures drive the modeled time
            (a built-in name, a TOML path or a :class:`Profile`; None: no model).
        poller: run a thread that collects completions; without it futures
            still complete when waited on, and :meth:`poll` collects the rest.
        submit_timeout: how long a submission waits for room in a full queue
            (None: as long as it takes, 0: raise :class:`QueueFullError` at
            once).  ``"auto"``: None with a poller, 0 without one (where
            nothing else would make room).
        read_only: refuse writes.
        create: create the file when it does not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        block_size: int = 4096,
        capacity: int | None = None,
        direct: bool = False,
        queue_depth: int = 32,
        workers: int | None = None,
        device: str | Profile | None = "bluefield3",
        poller: bool = True,
        submit_timeout: float | Literal["auto"] | None = "auto",
        read_only: bool = False,
        create: bool = True,
    ) -> None:
        self.path = str(Path(path))
        _check_int("block_size", block_size, 512)
        _check_int("queue_depth", queue_depth, 1)
        if workers is not None:
            _check_int("workers", workers, 1)
        if capacity is not None:
            _check_int("capacity", capacity, block_size)
            if capacity % block_size:
                raise errors.InvalidArgumentError(
                    f"capacity {capacity} is not a multiple of the block size {block_size}", op="open"
                )
        self.model = _load_model(device)
        cfg = ffi.new("struct dpdpu_bdev_cfg *")
        cpath = ffi.new("char[]", os.fsencode(self.path))
        cfg.path = cpath
        cfg.block_size = block_size
        cfg.capacity_blocks = 0 if capacity is None else capacity // block_size
        cfg.queue_depth = queue_depth
        if workers is None:
            workers = min(queue_depth, 16) if direct else min(queue_depth, 4, os.cpu_count() or 1)
        cfg.workers = workers
        cfg.flags = (
            (lib.DPDPU_BDEV_CREATE if create and not read_only else 0)
            | (lib.DPDPU_BDEV_DIRECT if direct else 0)
            | (lib.DPDPU_BDEV_READ_ONLY if read_only else 0)
        )
        out = ffi.new("struct dpdpu_bdev **")
        rc = lib.dpdpu_bdev_open(cfg, out)
        if rc != _OK:
            raise self._open_error(rc, ffi.errno, block_size)
        self._bdev = ffi.gc(out[0], lib.dpdpu_bdev_release)
        info = ffi.new("struct dpdpu_bdev_info *")
        lib.dpdpu_bdev_get_info(self._bdev, info)
        self.block_size: int = int(info.block_size)
        self.capacity: int = int(info.capacity_blocks) * self.block_size
        self.queue_depth: int = int(info.queue_depth)
        self.workers: int = int(info.workers)
        self.buffer_alignment: int = int(info.buf_align)
        self.direct: bool = bool(info.direct)
        self.direct_fallback: bool = bool(info.direct_fallback)
        self.read_only = read_only

        self._pending: dict[int, _Pending] = {}
        self._drain_lock = threading.Lock()
        self._batch = ffi.new("struct dpdpu_bdev_io *[]", _POLL_BATCH)
        self._vnow = 0.0
        self._vlock = threading.Lock()
        self._closed = False
        self._close_lock = threading.Lock()
        if submit_timeout == "auto":
            submit_timeout = None if poller else 0.0
        if submit_timeout is not None and not isinstance(submit_timeout, (int, float)):
            raise errors.InvalidArgumentError(f"submit_timeout must be seconds or None, not {submit_timeout!r}")
        self._timeout_us = -1 if submit_timeout is None else max(0, int(submit_timeout * 1e6))
        self._poller: threading.Thread | None = None
        if poller:
            self._poller = threading.Thread(target=self._poll_loop, name="dpdpu-bdev-poller", daemon=True)
            self._poller.start()

    # --- opening ---------------------------------------------------------------

    def _open_error(self, rc: int, os_errno: int, block_size: int) -> errors.DpdpuError:
        err: errors.DpdpuError
        if rc == lib.DPDPU_ERR_INTERNAL and os_errno:
            text = f"cannot open {self.path}: {os.strerror(os_errno)}"
            cls = _ERRNO_ERRORS.get(os_errno, errors.StorageError)
            err = cls(text, op="open", code="INTERNAL")
            err.path = self.path
            err.os_errno = os_errno
            return err
        detail = {
            lib.DPDPU_ERR_INVALID_ARGUMENT: (
                f"block size {block_size} must be a power of two from 512 to 1 MiB, the capacity non-zero "
                "(an empty file needs a capacity), and the path a regular file"
            ),
            lib.DPDPU_ERR_NOT_SUPPORTED: "the file system refuses O_DIRECT",
            lib.DPDPU_ERR_OUT_OF_RANGE: "the capacity is too large",
        }.get(rc)
        return error_for(rc, op="open", detail=f"{self.path}: {detail}" if detail else self.path)

    # --- submission ------------------------------------------------------------

    def read(
        self, offset: int, length: int, *, callback: IOCallback | None = None, timeout: float | None = None
    ) -> IOFuture[bytes]:
        """Read ``length`` bytes at ``offset``; the future's value is the bytes."""
        _check_int("length", length, 1)
        if self.buffer_alignment > 1:
            scratch = aligned_buffer(length)
            return self._submit(
                lib.DPDPU_BDEV_IO_READ, offset, length, scratch, True, lambda cio: scratch.tobytes(), callback, timeout
            )
        # A fresh bytes object nobody else has seen yet is filled in place, as
        # os.pread does, sparing a copy of every byte read.
        out = _new_bytes(length)
        return self._submit(lib.DPDPU_BDEV_IO_READ, offset, length, out, False, lambda cio: out, callback, timeout)

    def read_into(
        self, offset: int, buffer: Any, *, callback: IOCallback | None = None, timeout: float | None = None
    ) -> IOFuture[int]:
        """Read into ``buffer`` (writable bytes-like, in place) at ``offset``; the value is the byte count."""
        return self._submit(lib.DPDPU_BDEV_IO_READ, offset, None, buffer, True, _result_bytes, callback, timeout)

    def write(
        self, offset: int, data: Any, *, callback: IOCallback | None = None, timeout: float | None = None
    ) -> IOFuture[int]:
        """Write ``data`` (bytes-like, used in place) at ``offset``; the value is the byte count."""
        return self._submit(lib.DPDPU_BDEV_IO_WRITE, offset, None, data, False, _result_bytes, callback, timeout)

    def flush(self, *, callback: IOCallback | None = None, timeout: float | None = None) -> IOFuture[None]:
        """Make durable every write that completed before this call."""
        return self._submit(lib.DPDPU_BDEV_IO_FLUSH, 0, 0, None, False, _none, callback, timeout)

    def _submit(
        self,
        kind: int,
        offset: int,
        length: int | None,
        obj: Any,
        writable: bool,
        convert: Callable[[Any], Any],
        callback: IOCallback | None,
        timeout: float | None,
    ) -> IOFuture[Any]:
        op = _OPS[kind]
        if kind != lib.DPDPU_BDEV_IO_FLUSH:
            _check_int("offset", offset, 0)
        if callback is not None and (
            not isinstance(callback, tuple) or len(callback) != 2 or not callable(callback[0])
        ):
            raise errors.InvalidArgumentError("callback must be a (function, argument) pair", op=op)
        keep: Any = None
        ptr: Any = ffi.NULL
        if obj is not None:
            try:
                keep = ptr = ffi.from_buffer(obj, require_writable=writable)
            except (TypeError, BufferError) as exc:
                kind_text = "a writable" if writable else "a"
                raise errors.InvalidArgumentError(
                    f"expected {kind_text} contiguous bytes-like object, got {type(obj).__name__}", op=op
                ) from exc
            length = len(keep)
            if length == 0:
                raise errors.InvalidArgumentError("the buffer is empty", op=op)
        return self._enqueue(kind, offset, length or 0, ptr, keep, convert, callback, timeout)

    def _io_raw(self, kind: int, offset: int, ptr: Any, length: int, keep: Any) -> IOFuture[int]:
        """Read or write ``length`` bytes at a cffi pointer; ``keep`` holds its memory alive meanwhile."""
        return self._enqueue(kind, offset, length, ptr, keep, _result_bytes, None, None)

    def _enqueue(
        self,
        kind: int,
        offset: int,
        length: int,
        ptr: Any,
        keep: Any,
        convert: Callable[[Any], Any],
        callback: IOCallback | None,
        timeout: float | None,
    ) -> IOFuture[Any]:
        op = _OPS[kind]
        cio = ffi.new("struct dpdpu_bdev_io *")
        uid = next(_uids)
        cio.type = kind
        cio.offset = offset
        cio.length = length
        cio.buf = ptr
        cio.user_data = uid
        future: IOFuture[Any] = IOFuture(self, op, offset, length)
        rec = _Pending(cio, keep, future, convert, callback)
        future._rec = rec
        # Registered before submitting: a worker may complete it, and a poller
        # take it, before dpdpu_bdev_submit has even returned.
        self._pending[uid] = rec
        arrival = self._vnow
        timeout_us = self._timeout_us if timeout is None else max(0, int(timeout * 1e6))
        rc = lib.dpdpu_bdev_submit(self._bdev, cio, timeout_us)
        if rc != _OK:
            del self._pending[uid]
            future._rec = None
            raise self._submit_error(rc, op, offset, length, ptr)
        if self.model is not None:
            future.timing = self.model.charge(op, length, arrival, offset)
        return future

    def _submit_error(self, rc: int, op: str, offset: int, length: int, ptr: Any) -> errors.DpdpuError:
        bs = self.block_size
        detail = None
        if rc == lib.DPDPU_ERR_INVALID_ARGUMENT:
            if offset % bs or length % bs:
                detail = f"offset {offset} and length {length} must be multiples of the block size {bs}"
            elif ptr != ffi.NULL and int(ffi.cast("uintptr_t", ptr)) % self.buffer_alignment:
                detail = f"a direct device needs buffers aligned to {self.buffer_alignment} bytes"
        elif rc == lib.DPDPU_ERR_OUT_OF_RANGE:
            detail = f"bytes [{offset}, {offset + length}) end past the capacity of {self.capacity} bytes"
            if op == "write":
                err = errors.DeviceFullError(f"no room on the device: {detail}", op=op, code="OUT_OF_RANGE")
                err.path = self.path
                return err
        elif rc == lib.DPDPU_ERR_NOT_SUPPORTED:
            detail = "the device is read-only"
        elif rc == lib.DPDPU_ERR_AGAIN:
            detail = f"{self.queue_depth} I/Os in flight"
        return error_for(rc, op=op, detail=detail)

    # --- completions -----------------------------------------------------------

    def poll(self, max_completions: int | None = None) -> list[IOFuture[Any]]:
        """Collect completed I/Os now (never blocks); return their futures, settled.

        Callbacks of the collected I/Os run on this thread.  Meant for devices
        opened with ``poller=False``; with a poller it returns what the poller
        has not taken yet.
        """
        done = self._drain(max_completions)
        for future in done:
            self._observe(future)
        return done

    def wait(self, timeout: float | None = None) -> int:
        """Block until completions are ready to :meth:`poll` (or ``timeout``); return how many."""
        rc = lib.dpdpu_bdev_wait(self._bdev, -1 if timeout is None else int(timeout * 1e6), 0)
        return 0 if rc < 0 else rc

    def _drain(self, limit: int | None = None) -> list[IOFuture[Any]]:
        with self._drain_lock:
            uids: list[int] = []
            batch = self._batch
            while limit is None or len(uids) < limit:
                want = _POLL_BATCH if limit is None else min(_POLL_BATCH, limit - len(uids))
                n = lib.dpdpu_bdev_poll(self._bdev, batch, want)
                uids.extend(batch[i].user_data for i in range(n))
                if n < want:
                    break
        done = []
        pop = self._pending.pop
        for uid in uids:
            # Popping is the claim: exactly one thread settles each I/O.
            rec = pop(uid, None)
            if rec is not None:
                self._finish(rec)
                done.append(rec.future)
        return done

    def _finish(self, rec: _Pending) -> None:
        cio, future = rec.cio, rec.future
        future.wall_s = cio.exec_ns * 1e-9
        future.queued_wall_s = cio.queued_ns * 1e-9
        status = int(cio.status)
        try:
            if status == _OK:
                future.set_result(rec.convert(cio))
            else:
                future.set_exception(self._io_error(status, int(cio.os_errno), future))
        finally:
            rec.keep = None
            future._rec = None
        if rec.callback is not None:
            fn, arg = rec.callback
            try:
                fn(future, arg)
            except Exception:
                _log.exception("callback of a %s on %s raised", future.op, self.path)
            self._observe(future)

    def _io_error(self, status: int, os_errno: int, future: IOFuture[Any]) -> errors.DpdpuError:
        where = f"{future.op} of {future.length} bytes at {future.offset}"
        if os_errno:
            cls = _ERRNO_ERRORS.get(os_errno, errors.StorageError)
            err = cls(f"{where}: {os.strerror(os_errno)}", op=future.op, code="INTERNAL")
            err.path = self.path
            err.os_errno = os_errno
            return err
        return error_for(status, op=future.op, detail=where)

    def _wait_for(self, future: IOFuture[Any], timeout: float | None) -> float | None:
        """``IOFuture.result`` fast path: wait in C for the I/O, then take it here."""
        rec = future._rec
        if rec is None:
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        timeout_us = -1 if timeout is None else max(0, int(timeout * 1e6))
        if lib.dpdpu_bdev_io_wait(self._bdev, rec.cio, timeout_us) == _OK:
            self._drain()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _observe(self, future: IOFuture[Any]) -> None:
        """The program has taken this result: later I/O arrives after it (virtual time)."""
        timing = future.timing
        if timing is not None and timing.finish_s > self._vnow:
            with self._vlock:
                if timing.finish_s > self._vnow:
                    self._vnow = timing.finish_s

    def _poll_loop(self) -> None:
        bdev = self._bdev
        interval_us = int(_POLL_INTERVAL_S * 1e6)
        while True:
            lib.dpdpu_bdev_wait(bdev, 50_000, interval_us)
            if self._closed and not self._pending:
                return
            self._drain()

    # --- information and life cycle ----------------------------------------------

    @property
    def vnow(self) -> float:
        """The device's virtual "now" (seconds): the latest finish the program has taken."""
        return self._vnow

    @property
    def in_flight(self) -> int:
        """I/Os submitted and not yet settled."""
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        """Counters kept by the C bdev, plus the modeled device time."""
        out = ffi.new("struct dpdpu_bdev_stats *")
        lib.dpdpu_bdev_get_stats(self._bdev, out)
        keys = ("reads", "writes", "flushes", "failed", "bytes_read", "bytes_written", "busy_ns", "queued_ns")
        stats: dict[str, Any] = {k: int(getattr(out, k)) for k in keys}
        stats["in_flight"] = int(out.in_flight)
        stats["completed_unpolled"] = int(out.completed)
        if self.model is not None:
            stats["device"] = self.model.name
            stats["medium"] = self.model.storage.medium.value
            stats["modeled_busy_s"] = self.model.busy_s
            stats["modeled_ios"] = self.model.ios
            stats["vnow_s"] = self._vnow
        return stats

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Let I/O in flight finish, settle every future, stop the workers and the poller."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        lib.dpdpu_bdev_close(self._bdev)
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join()
        self._drain()

    def __enter__(self) -> BlockDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "direct" if self.direct else "buffered"
        return (
            f"BlockDevice({self.path!r}, {self.capacity // self.block_size} x {self.block_size} B, {mode}, "
            f"queue depth {self.queue_depth})"
        )


_bytes_uninitialized = ctypes.pythonapi.PyBytes_FromStringAndSize
_bytes_uninitialized.restype = ctypes.py_object
_bytes_uninitialized.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)


def _new_bytes(length: int) -> bytes:
    """A new bytes object of ``length`` that is about to be overwritten in full.

    ``bytes(n)`` zeroes its memory, which for large reads costs a good part
    of the read itself; the C API's uninitialized allocation (what
    ``os.pread`` uses) does not.  Small objects are cheaper to zero than the
    foreign call costs.
    """
    if length < 65536:
        return bytes(length)
    out: bytes = _bytes_uninitialized(None, length)
    return out


def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise errors.InvalidArgumentError(f"{name} must be an integer >= {least}, not {value!r}")


def _result_bytes(cio: Any) -> int:
    return int(cio.result)


def _none(cio: Any) -> None:
    return None
