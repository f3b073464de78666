"""Fuzz: KV chunk files changed on disk behind the store's back.

Each example starts from the same three stored chunks, changes their files (bytes
flipped or overwritten, files cut, lengthened, replaced, headers rewritten and signed
again so their checksum holds, strays added), reopens the store and retrieves: the
answer is a prefix of the stored data (a miss where a chunk is bad, which is dropped and
counted), never wrong data and never an exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kv_files import FIXED, TOKENS, C, chunk_files, open_store, read_file, replace_file, rewrite_header, write_chunks

from dpdpu.storage.fs import FileService

CODECS = [None, "lz4", "zstd", "deflate"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the examples' data directories go: memory-backed when the machine has /dev/shm,
    since what is tested is not durability and a store's flushes dominate on a disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        where = Path(tempfile.mkdtemp(prefix="dpdpu-kv-fuzz-", dir=shm))
        yield where
        shutil.rmtree(where, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("kv-fuzz")


@pytest.fixture(scope="module")
def originals(scratch: Path) -> dict[str | None, tuple[Path, np.ndarray[Any, Any]]]:
    """Per disk codec, a data directory holding three chunks, and their KV."""
    out = {}
    for codec in CODECS:
        where = scratch / f"kv-{codec}"
        out[codec] = (where, write_chunks(where, codec))
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["key", "root", "rep", "codec", "tokens", "quant_error", "lens", "raw_lens", "crcs"]


@st.composite
def header_change(draw: st.DrawFn) -> Any:
    """A change to a header's JSON: a field set to another value, removed, or a number nudged."""
    field = draw(st.sampled_from(FIELDS))
    how = draw(st.sampled_from(["set", "delete", "nudge"]))
    value = draw(json_values)
    delta = draw(st.integers(-(2**40), 2**40))

    def change(meta: dict[str, Any]) -> None:
        if how == "delete":
            meta.pop(field, None)
        elif how == "nudge" and isinstance(meta.get(field), list) and meta[field]:
            meta[field][0] = meta[field][0] + delta if isinstance(meta[field][0], int) else value
        else:
            meta[field] = value

    return change


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["flip", "overwrite", "cut", "extend", "replace", "header", "stray", "fixed"]))
    if kind in ("flip", "overwrite"):
        return kind, (draw(st.integers(0, 1 << 14)), draw(st.binary(min_size=1, max_size=16)))
    if kind in ("cut", "extend"):
        return kind, (draw(st.integers(0, 1 << 14)), draw(st.binary(max_size=64)))
    if kind == "replace":
        return kind, draw(st.binary(max_size=256))
    if kind == "header":
        return kind, draw(header_change())
    if kind == "fixed":  # the fixed part: magic, version, header bytes, JSON length, JSON checksum
        return kind, (draw(st.integers(0, 4)), draw(st.integers(0, 2**32 - 1)))
    return kind, (draw(st.booleans()), draw(st.text(min_size=1, max_size=40).filter(lambda n: "/" not in n)))


def apply(fs: FileService, folder: str, name: str, kind: str, arg: Any) -> None:
    path = f"{folder}/{name}"
    if kind == "stray":
        is_dir, stray = arg
        if stray in (".", "..") or "\0" in stray or fs.exists(f"{folder}/{stray}"):
            return
        (fs.mkdir if is_dir else fs.create)(f"{folder}/{stray}")
        return
    data = bytearray(read_file(fs, path))
    if kind in ("header", "fixed") and len(data) < FIXED.size:
        return  # no header left to change
    if kind == "header":
        with contextlib.suppress(ValueError):  # a header already spoilt has no JSON to change
            rewrite_header(fs, path, arg)
        return
    if kind == "flip":
        at, mask = arg
        for i, m in enumerate(mask):
            if at + i < len(data):
                data[at + i] ^= m or 1
    elif kind == "overwrite":
        at, new = arg
        data[at : at + len(new)] = new
    elif kind == "cut":
        del data[arg[0] :]
    elif kind == "extend":
        data += arg[1]
    elif kind == "replace":
        data = bytearray(arg)
    elif kind == "fixed":
        field, value = arg
        values = list(FIXED.unpack_from(data))
        values[field] = value.to_bytes(4, "little") if field == 0 else value
        FIXED.pack_into(data, 0, *values)
    replace_file(fs, path, bytes(data))


@given(
    codec=st.sampled_from(CODECS),
    damages=st.lists(st.tuples(st.integers(0, 2), damage()), min_size=1, max_size=4),
)
def test_damaged_chunk_files_are_misses(
    originals: dict[str | None, tuple[Path, np.ndarray[Any, Any]]],
    scratch: Path,
    codec: str | None,
    damages: list[tuple[int, tuple[str, Any]]],
) -> None:
    source, kv = originals[codec]
    where = Path(tempfile.mkdtemp(dir=scratch))
    shutil.copytree(source, where, dirs_exist_ok=True)
    with chunk_files(where) as (fs, folder, names):
        for which, (kind, arg) in damages:
            apply(fs, folder, names[which], kind, arg)
    with open_store(where, codec) as store:
        hit, out = store.retrieve(TOKENS)
        assert hit % C == 0 and np.array_equal(out, kv[:, :, :hit])
        stats = store.stats()
        assert stats["hits"] == hit // C and stats["misses"] == (len(TOKENS) - hit) // C
        json.dumps(stats)
    shutil.rmtree(where)
