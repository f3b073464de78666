"""The host<->DPU channel: round trips, two real processes, peer death, errors, properties."""

from __future__ import annotations

import collections
import gc
import inspect
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpdpu import errors
from dpdpu.network import Channel, ChannelPair
from dpdpu.runtime.cost import CostModel
from dpdpu.runtime.native import ffi, lib
from dpdpu.runtime.profile import Profile

SIZES = [0, 1, 7, 63, 64, 65, 200, 1000, 4096, 20000]


def message(seed: int, i: int, bulk_every: int = 0, bulk_size: int = 0) -> bytes:
    """Deterministic message i of a sequence (the agent processes run this same function)."""
    rng = random.Random(seed * 1_000_003 + i)
    size = bulk_size if bulk_every and i % bulk_every == bulk_every - 1 else rng.choice(SIZES)
    return rng.randbytes(size)


GEN = f"import random\nSIZES = {SIZES!r}\n" + inspect.getsource(message)

#: What the other process runs: ``python -c AGENT NAME MODE ARGS...``.
AGENT = (
    GEN
    + r"""
import os, signal, sys, time, zlib
from dpdpu import errors
from dpdpu.network import Channel, ChannelPair

name, mode, *args = sys.argv[1:]
if mode == "recv-check":  # receive until the sender closes; report count and checksum
    ch = Channel.attach(name, timeout=10)
    count, crc = 0, 0
    while True:
        try:
            data = ch.recv(timeout=10)
        except errors.RuntimeClosedError:
            break
        crc = zlib.crc32(len(data).to_bytes(8, "little") + data, crc)
        count += 1
    print(count, crc, flush=True)
elif mode == "send-seq":  # send a known sequence, then close
    seed, n, bulk_every, bulk_size = map(int, args)
    ch = Channel.attach(name, timeout=10)
    for i in range(n):
        data = message(seed, i, bulk_every, bulk_size)
        if len(data) > ch.max_message:
            ch.send_bulk(data, timeout=10)
        else:
            ch.send(data, timeout=10)
    ch.close()
    print("sent", flush=True)
elif mode == "recv-sleep":  # take the receiving end, then stop reading
    ch = Channel.attach(name, timeout=10)
    print("ready", flush=True)
    time.sleep(60)
elif mode == "send-then-die":  # commit some messages, then die without closing
    ch = Channel.attach(name, timeout=10)
    ch.send_many([b"m%d" % i for i in range(int(args[0]))])
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "bulk-then-die":  # die in the middle of a bulk message
    ch = Channel.attach(name, timeout=10)
    ch.send(b"before")
    print("sending", flush=True)
    ch.send_bulk(bytes(4 * ch.capacity))
elif mode == "serve":  # answer each request with its bytes reversed
    pair = ChannelPair.attach(name, timeout=10)
    print(pair.serve(lambda request: request[::-1]), flush=True)
"""
)

ROOT = Path(__file__).resolve().parent.parent


