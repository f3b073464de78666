"""Fuzz: channel frames written into the shared ring by a hostile producer, and ring headers.

The receiver parses records (messages, bulk-message parts, padding, aborts) and the
producer's position out of memory another process writes.  Whatever is there, each
receive returns at once with messages made of bytes the producer wrote, or a typed error
(nothing waiting, a malformed record skipped, a bulk message cut short, a buffer too
small); it never crashes or hangs, and never allocates what a record only claims.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ring_files import ABORT, FIRST, HEADER, LAST, MORE, MSG, PAD, HostileProducer, bulk_first, bulk_part, record

from dpdpu import errors
from dpdpu.runtime.channel import Channel

CAPACITY = 4096
#: What a receive may raise when the ring holds nonsense (a header may also say the peer has gone).
EXPECTED = (errors.QueueFullError, errors.CorruptDataError, errors.BufferTooSmallError, errors.RuntimeClosedError)

kinds = st.sampled_from([MSG, PAD, FIRST, MORE, LAST, ABORT, 0, 7, 2**32 - 1])
payloads = st.binary(max_size=300)
records = st.one_of(
    st.builds(record, kinds, payloads),
    st.builds(record, kinds, payloads, st.integers(0, 2**32 - 1)),  # a length that lies
    st.builds(bulk_first, st.integers(0, 2**64 - 1) | st.integers(0, 2000), payloads),
    st.builds(bulk_part, st.sampled_from([MORE, LAST]), payloads),
    st.binary(min_size=8, max_size=64).map(lambda b: b + bytes(-len(b) % 8)),
)
tails = st.none() | st.integers(0, 2**64 - 1) | st.integers(-64, 2 * CAPACITY)
calls = st.lists(st.sampled_from(["recv", "recv_many", "recv_into_small", "recv_into_large"]), min_size=1, max_size=12)


@pytest.fixture
def where(tmp_path: Path) -> Path:
    return tmp_path


def receive(rx: Channel, how: str) -> list[bytes]:
    if how == "recv":
        return [rx.recv(timeout=0)]
    if how == "recv_many":
        return rx.recv_many(8, timeout=0)
    buf = bytearray(16 if how == "recv_into_small" else 2 * CAPACITY)
    n = rx.recv_into(buf, timeout=0)
    return [bytes(buf[:n])]


def drain(rx: Channel, how: list[str]) -> None:
    """Receive with each call in turn (round and round) until the ring says nothing is waiting."""
    got = 0
    for i in range(64):
        try:
            for message in receive(rx, how[i % len(how)]):
                got += len(message)
        except (errors.QueueFullError, errors.RuntimeClosedError):
            return
        except EXPECTED as exc:
            assert len(str(exc)) < 400
        # What comes out was published in the ring, whatever lengths the records declare.
        assert got <= CAPACITY
    # 64 calls, each of which takes at least one record (8 bytes) or fails: the ring is empty or broken.


@given(frames=st.lists(records, max_size=12), tail=tails, how=calls)
def test_hostile_records(where: Path, frames: list[bytes], tail: int | None, how: list[str]) -> None:
    path = where / "ring"
    path.unlink(missing_ok=True)
    rx = HostileProducer.receiver(path, CAPACITY)
    peer = HostileProducer(path)
    try:
        data = b"".join(frames)[:CAPACITY]
        peer.publish(data, tail=None if tail is None else tail % (1 << 64))
        drain(rx, how)
    finally:
        peer.close()
        rx.close()


@given(frames=st.lists(records, min_size=1, max_size=6), rounds=st.integers(1, 4), how=calls)
def test_hostile_records_across_the_wrap(where: Path, frames: list[bytes], rounds: int, how: list[str]) -> None:
    # The same records published again and again, so they straddle the end of the data area.
    path = where / "ring"
    path.unlink(missing_ok=True)
    rx = HostileProducer.receiver(path, CAPACITY)
    peer = HostileProducer(path)
    try:
        data = b"".join(frames)[: CAPACITY // 2]
        for _ in range(rounds):
            peer.set_tail(peer.head)  # whatever the receiver left, start after it
            peer.publish(data)
            drain(rx, how)
    finally:
        peer.close()
        rx.close()


@functools.cache
def ring_image() -> bytes:
    """The file of a ring whose sender sent one message (taken while the sender is open)."""
    with tempfile.TemporaryDirectory() as tmp, Channel.create(f"{tmp}/ring", CAPACITY, role="sender") as tx:
        tx.send(b"hello")
        return Path(f"{tmp}/ring").read_bytes()


@given(changes=st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=16)), min_size=1, max_size=4),
       size=st.none() | st.integers(0, 3 * HEADER))  # fmt: skip
def test_hostile_ring_headers(where: Path, changes: list[tuple[int, bytes]], size: int | None) -> None:
    # A ring file whose header (or length) was changed before a receiver attaches to it.  (A file cut
    # while mapped would fault whoever touches the lost pages; only the ring's own user can open it,
    # and that user could as well stop the process outright, so that is not a frame to guard against.)
    image = bytearray(ring_image())
    for at, new in changes:
        image[at : at + len(new)] = new
    if size is not None:
        image = image[:size] + bytes(max(0, size - len(image)))
    path = where / "ring"
    path.write_bytes(bytes(image))
    try:
        rx = Channel.attach(str(path))
    except (errors.CorruptDataError, errors.InvalidArgumentError) as exc:
        assert len(str(exc)) < 400
        return
    try:
        drain(rx, ["recv", "recv_many"])
    finally:
        rx.close()
        path.unlink(missing_ok=True)
