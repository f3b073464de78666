"""A file service on a block device, DDS-style: files, directories, async I/O.

:class:`FileService` keeps everything in one data directory: the block
device file (``data.bdev``) holding file data, the metadata snapshot
(``meta.snap``) and the write-ahead journal (``journal.wal``, see
:mod:`dpdpu.storage.journal`), plus a lock file so that one process at a time
serves the directory.  File names never reach the host file system: they are
entries of the service's own namespace, validated by :func:`split_path`.

**Durability.**  Metadata changes (creating and deleting files and
directories, and the block mappings and sizes that writes produce) apply in
memory at once and are committed as one journal record per :meth:`flush`.  A
flush first makes the data of every completed write durable (``fdatasync`` of
the block device), then appends and syncs the record.  Data is never
overwritten in place: a write goes to freshly allocated blocks, and the
blocks it replaces return to the free-space map only once the commit that
stops referencing them is durable.  So after a crash at any moment the
service reopens exactly as of the last completed flush (or of a flush that was
in progress, if its record reached the disk): every write acknowledged before
a completed flush is there, nothing later is half-visible, and the namespace
is consistent.  Writes that were not flushed are lost.  The journal is folded
into a new snapshot once it exceeds ``checkpoint_bytes`` (and on close), so
replay stays short.

**Reads past the end of a file are short**, like ``pread``: they return the
bytes up to the end (none when ``offset`` is at or past it).  Never-written
ranges inside a file (holes) read as zeros.

**Errors.**  Names are resolved when a call is made, so an invalid or
missing path raises at once (:class:`~dpdpu.errors.InvalidPathError`,
:class:`~dpdpu.errors.NoSuchFileError`, ...); what happens during the I/O
(:class:`~dpdpu.errors.DeviceFullError`, a failing device) is raised by the
returned future.

**Concurrency.**  Any number of threads may call the service.  Each file has
a readers-writer lock: reads of a file run in parallel with each other,
writes to a file run one at a time (and not during its reads), and different
files proceed independently; namespace changes are atomic.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import functools
import os
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import errors
from ..runtime.native import ffi, lib
from ..runtime.profile import Profile
from .bdev import BlockDevice, IOFuture, IOTiming, aligned_buffer
from .journal import JOURNAL_NAME, Journal, read_snapshot, write_snapshot

__all__ = ["FileFuture", "FileService", "FileStat", "split_path"]

T = TypeVar("T")

BDEV_NAME = "data.bdev"
LOCK_NAME = "lock"
_FORMAT = 1
_FILE = "f"
_DIR = "d"
_ROOT = 1
#: Longest name component and path, in UTF-8 bytes.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
#: Largest file offset accepted (16 TiB): block maps are per block, and a
#: sparse write far out should fail fast rather than describe a huge file.
MAX_FILE_BYTES = 1 << 44
_DEFAULT_CAPACITY = 1 << 30
_DEFAULT_CHECKPOINT = 8 << 20
#: commits a write waits for, at most, to get back blocks replaced by other writers
_ALLOCATE_TRIES = 8


# --- names -----------------------------------------------------------------------


def split_path(path: str, *, allow_root: bool = False) -> list[str]:
    """The components of a service path, validated.

    Paths are relative, ``/``-separated, with non-empty components other than
    ``.`` and ``..``, no NUL character, components of at most 255 UTF-8 bytes
    and at most 4096 bytes in all.  ``""`` names the root directory where
    ``allow_root`` is set.  Anything else raises :class:`InvalidPathError`.
    """
    if not isinstance(path, str):
        raise _bad_path(path, f"a path is a str, not {type(path).__name__}")
    if path == "":
        if allow_root:
            return []
        raise _bad_path(path, "the path is empty")
    if "\x00" in path:
        raise _bad_path(path, "the path contains a NUL character")
    if path.startswith("/"):
        raise _bad_path(path, "absolute paths are not accepted (paths are relative to the service root)")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise _bad_path(path, "the path is not valid Unicode") from exc
    if size > MAX_PATH_BYTES:
        raise _bad_path(path, f"the path is {size} bytes long, more than {MAX_PATH_BYTES}")
    parts = path.split("/")
    for part in parts:
        if part == "":
            raise _bad_path(path, "the path has an empty component")
        if part in (".", ".."):
            raise _bad_path(path, f"the path has a {part!r} component")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise _bad_path(path, f"a component is longer than {MAX_NAME_BYTES} bytes")
    return parts


def _bad_path(path: object, why: str) -> errors.InvalidPathError:
    err = errors.InvalidPathError(f"invalid path {path!r}: {why}", code="INVALID_ARGUMENT")
    return err


def _storage_error(cls: type[errors.StorageError], message: str, path: str, op: str) -> errors.StorageError:
    err = cls(message, op=op)
    err.path = path
    return err


# --- metadata ----------------------------------------------------------------------


class _Inconsistent(ValueError):
    """An operation does not fit the metadata it is applied to."""


class _Inode:
    __slots__ = ("blocks", "children", "ino", "kind", "name", "parent", "size")

    def __init__(self, ino: int, kind: str, parent: int, name: str) -> None:
        self.ino = ino
        self.kind = kind
        self.parent = parent
        self.name = name
        self.size = 0
        #: file block index -> device block (files)
        self.blocks: dict[int, int] = {}
        #: name -> inode number (directories)
        self.children: dict[str, int] = {}


class _Metadata:
    """The namespace and the block maps; changed only by :meth:`apply`.

    The same operations drive the live copy, the committed copy and replay,
    so what the journal says is exactly what was served.  Operations::

        ["create", parent, name, ino]      a new empty file
        ["mkdir", parent, name, ino]       a new empty directory
        ["unlink", parent, name]           remove a file or an empty directory
        ["write", ino, first_block, [[device_block, count], ...], size]
                                           map file blocks first_block... onto
                                           device blocks, and set the size
    """

    def __init__(self) -> None:
        self.inodes: dict[int, _Inode] = {_ROOT: _Inode(_ROOT, _DIR, 0, "")}
        self.next_ino = _ROOT + 1

    def apply(self, op: list[Any]) -> list[int]:
        """Apply one operation; return the device blocks it stopped referencing."""
        try:
            kind = op[0]
            if kind in ("create", "mkdir"):
                _, parent_ino, name, ino = op
                parent = self._dir(parent_ino)
                if name in parent.children or ino in self.inodes or not isinstance(name, str) or not name:
                    raise _Inconsistent(f"{kind} of an existing name or inode: {op!r}")
                self.inodes[ino] = _Inode(ino, _FILE if kind == "create" else _DIR, parent_ino, name)
                parent.children[name] = ino
                self.next_ino = max(self.next_ino, ino + 1)
                return []
            if kind == "unlink":
                _, parent_ino, name = op
                parent = self._dir(parent_ino)
                ino = parent.children.get(name)
                if ino is None:
                    raise _Inconsistent(f"unlink of a missing name: {op!r}")
                node = self.inodes[ino]
                if node.children:
                    raise _Inconsistent(f"unlink of a non-empty directory: {op!r}")
                del parent.children[name]
                del self.inodes[ino]
                return list(node.blocks.values())
            if kind == "write":
                _, ino, first, extents, size = op
                target = self.inodes.get(ino)
                if target is None or target.kind != _FILE or first < 0 or size < 0:
                    raise _Inconsistent(f"write to a missing file: {op!r}")
                blocks = target.blocks
                displaced = []
                fb = first
                for dev, count in extents:
                    for d in range(dev, dev + count):
                        old = blocks.get(fb)
                        if old is not None:
                            displaced.append(old)
                        blocks[fb] = d
                        fb += 1
                target.size = size
                return displaced
        except (TypeError, ValueError, KeyError) as exc:
            if isinstance(exc, _Inconsistent):
                raise
            raise _Inconsistent(f"malformed operation {op!r}: {exc}") from exc
        raise _Inconsistent(f"unknown operation {op!r}")

    def _dir(self, ino: int) -> _Inode:
        node = self.inodes.get(ino)
        if node is None or node.kind != _DIR:
            raise _Inconsistent(f"inode {ino} is not a directory")
        return node

    def to_state(self) -> dict[str, Any]:
        """A JSON-able copy (block maps as runs ``[file block, device block, count]``)."""
        inodes: list[list[Any]] = []
        for node in self.inodes.values():
            if node.ino == _ROOT:
                continue
            inodes.append([node.ino, node.kind, node.parent, node.name, node.size, _runs(node.blocks)])
        # Parents before children, so loading can link as it goes.
        inodes.sort(key=lambda item: int(item[0]))
        return {"next_ino": self.next_ino, "inodes": inodes}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Metadata:
        meta = cls()
        pending = sorted(state["inodes"], key=lambda item: item[0])
        for ino, kind, parent, name, size, runs in pending:
            meta.apply(["create" if kind == _FILE else "mkdir", parent, name, ino])
            node = meta.inodes[ino]
            node.size = size
            for fb, dev, count in runs:
                for i in range(count):
                    node.blocks[fb + i] = dev + i
        meta.next_ino = max(meta.next_ino, int(state["next_ino"]))
        return meta

    def used_blocks(self) -> Iterator[int]:
        for node in self.inodes.values():
            yield from node.blocks.values()

    def copy(self) -> _Metadata:
        return _Metadata.from_state(self.to_state())


def _runs(blocks: dict[int, int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for fb in sorted(blocks):
        dev = blocks[fb]
        if runs and runs[-1][0] + runs[-1][2] == fb and runs[-1][1] + runs[-1][2] == dev:
            runs[-1][2] += 1
        else:
            runs.append([fb, dev, 1])
    return runs


# --- free space ------------------------------------------------------------------------


class FreeSpaceMap:
    """Free device blocks as sorted, merged extents ``(start, count)``.

    Allocation is first fit from a moving cursor, so consecutive writes get
    consecutive blocks; a request no single extent can hold is assembled from
    several.  Not thread-safe (the service calls it under its metadata lock).
    """

    def __init__(self, nblocks: int, used: Iterator[int] | Sequence[int] = ()) -> None:
        self.nblocks = nblocks
        taken = sorted(used)
        starts: list[int] = []
        counts: list[int] = []
        prev = -1
        for b in taken:
            if b <= prev or b >= nblocks:
                raise ValueError(f"block {b} is referenced twice or lies past the device's {nblocks} blocks")
            if b > prev + 1:
                starts.append(prev + 1)
                counts.append(b - prev - 1)
            prev = b
        if prev + 1 < nblocks:
            starts.append(prev + 1)
            counts.append(nblocks - prev - 1)
        self._starts = starts
        self._counts = counts
        self.free = sum(counts)
        self._cursor = 0

    def allocate(self, n: int) -> list[list[int]]:
        """Take ``n`` blocks; return them as extents ``[start, count]`` in file order."""
        if n > self.free:
            raise ValueError("not enough free blocks")
        import bisect

        starts, counts = self._starts, self._counts
        i = bisect.bisect_left(starts, self._cursor)
        for j in list(range(i, len(starts))) + list(range(0, i)):
            if counts[j] >= n:
                start = starts[j]
                self._take(j, n)
                self._cursor = start + n
                return [[start, n]]
        out: list[list[int]] = []
        need = n
        while need:
            j = 0 if i >= len(starts) else i
            start, take = starts[j], min(counts[j], need)
            self._take(j, take)
            out.append([start, take])
            need -= take
            i = bisect.bisect_left(starts, start)
        self._cursor = out[-1][0] + out[-1][1]
        return out

    def _take(self, j: int, n: int) -> None:
        self.free -= n
        if self._counts[j] == n:
            del self._starts[j]
            del self._counts[j]
        else:
            self._starts[j] += n
            self._counts[j] -= n

    def release(self, blocks: Sequence[int]) -> None:
        """Return blocks to the map."""
        import bisect

        for start, count in _extents_of(sorted(blocks)):
            starts, counts = self._starts, self._counts
            i = bisect.bisect_left(starts, start)
            # Merge with the extent before and/or after when they touch.
            merge_prev = i > 0 and starts[i - 1] + counts[i - 1] == start
            merge_next = i < len(starts) and start + count == starts[i]
            if merge_prev and merge_next:
                counts[i - 1] += count + counts[i]
                del starts[i]
                del counts[i]
            elif merge_prev:
                counts[i - 1] += count
            elif merge_next:
                starts[i] = start
                counts[i] += count
            else:
                starts.insert(i, start)
                counts.insert(i, count)
            self.free += count

    def extents(self) -> list[tuple[int, int]]:
        """The free extents ``(start, count)``."""
        return list(zip(self._starts, self._counts, strict=True))


def _extents_of(sorted_blocks: Sequence[int]) -> Iterator[tuple[int, int]]:
    start = -1
    count = 0
    for b in sorted_blocks:
        if count and b == start + count:
            count += 1
            continue
        if count:
            yield start, count
        start, count = b, 1
    if count:
        yield start, count


# --- locks and buffers -----------------------------------------------------------------------


class _RWLock:
    """Many readers or one writer; a waiting writer holds back new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Segments:
    """Caller buffers seen as one run of bytes (scatter/gather), never copied wholesale."""

    def __init__(self, objs: Sequence[Any], *, writable: bool, op: str) -> None:
        self.ptrs: list[Any] = []
        self.starts: list[int] = []
        self.lens: list[int] = []
        pos = 0
        for obj in objs:
            try:
                cbuf = ffi.from_buffer(obj, require_writable=writable)
            except (TypeError, BufferError) as exc:
                kind = "writable " if writable else ""
                raise errors.InvalidArgumentError(
                    f"expected {kind}contiguous bytes-like objects, got {type(obj).__name__}", op=op
                ) from exc
            if len(cbuf):
                self.ptrs.append(cbuf)
                self.starts.append(pos)
                self.lens.append(len(cbuf))
                pos += len(cbuf)
        self.total = pos

    def locate(self, pos: int, length: int) -> Any:
        """A pointer to bytes [pos, pos + length) if one segment holds them all, else None."""
        import bisect

        i = bisect.bisect_right(self.starts, pos) - 1
        if i < 0 or pos + length > self.starts[i] + self.lens[i]:
            return None
        return self.ptrs[i] + (pos - self.starts[i])

    def _pieces(self, pos: int, length: int) -> Iterator[tuple[Any, int, int]]:
        """``(segment pointer at pos, bytes, offset into the range)`` covering [pos, pos + length)."""
        import bisect

        i = bisect.bisect_right(self.starts, pos) - 1
        done = 0
        while done < length:
            local = pos + done - self.starts[i]
            n = min(self.lens[i] - local, length - done)
            yield self.ptrs[i] + local, n, done
            done += n
            i += 1

    def copy_out(self, pos: int, length: int, dst: Any) -> None:
        """Gather bytes [pos, pos + length) into memory at ``dst``."""
        for ptr, n, at in self._pieces(pos, length):
            ffi.memmove(dst + at, ptr, n)

    def copy_in(self, pos: int, src: Any, length: int) -> None:
        """Scatter ``length`` bytes from memory at ``src`` into [pos, pos + length)."""
        for ptr, n, at in self._pieces(pos, length):
            ffi.memmove(ptr, src + at, n)

    def release(self) -> None:
        """Give up the buffer exports: the caller's objects may be resized or freed from here on."""
        for ptr in self.ptrs:
            ffi.release(ptr)
        self.ptrs.clear()

    def zero(self, pos: int, length: int) -> None:
        """Fill [pos, pos + length) with zeros."""
        zeros = ffi.new("char[]", min(length, 1 << 20))
        done = 0
        while done < length:
            n = min(length - done, len(zeros))
            self.copy_in(pos + done, zeros, n)
            done += n


