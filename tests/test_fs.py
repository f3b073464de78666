"""The file service: namespace, data, names, full device, threads, journal damage."""

from __future__ import annotations

import concurrent.futures
import os
import random
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpdpu import errors
from dpdpu.storage import FileService, split_path
from dpdpu.storage.fs import FreeSpaceMap
from dpdpu.storage.journal import JOURNAL_NAME, SNAPSHOT_NAME

BS = 4096


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[FileService]:
    with FileService(tmp_path / "svc", capacity=1024 * BS) as service:
        yield service


def test_namespace(fs: FileService) -> None:
    fs.mkdir("docs")
    fs.mkdir("a/b/c", parents=True)
    fs.create("docs/readme")
    fs.create("a/b/c/deep")
    assert fs.listdir() == ["a", "docs"]
    assert fs.listdir("a/b") == ["c"]
    assert fs.stat("docs").is_dir and fs.stat("docs/readme").is_file and fs.stat("docs/readme").size == 0
    assert fs.stat("").is_dir
    assert fs.exists("a/b/c/deep") and not fs.exists("a/nope") and not fs.exists("docs/readme/x")
    with pytest.raises(errors.FileExistsStorageError):
        fs.create("docs/readme")
    fs.create("docs/readme", exist_ok=True)
    with pytest.raises(errors.FileExistsStorageError):
        fs.mkdir("docs")
    fs.mkdir("docs", exist_ok=True)
    with pytest.raises(errors.FileTypeError):
        fs.mkdir("docs/readme", exist_ok=True)
    with pytest.raises(errors.NoSuchFileError):
        fs.mkdir("x/y")
    with pytest.raises(errors.FileTypeError):
        fs.create("docs/readme/inner")
    with pytest.raises(errors.DirectoryNotEmptyError):
        fs.rmdir("a/b")
    with pytest.raises(errors.FileTypeError):
        fs.rmdir("docs/readme")
    with pytest.raises(errors.FileTypeError):
        fs.delete("docs")
    with pytest.raises(errors.FileTypeError):
        fs.listdir("docs/readme")
    fs.delete("a/b/c/deep")
    fs.rmdir("a/b/c")
    assert list(fs.walk()) == [("", ["a", "docs"], []), ("a", ["b"], []), ("a/b", [], []), ("docs", [], ["readme"])]
    with pytest.raises(errors.InvalidPathError):
        fs.rmdir("")


def test_missing_files(fs: FileService) -> None:
    for call in (
        lambda: fs.read("ghost", 0, 10),
        lambda: fs.write("ghost", 0, b"x"),
        lambda: fs.delete("ghost"),
        lambda: fs.stat("ghost"),
        lambda: fs.listdir("ghost"),
        lambda: fs.rmdir("ghost"),
        lambda: fs.create("ghost/file"),
    ):
        with pytest.raises(errors.NoSuchFileError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, LookupError)
        assert info.value.path is not None


@pytest.mark.parametrize(
    "bad",
    ["", "/etc/passwd", "../escape", "a/../../b", "a//b", "a/", "./a", "a/.", "nul\x00byte", "x" * 256,
     "/".join(["d"] * 2100), "\udcff"],
)  # fmt: skip
def test_names_are_validated(fs: FileService, bad: str) -> None:
    with pytest.raises(errors.InvalidPathError):
        fs.create(bad)
    with pytest.raises(errors.InvalidPathError):
        fs.mkdir(bad, parents=True)
    assert isinstance(errors.InvalidPathError("x"), ValueError)