def agent(name: str, mode: str, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", AGENT, name, mode, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def checksum(messages: list[bytes]) -> int:
    crc = 0
    for data in messages:
        crc = zlib.crc32(len(data).to_bytes(8, "little") + data, crc)
    return crc


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh ring name, removed afterwards whatever happened."""
    ring = f"dpdpu-test-{os.getpid()}-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    yield ring
    for suffix in ("", ".req", ".rsp"):
        Channel.unlink(ring + suffix)


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    sender, receiver = Channel.local(8192)
    yield sender, receiver
    sender.close()
    receiver.close()


# --- in one process ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 1000, 4088])
def test_round_trip_sizes(pair: tuple[Channel, Channel], size: int) -> None:
    sender, receiver = pair
    assert sender.max_message == 4088
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for _ in range(5):  # a few laps so that some land across the end of the ring
        sender.send(data, timeout=0)
        assert receiver.recv(timeout=0) == data
    buf = bytearray(size + 3)
    sender.send(memoryview(data), timeout=0)
    assert receiver.recv_into(buf, timeout=0) == size
    assert buf[:size] == data


def test_wrap_around_many_times(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    for i in range(3000):
        data = message(1, i)[:3000]
        sender.send(data, timeout=0)
        assert receiver.recv(timeout=0) == data
    st = receiver.stats()
    assert st.messages == 3000 and st.bytes > 10 * sender.capacity
    assert sender.stats().messages == 3000


def test_batches_publish_once(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    batch = [b"%d" % i for i in range(20)] + [b""]
    sender.send_many(batch, timeout=0)
    assert sender.stats().batches == 1
    assert receiver.recv_many(1000, timeout=0) == batch
    assert receiver.stats().batches == 1
    with pytest.raises(errors.QueueFullError):
        receiver.recv_many(10, timeout=0)
    # more than the ring holds: published as room appears, received in order
    many = [message(2, i)[:300] for i in range(2000)]
    got: list[bytes] = []

    def read() -> None:
        while len(got) < len(many):
            got.extend(receiver.recv_many(64, timeout=5))

    reader = threading.Thread(target=read)
    reader.start()
    sender.send_many(iter(many), timeout=5)
    reader.join(10)
    assert got == many


def test_bulk_through_a_small_ring() -> None:
    sender, receiver = Channel.local(16384)
    with sender, receiver:
        payload = os.urandom(1 << 20)
        worker = threading.Thread(target=lambda: sender.send_bulk(payload, timeout=10))
        worker.start()
        assert receiver.recv(timeout=10) == payload
        worker.join()
        worker = threading.Thread(target=lambda: sender.send_bulk(payload, timeout=10, chunk=1000))
        worker.start()
        buf = bytearray(len(payload))
        assert receiver.recv_into(buf, timeout=10) == len(payload) and buf == payload
        worker.join()
        # a small payload goes as an ordinary message; recv_many takes a bulk one alone
        sender.send_bulk(b"small")
        assert receiver.recv_many(5, timeout=0) == [b"small"]

        def small_then_bulk() -> None:
            sender.send_many([b"a", b"b"])
            sender.send_bulk(payload, timeout=10)

        worker = threading.Thread(target=small_then_bulk)
        worker.start()
        assert receiver.recv_many(5, timeout=10) == [b"a", b"b"]
        assert receiver.recv_many(5, timeout=10) == [payload]
        worker.join()


def test_bulk_timeouts_resume_on_both_sides() -> None:
    sender, receiver = Channel.local(16384)
    with sender, receiver:
        payload = os.urandom(100_000)
        with pytest.raises(errors.QueueFullError) as info:
            sender.send_bulk(payload, timeout=0.02)
        assert 0 < info.value.sent < len(payload)  # type: ignore[attr-defined]
        first = bytearray(len(payload))
        with pytest.raises(errors.QueueFullError):
            receiver.recv_into(first, timeout=0.02)  # drains what was sent, then times out mid-message
        worker = threading.Thread(target=lambda: sender.send_bulk(payload, timeout=10))
        worker.start()
        assert receiver.recv(timeout=10) == payload  # continues into a new buffer
        worker.join()


def test_abandoned_bulk_message_is_reported() -> None:
    sender, receiver = Channel.local(16384)
    with sender, receiver:
        with pytest.raises(errors.QueueFullError):
            sender.send_bulk(bytes(100_000), timeout=0.01)
        buf = bytearray(100_000)
        with pytest.raises(errors.QueueFullError):
            receiver.recv_into(buf, timeout=0.01)
        sender.send(b"next", timeout=1)
        with pytest.raises(errors.TruncatedDataError, match="abandoned"):
            receiver.recv(timeout=1)
        assert receiver.recv(timeout=1) == b"next"


def test_close_wakes_a_blocked_receiver(pair: tuple[Channel, Channel]) -> None:
    _, receiver = pair
    caught: list[BaseException] = []

    def wait() -> None:
        try:
            receiver.recv()
        except BaseException as exc:
            caught.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    receiver.close()
    waiter.join(2)
    assert not waiter.is_alive()
    assert isinstance(caught[0], errors.RuntimeClosedError)
    with pytest.raises(errors.RuntimeClosedError, match="this end is closed"):
        receiver.recv(timeout=0)


class _Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted


def test_blocking_waits_let_signal_handlers_run(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        for call in (receiver.recv, lambda: receiver.recv_many(10), lambda: receiver.recv_into(bytearray(10))):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            start = time.monotonic()
            with pytest.raises(_Interrupted):
                call()
            assert time.monotonic() - start < 1.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    sender.send(b"still works")
    assert receiver.recv(timeout=1) == b"still works"


def test_closed_sender_is_drained_first(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    sender.send_many([b"one", b"two"])
    sender.close()
    assert receiver.recv(timeout=0) == b"one"
    assert receiver.recv_many(10) == [b"two"]
    with pytest.raises(errors.RuntimeClosedError, match="peer closed"):
        receiver.recv(timeout=1)
    assert receiver.stats().peer == "closed"


def test_closed_receiver_stops_the_sender(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    receiver.close()
    with pytest.raises(errors.RuntimeClosedError, match="peer closed"):
        sender.send(b"x")


def test_wrong_end_and_bad_arguments(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    with pytest.raises(errors.InvalidArgumentError, match="receiver end"):
        sender.recv(timeout=0)
    with pytest.raises(errors.InvalidArgumentError, match="sender end"):
        receiver.send(b"x")
    with pytest.raises(errors.InvalidArgumentError, match="bytes-like"):
        sender.send("text")
    with pytest.raises(errors.InvalidArgumentError, match="timeout"):
        sender.send(b"x", timeout=-1)
    with pytest.raises(errors.InvalidArgumentError):
        Channel.local(0)
    with pytest.raises(errors.InvalidArgumentError, match="invalid channel name"):
        Channel.create("a/b")


def test_oversized_message_names_size_and_limit(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    with pytest.raises(errors.JobTooLargeError, match="5000-byte message exceeds the limit of 4088 bytes"):
        sender.send(bytes(5000))
    with pytest.raises(errors.JobTooLargeError) as info:
        sender.send_many([b"ok", bytes(9000)])
    assert info.value.sent == 0 and info.value.index == 1  # type: ignore[attr-defined]
    sender.send(b"after")
    assert receiver.recv(timeout=0) == b"after"
    # items wider than a byte count in bytes
    wide = memoryview(array("i", [1, 2, 3]))
    sender.send_many([wide, b"z"])
    assert receiver.recv_many(5, timeout=0) == [wide.tobytes(), b"z"]


def test_timeouts_are_timeout_errors(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        receiver.recv(timeout=0.05)
    assert 0.04 < time.monotonic() - start < 1.0
    with pytest.raises(errors.QueueFullError, match="no message is waiting"):
        receiver.recv(timeout=0)
    sender.send(bytes(1000), timeout=0)
    while True:  # fill every byte left with the smallest records
        try:
            sender.send(b"", timeout=0)
        except errors.QueueFullError as exc:
            assert "full" in str(exc)
            break
    with pytest.raises(errors.QueueFullError, match=r"no room for 1000 bytes within 0\.02 s"):
        sender.send(bytes(1000), timeout=0.02)
    with pytest.raises(errors.QueueFullError) as info:
        sender.send_many([bytes(10)] * 5, timeout=0.02)
    assert info.value.sent == 0  # type: ignore[attr-defined]
    with pytest.raises(errors.BufferTooSmallError) as small:
        receiver.recv_into(bytearray(10), timeout=0)
    assert small.value.needed == 1000
    assert receiver.recv(timeout=0) == bytes(1000)  # the message stayed in the ring


def test_stats_count_bytes_and_model_pcie() -> None:
    sender, receiver = Channel.local(8192, device="bluefield3")
    with sender, receiver:
        sender.send(bytes(100))
        sender.send_many([bytes(10), bytes(20)])
        receiver.recv_many(10)
        tx, rx = sender.stats(), receiver.stats()
        assert (tx.messages, tx.bytes, rx.messages, rx.bytes) == (3, 130, 3, 130)
        model = CostModel(Profile.load("bluefield3"))
        assert tx.modeled_s == pytest.approx(model.transfer_seconds(100) + model.transfer_seconds(30))
        assert rx.modeled_s == 0 and tx.role == "sender" and tx.peer == "alive" and tx.peer_pid == os.getpid()
    charged: list[int] = []

    def cost(nbytes: int) -> float:
        charged.append(nbytes)
        return 1e-6

    sender, receiver = Channel.local(8192, pcie=cost)
    with sender, receiver:
        sender.send(b"abc")
        assert charged == [3] and sender.stats().modeled_s == pytest.approx(1e-6)
    assert sender.stats().messages == 1  # still readable once closed


def test_native_reserve_peek_release() -> None:
    """The zero-copy half of the C API: reserve/commit and peek/release/rewind."""
    out = ffi.new("struct dpdpu_ring **")
    assert lib.dpdpu_ring_create(ffi.NULL, 4096, lib.DPDPU_RING_CREATE_PRODUCER, out) == 0
    prod = ffi.gc(out[0], lib.dpdpu_ring_free)
    assert lib.dpdpu_ring_open_peer(prod, out) == 0
    cons = ffi.gc(out[0], lib.dpdpu_ring_free)
    assert lib.dpdpu_ring_open_peer(prod, out) == lib.DPDPU_ERR_IN_USE
    slot = ffi.new("void **")
    for i in range(3):  # three records, one publication
        assert lib.dpdpu_ring_reserve(prod, 5, slot, 0) == 0
        ffi.memmove(slot[0], b"rec-%d" % i, 5)
    view = ffi.new("struct dpdpu_ring_view *")
    assert lib.dpdpu_ring_peek(cons, view, 0) == lib.DPDPU_ERR_AGAIN  # nothing committed yet
    assert lib.dpdpu_ring_commit(prod) == 3
    got = []
    for _ in range(3):
        assert lib.dpdpu_ring_peek(cons, view, 0) == 0
        assert view.flags == lib.DPDPU_RING_VIEW_FIRST | lib.DPDPU_RING_VIEW_LAST
        assert int(ffi.cast("uintptr_t", view.data)) % 8 == 0
        got.append(ffi.buffer(view.data, view.len)[:])
    assert got == [b"rec-0", b"rec-1", b"rec-2"]
    assert lib.dpdpu_ring_rewind(cons) == 0
    assert lib.dpdpu_ring_peek(cons, view, 0) == 0 and ffi.buffer(view.data, view.len)[:] == b"rec-0"
    assert lib.dpdpu_ring_peek(cons, view, 0) == 0
    assert lib.dpdpu_ring_release(cons) == 2
    assert lib.dpdpu_ring_peek(cons, view, 0) == 0 and ffi.buffer(view.data, view.len)[:] == b"rec-2"
    assert lib.dpdpu_ring_release(cons) == 1
    # an iovec batch; a too-large member fails it before anything is sent
    keep = [ffi.from_buffer(b) for b in (b"a", b"bb", b"x" * 3000)]
    iov = ffi.new("struct dpdpu_ring_iov[]", [(keep[0], 1), (keep[1], 2), (keep[2], 3000)])
    sent = ffi.new("uint32_t *")
    assert lib.dpdpu_ring_send_batch(prod, iov, 3, 0, sent) == lib.DPDPU_ERR_TOO_LARGE and sent[0] == 0
    assert lib.dpdpu_ring_send_batch(prod, iov, 2, 0, sent) == 0 and sent[0] == 2
    buf = ffi.new("char[]", 10)
    lens = ffi.new("uint64_t[]", 4)
    count = ffi.new("uint32_t *")
    assert lib.dpdpu_ring_recv_batch(cons, buf, 10, lens, 4, count, 0) == 0
    assert (count[0], lens[0], lens[1], ffi.buffer(buf, 3)[:]) == (2, 1, 2, b"abb")
    # bulk chunks arrive as 64-byte aligned spans with their offsets
    payload = bytes(range(256)) * 12
    worker = threading.Thread(
        target=lambda: lib.dpdpu_ring_send_bulk(prod, payload, len(payload), 512, 2_000_000, ffi.NULL)
    )
    worker.start()
    spans: list[tuple[int, bytes, int]] = []
    while not spans or not spans[-1][2] & lib.DPDPU_RING_VIEW_LAST:
        assert lib.dpdpu_ring_peek(cons, view, 2_000_000) == 0
        assert int(ffi.cast("uintptr_t", view.data)) % 64 == 0 and view.total == len(payload)
        spans.append((int(view.offset), ffi.buffer(view.data, view.len)[:], int(view.flags)))
        lib.dpdpu_ring_release(cons)
    worker.join()
    assert b"".join(data for _, data, _ in spans) == payload and spans[0][2] == lib.DPDPU_RING_VIEW_FIRST
    assert [off for off, _, _ in spans] == list(range(0, len(payload), 512))


# --- named rings -------------------------------------------------------------------


def test_names_are_created_attached_and_removed(name: str) -> None:
    path = Path("/dev/shm") / name
    sender = Channel.create(name, 10_000)
    assert sender.name == name and sender.capacity == 16384 and path.exists()
    with pytest.raises(errors.InvalidArgumentError, match="already exists"):
        Channel.create(name)
    receiver = Channel.attach(name)
    assert receiver.role == "receiver"
    with pytest.raises(errors.InvalidArgumentError, match="both ends"):
        Channel.attach(name)
    sender.send(b"hello")
    assert receiver.recv(timeout=1) == b"hello"
    sender.close()
    assert not path.exists()
    receiver.close()
    # garbage collection removes the name too
    Channel.create(name, role="receiver")
    gc.collect()
    assert not path.exists()


def test_a_file_path_works_as_a_name(tmp_path: Path) -> None:
    path = str(tmp_path / "ring")
    with Channel.create(path, 4096, role="receiver") as receiver, Channel.attach(path) as sender:
        sender.send(b"via a file")
        assert receiver.recv(timeout=1) == b"via a file"
    assert not Path(path).exists()


def test_attach_to_missing_or_corrupt_ring(name: str) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="no channel named"):
        Channel.attach(name)
    with pytest.raises(errors.InvalidArgumentError):
        Channel.attach(name, timeout=0.02)
    path = Path("/dev/shm") / name
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(errors.CorruptDataError, match="not a dpdpu channel"):
        Channel.attach(name)
    path.unlink()
    ring = Channel.create(name, 4096)
    with open(path, "r+b") as f:
        f.seek(8)  # the layout version
        f.write((99).to_bytes(4, "little"))
    with pytest.raises(errors.CorruptDataError):
        Channel.attach(name)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write((1).to_bytes(4, "little"))
        f.seek(64)  # the producer position: not a multiple of 8
        f.write((5).to_bytes(8, "little"))
    with pytest.raises(errors.CorruptDataError):
        Channel.attach(name)
    with open(path, "r+b") as f:
        f.seek(0)
        f.write(b"NOTARING")
    with pytest.raises(errors.CorruptDataError):
        Channel.attach(name)
    ring.close()


# --- two processes ---------------------------------------------------------------


def test_parent_to_child_in_order(name: str) -> None:
    sender = Channel.create(name, 65536)
    child = agent(name, "recv-check")
    sent = [message(7, i, 50, 300_000) for i in range(600)]
    sender.send_many(sent[:40], timeout=10)
    for data in sent[40:]:
        if len(data) > sender.max_message:
            sender.send_bulk(data, timeout=10)
        else:
            sender.send(data, timeout=10)
    sender.close()
    count, crc = map(int, finish(child).split())
    assert (count, crc) == (len(sent), checksum(sent))


def test_child_to_parent_in_order(name: str) -> None:
    receiver = Channel.create(name, 65536, role="receiver")
    child = agent(name, "send-seq", 11, 600, 40, 200_000)
    got = []
    while True:
        try:
            got.append(receiver.recv(timeout=10))
        except errors.RuntimeClosedError:
            break
    assert finish(child).strip() == "sent"
    expected = [message(11, i, 40, 200_000) for i in range(600)]
    assert len(got) == len(expected)
    assert checksum(got) == checksum(expected) and got == expected
    receiver.close()


def test_request_response_between_processes(name: str) -> None:
    host = ChannelPair.create(name, 65536)
    child = agent(name, "serve")
    requests = [message(3, i, 25, 100_000) for i in range(200)]
    for data in requests:
        assert host.request(data, timeout=10) == data[::-1]
    assert host.stats()["tx"].messages == 200
    host.close()
    assert finish(child).strip() == "200"


def test_killed_receiver_fails_the_sender(name: str) -> None:
    sender = Channel.create(name, 16384)
    child = agent(name, "recv-sleep")
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.kill()  # not reaped: the sender must see through the zombie
    start = time.monotonic()
    with pytest.raises(errors.RuntimeClosedError, match=rf"peer process {child.pid} died"):
        while True:
            sender.send(bytes(1000))
    assert time.monotonic() - start < 2.0
    assert sender.stats().peer == "dead"
    child.communicate(timeout=10)
    sender.close()


def test_killed_sender_is_drained_then_fails_the_receiver(name: str) -> None:
    receiver = Channel.create(name, 16384, role="receiver")
    child = agent(name, "send-then-die", 50)
    got: list[bytes] = []
    start = None
    with pytest.raises(errors.RuntimeClosedError, match="died"):
        while True:
            got.extend(receiver.recv_many(100, timeout=10))
            if len(got) == 50:
                start = time.monotonic()
    assert got == [b"m%d" % i for i in range(50)]
    assert start is not None and time.monotonic() - start < 2.0
    child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    receiver.close()


def test_sender_killed_mid_bulk_message(name: str) -> None:
    receiver = Channel.create(name, 16384, role="receiver")
    child = agent(name, "bulk-then-die")
    assert child.stdout is not None and child.stdout.readline().strip() == "sending"
    time.sleep(0.1)  # let it fill the ring and block
    child.kill()
    assert receiver.recv(timeout=10) == b"before"
    with pytest.raises(errors.TruncatedDataError):
        receiver.recv(timeout=10)
    with pytest.raises(errors.RuntimeClosedError):
        receiver.recv(timeout=10)
    child.communicate(timeout=10)
    receiver.close()


# --- properties --------------------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("send"), st.binary(max_size=700)),
    st.tuples(st.just("send_many"), st.lists(st.binary(max_size=300), max_size=12)),
    st.tuples(st.just("recv"), st.none()),
    st.tuples(st.just("recv_many"), st.integers(1, 8)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=60))
def test_property_single_thread_matches_a_queue(ops: list[tuple[str, object]]) -> None:
    sender, receiver = Channel.local(4096)
    model: collections.deque[bytes] = collections.deque()
    with sender, receiver:
        for kind, arg in ops:
            if kind == "send":
                assert isinstance(arg, bytes)
                try:
                    sender.send(arg, timeout=0)
                    model.append(arg)
                except errors.QueueFullError:
                    pass
            elif kind == "send_many":
                assert isinstance(arg, list)
                try:
                    sender.send_many(arg, timeout=0)
                    model.extend(arg)
                except errors.QueueFullError as exc:
                    model.extend(arg[: exc.sent])  # type: ignore[attr-defined]
            elif kind == "recv":
                if model:
                    assert receiver.recv(timeout=0) == model.popleft()
                else:
                    with pytest.raises(errors.QueueFullError):
                        receiver.recv(timeout=0)
            else:
                assert isinstance(arg, int)
                if model:
                    got = receiver.recv_many(arg, timeout=0)
                    assert 1 <= len(got) <= arg
                    assert got == [model.popleft() for _ in got]
                else:
                    with pytest.raises(errors.QueueFullError):
                        receiver.recv_many(arg, timeout=0)
        # whatever is left comes out in order
        rest = []
        while True:
            try:
                rest.extend(receiver.recv_many(100, timeout=0))
            except errors.QueueFullError:
                break
        assert rest == list(model)
        assert receiver.stats().used == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=2000), st.integers(2100, 30_000)), min_size=1, max_size=40))
def test_property_threads_keep_order(items: list[bytes | int]) -> None:
    messages = [os.urandom(x) if isinstance(x, int) else x for x in items]
    sender, receiver = Channel.local(4096)
    with sender, receiver:

        def produce() -> None:
            for data in messages:
                if len(data) > sender.max_message:
                    sender.send_bulk(data, timeout=10)
                else:
                    sender.send(data, timeout=10)

        worker = threading.Thread(target=produce)
        worker.start()
        got = [receiver.recv(timeout=10) for _ in messages]
        worker.join()
        assert got == messages
