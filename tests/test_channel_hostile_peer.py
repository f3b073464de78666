"""A channel's receiver facing a producer that writes lies into the shared ring: typed errors, no hang, no blow-up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ring_files import LAST, MORE, HostileProducer, bulk_first, bulk_part, record

from dpdpu import errors


@pytest.fixture
def ring(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "ring"
    rx = HostileProducer.receiver(path)
    peer = HostileProducer(path)
    yield rx, peer
    peer.close()
    rx.close()


@pytest.mark.parametrize("how", ["recv", "recv_many"])
def test_a_bulk_message_declaring_exabytes_allocates_only_what_arrives(ring, how: str) -> None:  # type: ignore[no-untyped-def]
    rx, peer = ring
    peer.publish(bulk_first(1 << 62, b"first part"))
    receive = getattr(rx, how)
    with pytest.raises(errors.QueueFullError):  # the rest never comes; before, bytearray(2**62): MemoryError
        receive(timeout=0)
    peer.publish(bulk_part(MORE, b"second part"))
    with pytest.raises(errors.QueueFullError):
        receive(timeout=0)
    peer.publish(bulk_part(LAST, b"third"))  # the lie shows: the message ends short of its length
    with pytest.raises(errors.CorruptDataError):
        receive(timeout=0)
    peer.publish(record(1, b"next message"))
    assert receive(timeout=0) in (b"next message", [b"next message"])


def test_a_bulk_message_received_in_pieces_is_whole(ring) -> None:  # type: ignore[no-untyped-def]
    rx, peer = ring
    parts = [b"a" * 100, b"b" * 200, b"c" * 50]
    peer.publish(bulk_first(350, parts[0]))
    with pytest.raises(errors.QueueFullError):
        rx.recv(timeout=0)
    peer.publish(bulk_part(MORE, parts[1]) + bulk_part(LAST, parts[2]))
    assert rx.recv(timeout=0) == b"".join(parts)
    assert rx.stats().messages == 1 and rx.stats().bytes == 350


def test_a_tail_far_ahead_is_corrupt_not_a_hang(tmp_path: Path) -> None:
    # A ring full of padding and a tail 2**40 bytes on: the receiver used to step through padding
    # for ever inside one call (no signal, no timeout could end it).  Run apart, so a hang fails.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from ring_files import PAD, HostileProducer, record
        from dpdpu import errors
        path = Path({str(tmp_path / "ring")!r})
        rx = HostileProducer.receiver(path)
        peer = HostileProducer(path)
        peer.fill(record(PAD, b""))
        peer.set_tail(1 << 40)
        for call in (rx.recv, rx.recv_many):
            try:
                call(timeout=0)
            except errors.CorruptDataError:
                print("corrupt")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["corrupt", "corrupt"]