def test_names_never_touch_the_host(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    with FileService(root, capacity=64 * BS) as fs:
        fs.mkdir("etc")
        fs.create("etc/passwd")
        fs.write("etc/passwd", 0, b"not yours").result()
        fs.create("..data.bdev")  # only ".." alone is refused: this is a plain name
        fs.flush().result()
    assert sorted(p.name for p in root.iterdir()) == ["data.bdev", "journal.wal", "lock", "meta.snap"]
    assert split_path("a/b c/\\d") == ["a", "b c", "\\d"]
    with pytest.raises(errors.InvalidPathError):
        split_path(b"bytes")  # type: ignore[arg-type]


def test_read_write_round_trip(fs: FileService) -> None:
    fs.create("f")
    rng = random.Random(7)
    model = bytearray()
    for _ in range(60):
        offset = rng.randrange(0, 40 * BS)
        data = rng.randbytes(rng.randrange(1, 5 * BS))
        assert fs.write("f", offset, data).result() == len(data)
        end = offset + len(data)
        if end > len(model):
            model.extend(bytes(end - len(model)))
        model[offset:end] = data
        lo = rng.randrange(0, len(model))
        hi = rng.randrange(lo, len(model) + 1)
        assert fs.read("f", lo, hi - lo).result() == bytes(model[lo:hi])
    assert fs.stat("f").size == len(model)
    assert fs.read("f", 0, len(model)).result() == bytes(model)


def test_read_past_end_is_short(fs: FileService) -> None:
    fs.create("f")
    fs.write("f", 0, b"abcdef").result()
    assert fs.read("f", 2, 100).result() == b"cdef"
    assert fs.read("f", 6, 10).result() == b""
    assert fs.read("f", 1000, 10).result() == b""
    buf = bytearray(10)
    assert fs.read_into("f", 3, buf).result() == 3 and bytes(buf[:3]) == b"def"
    fs.write("f", 3 * BS + 10, b"tail").result()  # a hole in between reads as zeros
    data = fs.read("f", 0, 4 * BS).result()
    assert data[:6] == b"abcdef" and data[6 : 3 * BS + 10] == bytes(3 * BS + 4) and data[-4:] == b"tail"
    assert fs.stat("f").blocks == 2


def test_scatter_gather(fs: FileService) -> None:
    fs.create("v")
    parts = [b"a" * 1000, bytearray(b"b" * 5000), memoryview(b"c" * 3 * BS), b"", b"d" * 7]
    total = sum(len(p) for p in parts)
    assert fs.writev("v", 123, parts).result() == total
    expected = b"".join(bytes(p) for p in parts)
    outs = [bytearray(10), bytearray(2 * BS), bytearray(3 * BS)]
    got = fs.readv("v", 123, outs).result()
    assert got == total and b"".join(outs)[:total] == expected
    with pytest.raises(errors.InvalidArgumentError):
        fs.readv("v", 0, [b"read-only"])
    with pytest.raises(errors.InvalidArgumentError):
        fs.writev("v", 0, b"not a list")


def test_overwrites_do_not_leak_blocks(fs: FileService) -> None:
    fs.create("f")
    for i in range(20):
        fs.write("f", 0, bytes([i]) * 8 * BS).result()
        fs.flush().result()
    stats = fs.stats()
    assert stats["free_blocks"] == stats["total_blocks"] - 8 and stats["pending_free_blocks"] == 0
    fs.delete("f")
    fs.flush().result()
    assert fs.stats()["free_blocks"] == fs.stats()["total_blocks"]


def test_full_device(tmp_path: Path) -> None:
    with FileService(tmp_path / "small", capacity=16 * BS) as fs:
        fs.create("big")
        with pytest.raises(errors.DeviceFullError) as info:
            fs.write("big", 0, bytes(17 * BS)).result()
        assert isinstance(info.value, OSError) and info.value.path == "big"
        assert fs.stat("big").size == 0 and fs.stats()["free_blocks"] == 16  # nothing half-done
        assert fs.write("big", 0, bytes(10 * BS)).result() == 10 * BS
        # overwrites are copy-on-write: the new copy needs room of its own
        with pytest.raises(errors.DeviceFullError):
            fs.write("big", 0, b"\x01" * 10 * BS).result()
        assert fs.write("big", 0, b"\x01" * 6 * BS).result() == 6 * BS
        assert fs.stats()["free_blocks"] == 0 and fs.stats()["pending_free_blocks"] == 6
        # the replaced blocks come back once a commit no longer needs them: one is made on demand
        commits = fs.stats()["commits"]
        assert fs.write("big", 4 * BS, b"\x02" * 6 * BS).result() == 6 * BS
        assert fs.stats()["commits"] == commits + 1
        assert fs.read("big", 0, 10 * BS).result() == b"\x01" * 4 * BS + b"\x02" * 6 * BS
        fs.delete("big")
        fs.create("other")
        with pytest.raises(errors.DeviceFullError):
            fs.write("other", 0, bytes(17 * BS)).result()
        assert fs.write("other", 0, bytes(16 * BS)).result() == 16 * BS


def test_reopen_replays_and_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    with FileService(root, capacity=256 * BS, checkpoint_bytes=1 << 30) as fs:
        fs.mkdir("d")
        for i in range(5):
            fs.create(f"d/f{i}")
            fs.write(f"d/f{i}", i * 100, bytes([65 + i]) * (i + 1) * 1000).result()
            fs.flush().result()
        fs.write("d/f0", 0, b"unflushed").result()
        assert fs.stats()["journal_records"] == 5
        fs.close(flush=False)
    with FileService(root) as fs:
        assert fs.replayed_records == 5 and fs.capacity == 256 * BS
        assert fs.read("d/f0", 0, 9).result() == b"A" * 9  # the unflushed write is gone
        assert fs.read("d/f3", 300, 4000).result() == b"D" * 4000
    # close checkpointed: nothing to replay now
    with FileService(root) as fs:
        assert fs.replayed_records == 0 and fs.listdir("d") == [f"f{i}" for i in range(5)]
    with pytest.raises(errors.InvalidArgumentError):
        FileService(root, capacity=512 * BS)


def test_frequent_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    with FileService(root, capacity=256 * BS, checkpoint_bytes=512) as fs:
        for i in range(30):
            fs.create(f"f{i}")
            fs.write(f"f{i}", 0, str(i).encode() * 100).result()
            fs.flush().result()
        assert fs.stats()["checkpoints"] >= 3
        fs.close(flush=False)
    with FileService(root) as fs:
        assert len(fs.listdir()) == 30 and fs.read("f29", 0, 4).result() == b"2929"


def test_data_dir_is_locked(tmp_path: Path) -> None:
    with FileService(tmp_path / "svc", capacity=16 * BS), pytest.raises(errors.StorageError, match="in use"):
        FileService(tmp_path / "svc")
    with pytest.raises(errors.NoSuchFileError):
        FileService(tmp_path / "nothing", create=False)


def test_closed_service_refuses(tmp_path: Path) -> None:
    fs = FileService(tmp_path / "svc", capacity=16 * BS)
    fs.create("f")
    pending = fs.write("f", 0, b"x" * 5000)
    fs.close()
    assert pending.result() == 5000
    for call in (lambda: fs.read("f", 0, 1), lambda: fs.flush(), lambda: fs.create("g"), lambda: fs.listdir()):
        with pytest.raises(errors.RuntimeClosedError):
            call()
    fs.close()


def test_concurrent_readers_and_writers(fs: FileService) -> None:
    """Each writer owns a file and stripes of a shared one; readers check every read against what is possible."""
    nthreads, rounds, stripe = 6, 25, 3000
    fs.create("shared")
    for t in range(nthreads):
        fs.create(f"own{t}")
    errors_seen: list[BaseException] = []
    stop = threading.Event()

    def writer(t: int) -> None:
        rng = random.Random(t)
        try:
            for r in range(rounds):
                payload = bytes([t * 16 + r % 16]) * rng.randrange(1, 3 * BS)
                assert fs.write(f"own{t}", 0, payload).result() == len(payload)
                assert fs.read(f"own{t}", 0, len(payload)).result() == payload
                # stripes of the shared file only ever hold one writer's byte value
                assert fs.write("shared", t * stripe, bytes([t + 1]) * stripe).result() == stripe
                if r % 10 == 0:
                    fs.flush().result()
        except BaseException as exc:
            errors_seen.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                data = fs.read("shared", 0, nthreads * stripe).result()
                for t in range(nthreads):
                    part = data[t * stripe : (t + 1) * stripe]
                    # never torn: a stripe is all zeros (not written yet or a hole) or all the writer's value
                    assert part in (b"", bytes(len(part)), bytes([t + 1]) * len(part)), (t, set(part))
        except BaseException as exc:
            errors_seen.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for th in readers:
        th.start()
    with concurrent.futures.ThreadPoolExecutor(nthreads) as pool:
        list(pool.map(writer, range(nthreads)))
    stop.set()
    for th in readers:
        th.join()
    assert not errors_seen, errors_seen[0]
    fs.flush().result()
    assert fs.read("shared", 0, nthreads * stripe).result() == b"".join(
        bytes([t + 1]) * stripe for t in range(nthreads)
    )


def test_concurrent_namespace_changes(fs: FileService) -> None:
    def churn(t: int) -> None:
        for i in range(30):
            name = f"t{t}-{i}"
            fs.create(name)
            fs.write(name, 0, name.encode()).result()
            if i % 2:
                fs.delete(name)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(churn, range(4)))
    names = fs.listdir()
    assert len(names) == 4 * 15 and all(fs.read(n, 0, 100).result() == n.encode() for n in names)


