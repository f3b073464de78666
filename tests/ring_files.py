"""A hostile producer for a channel's ring: writes records and positions straight into the shared file.

The layout is the one csrc/ring.c documents: a 4 KiB header (the producer's ``tail`` at
byte 64, the consumer's ``head`` at byte 128), then the data area, where a record is
``{u32 len, u32 kind}`` and ``len`` payload bytes padded to 8.  A bulk message's FIRST
record starts its payload with the u64 length of the whole message, in a 56-byte prefix.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from dpdpu.runtime.channel import Channel

HEADER = 4096
TAIL, HEAD = 64, 128
MSG, PAD, FIRST, MORE, LAST, ABORT = 1, 2, 3, 4, 5, 6
BULK_PREFIX = 56


def record(kind: int, payload: bytes, length: int | None = None) -> bytes:
    """One record; ``length`` overrides the length its header claims."""
    body = payload + bytes(-len(payload) % 8)
    return struct.pack("<II", len(payload) if length is None else length, kind) + body


def bulk_first(total: int, data: bytes) -> bytes:
    """The FIRST record of a bulk message declaring ``total`` bytes, carrying ``data``."""
    return record(FIRST, struct.pack("<Q", total) + bytes(BULK_PREFIX - 8) + data)


def bulk_part(kind: int, data: bytes) -> bytes:
    """A MORE or LAST record carrying ``data``."""
    return record(kind, bytes(BULK_PREFIX) + data)


class HostileProducer:
    """The sending end of a file-backed ring, played by writing its file."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "r+b")  # noqa: SIM115 (closed in close())
        self.map = mmap.mmap(self._file.fileno(), 0)
        self.capacity = len(self.map) - HEADER

    @staticmethod
    def receiver(path: Path, capacity: int = 4096) -> Channel:
        """A receiving channel whose ring lives in the file ``path``."""
        return Channel.create(str(path), capacity, role="receiver")

    @property
    def tail(self) -> int:
        return int(struct.unpack_from("<Q", self.map, TAIL)[0])

    @property
    def head(self) -> int:
        return int(struct.unpack_from("<Q", self.map, HEAD)[0])

    def publish(self, data: bytes, *, tail: int | None = None) -> None:
        """Write ``data`` (at most the capacity) into the ring at the current tail, wrapping, and
        move the tail past it (or to ``tail``)."""
        start = self.tail
        off = start % self.capacity
        first = min(len(data), self.capacity - off)
        self.map[HEADER + off : HEADER + off + first] = data[:first]
        rest = data[first : self.capacity]
        self.map[HEADER : HEADER + len(rest)] = rest
        self.set_tail(start + len(data) if tail is None else tail)

    def fill(self, data: bytes) -> None:
        """Overwrite the whole data area with ``data`` repeated."""
        self.map[HEADER:] = (data * (self.capacity // len(data) + 1))[: self.capacity]

    def set_tail(self, tail: int) -> None:
        struct.pack_into("<Q", self.map, TAIL, tail % (1 << 64))

    def close(self) -> None:
        self.map.close()
        self._file.close()
