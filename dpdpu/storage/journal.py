"""Write-ahead journal and metadata snapshots of the file service.

Two files in the data directory hold the metadata:

``meta.snap``
    a snapshot of the committed metadata as of journal sequence number
    ``last_seq``: a 32-byte header (magic ``DPDPUSNP``, format version,
    payload length, ``last_seq``, CRC-32C of those and the payload) followed by
    the payload (UTF-8 JSON).  It is replaced atomically (write a temporary
    file, fsync, rename, fsync the directory).

``journal.wal``
    a 32-byte header (magic ``DPDPUWAL``, version, ``base_seq`` — the sequence
    number its first record carries — and the header's CRC-32C), then records
    appended one per commit, each made durable with ``fdatasync`` before the
    commit is acknowledged::

        u32 magic "DPJL" | u32 payload length | u64 sequence number
        u32 CRC-32C of (length, sequence number, payload) | u32 reserved (0)
        payload: UTF-8 JSON, a list of metadata operations

Replay applies every record after the snapshot's ``last_seq``, in sequence.
It stops at the first record that is short, has a bad magic, length, sequence
number or checksum.  If no valid record follows it anywhere in the rest of the
file, it is a torn tail (a crash while appending): it is never applied and is
cut off before anything new is appended.  If a valid record does follow, a
committed record was damaged and opening fails with
:class:`~dpdpu.errors.JournalCorruptError`; so does a snapshot or journal
header that fails its checksum.  (A damaged *last* record cannot be told from
a torn one and is dropped like one: the metadata then reverts to the commit
before it.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors
from ..runtime.native import crc32c

__all__ = ["Journal", "Snapshot", "read_snapshot", "write_snapshot"]

_SNAP_MAGIC = b"DPDPUSNP"
_WAL_MAGIC = b"DPDPUWAL"
_VERSION = 1
_SNAP_HEADER = struct.Struct("<8sIQQI")  # magic, version, payload length, last_seq, crc
_WAL_HEADER = struct.Struct("<8sIQ8xI")  # magic, version, base_seq, reserved, crc
_REC_MAGIC = 0x4C4A5044  # "DPJL" little-endian
_REC_MAGIC_BYTES = struct.pack("<I", _REC_MAGIC)
_REC_HEADER = struct.Struct("<IIQII")  # magic, length, seq, crc, reserved
_MAX_RECORD = 1 << 30

SNAPSHOT_NAME = "meta.snap"
JOURNAL_NAME = "journal.wal"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _record_crc(length: int, seq: int, payload: bytes | memoryview) -> int:
    return crc32c(payload, crc32c(struct.pack("<IQ", length, seq)))


def encode_record(seq: int, ops: list[Any]) -> bytes:
    """One journal record holding ``ops``."""
    payload = json.dumps(ops, separators=(",", ":")).encode()
    if len(payload) > _MAX_RECORD:
        raise errors.InvalidArgumentError(f"a commit of {len(payload)} bytes of metadata is too large")
    crc = _record_crc(len(payload), seq, payload)
    return _REC_HEADER.pack(_REC_MAGIC, len(payload), seq, crc, 0) + payload


@dataclass(frozen=True)
class Snapshot:
    """Committed metadata as of journal record ``last_seq``."""

    last_seq: int
    state: dict[str, Any]


def write_snapshot(directory: Path, last_seq: int, state: dict[str, Any]) -> int:
    """Atomically replace the snapshot; return its size in bytes."""
    payload = json.dumps(state, separators=(",", ":")).encode()
    head = struct.pack("<IQQ", _VERSION, len(payload), last_seq)
    crc = crc32c(payload, crc32c(head))
    data = _SNAP_HEADER.pack(_SNAP_MAGIC, _VERSION, len(payload), last_seq, crc) + payload
    _atomic_write(directory / SNAPSHOT_NAME, data)
    return len(data)


def read_snapshot(directory: Path) -> Snapshot | None:
    """The snapshot, or None if there is none; JournalCorruptError if it fails its checksum."""
    path = directory / SNAPSHOT_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    where = str(path)
    if len(data) < _SNAP_HEADER.size:
        raise _corrupt(f"{where}: snapshot shorter than its header ({len(data)} bytes)")
    magic, version, length, last_seq, crc = _SNAP_HEADER.unpack_from(data)
    if magic != _SNAP_MAGIC:
        raise _corrupt(f"{where}: not a dpdpu metadata snapshot")
    if version != _VERSION:
        raise _corrupt(f"{where}: snapshot format version {version}, expected {_VERSION}")
    payload = memoryview(data)[_SNAP_HEADER.size :]
    if len(payload) != length:
        raise _corrupt(f"{where}: snapshot payload is {len(payload)} bytes, its header says {length}")
    if crc32c(payload, crc32c(struct.pack("<IQQ", version, length, last_seq))) != crc:
        raise _corrupt(f"{where}: snapshot checksum mismatch")
    try:
        state = json.loads(bytes(payload))
    except ValueError as exc:
        raise _corrupt(f"{where}: snapshot payload is not valid JSON: {exc}") from exc
    if not isinstance(state, dict):
        raise _corrupt(f"{where}: snapshot payload is not an object")
    return Snapshot(int(last_seq), state)


def _corrupt(message: str) -> errors.JournalCorruptError:
    return errors.JournalCorruptError(message, op="open", code="CORRUPT_DATA")


class Journal:
    """The append-only journal file (one record per commit).

    Not thread-safe: the file service appends under its commit lock.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_NAME
        self._fd = -1
        self.base_seq = 1
        self.next_seq = 1
        self.size = 0
        self.records = 0
        #: bytes cut off a torn tail when the journal was opened
        self.torn_bytes = 0

    # --- opening and replay ----------------------------------------------------

    @staticmethod
    def create(directory: Path, base_seq: int) -> None:
        """Atomically replace the journal with an empty one whose first record is ``base_seq``."""
        head = struct.pack("<8sIQ8x", _WAL_MAGIC, _VERSION, base_seq)
        _atomic_write(directory / JOURNAL_NAME, head + struct.pack("<I", crc32c(head)))

    def open(self, after_seq: int) -> list[tuple[int, list[Any]]]:
        """``(seq, ops)`` of every committed record after ``after_seq``; the file stays open for appends.

        A torn tail is cut off; a damaged committed record raises
        :class:`JournalCorruptError`.  The journal must exist.
        """
        data = self.path.read_bytes()
        where = str(self.path)
        if len(data) < _WAL_HEADER.size:
            raise _corrupt(f"{where}: journal shorter than its header ({len(data)} bytes)")
        magic, version, base_seq, crc = _WAL_HEADER.unpack_from(data)
        if magic != _WAL_MAGIC:
            raise _corrupt(f"{where}: not a dpdpu journal")
        if crc32c(memoryview(data)[: _WAL_HEADER.size - 4]) != crc:
            raise _corrupt(f"{where}: journal header checksum mismatch")
        if version != _VERSION:
            raise _corrupt(f"{where}: journal format version {version}, expected {_VERSION}")
        if base_seq > after_seq + 1:
            raise _corrupt(f"{where}: journal starts at record {base_seq} but the snapshot ends at {after_seq}")
        view = memoryview(data)
        pos = _WAL_HEADER.size
        seq = base_seq
        good: list[tuple[int, list[Any]]] = []
        bad_at: int | None = None
        while pos < len(data):
            rec = _parse(view, pos, seq)
            if rec is None:
                bad_at = pos
                break
            length, payload = rec
            if seq > after_seq:
                try:
                    ops = json.loads(bytes(payload))
                except ValueError as exc:
                    raise _corrupt(f"{where}: record {seq} passes its checksum but is not JSON: {exc}") from exc
                good.append((seq, ops))
            pos += _REC_HEADER.size + length
            seq += 1
        if bad_at is not None:
            later = _find_valid_after(data, bad_at + 1, seq)
            if later is not None:
                raise _corrupt(
                    f"{where}: committed record {seq} at byte {bad_at} is damaged "
                    f"(a valid record {later[1]} follows at byte {later[0]})"
                )
        if seq - 1 < after_seq:
            raise _corrupt(f"{where}: journal ends at record {seq - 1} but the snapshot needs it up to {after_seq}")
        self.base_seq = base_seq
        self.next_seq = seq
        self.records = seq - base_seq
        self.size = pos
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        if bad_at is not None:
            # Cut the torn tail before anything is appended after it: left in
            # place it would later sit between valid records and look damaged.
            self.torn_bytes = len(data) - bad_at
            os.ftruncate(self._fd, bad_at)
            os.fdatasync(self._fd)
        return good

    # --- appending -------------------------------------------------------------

    def append(self, ops: list[Any]) -> int:
        """Append one record and make it durable; return its sequence number."""
        seq = self.next_seq
        record = encode_record(seq, ops)
        start = self.size
        try:
            view = memoryview(record)
            offset = start
            while view:
                n = os.pwrite(self._fd, view, offset)
                view = view[n:]
                offset += n
            os.fdatasync(self._fd)
        except OSError as exc:
            # Leave no partial record behind for the next append to follow.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            err_cls: type[errors.StorageError] = (
                errors.DeviceFullError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else errors.StorageError
            )
            err = err_cls(f"cannot append to the journal {self.path}: {exc.strerror}", op="flush")
            err.path = str(self.path)
            err.os_errno = exc.errno
            raise err from exc
        self.size = start + len(record)
        self.next_seq = seq + 1
        self.records += 1
        return seq

    def reset(self, base_seq: int) -> None:
        """Start a fresh, empty journal (after a snapshot covering everything before ``base_seq``)."""
        self.close()
        Journal.create(self.directory, base_seq)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        self.base_seq = base_seq
        self.next_seq = base_seq
        self.size = _WAL_HEADER.size
        self.records = 0

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _parse(view: memoryview, pos: int, seq: int) -> tuple[int, memoryview] | None:
    """The record at ``pos`` if it is complete, valid and numbered ``seq``."""
    if len(view) - pos < _REC_HEADER.size:
        return None
    magic, length, rec_seq, crc, reserved = _REC_HEADER.unpack_from(view, pos)
    if magic != _REC_MAGIC or reserved != 0 or rec_seq != seq or length > _MAX_RECORD:
        return None
    end = pos + _REC_HEADER.size + length
    if end > len(view):
        return None
    payload = view[pos + _REC_HEADER.size : end]
    if _record_crc(length, rec_seq, payload) != crc:
        return None
    return length, payload


def _find_valid_after(data: bytes, start: int, least_seq: int) -> tuple[int, int] | None:
    """``(offset, seq)`` of a valid record at or after ``start`` numbered ``least_seq`` or later."""
    view = memoryview(data)
    pos = data.find(_REC_MAGIC_BYTES, start)
    while pos >= 0:
        if len(view) - pos >= _REC_HEADER.size:
            rec_seq = _REC_HEADER.unpack_from(view, pos)[2]
            if rec_seq >= least_seq and _parse(view, pos, rec_seq) is not None:
                return pos, rec_seq
        pos = data.find(_REC_MAGIC_BYTES, pos + 1)
    return None