def test_free_space_map() -> None:
    fsm = FreeSpaceMap(100, [0, 1, 2, 50])
    assert fsm.free == 96 and fsm.extents() == [(3, 47), (51, 49)]
    assert fsm.allocate(10) == [[3, 10]]
    assert fsm.allocate(40) == [[51, 40]]
    got = fsm.allocate(40)  # no single extent left that big: assembled from pieces
    assert sum(c for _, c in got) == 40 and fsm.free == 6
    fsm.release([b for s, c in got for b in range(s, s + c)])
    fsm.release(list(range(3, 13)))
    assert fsm.free == 56
    with pytest.raises(ValueError):
        fsm.allocate(57)
    with pytest.raises(ValueError):
        FreeSpaceMap(10, [3, 3])


# --- journal damage --------------------------------------------------------------------------


def _records(path: Path) -> list[tuple[int, int]]:
    """(offset, total length) of each record in a journal file."""
    data = path.read_bytes()
    out = []
    pos = 32
    while pos + 24 <= len(data):
        _, length, _, _, _ = struct.unpack_from("<IIQII", data, pos)
        out.append((pos, 24 + length))
        pos += 24 + length
    return out


def _make_journal(root: Path, commits: int = 4) -> None:
    with FileService(root, capacity=64 * BS, checkpoint_bytes=1 << 30) as fs:
        for i in range(commits):
            fs.create(f"f{i}")
            fs.write(f"f{i}", 0, bytes([i + 1]) * 100).result()
            fs.flush().result()
        fs.close(flush=False)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_damaged_committed_record_is_detected(tmp_path: Path, where: str) -> None:
    root = tmp_path / "svc"
    _make_journal(root)
    journal = root / JOURNAL_NAME
    offset, length = _records(journal)[1]
    _flip(journal, offset + (length - 5 if where == "payload" else 4))
    with pytest.raises(errors.JournalCorruptError, match="damaged") as info:
        FileService(root)
    assert isinstance(info.value, errors.CorruptDataError)
    # nothing was changed on disk: still refused
    with pytest.raises(errors.JournalCorruptError):
        FileService(root)


