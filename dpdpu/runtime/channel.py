"""The host<->DPU channel: a lock-free single-producer/single-consumer ring in shared memory.

A transport primitive of the core, like DOCA's Comch on DOCA Core: the
storage engine's DDS path and the network engine's Flight routing both run
over it, in the frames of :mod:`dpdpu.runtime.channel_rpc`.

A :class:`Channel` is one end of a ring (``csrc/ring.c``): the process that
creates it takes one end (by default the sending one) and the process that
attaches to it by name takes the other.  Messages up to half the ring's
capacity go through in *message mode* (one record each, read in place by the
receiver); :meth:`Channel.send_many` publishes a whole batch with one store and
at most one wake-up.  Payloads of any size go through in *bulk mode*
(:meth:`Channel.send_bulk`): copied straight into the ring in chunks that the
receiver copies out while the next one is written.  Receiving does not care
which mode a message was sent in.

Waiting sides poll briefly, then sleep on a futex in the shared header; a peer
that closes its end, or whose process dies, ends the other side's waits with
:class:`~dpdpu.errors.RuntimeClosedError` (a receiver first gets every message
that was committed).  Blocking calls run in C without the GIL, in slices of
at most 0.2 s so that signal handlers (Ctrl-C) run between them.

:class:`ChannelPair` joins two rings into a request/response link between a
host process and an agent process.

For the emulator, a channel created with ``device="bluefield3"`` (or a
``pcie`` cost) charges each transfer its modeled PCIe time on the sending side
(one transfer per call: a batch is one DMA); :meth:`Channel.stats` reports it
as ``modeled_s`` next to the byte counts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .. import errors
from .cost import CostModel
from .native import error_for, ffi, lib, status_name
from .profile import Profile

__all__ = ["DEFAULT_CAPACITY", "Channel", "ChannelPair", "ChannelStats", "Role", "TransferCost"]

#: Data area of a ring unless told otherwise (the largest message is half of it).
DEFAULT_CAPACITY = 4 << 20

#: Which end of a ring a :class:`Channel` is.
Role = Literal["sender", "receiver"]

_ROLE_NAMES: dict[int, Role] = {lib.DPDPU_RING_PRODUCER: "sender", lib.DPDPU_RING_CONSUMER: "receiver"}
_PEER_NAMES = {
    lib.DPDPU_RING_PEER_NONE: "none",
    lib.DPDPU_RING_PEER_ALIVE: "alive",
    lib.DPDPU_RING_PEER_CLOSED: "closed",
    lib.DPDPU_RING_PEER_DEAD: "dead",
}
_WHOLE = lib.DPDPU_RING_VIEW_FIRST | lib.DPDPU_RING_VIEW_LAST
_TIMEOUTS = (lib.DPDPU_ERR_AGAIN, lib.DPDPU_ERR_TIMEOUT)
#: Most messages one native batch call takes (its count is 32-bit).
_MAX_BATCH = 1 << 20
#: Receive buffer for recv_many(): larger messages take a path of their own.
_SCRATCH_BYTES = 1 << 20
#: Longest single native wait (see _Wait).
_SLICE_US = 200_000


class TransferCost(Protocol):
    """Anything with a PCIe transfer estimate, e.g. :class:`dpdpu.runtime.cost.CostModel`."""

    def transfer_seconds(self, nbytes: int) -> float:
        """Modeled seconds to move ``nbytes`` between host and device."""
        ...


@dataclass(frozen=True)
class ChannelStats:
    """Counters of one end of a channel.

    Attributes:
        role: ``"sender"`` or ``"receiver"``.
        messages: messages sent (committed) or received.
        bytes: payload bytes of those messages: what crossed the link.
        batches: sender: publications of its position (one per batch);
            receiver: releases of ring space.
        waits: times this end slept because the ring was full (sender) or empty.
        wakeups: wake-up calls this end made for a sleeping peer.
        capacity: bytes of the ring's data area.
        max_message: largest message :meth:`Channel.send` takes.
        used: bytes in the ring not yet received.
        peer: ``"none"`` (not attached yet), ``"alive"``, ``"closed"`` or ``"dead"``.
        peer_pid: process id of the other end (0 before it attaches).
        modeled_s: modeled PCIe time of what this end sent (0 without a cost model).
    """

    role: Role
    messages: int
    bytes: int
    batches: int
    waits: int
    wakeups: int
    capacity: int
    max_message: int
    used: int
    peer: str
    peer_pid: int
    modeled_s: float


class _Wait:
    """The native timeouts of one call: slices of at most ``_SLICE_US`` until the caller's deadline.

    A native wait cannot run Python signal handlers, so a call that may block
    for long waits in slices and the handlers (Ctrl-C) run between them.  Each
    native call picks up where the one before stopped.
    """

    __slots__ = ("deadline", "first")

    def __init__(self, timeout: float | None) -> None:
        if timeout is None:
            self.deadline: float | None = None
            self.first = _SLICE_US
        elif timeout > 0:
            self.deadline = time.monotonic() + timeout
            self.first = max(1, min(_SLICE_US, int(timeout * 1e6)))
        elif timeout == 0:
            self.deadline = None
            self.first = 0
        else:
            raise errors.InvalidArgumentError(
                f"timeout must be None or at least 0 seconds, got {errors.shown(timeout)}"
            )

    def again(self, rc: int) -> int:
        """The next slice after a native call that returned ``rc``; 0 when the call is over."""
        if rc != lib.DPDPU_ERR_TIMEOUT or self.first == 0:
            return 0
        if self.deadline is None:
            return _SLICE_US
        left = self.deadline - time.monotonic()
        return max(1, min(_SLICE_US, int(left * 1e6))) if left > 0 else 0

    def more(self) -> int:
        """The timeout of a further native call after one that succeeded: what is left, in a slice."""
        if self.first == 0:
            return 0
        if self.deadline is None:
            return _SLICE_US
        return max(1, min(_SLICE_US, int((self.deadline - time.monotonic()) * 1e6)))


def _shm_path(name: str) -> str:
    return name if name.startswith("/") else f"/dev/shm/{name}"


def _check_name(name: str) -> None:
    if not isinstance(name, str):
        raise errors.InvalidArgumentError(f"a channel name is a string, got {type(name).__name__}")
    valid = 0 < len(name.encode()) <= lib.DPDPU_RING_NAME_MAX and "\0" not in name
    if valid and not name.startswith("/"):
        valid = "/" not in name and name not in (".", "..")
    if not valid:
        raise errors.InvalidArgumentError(
            f"invalid channel name {errors.shown(name)}: use 1 to {lib.DPDPU_RING_NAME_MAX} characters without '/', "
            "or an absolute file path"
        )


def _check_capacity(capacity: int) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 < capacity <= lib.DPDPU_RING_MAX_CAPACITY:
        raise errors.InvalidArgumentError(
            f"capacity must be an int within 1..{lib.DPDPU_RING_MAX_CAPACITY} bytes, got {errors.shown(capacity)}"
        )


def _fresh_name() -> str:
    return f"dpdpu-{os.getpid()}-{secrets.token_hex(6)}"


def _cost_function(
    device: str | None, pcie: TransferCost | Callable[[int], float] | None
) -> Callable[[int], float] | None:
    if pcie is not None and device is not None:
        raise errors.InvalidArgumentError("give either device= or pcie=, not both")
    if device is not None:
        return CostModel(Profile.of(device)).transfer_seconds
    if pcie is None:
        return None
    transfer = getattr(pcie, "transfer_seconds", None)
    if callable(transfer):
        return transfer  # type: ignore[no-any-return]
    if callable(pcie):
        return pcie
    raise errors.InvalidArgumentError(
        f"pcie must be a CostModel-like object or a function of a byte count, got {type(pcie).__name__}"
    )


def _as_cbuffer(data: Any, *, writable: bool = False) -> Any:
    try:
        return ffi.from_buffer(data, require_writable=writable)
    except (TypeError, ValueError, BufferError) as exc:
        kind = "a writable" if writable else "a"
        raise errors.InvalidArgumentError(
            f"expected {kind} contiguous bytes-like object, got {type(data).__name__}"
        ) from exc


def _free_handle(handle: Any) -> None:
    lib.dpdpu_ring_free(handle)


class Channel:
    """One end of a shared-memory ring: a sender or a receiver.

    Make one with :meth:`create` (the other process then calls :meth:`attach`
    with its :attr:`name`) or, inside one process, :meth:`local`.  An end is
    meant for one thread at a time; calls from several threads are serialized.
    :meth:`close` may be called from any thread and ends waits in progress.
    The creator's :meth:`close` (or its garbage collection, or interpreter exit)
    removes the name.
    """

    def __init__(
        self,
        handle: Any,
        *,
        name: str | None,
        cost: Callable[[int], float] | None = None,
        device: str | None = None,
        spin_us: int | None = None,
    ) -> None:
        """Wrap a native ring handle (use :meth:`create`, :meth:`attach` or :meth:`local`)."""
        self._h = handle
        self._finalizer = weakref.finalize(self, _free_handle, handle)
        self._name = name
        self._device = device
        self._cost = cost
        self._modeled_s = 0.0
        self._lock = threading.Lock()  # serializes calls on this end
        self._life = threading.Lock()  # held while the handle is freed
        self._closed = False
        raw = ffi.new("struct dpdpu_ring_stats *")
        lib.dpdpu_ring_stats(handle, raw)
        self._role: Role = _ROLE_NAMES[raw.role]
        self._capacity = int(raw.capacity)
        self._max_message = int(raw.max_message)
        if spin_us is not None and lib.dpdpu_ring_set_spin(handle, spin_us) != 0:
            self._finalizer()
            raise errors.InvalidArgumentError(f"spin_us must be within 0..1000000, got {errors.shown(spin_us)}")
        self._len_out = ffi.new("uint64_t *")
        self._count_out = ffi.new("uint32_t *")
        self._view = ffi.new("struct dpdpu_ring_view *")
        self._scratch: Any = None  # recv_many()'s buffer, and its cffi array
        self._scratch_c: Any = None
        self._lens: Any = None
        #: the buffer holding the start of a bulk message a timeout interrupted
        self._partial: Any = None
        #: the payload of a bulk message a timeout left half sent
        self._tx_partial: Any = None

    # --- construction ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        *,
        role: Role = "sender",
        spin_us: int | None = None,
        device: str | None = None,
        pcie: TransferCost | Callable[[int], float] | None = None,
    ) -> Channel:
        """Create a ring in shared memory and take one end of it.

        Args:
            name: a name under ``/dev/shm`` (or an absolute file path); None
                makes up a unique one (see :attr:`name`).
            capacity: bytes of the data area, rounded up to a power of two
                (at least 4 KiB, at most 1 GiB).
            role: the end this process takes; whoever attaches takes the other.
            spin_us: how long a waiting call polls before it sleeps (default 50).
            device: a device profile (e.g. ``"bluefield3"``) whose PCIe figures
                model what this end sends.
            pcie: instead of ``device``, a ``CostModel``-like object or a
                function of a byte count giving modeled seconds.

        Raises:
            InvalidArgumentError: a bad argument, or the name exists already.
        """
        if role not in ("sender", "receiver"):
            raise errors.InvalidArgumentError(f"role must be 'sender' or 'receiver', got {errors.shown(role)}")
        _check_capacity(capacity)
        name = _fresh_name() if name is None else name
        _check_name(name)
        cost = _cost_function(device, pcie)
        out = ffi.new("struct dpdpu_ring **")
        flags = lib.DPDPU_RING_CREATE_PRODUCER if role == "sender" else lib.DPDPU_RING_CREATE_CONSUMER
        rc = lib.dpdpu_ring_create(name.encode(), capacity, flags, out)
        if rc == lib.DPDPU_ERR_IN_USE:
            raise errors.InvalidArgumentError(f"a channel named {name!r} already exists", code="IN_USE")
        if rc == lib.DPDPU_ERR_INVALID_ARGUMENT:
            raise errors.InvalidArgumentError(
                f"cannot create channel {name!r} at {_shm_path(name)}", code="INVALID_ARGUMENT"
            )
        if rc < 0:
            raise error_for(rc, op="create", detail=f"channel {name!r}")
        return cls(out[0], name=name, cost=cost, device=device, spin_us=spin_us)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        timeout: float = 0.0,
        spin_us: int | None = None,
        device: str | None = None,
        pcie: TransferCost | Callable[[int], float] | None = None,
    ) -> Channel:
        """Attach to the ring ``name`` (made by another process) and take its free end.

        Args:
            name: the :attr:`name` of the creator's channel.
            timeout: seconds to keep trying while no ring of that name exists
                yet (0: fail at once).
            spin_us, device, pcie: as for :meth:`create`.

        Raises:
            InvalidArgumentError: no ring of that name, or both its ends are taken.
            CorruptDataError: the object is not a ring of this layout version,
                or its header is inconsistent.
        """
        _check_name(name)
        cost = _cost_function(device, pcie)
        out = ffi.new("struct dpdpu_ring **")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            rc = lib.dpdpu_ring_attach(name.encode(), out)
            if rc != lib.DPDPU_ERR_INVALID_ARGUMENT or os.path.exists(_shm_path(name)):
                break
            if time.monotonic() >= deadline:
                raise errors.InvalidArgumentError(f"no channel named {name!r}", code="INVALID_ARGUMENT")
            time.sleep(0.001)
        if rc == lib.DPDPU_ERR_CORRUPT_DATA:
            raise errors.CorruptDataError(
                f"{_shm_path(name)} is not a dpdpu channel of this version "
                "(bad magic, layout version, sizes or positions in its header)",
                code="CORRUPT_DATA",
            )
        if rc == lib.DPDPU_ERR_IN_USE:
            raise errors.InvalidArgumentError(f"both ends of channel {name!r} are taken already", code="IN_USE")
        if rc == lib.DPDPU_ERR_INVALID_ARGUMENT:
            raise errors.InvalidArgumentError(
                f"cannot open channel {name!r} at {_shm_path(name)}", code=status_name(rc)
            )
        if rc < 0:
            raise error_for(rc, op="attach", detail=f"channel {name!r}")
        return cls(out[0], name=name, cost=cost, device=device, spin_us=spin_us)

    @classmethod
    def local(
        cls,
        capacity: int = DEFAULT_CAPACITY,
        *,
        spin_us: int | None = None,
        device: str | None = None,
        pcie: TransferCost | Callable[[int], float] | None = None,
    ) -> tuple[Channel, Channel]:
        """Both ends of a ring in anonymous memory, for threads of this process: ``(sender, receiver)``."""
        _check_capacity(capacity)
        cost = _cost_function(device, pcie)
        out = ffi.new("struct dpdpu_ring **")
        rc = lib.dpdpu_ring_create(ffi.NULL, capacity, lib.DPDPU_RING_CREATE_PRODUCER, out)
        if rc < 0:
            raise error_for(rc, op="create", detail="anonymous channel")
        sender = cls(out[0], name=None, cost=cost, device=device, spin_us=spin_us)
        rc = lib.dpdpu_ring_open_peer(sender._h, out)
        if rc < 0:
            sender.close()
            raise error_for(rc, op="create", detail="anonymous channel")
        return sender, cls(out[0], name=None, device=device, spin_us=spin_us)

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove the name of a ring left behind by a process that died; False if there was none."""
        _check_name(name)
        return bool(lib.dpdpu_ring_unlink(name.encode()) == 0)

    # --- properties -----------------------------------------------------------

    @property
    def name(self) -> str | None:
        """The name another process attaches with (None for a :meth:`local` channel)."""
        return self._name

    @property
    def role(self) -> Role:
        """``"sender"`` or ``"receiver"``."""
        return self._role

    @property
    def capacity(self) -> int:
        """Bytes of the ring's data area."""
        return self._capacity

    @property
    def max_message(self) -> int:
        """Largest message :meth:`send` takes (half the capacity, less a record header)."""
        return self._max_message

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Channel {self._label} {self._role} capacity={self._capacity} {state}>"

    @property
    def _label(self) -> str:
        return repr(self._name) if self._name is not None else "(local)"

    # --- errors ---------------------------------------------------------------

    def _error(self, rc: int, op: str, *, nbytes: int = 0, timeout: float | None = None) -> errors.DpdpuError:
        where = f"channel {self._label}"
        code = status_name(rc)
        err: errors.DpdpuError
        if rc == lib.DPDPU_ERR_SHUTDOWN:
            err = errors.RuntimeClosedError(
                f"{where}: {self._shutdown_reason()}", op=op, device=self._device, code=code
            )
        elif rc in _TIMEOUTS:
            if op.startswith("send"):
                what = f"no room for {nbytes} bytes" if rc == lib.DPDPU_ERR_TIMEOUT else "the ring is full"
            else:
                what = "no message arrived" if rc == lib.DPDPU_ERR_TIMEOUT else "no message is waiting"
            within = f" within {timeout:g} s" if rc == lib.DPDPU_ERR_TIMEOUT and timeout is not None else ""
            err = errors.QueueFullError(f"{where}: {what}{within}", op=op, device=self._device, code=code)
        elif rc == lib.DPDPU_ERR_TOO_LARGE:
            err = errors.JobTooLargeError(
                f"{where}: a {nbytes}-byte message exceeds the limit of {self._max_message} bytes "
                f"(half the capacity of {self._capacity}); send it with send_bulk()",
                op=op,
                device=self._device,
                code=code,
            )
        elif rc == lib.DPDPU_ERR_TRUNCATED_DATA:
            err = errors.TruncatedDataError(
                f"{where}: the sender abandoned, or died during, a bulk message; its first part was dropped",
                op=op,
                device=self._device,
                code=code,
            )
        elif rc == lib.DPDPU_ERR_CORRUPT_DATA:
            err = errors.CorruptDataError(
                f"{where}: a malformed record was skipped", op=op, device=self._device, code=code
            )
        elif rc == lib.DPDPU_ERR_INVALID_ARGUMENT:
            err = errors.InvalidArgumentError(
                f"{where}: invalid call on this end", op=op, device=self._device, code=code
            )
        else:
            err = error_for(rc, device=self._device, op=op, detail=where)
        return err

    def _shutdown_reason(self) -> str:
        if self._closed:
            return "this end is closed"
        raw = ffi.new("struct dpdpu_ring_stats *")
        lib.dpdpu_ring_stats(self._h, raw)
        if raw.closed:
            return "this end is closed"
        if raw.peer == lib.DPDPU_RING_PEER_DEAD:
            return f"the peer process {raw.peer_pid} died"
        if raw.peer == lib.DPDPU_RING_PEER_CLOSED:
            return "the peer closed its end"
        return "peer closed or died"

    def _enter(self, op: str, role: Role) -> None:
        if self._closed:
            raise errors.RuntimeClosedError(f"channel {self._label}: this end is closed", op=op, code="SHUTDOWN")
        if self._role != role:
            raise errors.InvalidArgumentError(
                f"channel {self._label}: {op}() needs the {role} end, this is the {self._role}", op=op
            )

    def _charge(self, nbytes: int) -> None:
        if self._cost is not None:
            self._modeled_s += float(self._cost(nbytes))

    # --- sending --------------------------------------------------------------

    def send(self, data: Any, timeout: float | None = None) -> None:
        """Send one message (any contiguous bytes-like object of at most :attr:`max_message` bytes).

        Waits for room up to ``timeout`` seconds (None: as long as the
        receiver lives; 0: not at all).

        Raises:
            JobTooLargeError: the message exceeds :attr:`max_message` (use :meth:`send_bulk`).
            QueueFullError: no room in time (a ``TimeoutError``).
            RuntimeClosedError: either end is closed, or the receiver's process died.
        """
        wait = _Wait(timeout)
        cbuf = _as_cbuffer(data)
        n = len(cbuf)
        with self._lock:
            self._enter("send", "sender")
            self._tx_partial = None
            step = wait.first
            while True:
                rc = lib.dpdpu_ring_send(self._h, cbuf, n, step)
                if not (step := wait.again(rc)):
                    break
            if rc:
                raise self._error(rc, "send", nbytes=n, timeout=timeout)
            self._charge(n)

    def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> None:
        """Send several messages, published in batches (one index store and wake-up per batch).

        A message that is too large fails the call before anything is sent.
        ``timeout`` bounds the whole call; when it passes (or the peer goes),
        the messages before the one that found no room have been sent: the
        exception's ``sent`` attribute says how many.

        Raises:
            JobTooLargeError, QueueFullError, RuntimeClosedError: as :meth:`send`.
        """
        wait = _Wait(timeout)
        msgs: Sequence[Any] = messages if isinstance(messages, (list, tuple)) else list(messages)
        if not msgs:
            return
        try:
            blob = b"".join(msgs)
        except TypeError as exc:
            raise errors.InvalidArgumentError(f"send_many() takes bytes-like messages: {exc}") from exc
        lens = array("Q", map(len, msgs))
        cdata = ffi.from_buffer(blob)
        clens = ffi.from_buffer("uint64_t[]", lens)
        done = offset = 0
        step = wait.first
        with self._lock:
            self._enter("send_many", "sender")
            self._tx_partial = None
            while done < len(msgs):
                count = min(len(msgs) - done, _MAX_BATCH)
                size = len(blob) - offset if done + count == len(msgs) else sum(lens[done : done + count])
                rc = lib.dpdpu_ring_send_packed(
                    self._h, cdata + offset, size, clens + done, count, step, self._count_out
                )
                if rc == lib.DPDPU_ERR_INVALID_ARGUMENT and done == 0 and sum(lens) != len(blob):
                    # memoryviews whose items are wider than a byte: len() counts items
                    lens = array("Q", (memoryview(m).nbytes for m in msgs))
                    clens = ffi.from_buffer("uint64_t[]", lens)
                    continue
                sent = int(self._count_out[0])
                nbytes = size if sent == count else sum(lens[done : done + sent])
                if nbytes:
                    self._charge(nbytes)
                done += sent
                offset += nbytes
                if rc == 0:
                    continue
                if (step := wait.again(rc)) != 0:
                    continue
                if rc == lib.DPDPU_ERR_TOO_LARGE:
                    index = next(i for i in range(done, len(msgs)) if lens[i] > self._max_message)
                    err = self._error(rc, "send_many", nbytes=int(lens[index]))
                    err.index = index  # type: ignore[attr-defined]
                else:
                    err = self._error(rc, "send_many", nbytes=int(lens[done]), timeout=timeout)
                err.sent = done  # type: ignore[attr-defined]
                raise err

    def send_bulk(self, data: Any, timeout: float | None = None, *, chunk: int | None = None) -> None:
        """Send a payload of any size, copied into the ring in chunks the receiver copies out as they land.

        The receiver gets it as one message (:meth:`recv`, :meth:`recv_into`).
        If ``timeout`` passes in the middle of the payload, calling
        ``send_bulk`` again with the same object continues where it stopped;
        any other send first tells the receiver to drop the part it has.

        Args:
            chunk: largest chunk in bytes, a multiple of 64 (default: a quarter
                of the capacity, at most 1 MiB).

        Raises:
            QueueFullError: no room in time; ``sent`` holds the bytes sent so far.
            RuntimeClosedError: as :meth:`send`.
        """
        wait = _Wait(timeout)
        cbuf = _as_cbuffer(data)
        n = len(cbuf)
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0):
            raise errors.InvalidArgumentError(f"chunk must be a positive int, got {errors.shown(chunk)}")
        done = ffi.new("uint64_t *")
        with self._lock:
            self._enter("send_bulk", "sender")
            step = wait.first
            while True:
                # The same buffer again continues the message where the last slice left it.
                rc = lib.dpdpu_ring_send_bulk(self._h, cbuf, n, chunk or 0, step, done)
                if not (step := wait.again(rc)):
                    break
            if rc:
                # Keeping the object keeps its address from being reused by another
                # payload, which the core would take for a continuation.
                self._tx_partial = data if 0 < done[0] < n else None
                err = self._error(rc, "send_bulk", nbytes=n, timeout=timeout)
                err.sent = int(done[0])  # type: ignore[attr-defined]
                raise err
            self._tx_partial = None
            self._charge(n)

    # --- receiving ------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bytes:
        """Receive the next message (sent in either mode) as bytes.

        Waits up to ``timeout`` seconds (None: until a message arrives or the
        sender closes or dies; 0: not at all).

        Raises:
            QueueFullError: nothing arrived in time (a ``TimeoutError``).
            RuntimeClosedError: the sender closed or died and every message it
                committed has been received, or this end is closed.
            TruncatedDataError: the sender gave up on (or died during) a bulk message.
        """
        wait = _Wait(timeout)
        with self._lock:
            self._enter("recv", "receiver")
            total = self._partial_total()
            if total is None:
                view = self._view
                step = wait.first
                while True:
                    rc = lib.dpdpu_ring_peek(self._h, view, step)
                    if not (step := wait.again(rc)):
                        break
                if rc:
                    raise self._error(rc, "recv", timeout=timeout)
                if view.flags == _WHOLE:
                    data: bytes = ffi.buffer(view.data, view.len)[:]
                    lib.dpdpu_ring_release(self._h)
                    return data
                lib.dpdpu_ring_rewind(self._h)
            return self._recv_pieces_locked(wait, timeout, "recv")

    def _recv_pieces_locked(self, wait: _Wait, timeout: float | None, op: str) -> bytes:
        """The next message (or the rest of a bulk message a timeout interrupted), grown piece by
        piece as it arrives: the memory it takes follows the bytes the sender really sent, never
        the length a bulk message declares up front (the sender is another process)."""
        out = bytearray()
        if self._partial is not None:
            done = self._partial_state()[1]
            out += memoryview(self._partial).cast("B")[:done]
        view = self._view
        step = wait.first
        while True:
            rc = lib.dpdpu_ring_peek(self._h, view, step)
            if rc == 0:
                out += ffi.buffer(view.data, view.len)
                lib.dpdpu_ring_release(self._h)
                if view.flags & lib.DPDPU_RING_VIEW_LAST:
                    self._partial = None
                    return bytes(out)
                step = wait.more()
                continue
            if not (step := wait.again(rc)):
                break
        if rc in (lib.DPDPU_ERR_TRUNCATED_DATA, lib.DPDPU_ERR_CORRUPT_DATA):
            lib.dpdpu_ring_release(self._h)  # step over what was bad, as a receive into a buffer does
        self._partial = out if self._partial_state()[0] else None
        raise self._error(rc, op, timeout=timeout)

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Receive the next message into a writable bytes-like object; return its length.

        The message stays in the ring if the buffer is too small.  A bulk
        message lands directly in ``buffer`` (no intermediate copy).

        Raises:
            BufferTooSmallError: ``needed`` says how large the buffer must be.
            QueueFullError, RuntimeClosedError, TruncatedDataError: as :meth:`recv`.
        """
        wait = _Wait(timeout)
        with self._lock:
            self._enter("recv_into", "receiver")
            return self._recv_into_locked(buffer, wait, timeout, "recv_into")

    def _partial_state(self) -> tuple[int, int]:
        raw = ffi.new("struct dpdpu_ring_stats *")
        lib.dpdpu_ring_stats(self._h, raw)
        return int(raw.partial_total), int(raw.partial_done)

    def _partial_total(self) -> int | None:
        """Length of a bulk message a timeout left half received, if there is one."""
        if self._partial is None:
            return None
        total = self._partial_state()[0]
        if not total:
            self._partial = None
            return None
        return total

    def _keep_partial(self, rc: int, buffer: Any) -> None:
        """After a failed receive: remember which buffer holds the start of a half-received bulk message."""
        if rc != lib.DPDPU_ERR_BUFFER_TOO_SMALL:  # that one leaves everything as it was
            self._partial = buffer if self._partial_state()[0] else None

    def _recv_into_locked(self, buffer: Any, wait: _Wait, timeout: float | None, op: str) -> int:
        cbuf = _as_cbuffer(buffer, writable=True)
        if self._partial is not None and self._partial is not buffer:
            # The core writes the rest of the message after the part it already
            # wrote into the earlier buffer, so that part has to move along.
            total, done = self._partial_state()
            if len(cbuf) < total:
                raise self._too_small(total, len(cbuf), op)
            ffi.memmove(cbuf, ffi.from_buffer(self._partial), done)
        self._partial = None
        step = wait.first
        while True:
            rc = lib.dpdpu_ring_recv(self._h, cbuf, len(cbuf), self._len_out, step)
            if rc:
                self._keep_partial(rc, buffer)
            if not (step := wait.again(rc)):
                break
        if rc == 0:
            self._partial = None
            return int(self._len_out[0])
        if rc == lib.DPDPU_ERR_BUFFER_TOO_SMALL:
            raise self._too_small(int(self._len_out[0]), len(cbuf), op)
        raise self._error(rc, op, timeout=timeout)

    def _too_small(self, needed: int, have: int, op: str) -> errors.BufferTooSmallError:
        err = errors.BufferTooSmallError(
            f"channel {self._label}: the message is {needed} bytes, the buffer holds {have}",
            op=op,
            device=self._device,
            code="BUFFER_TOO_SMALL",
        )
        err.needed = needed
        return err

    def recv_many(self, max: int = 1024, timeout: float | None = None) -> list[bytes]:
        """Receive up to ``max`` messages, waiting (up to ``timeout``) only for the first.

        Takes the messages already published after it and releases their room
        at once.  A bulk message comes alone.

        Raises:
            QueueFullError, RuntimeClosedError, TruncatedDataError: as :meth:`recv`.
        """
        if isinstance(max, bool) or not isinstance(max, int) or max <= 0:
            raise errors.InvalidArgumentError(f"max must be a positive int, got {errors.shown(max)}")
        wait = _Wait(timeout)
        with self._lock:
            self._enter("recv_many", "receiver")
            if self._partial_total() is not None:
                return [self._recv_pieces_locked(wait, timeout, "recv_many")]
            if self._scratch is None:
                self._scratch_c = ffi.new("char[]", min(_SCRATCH_BYTES, self._max_message))
                self._scratch = ffi.buffer(self._scratch_c)
            if self._lens is None or len(self._lens) < max:
                self._lens = ffi.new("uint64_t[]", max)
            lens, scratch = self._lens, self._scratch_c
            step = wait.first
            while True:
                rc = lib.dpdpu_ring_recv_batch(self._h, scratch, len(scratch), lens, max, self._count_out, step)
                if rc:
                    self._keep_partial(rc, self._scratch)  # a bulk message may be coming into it
                if not (step := wait.again(rc)):
                    break
            if rc == lib.DPDPU_ERR_BUFFER_TOO_SMALL:
                return [self._recv_pieces_locked(wait, timeout, "recv_many")]
            if rc:
                raise self._error(rc, "recv_many", timeout=timeout)
            self._partial = None
            count = int(self._count_out[0])
            if count == 1:
                return [self._scratch[: lens[0]]]
            sizes = ffi.unpack(lens, count)
            # struct makes the bytes objects in C, several times faster than slicing
            first = sizes[0]
            fmt = f"{first}s" * count if sizes.count(first) == count else "s".join(map(str, sizes)) + "s"
            return list(struct.unpack_from(fmt, self._scratch))

    # --- lifecycle ------------------------------------------------------------

    def stats(self) -> ChannelStats:
        """This end's counters, and what it knows of its peer."""
        raw = ffi.new("struct dpdpu_ring_stats *")
        with self._life:
            if self._finalizer.alive:
                lib.dpdpu_ring_stats(self._h, raw)
                self._last_stats = ChannelStats(
                    role=self._role,
                    messages=int(raw.messages),
                    bytes=int(raw.bytes),
                    batches=int(raw.batches),
                    waits=int(raw.waits),
                    wakeups=int(raw.wakeups),
                    capacity=int(raw.capacity),
                    max_message=int(raw.max_message),
                    used=int(raw.used),
                    peer=_PEER_NAMES.get(raw.peer, "unknown"),
                    peer_pid=int(raw.peer_pid),
                    modeled_s=self._modeled_s,
                )
            return self._last_stats

    def close(self) -> None:
        """Close this end: the peer's calls end with RuntimeClosedError (a receiver
        after taking what was sent), and the creator's name is removed.

        Safe from any thread; a call blocked on this end returns with
        RuntimeClosedError.  Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        with self._life:
            if self._finalizer.alive:
                lib.dpdpu_ring_close(self._h)
        with self._lock:
            self.stats()  # the counters outlive the handle
            with self._life:
                self._finalizer()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChannelPair:
    """A request/response link between a host process and an agent process: two rings.

    The host :meth:`create`\\ s the pair and sends requests on ``tx``; the agent
    :meth:`attach`\\ es with the same name, receives them on ``rx`` and answers
    on its ``tx``.  The methods of :class:`Channel` are forwarded: sends go to
    ``tx``, receives come from ``rx``.
    """

    def __init__(self, tx: Channel, rx: Channel, name: str | None = None) -> None:
        """Join a sending and a receiving channel (use :meth:`create`, :meth:`attach` or :meth:`local`)."""
        if tx.role != "sender" or rx.role != "receiver":
            raise errors.InvalidArgumentError("a ChannelPair needs a sender as tx and a receiver as rx")
        self.tx = tx
        self.rx = rx
        self._name = name

    @staticmethod
    def _ring_names(name: str) -> tuple[str, str]:
        return f"{name}.req", f"{name}.rsp"

    @classmethod
    def create(
        cls,
        name: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        *,
        spin_us: int | None = None,
        device: str | None = None,
        pcie: TransferCost | Callable[[int], float] | None = None,
    ) -> ChannelPair:
        """The host side: create the request ring (sending) and the response ring (receiving)."""
        name = _fresh_name() if name is None else name
        req, rsp = cls._ring_names(name)
        tx = Channel.create(req, capacity, role="sender", spin_us=spin_us, device=device, pcie=pcie)
        try:
            rx = Channel.create(rsp, capacity, role="receiver", spin_us=spin_us, device=device, pcie=pcie)
        except BaseException:
            tx.close()
            raise
        return cls(tx, rx, name)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        timeout: float = 0.0,
        spin_us: int | None = None,
        device: str | None = None,
        pcie: TransferCost | Callable[[int], float] | None = None,
    ) -> ChannelPair:
        """The agent side: receive requests and send responses on the pair ``name``."""
        req, rsp = cls._ring_names(name)
        rx = Channel.attach(req, timeout=timeout, spin_us=spin_us, device=device, pcie=pcie)
        try:
            tx = Channel.attach(rsp, timeout=timeout, spin_us=spin_us, device=device, pcie=pcie)
        except BaseException:
            rx.close()
            raise
        return cls(tx, rx, name)

    @classmethod
    def local(
        cls, capacity: int = DEFAULT_CAPACITY, *, spin_us: int | None = None, device: str | None = None
    ) -> tuple[ChannelPair, ChannelPair]:
        """Both sides in this process (for threads): ``(host, agent)``."""
        req_tx, req_rx = Channel.local(capacity, spin_us=spin_us, device=device)
        rsp_tx, rsp_rx = Channel.local(capacity, spin_us=spin_us, device=device)
        return cls(req_tx, rsp_rx), cls(rsp_tx, req_rx)

    @property
    def name(self) -> str | None:
        """The name the other side attaches with."""
        return self._name

    def send(self, data: Any, timeout: float | None = None) -> None:
        """:meth:`Channel.send` on ``tx``."""
        self.tx.send(data, timeout)

    def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> None:
        """:meth:`Channel.send_many` on ``tx``."""
        self.tx.send_many(messages, timeout)

    def send_bulk(self, data: Any, timeout: float | None = None, *, chunk: int | None = None) -> None:
        """:meth:`Channel.send_bulk` on ``tx``."""
        self.tx.send_bulk(data, timeout, chunk=chunk)

    def recv(self, timeout: float | None = None) -> bytes:
        """:meth:`Channel.recv` on ``rx``."""
        return self.rx.recv(timeout)

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """:meth:`Channel.recv_into` on ``rx``."""
        return self.rx.recv_into(buffer, timeout)

    def recv_many(self, max: int = 1024, timeout: float | None = None) -> list[bytes]:
        """:meth:`Channel.recv_many` on ``rx``."""
        return self.rx.recv_many(max, timeout)

    def request(self, data: Any, timeout: float | None = None) -> bytes:
        """Send one request and wait for the next response (``timeout`` applies to each half)."""
        if len(_as_cbuffer(data)) > self.tx.max_message:
            self.tx.send_bulk(data, timeout)
        else:
            self.tx.send(data, timeout)
        return self.rx.recv(timeout)

    def serve(self, handler: Callable[[bytes], Any], *, max_requests: int | None = None) -> int:
        """Answer requests with ``handler(request)`` until the peer closes (or ``max_requests``).

        A handler returning None sends no response.  Returns how many requests were handled.
        """
        handled = 0
        while max_requests is None or handled < max_requests:
            try:
                request = self.rx.recv()
            except errors.RuntimeClosedError:
                break
            response = handler(request)
            handled += 1
            if response is not None:
                if len(_as_cbuffer(response)) > self.tx.max_message:
                    self.tx.send_bulk(response)
                else:
                    self.tx.send(response)
        return handled

    def stats(self) -> dict[str, ChannelStats]:
        """Counters of both rings: ``{"tx": ..., "rx": ...}``."""
        return {"tx": self.tx.stats(), "rx": self.rx.stats()}

    def close(self) -> None:
        """Close both ends held by this side."""
        with contextlib.ExitStack() as stack:
            stack.callback(self.rx.close)
            self.tx.close()

    def __enter__(self) -> ChannelPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
