"""Chunk files changed behind the KV store's back: misses (counted, the chunk dropped), never exceptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kv_files import TOKENS, chunk_files, open_store, replace_file, rewrite_header, write_chunks


def _set(field: str, value: Any) -> Any:
    return lambda meta: meta.__setitem__(field, value)


LIES: dict[str, Any] = {
    "huge raw lengths": _set("raw_lens", [1 << 40] * 3),
    "negative raw lengths": _set("raw_lens", [-1] * 3),
    "short raw lengths": _set("raw_lens", [4] * 3),
    "negative lengths": _set("lens", [-8, 8, 8]),
    "string lengths": _set("lens", ["8"] * 3),
    "lengths of another model": _set("lens", [8, 8]),
    "unknown codec": _set("codec", "snappy"),
    "codec of another type": _set("codec", ["lz4"]),
    "string checksums": _set("crcs", ["x"] * 3),
    "float tokens": _set("tokens", 4.0),
    "bad quantization error": _set("quant_error", ["a", "b"]),
    "not an object": lambda meta: meta.clear() or meta.update({"": [[[[]]]]}),
}


@pytest.mark.parametrize("lie", list(LIES))
@pytest.mark.parametrize("codec", [None, "lz4"])
def test_a_signed_header_that_lies_is_a_miss(tmp_path: Path, codec: str | None, lie: str) -> None:
    kv = write_chunks(tmp_path, codec)
    with chunk_files(tmp_path) as (fs, folder, names):
        for name in names:  # every chunk lies: the whole prefix is a miss
            rewrite_header(fs, f"{folder}/{name}", LIES[lie])
    with open_store(tmp_path, codec) as store:
        hit, out = store.retrieve(TOKENS)
        assert hit == 0 and out.shape[2] == 0
        stats = store.stats()
        assert stats["corrupt_dropped"] == 3 and stats["misses"] == 3 and stats["disk"]["chunks"] == 0
        store.store(TOKENS, kv)  # and the store works on
        hit, out = store.retrieve(TOKENS)
        assert hit == len(TOKENS) and np.array_equal(out, kv)


def test_a_stray_directory_or_file_does_not_stop_the_store(tmp_path: Path) -> None:
    kv = write_chunks(tmp_path)
    with chunk_files(tmp_path) as (fs, folder, chunks):
        fs.mkdir(f"{folder}/stray")
        fs.mkdir(f"{folder}/{'ab' * 16}")  # named like a chunk
        fs.create(f"{folder}/{'ab' * 16}/inside")
        fs.create(f"{folder}/notes.txt")
        replace_file(fs, f"{folder}/{'cd' * 16}", b"not a chunk")
    with open_store(tmp_path) as store:
        hit, out = store.retrieve(TOKENS)
        assert hit == len(TOKENS) and np.array_equal(out, kv)
        stats = store.stats()
        assert stats["ignored_entries"] == 2 and stats["corrupt_dropped"] == 2
    with chunk_files(tmp_path) as (fs, folder, names):
        assert sorted(names) == sorted([*chunks, "stray", "ab" * 16])  # bad files dropped, directories kept
        assert fs.listdir(f"{folder}/{'ab' * 16}") == ["inside"]


def test_a_cut_chunk_file_is_a_miss(tmp_path: Path) -> None:
    write_chunks(tmp_path, "zstd")
    with chunk_files(tmp_path) as (fs, folder, names):
        for name in names:
            path = f"{folder}/{name}"
            data = fs.read(path, 0, fs.stat(path).size).result()
            replace_file(fs, path, data[: len(data) - 5])
    with open_store(tmp_path, "zstd") as store:
        assert store.retrieve(TOKENS)[0] == 0 and store.stats()["corrupt_dropped"] == 3
