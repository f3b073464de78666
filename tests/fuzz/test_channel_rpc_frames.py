"""Fuzz: request/response frames over the channel (runtime/channel_rpc.py), and the two protocols on them.

A frame comes from the other process: whatever its bytes, decoding gives a frame
or a CorruptDataError, never another exception; a failed frame always yields the
error it reports.  The DDS back end and the Flight routing host answer any
message with exactly one frame that decodes, and keep serving.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpdpu import errors
from dpdpu.network.flight import HostHandler
from dpdpu.runtime import Runtime
from dpdpu.runtime import channel_rpc as rpc
from dpdpu.runtime.channel import ChannelPair
from dpdpu.storage import CacheTable, DdsBackEnd, FileService

ids = st.integers(0, 2**64 - 1)
kinds = st.integers(0, 255)
statuses = st.integers(0, 255)
payloads = st.binary(max_size=200)


def raw_frame(request_id: int, kind: int, status: int, payload: bytes) -> bytes:
    return request_id.to_bytes(8, "little") + bytes([kind, status]) + payload


frames = st.one_of(
    st.binary(max_size=40),  # anything at all, short frames included
    st.builds(raw_frame, ids, kinds, statuses, payloads),
    st.builds(raw_frame, ids, kinds, st.integers(1, len(errors.WIRE_STATUSES) - 1), payloads),  # failures
    st.builds(
        raw_frame, ids, kinds, st.integers(1, 16),
        st.tuples(st.binary(max_size=80), st.binary(max_size=80)).map(lambda t: t[0] + b"\0" + t[1]),
    ),
)  # fmt: skip


@given(data=frames, limit=st.integers(0, 300))
def test_decode_gives_a_frame_or_corrupt_data(data: bytes, limit: int) -> None:
    try:
        frame = rpc.decode(data, max_payload=limit)
    except errors.CorruptDataError as exc:
        assert len(str(exc)) < 200
        return
    assert len(frame.payload) <= limit and frame.status in errors.WIRE_STATUSES
    if frame.ok:
        assert rpc.encode(frame.id, frame.kind, frame.payload) == bytes(data)
    else:
        err = rpc.error_of(frame)
        assert isinstance(err, errors.DpdpuError) and errors.wire_status(err) == frame.status


@given(request_id=ids, kind=kinds, payload=payloads)
def test_answers_round_trip(request_id: int, kind: int, payload: bytes) -> None:
    frame = rpc.decode(rpc.encode(request_id, kind, payload))
    assert (frame.id, frame.kind, frame.status, bytes(frame.payload)) == (request_id, kind, "OK", payload)


@given(request_id=ids, kind=kinds, message=st.text(max_size=3000))
def test_failures_round_trip(request_id: int, kind: int, message: str) -> None:
    frame = rpc.decode(rpc.encode_error(request_id, kind, errors.NoSuchFileError(message)))
    assert (frame.id, frame.kind, frame.status) == (request_id, kind, "NOT_FOUND")
    err = rpc.error_of(frame)
    assert type(err) is errors.NoSuchFileError and len(err.detail.encode()) <= 1024
    assert message.startswith(err.detail) or "cut from" in err.detail


def test_bad_arguments_are_refused() -> None:
    for args in ((-1, 0), (2**64, 0), (0, 256), (True, 0)):
        with pytest.raises(errors.InvalidArgumentError):
            rpc.encode(*args)


@pytest.fixture(scope="module")
def back_end(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DdsBackEnd]:
    ours, _theirs = ChannelPair.local()
    with FileService(tmp_path_factory.mktemp("dds") / "fs", capacity=64 << 12) as fs:
        fs.create("f")
        fs.write("f", 0, b"0123456789").result()
        yield DdsBackEnd(ours, fs, CacheTable(64))


@given(messages=st.lists(frames, min_size=1, max_size=8))
def test_the_dds_back_end_answers_every_frame(back_end: DdsBackEnd, messages: list[bytes]) -> None:
    responses = back_end.handle_batch(messages)
    assert len(responses) == len(messages)
    for response in responses:
        rpc.decode(response)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostHandler]:
    _ours, theirs = ChannelPair.local()
    with Runtime("host", workers=1) as runtime:
        yield HostHandler(theirs, {"t": pa.table({"x": [1, 2, 3]})}, runtime=runtime)


@given(message=frames | st.builds(rpc.encode, ids, st.just(1), st.binary(max_size=60)))
def test_the_routing_host_answers_every_frame(host: HostHandler, message: bytes) -> None:
    frame = rpc.decode(host.handle(message))
    assert frame.ok or rpc.error_of(frame) is not None


def test_the_routing_host_answers_a_read(host: HostHandler) -> None:
    frame = rpc.decode(host.handle(rpc.encode(7, 1, b'{"dataset": "t", "predicate": "x > 1"}')))
    assert frame.ok and frame.id == 7 and pa.ipc.open_stream(frame.payload).read_all().column("x").to_pylist() == [2, 3]
    missing = rpc.decode(host.handle(rpc.encode(8, 1, b'{"dataset": "nope"}')))
    assert missing.status == "NOT_FOUND" and "nope" in rpc.error_parts(missing)[1]