@pytest.mark.parametrize("tear", ["cut", "garbage", "zeros", "flip-last"])
def test_torn_tail_is_ignored(tmp_path: Path, tear: str) -> None:
    root = tmp_path / "svc"
    _make_journal(root)
    journal = root / JOURNAL_NAME
    offset, length = _records(journal)[-1]
    data = journal.read_bytes()
    if tear == "cut":
        journal.write_bytes(data[: offset + length // 2])
    elif tear == "garbage":
        journal.write_bytes(data + os.urandom(100))
    elif tear == "zeros":
        journal.write_bytes(data[:offset] + bytes(length))
    else:  # a damaged last record cannot be told from a torn one
        _flip(journal, offset + length - 3)
    with FileService(root) as fs:
        lost_last = tear != "garbage"
        assert fs.listdir() == (["f0", "f1", "f2"] if lost_last else ["f0", "f1", "f2", "f3"])
        assert fs.stats()["torn_tail_bytes"] > 0
        assert fs.read("f2", 0, 100).result() == b"\x03" * 100
        # the tail was cut, so new commits append cleanly and replay later
        fs.create("after")
        fs.flush().result()
        fs.close(flush=False)
    with FileService(root) as fs:
        assert "after" in fs.listdir() and fs.stats()["torn_tail_bytes"] == 0


def test_damaged_snapshot_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    _make_journal(root)
    with FileService(root) as fs:
        fs.checkpoint()
    _flip(root / SNAPSHOT_NAME, 40)
    with pytest.raises(errors.JournalCorruptError, match="snapshot"):
        FileService(root)


def test_damaged_journal_header_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    _make_journal(root)
    _flip(root / JOURNAL_NAME, 10)
    with pytest.raises(errors.JournalCorruptError, match="header"):
        FileService(root)


def test_finished_io_leaves_no_buffer_exported(tmp_path: Path) -> None:
    # A bytearray cannot be resized while anything still exports its buffer.
    with FileService(tmp_path / "svc", capacity=16 * 4096, block_size=4096) as fs:
        fs.create("f")
        ok = bytearray(b"a" * 8192)
        fs.write("f", 0, memoryview(ok)).result()
        ok.extend(b"x")
        back = bytearray(8192)
        assert fs.readv("f", 0, [memoryview(back)]).result() == 8192
        back.extend(b"x")
        too_big = bytearray(64 * 4096)
        with pytest.raises(errors.DeviceFullError):
            fs.write("f", 0, memoryview(too_big)).result()
        too_big.extend(b"x")  # the failed write's traceback does not pin it


def test_concurrent_writers_near_full_get_room_or_a_clean_error(tmp_path: Path) -> None:
    blob = os.urandom(6 * 4096)
    with FileService(tmp_path / "svc", capacity=64 * 4096, block_size=4096) as fs:
        names = [f"f{i}" for i in range(8)]
        for name in names:
            fs.create(name)

        def rewrite(name: str) -> int:
            full = 0
            for _ in range(40):
                try:
                    fs.write(name, 0, memoryview(bytearray(blob))).result()
                except errors.DeviceFullError:
                    full += 1
            return full

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            fulls = list(pool.map(rewrite, names))
        fs.flush().result()
        for name in names:  # whatever was written last is whole
            data = fs.read(name, 0, len(blob)).result()
            assert data in (blob, b"")
        assert sum(fulls) < 8 * 40
