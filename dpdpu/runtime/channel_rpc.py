"""Request/response frames over the host<->DPU channel: one framing for every protocol that runs on it.

A frame is one channel message::

    request id   u64  the sender's number for the request; its response carries it back
    kind         u8   what the frame asks or answers (each protocol numbers its own)
    status       u8   OK, or the wire status of a failed request (an index of
                      :data:`dpdpu.errors.WIRE_STATUSES`)
    payload           the rest: the request or the answer, or for a failure the
                      error's class name, a NUL and its message (both bounded)

All numbers are little-endian.  :func:`decode` trusts nothing: a frame
shorter than its header, an unknown status, a payload above the reader's
bound or an error payload that is not short UTF-8 is a
:class:`~dpdpu.errors.CorruptDataError`.  Errors travel under the one
error <-> wire table (:func:`dpdpu.errors.to_wire`), and :func:`error_of`
turns a failed frame back into the error to raise.

:class:`RpcLink` is the asking side's bookkeeping over a
:class:`~dpdpu.runtime.channel.ChannelPair`: it numbers requests and drops
any response whose number is not one it waits for (a late answer to a
request that timed out), so the two sides never fall out of step.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import errors
from .channel import ChannelPair

__all__ = [
    "HEADER_BYTES",
    "MAX_ERROR_NAME_BYTES",
    "Frame",
    "RpcLink",
    "decode",
    "encode",
    "encode_error",
    "error_of",
    "error_parts",
]

_HEADER = struct.Struct("<QBB")
#: bytes before a frame's payload
HEADER_BYTES = _HEADER.size
#: longest class name an error frame carries
MAX_ERROR_NAME_BYTES = 64
#: largest payload :func:`decode` takes unless told otherwise
DEFAULT_MAX_PAYLOAD = 1 << 30

_STATUS_CODE = {name: i for i, name in enumerate(errors.WIRE_STATUSES)}
_OK = _STATUS_CODE["OK"]
_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    Attributes:
        id: the request id.
        kind: the protocol's kind number (0..255).
        status: ``"OK"`` or the wire status of a failure.
        payload: the bytes after the header (a view of the message, not a copy).
    """

    id: int
    kind: int
    status: str
    payload: memoryview

    @property
    def ok(self) -> bool:
        """True unless the frame reports a failure."""
        return self.status == "OK"


def _header(request_id: int, kind: int, status: str) -> bytes:
    if isinstance(request_id, bool) or not isinstance(request_id, int) or not 0 <= request_id <= _U64:
        raise errors.InvalidArgumentError(f"a request id is an int within 0..2**64-1, got {errors.shown(request_id)}")
    if isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind <= 255:
        raise errors.InvalidArgumentError(f"a frame kind is an int within 0..255, got {errors.shown(kind)}")
    code = _STATUS_CODE.get(status)
    if code is None:
        raise errors.InvalidArgumentError(f"unknown wire status {errors.shown(status)}")
    return _HEADER.pack(request_id, kind, code)


def encode(request_id: int, kind: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """A frame carrying a request or a successful answer."""
    return _header(request_id, kind, "OK") + bytes(payload)


def encode_error(
    request_id: int, kind: int, exc: BaseException, message: str | None = None, *, limit: int = 1024
) -> bytes:
    """A frame saying the request failed with ``exc``: its wire status, class name and message.

    ``message`` replaces the exception's own; either is cut to ``limit`` bytes.
    """
    status, text = errors.to_wire(exc, limit)
    if message is not None:
        text = errors.cut_utf8(message, limit)
    if status == "OK":
        status = "UNKNOWN"
    name = type(exc).__name__.encode("ascii", "replace")[:MAX_ERROR_NAME_BYTES]
    return _header(request_id, kind, status) + name + b"\0" + text.encode("utf-8", "replace")


def decode(data: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """The frame in ``data``.

    Raises:
        CorruptDataError: ``data`` is not a frame (too short, an unknown
            status, a payload over ``max_payload`` bytes, an unreadable error).
    """
    view = memoryview(data).cast("B")
    if len(view) < HEADER_BYTES:
        raise errors.CorruptDataError(f"a {len(view)}-byte frame is shorter than its {HEADER_BYTES}-byte header")
    request_id, kind, code = _HEADER.unpack_from(view)
    if code >= len(errors.WIRE_STATUSES):
        raise errors.CorruptDataError(f"frame {request_id} has an unknown status {code}")
    payload = view[HEADER_BYTES:]
    if len(payload) > max_payload:
        raise errors.CorruptDataError(
            f"frame {request_id} carries {len(payload):,} bytes; at most {max_payload:,} are taken"
        )
    frame = Frame(request_id, kind, errors.WIRE_STATUSES[code], payload)
    if code != _OK:
        error_parts(frame)  # a failure must say what failed, readably
    return frame


def error_parts(frame: Frame) -> tuple[str, str]:
    """The class name and message of a failed frame (CorruptDataError if it has none readable)."""
    raw = bytes(frame.payload)
    name, sep, message = raw.partition(b"\0")
    if not sep or not 0 < len(name) <= MAX_ERROR_NAME_BYTES or not name.isascii():
        raise errors.CorruptDataError(f"frame {frame.id} reports a failure without an error name")
    try:
        return name.decode("ascii"), message.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.CorruptDataError(f"frame {frame.id} reports a failure whose message is not UTF-8") from None


def error_of(
    frame: Frame,
    *,
    classes: Mapping[str, type[errors.DpdpuError]] | None = None,
    default: type[errors.DpdpuError] | None = None,
    op: str | None = None,
) -> errors.DpdpuError:
    """The error a failed frame reports (:func:`dpdpu.errors.from_wire`, naming the sender's class as ``kind``)."""
    name, message = error_parts(frame)
    return errors.from_wire(frame.status, message, kind=name, classes=classes, default=default, op=op)


class RpcLink:
    """The asking side of a :class:`ChannelPair`: numbered requests, and their answers only.

    Args:
        pair: the asking side's pair.
        max_payload: the largest answer taken (see :func:`decode`).

    Calls are serialized (one thread at a time talks on the pair).
    """

    def __init__(self, pair: ChannelPair, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.pair = pair
        self.max_payload = max_payload
        self.lock = threading.Lock()
        self._next = 1

    def take_ids(self, n: int) -> int:
        """Reserve ``n`` request ids; the first of them (call with :attr:`lock` held)."""
        first = self._next
        self._next += n
        return first

    def receive(self, first: int, count: int, timeout: float | None, max_frames: int = 1024) -> list[Frame]:
        """Frames that answer ids ``first .. first+count-1`` (at least one; others are dropped)."""
        while True:
            frames = [decode(m, max_payload=self.max_payload) for m in self.pair.recv_many(max_frames, timeout)]
            kept = [f for f in frames if first <= f.id < first + count]
            if kept:
                return kept

    def call(self, kind: int, payload: Any, timeout: float | None) -> Frame:
        """Send one request and return its answer (a failed answer too: see :attr:`Frame.ok`)."""
        with self.lock:
            rid = self.take_ids(1)
            self.pair.send(encode(rid, kind, payload), timeout)
            return self.receive(rid, 1, timeout, 1)[0]
