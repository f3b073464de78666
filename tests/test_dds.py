"""The DDS read path: the native cache table, and front end to back end over a channel."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dpdpu
from dpdpu import errors
from dpdpu.network import ChannelPair
from dpdpu.storage import (
    CacheEntry,
    CacheMissError,
    CacheTable,
    DdsBackEnd,
    DdsFrontEnd,
    DdsRequest,
    FileService,
    RemoteRequestError,
)

BS = 4096


def test_cache_put_get_update_delete() -> None:
    table = CacheTable(100)
    assert len(table) == 0 and table.capacity == 100
    assert table.put(b"alpha", 1, "data/a", 0, 10) is True
    assert table.put("beta", 7, "data/b", 4096, 20) is True
    assert table.get(b"alpha") == CacheEntry(1, "data/a", 0, 10)
    assert table.get("beta") == CacheEntry(7, "data/b", 4096, 20)
    assert table.get(b"gamma") is None
    assert table.put(b"alpha", 2, "data/b", 8, 30) is False
    assert table.get(b"alpha") == CacheEntry(2, "data/b", 8, 30)
    assert len(table) == 2 and b"alpha" in table
    assert table.delete(b"alpha") is True and table.delete(b"alpha") is False
    assert table.get(b"alpha") is None and len(table) == 1
    assert table.files == ["data/a", "data/b"]
    key64 = bytes(range(64))
    table.put(key64, 2**64 - 1, "f", 2**64 - 1, 2**32 - 1)
    assert table.get(key64) == CacheEntry(2**64 - 1, "f", 2**64 - 1, 2**32 - 1)


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.put(b"", 1, "f", 0, 1),
        lambda t: t.put(b"x" * 65, 1, "f", 0, 1),
        lambda t: t.put(5, 1, "f", 0, 1),
        lambda t: t.put(b"k", -1, "f", 0, 1),
        lambda t: t.put(b"k", 1, "", 0, 1),
        lambda t: t.put(b"k", 1, 3, 0, 1),
        lambda t: t.put(b"k", 1, "f", 0, 2**32),
        lambda t: t.put(b"k", True, "f", 0, 1),
        lambda t: t.get(b""),
        lambda t: t.delete(b"y" * 100),
    ],
)
def test_cache_validation(call: object) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        call(CacheTable(4))  # type: ignore[operator]


def test_cache_capacity_validation() -> None:
    for bad in (0, -1, 1 << 30, 2.5, True):
        with pytest.raises(errors.InvalidArgumentError):
            CacheTable(bad)  # type: ignore[arg-type]


def test_cache_full() -> None:
    table = CacheTable(64)
    for i in range(64):
        table.put(f"k{i}", i, "f", i, 1)
    with pytest.raises(errors.DeviceFullError, match="full"):
        table.put(b"one-more", 0, "f", 0, 1)
    assert len(table) == 64
    table.put(b"k3", 99, "f", 0, 1)  # an update needs no room
    table.delete(b"k0")
    table.put(b"one-more", 0, "f", 0, 1)
    assert len(table) == 64 and table.get(b"k3") == CacheEntry(99, "f", 0, 1)


def test_cache_concurrent_lookups_and_inserts() -> None:
    table = CacheTable(20_000)
    stable = [f"stable-{i}".encode() for i in range(2000)]
    for i, k in enumerate(stable):
        table.put(k, i, "s", i, i)
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for k in stable[::7]:
                e = table.get(k)
                if e is None or e.offset != e.size or e.file != "s":
                    bad.append(f"{k!r} -> {e}")

    def writer(w: int) -> None:
        for i in range(3000):
            key = f"w{w}-{i}".encode()
            table.put(key, i, f"file{w}", i, i)
            if i % 3 == 0:
                assert table.delete(key)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not bad
    assert len(table) == 2000 + 4 * 2000
    assert table.get(b"w2-4") == CacheEntry(4, "file2", 4, 4)
    assert table.get(b"w2-3") is None


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[FileService]:
    with FileService(tmp_path / "svc", capacity=256 * BS) as service:
        yield service


@pytest.fixture
def store(fs: FileService) -> tuple[FileService, CacheTable, dict[bytes, bytes]]:
    """Two files holding ten values, all of them cached."""
    table = CacheTable(64)
    values = {f"key{i}".encode(): bytes([i]) * (100 + 37 * i) for i in range(10)}
    offsets = {"a": 0, "b": 0}
    blobs: dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}
    for i, (key, value) in enumerate(values.items()):
        file = "a" if i % 2 else "b"
        table.put(key, 1, file, offsets[file], len(value))
        blobs[file] += value
        offsets[file] += len(value)
    for file, blob in blobs.items():
        fs.create(file)
        fs.write(file, 0, bytes(blob)).result()
    return fs, table, values


def _link(
    backend_args: dict[str, object], fs: FileService, table: CacheTable, host_handler: object = None
) -> tuple[DdsFrontEnd, DdsBackEnd]:
    host, agent = ChannelPair.local(1 << 16)
    backend = DdsBackEnd(agent, fs, table, **backend_args).start()  # type: ignore[arg-type]
    return DdsFrontEnd(host, host_handler=host_handler, timeout=10), backend  # type: ignore[arg-type]


def test_end_to_end_split(store: tuple[FileService, CacheTable, dict[bytes, bytes]]) -> None:
    fs, table, values = store
    keys = list(values)

    def even(req: DdsRequest) -> bool:
        # unknown keys go to the DPU too, to be missed there
        return not req.key[3:].isdigit() or int(req.key[3:]) % 2 == 0

    def host(req: DdsRequest) -> bytes:
        return b"host:" + req.key

    front, back = _link({"offload_predicate": even}, fs, table, host)
    with front:
        got = front.get_many([*keys, b"unknown"])
        assert front.get(b"key4") == values[b"key4"]
        assert front.get("key5") == b"host:key5"
    back.join(5)
    expected = [values[k] if int(k[3:]) % 2 == 0 else b"host:" + k for k in keys] + [b"host:unknown"]
    assert got == expected
    stats = back.stats()
    assert stats.requests == 13 and stats.dpu_served == 6 and stats.forwarded == 7 and stats.misses == 1
    assert stats.failed == 0
    assert stats.dpu_bytes == sum(len(values[k]) for k in keys if int(k[3:]) % 2 == 0) + len(values[b"key4"])
    assert front.served == {"dpu": 6, "host": 7}


def test_large_values_and_offload_predicate(fs: FileService) -> None:
    table = CacheTable(8)
    big = bytes(range(256)) * 200  # larger than a message of the 64 KiB ring
    fs.create("big")
    fs.write("big", 0, big).result()
    table.put(b"big", 1, "big", 0, len(big))
    table.put(b"tail", 1, "big", len(big) - 10, 10)

    @dpdpu.offload
    def on_dpu(req: DdsRequest) -> bool:
        return True

    with dpdpu.Runtime("bluefield3"):
        front, back = _link({"offload_predicate": on_dpu}, fs, table)
        with front:
            assert front.get_many([b"big", b"tail", b"big"]) == [big, big[-10:], big]
            with pytest.raises(CacheMissError, match="not cached"):
                front.get(b"nope")
    back.join(5)
    # a miss is forwarded to the host, which has no handler here: the front end raises
    assert back.stats().dpu_served == 3 and back.stats().misses == 1 and back.stats().failed == 0


def test_failures_are_per_request(store: tuple[FileService, CacheTable, dict[bytes, bytes]]) -> None:
    fs, table, values = store
    table.put(b"ghost", 1, "no/such/file", 0, 5)

    def predicate(req: DdsRequest) -> bool:
        if req.key == b"key1":
            raise ValueError("cannot decide")
        return req.key != b"key2"

    def host(req: DdsRequest) -> bytes:
        raise OSError("host is down")

    def function(req: DdsRequest) -> tuple[str, int, int] | None:
        if req.key == b"key3":
            raise ZeroDivisionError("bad math")
        entry = table.get(req.key)
        return None if entry is None else (entry.file, entry.offset, entry.size)

    front, back = _link({"offload_predicate": predicate, "offload_function": function}, fs, table, host)
    with front:
        with pytest.raises(RemoteRequestError, match="offload predicate raised ValueError: cannot decide") as info:
            front.get_many([b"key0", b"key1"])
        assert info.value.remote_type == "ValueError"
        with pytest.raises(RemoteRequestError, match="host handler raised OSError"):
            front.get(b"key2")
        with pytest.raises(RemoteRequestError, match="offload function raised ZeroDivisionError"):
            front.get(b"key3")
        with pytest.raises(errors.NoSuchFileError):
            front.get(b"ghost")
        # the back end still serves
        assert front.get_many([b"key0", b"key4"]) == [values[b"key0"], values[b"key4"]]
    back.join(5)
    stats = back.stats()
    # the host handler's failure happens on the host, not in the back end
    assert stats.failed == 3 and stats.forwarded == 1 and stats.dpu_served == 3 and stats.requests == 7


def test_backend_arguments(fs: FileService) -> None:
    host, agent = ChannelPair.local(1 << 16)
    with host, agent:
        with pytest.raises(errors.InvalidArgumentError):
            DdsBackEnd(agent, fs)
        with pytest.raises(errors.InvalidArgumentError):
            DdsBackEnd(agent, fs, CacheTable(1), offload_predicate=5)  # type: ignore[arg-type]
        with pytest.raises(errors.InvalidArgumentError):
            DdsFrontEnd(host).get(b"")
        with pytest.raises(errors.InvalidArgumentError):
            DdsFrontEnd(host, host_handler=3)  # type: ignore[arg-type]


# --- the back end in its own process -------------------------------------------------------------


def _filled_service(path: Path) -> dict[bytes, tuple[str, int, bytes]]:
    """A closed file service holding values; key -> (file, offset, value)."""
    where: dict[bytes, tuple[str, int, bytes]] = {}
    big = bytes(range(256)) * 1024  # 256 KiB: goes back in bulk mode
    with FileService(path, capacity=1024 * BS) as fs:
        blob = bytearray()
        for i in range(20):
            value = bytes([i + 1]) * (50 + 97 * i)
            where[f"k{i}".encode()] = ("vals", len(blob), value)
            blob += value
        fs.create("vals")
        fs.write("vals", 0, bytes(blob)).result()
        fs.create("big")
        fs.write("big", 0, big).result()
        fs.mkdir("sub")
        where[b"big"] = ("big", 0, big)
        fs.flush().result()
    return where


def test_back_end_process_serves_forwards_and_updates_its_cache(tmp_path: Path) -> None:
    from dpdpu.storage.dds_process import DdsProcess

    where = _filled_service(tmp_path / "svc")
    host_calls: list[bytes] = []

    def host(req: DdsRequest) -> bytes:
        host_calls.append(req.key)
        return b"host:" + req.key

    # the predicate sends keys ending in 7 to the host; it is imported in the back end process
    with DdsProcess.spawn(tmp_path / "svc", predicate="dds_offloads:not_sevens", device="bluefield2") as back:
        assert back.pid != os.getpid()
        with back.front_end(host_handler=host, timeout=30) as front:
            for key, (file, offset, value) in where.items():
                assert front.cache_put(key, 1, file, offset, len(value)) is True
            assert front.cache_put(b"k1", 2, "vals", *where[b"k1"][1:2], len(where[b"k1"][2])) is False
            keys = [*where, b"uncached"]
            got = front.get_many(keys)
            for key, value in zip(keys, got, strict=True):
                expected = b"host:" + key if key.endswith(b"7") or key == b"uncached" else where[key][2]
                assert value == expected, key
            assert sorted(host_calls) == [b"k17", b"k7", b"uncached"]
            assert front.served == {"dpu": 19, "host": 3}
            # deleting from the back end's table turns the key into a miss, answered by the host
            assert front.cache_delete(b"k3") is True and front.cache_delete(b"k3") is False
            assert front.get(b"k3") == b"host:k3"
            with pytest.raises(errors.InvalidArgumentError):
                front.cache_put(b"x", -1, "vals", 0, 1)
            stats = front.backend_stats()
            assert stats.dpu_served == 19 and stats.forwarded == 4 and stats.misses == 2 and stats.failed == 0
            assert stats.control >= len(where) + 3
        assert back.close() == 0


def test_back_end_process_errors(tmp_path: Path) -> None:
    from dpdpu.storage.dds_process import BackEndStartError, DdsProcess

    _filled_service(tmp_path / "svc")
    with pytest.raises(BackEndStartError, match="No module named"):
        DdsProcess.spawn(tmp_path / "svc", predicate="no_such_module_here:f")
    with pytest.raises(BackEndStartError, match="no data directory"):
        DdsProcess.spawn(tmp_path / "none")  # no file service there
    with pytest.raises(errors.InvalidArgumentError):
        DdsProcess.spawn(tmp_path / "svc", function="not a spec")


def test_back_end_process_dies_mid_stream(tmp_path: Path) -> None:
    from dpdpu.storage.dds_process import DdsProcess

    where = _filled_service(tmp_path / "svc")
    back = DdsProcess.spawn(tmp_path / "svc")
    try:
        front = back.front_end(timeout=10)
        file, offset, value = where[b"big"]
        front.cache_put(b"big", 1, file, offset, len(value))
        assert front.get(b"big") == value
        os.kill(back.pid, signal.SIGKILL)
        back.process.wait(10)
        with pytest.raises((errors.RuntimeClosedError, errors.QueueFullError)):
            for _ in range(1000):
                front.get(b"big")
    finally:
        back.close()
    # acknowledged data is intact: the service opens again and serves it
    with FileService(tmp_path / "svc", create=False) as fs:
        assert fs.read("big", 0, len(value)).result() == value


def test_back_end_process_output_never_stalls_it(tmp_path: Path) -> None:
    from dpdpu.storage.dds_process import DdsProcess

    where = _filled_service(tmp_path / "svc")
    file, offset, value = where[b"k3"]
    with DdsProcess.spawn(tmp_path / "svc", predicate="dds_offloads:chatty") as back:
        with back.front_end(timeout=20) as front:
            front.cache_put(b"k3", 1, file, offset, len(value))
            for _ in range(300):  # 300 KiB of output: far more than a pipe holds
                assert front.get(b"k3") == value
        assert back.close() == 0


def test_entries_must_point_at_existing_bytes(tmp_path: Path) -> None:
    from dpdpu.storage.dds_process import DdsProcess

    where = _filled_service(tmp_path / "svc")
    file, offset, value = where[b"k2"]
    with DdsProcess.spawn(tmp_path / "svc") as back, back.front_end(timeout=20) as front:
        with pytest.raises(errors.NoSuchFileError):
            front.cache_put(b"a", 1, "missing", 0, 1)
        with pytest.raises(errors.InvalidPathError):
            front.cache_put(b"a", 1, "../../etc/passwd", 0, 1)
        with pytest.raises(errors.InvalidPathError):
            front.cache_put(b"a", 1, "/", 0, 0)
        with pytest.raises(errors.FileTypeError):
            front.cache_put(b"a", 1, "sub", 0, 0)
        with pytest.raises(errors.InvalidArgumentError, match="which has"):
            front.cache_put(b"a", 1, "vals", offset, 10**6)
        assert front.cache_put(b"k2", 1, file, offset, len(value))
        assert front.get_many([b"k2"]) == [value]


def test_a_file_shorter_than_its_entry_is_an_error_not_a_short_value(
    store: tuple[FileService, CacheTable, dict[bytes, bytes]],
) -> None:
    fs, table, values = store
    fs.create("short")
    fs.write("short", 0, b"hello world").result()
    table.put(b"past", 1, "short", 5, 100)  # the table itself does not know file sizes
    table.put(b"beyond", 1, "short", 1000, 4)
    front, back = _link({}, fs, table)
    with front:
        for key in (b"past", b"beyond"):
            with pytest.raises(errors.TruncatedDataError, match="only"):
                front.get(key)
        assert front.get(b"key1") == values[b"key1"]
    back.join(5)
