"""A deployable module: ``dpdpu deploy examples/offloads_example.py`` sends it to an agent.

Then, for example::

    dpdpu invoke offloads_example.word_count '["to be or not to be"]'
    dpdpu invoke offloads_example.checksum --input some.bin
    dpdpu invoke offloads_example.compress_ratio --input some.bin

Arguments arrive as JSON values (``--input`` passes a file's bytes first); results
go back as JSON, or as raw bytes when the function returns bytes.
"""

from __future__ import annotations

import collections

import dpdpu
from dpdpu import compute


@dpdpu.offload
def word_count(text: str, top: int = 3) -> list[list[object]]:
    """The ``top`` most frequent words of ``text`` with their counts."""
    counts = collections.Counter(text.split())
    return [[word, n] for word, n in counts.most_common(top)]


@dpdpu.offload
def checksum(data: bytes) -> int:
    """CRC-32C of ``data`` (runs the checksum op from the DPU's Arm cores)."""
    return compute.crc32c(data)


@dpdpu.offload
def compress_ratio(data: bytes) -> float:
    """How much deflate shrinks ``data`` (compression placed by the runtime)."""
    return len(data) / max(1, len(compute.compress(data)))


@dpdpu.offload
def upper(data: bytes) -> bytes:
    """``data`` upper-cased: a bytes result travels back as bytes."""
    return data.upper()