def _release(args: Sequence[Any]) -> None:
    for arg in args:
        if isinstance(arg, _Segments):
            arg.release()


# --- the service -----------------------------------------------------------------------


@dataclass(frozen=True)
class FileStat:
    """What :meth:`FileService.stat` reports about a path."""

    path: str
    kind: str  #: ``"file"`` or ``"dir"``
    size: int  #: bytes (0 for a directory)
    blocks: int  #: device blocks the file occupies
    ino: int  #: inode number, unique for the life of the service

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


class FileFuture(concurrent.futures.Future[T]):
    """The outcome of a file service read, write or flush.

    Attributes:
        timing: the modeled device time of the block I/O it issued, as one
            span (arrival of the first, finish of the last); None if it issued
            none or the device has no storage model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.timing: IOTiming | None = None

    @property
    def modeled_s(self) -> float | None:
        """Modeled device time of the operation's block I/O."""
        return None if self.timing is None else self.timing.modeled_s


class _IOBatch:
    """Block I/Os issued for one file operation, waited for together."""

    def __init__(self) -> None:
        self.futures: list[IOFuture[Any]] = []
        self.after: list[Callable[[], None]] = []

    def wait(self) -> None:
        error: BaseException | None = None
        for future in self.futures:
            try:
                future.result()
            except BaseException as exc:  # wait for every I/O before reporting: buffers are in use
                error = error or exc
        if error is not None:
            raise error
        for fn in self.after:
            fn()

    def timing(self, op: str) -> IOTiming | None:
        timings = [f.timing for f in self.futures if f.timing is not None]
        if not timings:
            return None
        arrival = min(t.arrival_s for t in timings)
        return IOTiming(op, sum(t.nbytes for t in timings), arrival, min(t.start_s for t in timings),
                        max(t.finish_s for t in timings))  # fmt: skip


