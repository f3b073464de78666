"""Property tests: deflate and crc32c agree with zlib and a reference on arbitrary data."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refimpl import crc32c_reference

from dpdpu import Runtime, compute, errors

# Mostly-compressible and incompressible data, up to a few hundred KiB.
data_strategy = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda chunk, n: chunk * n, st.binary(min_size=1, max_size=64), st.integers(1, 4000)),
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with Runtime("bluefield2", workers=2) as rt:
        yield rt


@SETTINGS
@given(data=data_strategy, level=st.integers(-1, 9), kind=st.sampled_from(["accelerator", "arm", "host"]))
def test_compress_round_trips_through_zlib(runtime: Runtime, data: bytes, level: int, kind: str) -> None:
    blob = runtime.submit(compute.compress, data, level=level, engine=kind, fallback=False).result()
    assert zlib.decompress(blob) == data  # a compression larger than one job is split, still one stream
    limit = next((e.max_job_bytes for e in runtime.device.engines if e.kind == kind), None)
    if limit is not None and max(len(blob), len(data)) > limit:
        with pytest.raises(errors.JobTooLargeError, match="largest job"):
            runtime.submit(compute.decompress, blob, engine=kind, fallback=False).result()
        assert runtime.submit(compute.decompress, blob, engine=kind).result() == data  # another engine takes it
        return
    assert runtime.submit(compute.decompress, blob, engine=kind, fallback=False).result() == data


@SETTINGS
@given(data=data_strategy, level=st.integers(0, 9), kind=st.sampled_from(["accelerator", "arm", "host"]))
def test_decompress_matches_zlib(runtime: Runtime, data: bytes, level: int, kind: str) -> None:
    blob = zlib.compress(data, level)
    assert runtime.submit(compute.decompress, blob, engine=kind).result() == zlib.decompress(blob)


@SETTINGS
@given(blob=st.binary(max_size=512))
def test_arbitrary_bytes_never_crash_decompression(runtime: Runtime, blob: bytes) -> None:
    try:
        expected: bytes | None = zlib.decompress(blob)
    except zlib.error:
        expected = None
    try:
        got: bytes | None = runtime.submit(compute.decompress, blob).result()
    except errors.CorruptDataError:  # TruncatedDataError included
        got = None
    if expected is not None and got is None:
        # zlib ignores bytes after the end of the stream; dpdpu rejects them.
        d = zlib.decompressobj()
        assert d.decompress(blob) == expected and d.unused_data
    else:
        assert got == expected


@SETTINGS
@given(data=st.binary(max_size=8192), seed=st.integers(0, 2**32 - 1))
def test_crc32c_matches_reference(runtime: Runtime, data: bytes, seed: int) -> None:
    assert runtime.submit(compute.crc32c, data, seed).result() == crc32c_reference(data, seed)
