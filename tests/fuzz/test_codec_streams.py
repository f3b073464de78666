"""Fuzz: codec streams (deflate, LZ4, zstd) from random bytes and from valid streams mutated.

Whatever the bytes, decompression returns exactly what the codec's reference library
decodes from one complete stream, or raises a typed error: Corrupt/TruncatedDataError
when the reference cannot decode it either, BufferTooSmallError when the output passes
``output_size`` before the stream ends (or is found spoilt).  Nothing else escapes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import lz4.frame
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from dpdpu import Runtime, compute, errors

CODECS = compute.CODECS


@pytest.fixture(scope="module")
def rt() -> Iterator[Runtime]:
    with Runtime("bluefield3", workers=1) as runtime:
        yield runtime


def reference(codec: str, blob: bytes) -> bytes | None:
    """What the codec's own library decodes from ``blob`` as one complete stream, or None."""
    try:
        decoder: Any
        if codec == "deflate":
            decoder = zlib.decompressobj()
        elif codec == "lz4":
            decoder = lz4.frame.LZ4FrameDecompressor()
        else:
            decoder = zstandard.ZstdDecompressor().decompressobj()
        out = decoder.decompress(blob)
        if not decoder.eof or decoder.unused_data:
            return None
        return bytes(out)
    except (zlib.error, RuntimeError, zstandard.ZstdError):
        return None


def check(rt: Runtime, codec: str, blob: bytes, output_size: int | None) -> None:
    expected = reference(codec, blob)
    try:
        got = rt.submit(compute.decompress, blob, codec, output_size=output_size).result()
    except errors.BufferTooSmallError as exc:
        # Decoding stops once the output passes output_size, so a stream spoilt further on says this too.
        assert output_size is not None and (expected is None or len(expected) > output_size), exc
        return
    except errors.CorruptDataError as exc:  # TruncatedDataError included
        assert expected is None, exc
        assert len(str(exc)) < 400
        return
    assert got == expected
    assert output_size is None or len(got) <= output_size


data = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda chunk, n: chunk * n, st.binary(min_size=1, max_size=16), st.integers(1, 5000)),
)
sizes = st.none() | st.integers(0, 1 << 16)


@st.composite
def mutated(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` with a few bytes flipped, cut, inserted or appended."""
    out = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "set", "cut", "insert", "append", "drop"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if how == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del out[at:]
        elif how == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "append":
            out += draw(st.binary(min_size=1, max_size=8))
        elif how == "drop" and out:
            del out[at : at + draw(st.integers(1, 8))]
    return bytes(out)


@given(codec=st.sampled_from(CODECS), blob=st.binary(max_size=512), output_size=sizes)
def test_random_bytes(rt: Runtime, codec: str, blob: bytes, output_size: int | None) -> None:
    check(rt, codec, blob, output_size)


@given(codec=st.sampled_from(CODECS), plain=data, output_size=sizes, seed=st.data())
def test_mutated_streams(rt: Runtime, codec: str, plain: bytes, output_size: int | None, seed: st.DataObject) -> None:
    blob = compute.compress(plain, codec)
    check(rt, codec, blob, output_size)  # the stream as made
    check(rt, codec, seed.draw(mutated(blob)), output_size)


@given(codec=st.sampled_from(["lz4", "zstd"]), mib=st.integers(1, 64), output_size=st.integers(0, 1 << 20))
def test_bombs_stop_at_output_size(rt: Runtime, codec: str, mib: int, output_size: int) -> None:
    # Zeros in a stream that does not declare its size: decoding stops once past output_size.
    chunk = bytes(1 << 20)
    if codec == "lz4":
        c = lz4.frame.LZ4FrameCompressor()
        blob = b"".join([c.begin(), *(c.compress(chunk) for _ in range(mib)), c.flush()])
    else:
        z = zstandard.ZstdCompressor(level=1).compressobj()
        blob = b"".join([*(z.compress(chunk) for _ in range(mib)), z.flush()])
    if output_size >= mib << 20:
        assert rt.submit(compute.decompress, blob, codec, output_size=output_size).result() == bytes(mib << 20)
    else:
        with pytest.raises(errors.BufferTooSmallError):
            rt.submit(compute.decompress, blob, codec, output_size=output_size).result()