class FileService:
    """Files and directories on a block device, durable through a write-ahead journal.

    Args:
        data_dir: the directory holding everything (created if missing).
        capacity: bytes of the block device for a new service (default 1 GiB,
            allocated sparsely); an existing service keeps its own, and a
            different value raises :class:`InvalidArgumentError`.
        block_size: bytes per block for a new service (an existing one keeps its own).
        device: profile whose storage figures model device time (see
            :class:`~dpdpu.storage.bdev.BlockDevice`).
        direct: open the block device with ``O_DIRECT`` (falling back if refused).
        queue_depth: most block I/Os in flight.
        workers: threads running file operations.
        checkpoint_bytes: fold the journal into a snapshot once it grows past this.
        create: create the service when ``data_dir`` holds none.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        capacity: int | None = None,
        block_size: int = 4096,
        device: str | Profile | None = "bluefield3",
        direct: bool = False,
        queue_depth: int = 64,
        workers: int = 8,
        checkpoint_bytes: int = _DEFAULT_CHECKPOINT,
        create: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        if create:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        elif not self.data_dir.is_dir():
            raise _storage_error(errors.NoSuchFileError, f"no data directory {self.data_dir}", str(data_dir), "open")
        self._lock_fd = self._take_dir_lock()
        try:
            self._open(capacity, block_size, device, direct, queue_depth, create)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.checkpoint_bytes = checkpoint_bytes
        self._meta_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._ilocks: dict[int, _RWLock] = {}
        self._pending: list[list[Any]] = []
        self._pending_free: list[tuple[int, list[int]]] = []
        self._op_num = 0
        self._closed = False
        self._counters = {"commits": 0, "checkpoints": 0, "reads": 0, "writes": 0}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dpdpu-fs")

    # --- opening ------------------------------------------------------------------

    def _take_dir_lock(self) -> int:
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise _storage_error(
                errors.StorageError, f"{self.data_dir} is in use by another file service", str(self.data_dir), "open"
            ) from exc
        return fd

    def _open(
        self,
        capacity: int | None,
        block_size: int,
        device: str | Profile | None,
        direct: bool,
        queue_depth: int,
        create: bool,
    ) -> None:
        snap = read_snapshot(self.data_dir)
        journal_exists = (self.data_dir / JOURNAL_NAME).exists()
        if snap is None:
            if journal_exists:
                raise errors.JournalCorruptError(
                    f"{self.data_dir}: a journal without a metadata snapshot", op="open", code="CORRUPT_DATA"
                )
            if not create:
                raise _storage_error(
                    errors.NoSuchFileError, f"{self.data_dir} holds no file service", str(self.data_dir), "open"
                )
            cap = _DEFAULT_CAPACITY if capacity is None else capacity
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < block_size or cap % block_size:
                raise errors.InvalidArgumentError(
                    f"capacity must be a positive multiple of the block size {block_size}, not {cap!r}", op="open"
                )
            # A crash while creating leaves no snapshot, so this starts over.
            bdev_path = self.data_dir / BDEV_NAME
            if bdev_path.exists():
                bdev_path.unlink()
            self.bdev = BlockDevice(
                bdev_path, block_size=block_size, capacity=cap, direct=direct, queue_depth=queue_depth, device=device
            )
            geometry = {"format": _FORMAT, "block_size": block_size, "capacity": cap}
            write_snapshot(self.data_dir, 0, {**geometry, **_Metadata().to_state()})
            Journal.create(self.data_dir, 1)
            snap = read_snapshot(self.data_dir)
            assert snap is not None
        else:
            state = snap.state
            try:
                fmt, bs, cap = int(state["format"]), int(state["block_size"]), int(state["capacity"])
            except (KeyError, TypeError, ValueError) as exc:
                raise errors.JournalCorruptError(
                    f"{self.data_dir}: snapshot lacks the device geometry", op="open", code="CORRUPT_DATA"
                ) from exc
            if fmt != _FORMAT:
                raise errors.JournalCorruptError(f"{self.data_dir}: unknown format {fmt}", op="open")
            if capacity is not None and capacity != cap:
                raise errors.InvalidArgumentError(
                    f"{self.data_dir} holds a service of capacity {cap}, not {capacity}", op="open"
                )
            if not journal_exists:
                # Only a crash between writing the first snapshot and the journal does this.
                Journal.create(self.data_dir, snap.last_seq + 1)
            self.bdev = BlockDevice(
                self.data_dir / BDEV_NAME,
                block_size=bs,
                capacity=cap,
                direct=direct,
                queue_depth=queue_depth,
                device=device,
                create=True,
            )
        try:
            self._load(snap.state, snap.last_seq)
        except BaseException:
            self.bdev.close()
            raise

    def _load(self, state: dict[str, Any], last_seq: int) -> None:
        self.block_size = self.bdev.block_size
        self.capacity = self.bdev.capacity
        try:
            committed = _Metadata.from_state(state)
        except (_Inconsistent, KeyError, TypeError, ValueError) as exc:
            raise errors.JournalCorruptError(
                f"{self.data_dir}: snapshot metadata is inconsistent: {exc}", op="open", code="CORRUPT_DATA"
            ) from exc
        self._journal = Journal(self.data_dir)
        records = self._journal.open(last_seq)
        try:
            for seq, ops in records:
                for op in ops:
                    committed.apply(op)
                last_seq = seq
            free = FreeSpaceMap(self.capacity // self.block_size, committed.used_blocks())
        except (_Inconsistent, ValueError) as exc:
            self._journal.close()
            raise errors.JournalCorruptError(
                f"{self.data_dir}: journal record {last_seq + 1} does not apply: {exc}", op="open", code="CORRUPT_DATA"
            ) from exc
        self._committed = committed
        self._live = committed.copy()
        self._free = free
        self.replayed_records = len(records)

    # --- names and inodes (metadata lock held) --------------------------------------------

    def _lookup(self, parts: list[str], path: str, op: str) -> _Inode:
        node = self._live.inodes[_ROOT]
        for i, part in enumerate(parts):
            if node.kind != _DIR:
                where = "/".join(parts[:i])
                raise _storage_error(errors.FileTypeError, f"{where!r} is not a directory", path, op)
            ino = node.children.get(part)
            if ino is None:
                raise _storage_error(errors.NoSuchFileError, f"no such file or directory: {path!r}", path, op)
            node = self._live.inodes[ino]
        return node

    def _parent_of(self, parts: list[str], path: str, op: str) -> _Inode:
        parent = self._lookup(parts[:-1], path, op)
        if parent.kind != _DIR:
            raise _storage_error(errors.FileTypeError, f"the parent of {path!r} is not a directory", path, op)
        return parent

    def _log(self, op: list[Any]) -> None:
        """Apply an operation to the live metadata and queue it for the next commit."""
        displaced = self._live.apply(op)
        self._op_num += 1
        self._pending.append(op)
        if displaced:
            # Still referenced by the committed metadata until this op commits.
            self._pending_free.append((self._op_num, displaced))

    def _ilock(self, ino: int) -> _RWLock:
        lock = self._ilocks.get(ino)
        if lock is None:
            lock = self._ilocks.setdefault(ino, _RWLock())
        return lock

    def _file_ino(self, path: str, op: str) -> int:
        parts = split_path(path)
        with self._meta_lock:
            self._check_open(op)
            node = self._lookup(parts, path, op)
            if node.kind != _FILE:
                raise _storage_error(errors.FileTypeError, f"{path!r} is a directory", path, op)
            return node.ino

    def _check_open(self, op: str) -> None:
        if self._closed:
            raise errors.RuntimeClosedError("the file service is closed", op=op)

    # --- namespace ------------------------------------------------------------------------

    def create(self, path: str, *, exist_ok: bool = False) -> None:
        """Create an empty file (its directory must exist)."""
        parts = split_path(path)
        with self._meta_lock:
            self._check_open("create")
            parent = self._parent_of(parts, path, "create")
            existing = parent.children.get(parts[-1])
            if existing is not None:
                if exist_ok and self._live.inodes[existing].kind == _FILE:
                    return
                raise _storage_error(errors.FileExistsStorageError, f"{path!r} already exists", path, "create")
            self._log(["create", parent.ino, parts[-1], self._live.next_ino])

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Create a directory (and its missing ancestors with ``parents``)."""
        parts = split_path(path)
        with self._meta_lock:
            self._check_open("mkdir")
            node = self._live.inodes[_ROOT]
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                ino = node.children.get(part)
                if ino is None:
                    if not last and not parents:
                        raise _storage_error(
                            errors.NoSuchFileError, f"no such directory: {'/'.join(parts[: i + 1])!r}", path, "mkdir"
                        )
                    ino = self._live.next_ino
                    self._log(["mkdir", node.ino, part, ino])
                elif last and not exist_ok:
                    raise _storage_error(errors.FileExistsStorageError, f"{path!r} already exists", path, "mkdir")
                node = self._live.inodes[ino]
                if node.kind != _DIR:
                    where = "/".join(parts[: i + 1])
                    raise _storage_error(errors.FileTypeError, f"{where!r} is not a directory", path, "mkdir")

    def delete(self, path: str) -> None:
        """Delete a file; its blocks are freed once the deletion is committed."""
        parts = split_path(path)
        while True:
            ino = self._file_ino(path, "delete")
            # Wait for reads and writes of the file in progress to finish.
            with self._ilock(ino).writing(), self._meta_lock:
                self._check_open("delete")
                parent = self._parent_of(parts, path, "delete")
                if parent.children.get(parts[-1]) != ino:
                    continue  # replaced meanwhile: delete what the name means now
                self._log(["unlink", parent.ino, parts[-1]])
                self._ilocks.pop(ino, None)
                return

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        parts = split_path(path)
        with self._meta_lock:
            self._check_open("rmdir")
            node = self._lookup(parts, path, "rmdir")
            if node.kind != _DIR:
                raise _storage_error(errors.FileTypeError, f"{path!r} is not a directory", path, "rmdir")
            if node.children:
                raise _storage_error(errors.DirectoryNotEmptyError, f"{path!r} is not empty", path, "rmdir")
            self._log(["unlink", node.parent, parts[-1]])

    def listdir(self, path: str = "") -> list[str]:
        """Names in a directory (``""``: the root), sorted."""
        parts = split_path(path, allow_root=True)
        with self._meta_lock:
            self._check_open("listdir")
            node = self._lookup(parts, path, "listdir")
            if node.kind != _DIR:
                raise _storage_error(errors.FileTypeError, f"{path!r} is not a directory", path, "listdir")
            return sorted(node.children)

    def stat(self, path: str) -> FileStat:
        """Kind, size and block count of a file or directory (``""``: the root)."""
        parts = split_path(path, allow_root=True)
        with self._meta_lock:
            self._check_open("stat")
            node = self._lookup(parts, path, "stat")
            kind = "file" if node.kind == _FILE else "dir"
            return FileStat(path, kind, node.size, len(node.blocks), node.ino)

    def exists(self, path: str) -> bool:
        """True if a file or directory of that name exists."""
        try:
            self.stat(path)
        except errors.NoSuchFileError:
            return False
        except errors.FileTypeError:
            return False
        return True

    def walk(self, path: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        """``(directory, subdirectories, files)`` for every directory under ``path``, like ``os.walk``."""
        parts = split_path(path, allow_root=True)
        with self._meta_lock:
            self._check_open("walk")
            top = self._lookup(parts, path, "walk")
            out = []
            stack = [(path, top)]
            while stack:
                where, node = stack.pop()
                if node.kind != _DIR:
                    continue
                dirs: list[str] = []
                files: list[str] = []
                for name in sorted(node.children):
                    child = self._live.inodes[node.children[name]]
                    (dirs if child.kind == _DIR else files).append(name)
                out.append((where, dirs, files))
                for name in reversed(dirs):
                    stack.append((f"{where}/{name}" if where else name, self._live.inodes[node.children[name]]))
        yield from out

    # --- data -------------------------------------------------------------------------------

    def read(self, path: str, offset: int, length: int) -> FileFuture[bytes]:
        """Read up to ``length`` bytes at ``offset``; short at the end of the file."""
        _check_range(offset, length, "read")
        ino = self._file_ino(path, "read")
        return self._run("read", self._read_bytes, path, ino, offset, length)

    def read_into(self, path: str, offset: int, buffer: Any) -> FileFuture[int]:
        """Read into ``buffer`` (writable bytes-like) at ``offset``; the value is the byte count (short at the end)."""
        return self.readv(path, offset, [buffer])

    def readv(self, path: str, offset: int, buffers: Sequence[Any]) -> FileFuture[int]:
        """Scatter read: fill ``buffers`` one after the other from ``offset``; the value is the byte count."""
        segs = _Segments(_as_list(buffers, "readv"), writable=True, op="readv")
        _check_range(offset, segs.total, "readv")
        ino = self._file_ino(path, "readv")
        return self._run("read", self._read_segments, path, ino, offset, segs)

    def write(self, path: str, offset: int, data: Any) -> FileFuture[int]:
        """Write ``data`` (bytes-like, not copied) at ``offset``; the value is the byte count."""
        return self.writev(path, offset, [data])

    def writev(self, path: str, offset: int, buffers: Sequence[Any]) -> FileFuture[int]:
        """Gather write: the concatenation of ``buffers`` at ``offset``; the value is the byte count."""
        segs = _Segments(_as_list(buffers, "writev"), writable=False, op="writev")
        _check_range(offset, segs.total, "write")
        ino = self._file_ino(path, "write")
        return self._run("write", self._write_segments, path, ino, offset, segs)

    def flush(self) -> FileFuture[None]:
        """Make every write and namespace change acknowledged so far durable."""
        self._check_open("flush")
        return self._run("flush", self._flush_job)

    def _run(self, op: str, fn: Callable[..., Any], *args: Any) -> FileFuture[Any]:
        future: FileFuture[Any] = FileFuture()
        future.set_running_or_notify_cancel()
        batch = _IOBatch()

        def job() -> None:
            try:
                value = fn(batch, *args)
            except BaseException as exc:
                # The traceback would keep the I/O frames' buffers alive in a cycle with this
                # future; the collector cannot clear a memoryview that cffi still exports and
                # crashes.  Drop the frames' locals and the exports now.
                traceback.clear_frames(exc.__traceback__)
                _release(args)
                future.timing = batch.timing(op)
                future.set_exception(exc)
            else:
                _release(args)
                future.timing = batch.timing(op)
                future.set_result(value)

        try:
            self._pool.submit(job)
        except RuntimeError as exc:
            raise errors.RuntimeClosedError("the file service is closed", op=op) from exc
        return future

    def _read_bytes(self, batch: _IOBatch, path: str, ino: int, offset: int, length: int) -> bytes:
        with self._meta_lock:
            node = self._live.inodes.get(ino)
            size = node.size if node is not None else 0
        length = max(0, min(length, size - offset))
        # A fresh bytes object nobody else has seen yet is filled in place.
        out = bytes(length)
        if length:
            segs = _Segments([out], writable=False, op="read")
            got = self._read_segments(batch, path, ino, offset, segs)
            if got < length:  # the file shrank in between (it was deleted and recreated)
                return out[:got]
        return out

    def _read_segments(self, batch: _IOBatch, path: str, ino: int, offset: int, segs: _Segments) -> int:
        bs = self.block_size
        with self._ilock(ino).reading():
            with self._meta_lock:
                node = self._live.inodes.get(ino)
                if node is None:  # deleted since the call resolved its name
                    self._ilocks.pop(ino, None)
                    raise _storage_error(errors.NoSuchFileError, f"no such file: {path!r}", path, "read")
                length = max(0, min(segs.total, node.size - offset))
                if length == 0:
                    return 0
                end = offset + length
                fb0, fb1 = offset // bs, (end - 1) // bs
                devs = [node.blocks.get(fb) for fb in range(fb0, fb1 + 1)]
            for fb, count, dev in _runs_of(fb0, devs):
                for sub_fb, sub_count, partial in _split(fb, count, offset, end, bs):
                    lo = max(offset, sub_fb * bs)
                    hi = min(end, (sub_fb + sub_count) * bs)
                    if dev is None:
                        segs.zero(lo - offset, hi - lo)
                        continue
                    dev_off = (dev + sub_fb - fb) * bs
                    ptr = None if partial else self._aligned(segs.locate(lo - offset, hi - lo))
                    if ptr is not None:
                        batch.futures.append(self.bdev._io_raw(lib.DPDPU_BDEV_IO_READ, dev_off, ptr, hi - lo, segs))
                        continue
                    bounce, keep = self._bounce(sub_count * bs)
                    batch.futures.append(
                        self.bdev._io_raw(lib.DPDPU_BDEV_IO_READ, dev_off, bounce, sub_count * bs, keep)
                    )
                    # The callback holds the bounce buffer: the I/O lets go of it when it completes.
                    batch.after.append(
                        functools.partial(_copy_in_kept, segs, lo - offset, bounce + (lo - sub_fb * bs), hi - lo, keep)
                    )
            batch.wait()
        with self._meta_lock:
            self._counters["reads"] += 1
        return length

    def _write_segments(self, batch: _IOBatch, path: str, ino: int, offset: int, segs: _Segments) -> int:
        length = segs.total
        if length == 0:
            return 0
        bs = self.block_size
        end = offset + length
        fb0, fb1 = offset // bs, (end - 1) // bs
        nblocks = fb1 - fb0 + 1
        with self._ilock(ino).writing():
            with self._meta_lock:
                node = self._live.inodes.get(ino)
                if node is None:  # deleted since the call resolved its name
                    self._ilocks.pop(ino, None)
                    raise _storage_error(errors.NoSuchFileError, f"no such file: {path!r}", path, "write")
                size = node.size
                old = {fb: node.blocks.get(fb) for fb in (fb0, fb1)}
            extents = self._allocate(nblocks, path)
            try:
                # Partial first and last blocks keep the bytes around the write.
                edges: dict[int, tuple[Any, Any]] = {}
                reads = _IOBatch()
                for fb in {fb0, fb1}:
                    if (fb == fb0 and offset % bs) or (fb == fb1 and end % bs):
                        bounce, keep = self._bounce(bs)
                        edges[fb] = (bounce, keep)
                        dev = old[fb]
                        if dev is not None and fb * bs < size:
                            reads.futures.append(self.bdev._io_raw(lib.DPDPU_BDEV_IO_READ, dev * bs, bounce, bs, keep))
                reads.wait()
                batch.futures.extend(reads.futures)
                for fb, (bounce, _) in edges.items():
                    lo, hi = max(offset, fb * bs), min(end, (fb + 1) * bs)
                    segs.copy_out(lo - offset, hi - lo, bounce + (lo - fb * bs))
                fb = fb0
                for dev, count in extents:
                    for sub_fb, sub_count, _partial in _split(fb, count, offset, end, bs, edges=edges):
                        dev_off = (dev + sub_fb - fb) * bs
                        if sub_fb in edges:
                            bounce, keep = edges[sub_fb]
                            batch.futures.append(self.bdev._io_raw(lib.DPDPU_BDEV_IO_WRITE, dev_off, bounce, bs, keep))
                            continue
                        lo, n = sub_fb * bs, sub_count * bs
                        ptr = self._aligned(segs.locate(lo - offset, n))
                        keep = segs
                        if ptr is None:
                            ptr, keep = self._bounce(n)
                            segs.copy_out(lo - offset, n, ptr)
                        batch.futures.append(self.bdev._io_raw(lib.DPDPU_BDEV_IO_WRITE, dev_off, ptr, n, keep))
                    fb += count
                batch.wait()
            except BaseException:
                with self._meta_lock:
                    self._free.release([d for dev, count in extents for d in range(dev, dev + count)])
                raise
            with self._meta_lock:
                self._log(["write", ino, fb0, extents, max(size, end)])
                self._counters["writes"] += 1
        return length

    def _allocate(self, nblocks: int, path: str) -> list[list[int]]:
        # Concurrent writers may take what a commit frees before this one gets it: try again
        # while replaced blocks waiting for a commit could still make room.
        for _ in range(_ALLOCATE_TRIES):
            with self._meta_lock:
                if nblocks <= self._free.free:
                    return self._free.allocate(nblocks)
                reclaimable = sum(len(blocks) for _, blocks in self._pending_free)
                free = self._free.free
            if nblocks > free + reclaimable:
                break
            # Blocks replaced since the last commit come back once it is durable.
            self._commit()
        raise _storage_error(
            errors.DeviceFullError,
            f"no room for {nblocks} blocks of {self.block_size} bytes ({self._free.free} free)",
            path,
            "write",
        )

    def _aligned(self, ptr: Any) -> Any:
        align = self.bdev.buffer_alignment
        if ptr is None or align == 1 or int(ffi.cast("uintptr_t", ptr)) % align == 0:
            return ptr
        return None

    def _bounce(self, nbytes: int) -> tuple[Any, Any]:
        if self.bdev.buffer_alignment > 1:
            view = aligned_buffer(nbytes)
            ptr = ffi.from_buffer(view)
            return ptr, (view, ptr)
        ptr = ffi.new("char[]", nbytes)
        return ptr, ptr

    # --- durability -----------------------------------------------------------------------------

    def _flush_job(self, batch: _IOBatch) -> None:
        self._commit(batch)

    def _commit(self, batch: _IOBatch | None = None) -> None:
        with self._commit_lock:
            with self._meta_lock:
                ops = list(self._pending)
                upto = self._op_num
            if not ops:
                return
            flush = self.bdev.flush()
            if batch is not None:
                batch.futures.append(flush)
            flush.result()
            self._journal.append(ops)
            with self._meta_lock:
                del self._pending[: len(ops)]
                for op in ops:
                    self._committed.apply(op)
                released = [blocks for num, blocks in self._pending_free if num <= upto]
                self._pending_free = [(num, blocks) for num, blocks in self._pending_free if num > upto]
                for blocks in released:
                    self._free.release(blocks)
            with self._meta_lock:
                self._counters["commits"] += 1
            if self._journal.size >= self.checkpoint_bytes:
                self._checkpoint()

    def _checkpoint(self) -> None:
        """Fold the journal into a snapshot of the committed metadata (commit lock held)."""
        last = self._journal.next_seq - 1
        state = {"format": _FORMAT, "block_size": self.block_size, "capacity": self.capacity}
        state.update(self._committed.to_state())
        write_snapshot(self.data_dir, last, state)
        self._journal.reset(last + 1)
        self._counters["checkpoints"] += 1

    def checkpoint(self) -> None:
        """Commit what is pending, then fold the journal into a snapshot now."""
        self._check_open("checkpoint")
        self._commit()
        with self._commit_lock:
            if self._journal.records:
                self._checkpoint()

    # --- information and life cycle ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters of the service and of its block device."""
        with self._meta_lock:
            out: dict[str, Any] = dict(self._counters)
            out.update(
                files=sum(1 for n in self._live.inodes.values() if n.kind == _FILE),
                directories=sum(1 for n in self._live.inodes.values() if n.kind == _DIR),
                free_blocks=self._free.free,
                total_blocks=self._free.nblocks,
                pending_ops=len(self._pending),
                pending_free_blocks=sum(len(b) for _, b in self._pending_free),
                journal_bytes=self._journal.size,
                journal_records=self._journal.records,
                replayed_records=self.replayed_records,
                torn_tail_bytes=self._journal.torn_bytes,
            )
        out["bdev"] = self.bdev.stats()
        return out

    def close(self, *, flush: bool = True) -> None:
        """Finish running operations, commit (unless ``flush=False``), checkpoint, and release the directory."""
        with self._meta_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._pool.shutdown(wait=True)
            if flush:
                self._commit()
                with self._commit_lock:
                    if self._journal.records:
                        self._checkpoint()
        finally:
            self._journal.close()
            self.bdev.close()
            os.close(self._lock_fd)

    def __enter__(self) -> FileService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileService({str(self.data_dir)!r}, {self.capacity} bytes in blocks of {self.block_size})"


def _as_list(buffers: Sequence[Any], op: str) -> list[Any]:
    if isinstance(buffers, (bytes, bytearray, memoryview)) or not isinstance(buffers, Sequence):
        raise errors.InvalidArgumentError(f"{op} takes a sequence of buffers", op=op)
    return list(buffers)


def _check_range(offset: int, length: int, op: str) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise errors.InvalidArgumentError(f"offset must be a non-negative integer, not {offset!r}", op=op)
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise errors.InvalidArgumentError(f"length must be a non-negative integer, not {length!r}", op=op)
    if offset + length > MAX_FILE_BYTES:
        raise errors.InvalidArgumentError(f"files end at {MAX_FILE_BYTES} bytes", op=op)


def _runs_of(fb0: int, devs: list[int | None]) -> Iterator[tuple[int, int, int | None]]:
    """``(first file block, count, first device block or None for a hole)`` of contiguous runs."""
    i = 0
    while i < len(devs):
        dev = devs[i]
        j = i + 1
        while j < len(devs) and (devs[j] is None if dev is None else devs[j] == dev + (j - i)):
            j += 1
        yield fb0 + i, j - i, dev
        i = j


def _split(
    fb: int, count: int, offset: int, end: int, bs: int, *, edges: dict[int, Any] | None = None
) -> Iterator[tuple[int, int, bool]]:
    """Cut blocks [fb, fb + count) so that partially covered end blocks stand alone.

    Yields ``(first block, count, partial)``.  With ``edges`` the blocks cut
    out are exactly its keys.
    """
    first_partial = offset % bs != 0
    last_partial = end % bs != 0
    fb_first, fb_last = offset // bs, (end - 1) // bs

    def alone(b: int) -> bool:
        if edges is not None:
            return b in edges
        return (b == fb_first and first_partial) or (b == fb_last and last_partial)

    start = fb
    stop = fb + count
    b = start
    while b < stop:
        if alone(b):
            yield b, 1, True
            b += 1
            continue
        run = b
        while b < stop and not alone(b):
            b += 1
        yield run, b - run, False


def _copy_in_kept(segs: _Segments, at: int, src: Any, nbytes: int, keep: Any) -> None:
    """``segs.copy_in`` while ``keep`` (the owner of ``src``) is still referenced."""
    segs.copy_in(at, src, nbytes)
    del keep
