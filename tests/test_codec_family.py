"""The codec family: deflate, LZ4 and zstd through the runtime, on every profile."""

from __future__ import annotations

import zlib

import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import dpdpu
from dpdpu import compute, errors

READERS = {
    "deflate": zlib.decompress,
    "lz4": lz4.frame.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
}


@pytest.fixture(scope="module")
def runtimes():
    with (
        dpdpu.Runtime("bluefield2", workers=2) as bf2,
        dpdpu.Runtime("bluefield3", workers=2) as bf3,
        dpdpu.Runtime("host", workers=2) as host,
    ):
        yield {"bluefield2": bf2, "bluefield3": bf3, "host": host}


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=20_000) | st.builds(lambda n, b: b * n, st.integers(0, 3000), st.binary(min_size=1)))
@pytest.mark.parametrize("codec", compute.CODECS)
def test_round_trip_matches_the_reference_library(runtimes, codec: str, data: bytes) -> None:
    for rt in runtimes.values():
        blob = rt.submit(compute.compress, data, codec).result()
        assert READERS[codec](blob) == data
        assert rt.submit(compute.decompress, blob, codec).result() == data


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_bad_streams_raise_typed_errors_and_the_runtime_keeps_working(runtimes, codec: str) -> None:
    data = b"dpdpu " * 10_000
    blob = compute.compress(data, codec)
    for name, rt in runtimes.items():
        with pytest.raises(errors.TruncatedDataError) as info:
            rt.submit(compute.decompress, blob[: len(blob) // 2], codec).result()
        assert info.value.device is not None and info.value.op == f"{codec}_decompress"
        with pytest.raises(errors.CorruptDataError, match="not a valid"):
            rt.submit(compute.decompress, b"definitely not compressed" * 4, codec).result()
        with pytest.raises(errors.CorruptDataError, match="follow the end"):
            rt.submit(compute.decompress, blob + b"tail", codec).result()
        with pytest.raises(errors.BufferTooSmallError) as small:
            rt.submit(compute.decompress, blob, codec, output_size=100).result()
        assert small.value.needed == len(data)
        assert rt.submit(compute.decompress, blob, codec).result() == data, name


def test_levels_and_unknown_codecs() -> None:
    with pytest.raises(errors.InvalidArgumentError, match="lz4 level must be an integer from 0 to 16"):
        compute.compress(b"x", "lz4", level=40)
    with pytest.raises(errors.UnknownOpError, match="available: deflate, lz4, zstd"):
        compute.compress(b"x", "snappy")
    assert zstandard.ZstdDecompressor().decompress(compute.compress(b"abc" * 100, "zstd", level=19)) == b"abc" * 100


def test_codecs_are_placed_by_capability() -> None:
    data = bytes(range(256)) * 4096
    page = data[:8192]  # within the hardware's 16 KiB largest job
    with dpdpu.Runtime("bluefield3", policy="dpu-only") as rt:
        lz = rt.submit(compute.decompress, compute.compress(page, "lz4"), "lz4")
        zs = rt.submit(compute.decompress, compute.compress(page, "zstd"), "zstd")
        big = rt.submit(compute.decompress, compute.compress(data, "lz4"), "lz4")
        assert lz.result() == page and zs.result() == page and big.result() == data
        assert rt.explain(lz).engine == "bluefield3/accelerator"  # LZ4 decompression in hardware
        assert rt.explain(zs).engine == "bluefield3/arm"  # zstd: no hardware engine
        assert rt.explain(big).engine == "bluefield3/arm"  # 1 MiB does not fit one hardware job
    with dpdpu.Runtime("bluefield2", policy="dpu-only") as rt:
        lz = rt.submit(compute.decompress, compute.compress(data, "lz4"), "lz4")
        assert lz.result() == data and rt.explain(lz).engine == "bluefield2/arm"
        assert "no lz4_decompress in bluefield2 hardware" in str(rt.explain(lz))
