"""Length-prefixed frames over a Unix stream socket, with deadlines: the agent's link to a worker."""

from __future__ import annotations

import socket
import struct
import time

__all__ = ["FrameSocket", "FrameTooLargeError"]

_HEADER = struct.Struct("!Q")
# Frames up to this size go out in one write together with their header, and come in
# with one read: a round trip of small frames costs one system call each way.
_SMALL = 64 << 10


class FrameTooLargeError(ConnectionError):
    """The peer announced a frame larger than this side accepts (the link is unusable after it)."""


class FrameSocket:
    """One end of a frame link; ``recv`` raises EOFError when the peer is gone.

    Deadlines are :func:`time.monotonic` values; past one, ``send``/``recv`` raise
    TimeoutError and the link is left mid-frame, so its owner must drop it.
    """

    def __init__(self, sock: socket.socket, *, max_frame: int) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self._buf = bytearray(_SMALL)
        self._timeout: float | None = None

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket (the peer sees end of file)."""
        self.sock.close()

    def send(self, *parts: bytes | bytearray, deadline: float | None = None) -> None:
        """Send one frame made of ``parts`` (so a tag and a large body need not be joined first)."""
        size = sum(len(p) for p in parts)
        header = _HEADER.pack(size)
        self._set_deadline(deadline)
        if size <= _SMALL:
            self.sock.sendall(b"".join((header, *parts)))
            return
        self.sock.sendall(header)
        for part in parts:
            self._set_deadline(deadline)
            self.sock.sendall(part)

    def recv(self, deadline: float | None = None) -> bytearray:
        """Receive one frame."""
        buf = self._buf
        got = self._read_some(memoryview(buf), _HEADER.size, deadline)
        (size,) = _HEADER.unpack_from(buf)
        if size > self.max_frame:
            raise FrameTooLargeError(f"peer sent a frame of {size} bytes; at most {self.max_frame} are accepted")
        if got > _HEADER.size + size:
            # Frames alternate with answers: a peer that sends more than one is broken.
            raise FrameTooLargeError("peer sent more than one frame at once")
        frame = bytearray(size)
        frame[: got - _HEADER.size] = buf[_HEADER.size : got]
        self._read_some(memoryview(frame), size, deadline, got - _HEADER.size)
        return frame

    def _read_some(self, view: memoryview, least: int, deadline: float | None, got: int = 0) -> int:
        """Read into ``view`` from ``got`` on until at least ``least`` bytes are there; returns how many."""
        while got < least:
            self._set_deadline(deadline)
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise EOFError("the peer closed the link")
            got += n
        return got

    def _set_deadline(self, deadline: float | None) -> None:
        if deadline is None:
            timeout = None
        else:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("deadline passed")
        # Each change costs a system call: skip it while blocking stays blocking.
        if timeout is not None or self._timeout is not None:
            self.sock.settimeout(timeout)
            self._timeout = timeout
