"""The KV-cache tier: keys, round trips on every tier, eviction, pinning, corruption, threads, bad input."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dpdpu.kv
from dpdpu import errors
from dpdpu.kv import KvCapacityError, KvShapeError, KvStore, ModelShape, TokenError, chunk_keys, root_key

SHAPE = ModelShape("tiny", layers=3, kv_heads=2, head_dim=8)
C = 4  # tokens per chunk in these tests
CHUNK_BYTES = C * SHAPE.bytes_per_token


def kv_for(tokens: Any, shape: ModelShape = SHAPE) -> np.ndarray:
    """Deterministic KV for tokens: every element depends on its token id, layer, k/v, head and dim."""
    t = np.asarray(tokens, dtype=np.int64)
    lay, kv, tok, head, dim = np.ix_(
        np.arange(shape.layers), np.arange(2), t, np.arange(shape.kv_heads), np.arange(shape.head_dim)
    )
    vals = ((tok * 31 + lay * 7 + kv * 3 + head * 5 + dim) % 997).astype(np.float32) / 97.0 - 5.0
    if shape.dtype == "bf16":
        return (vals.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return vals.astype(np.float16)


def store(tmp_path: Path | None = None, **kw: Any) -> KvStore:
    kw.setdefault("device", "bluefield3")
    kw.setdefault("disk_bytes", 1 << 20)
    return KvStore(SHAPE, chunk_tokens=C, data_dir=tmp_path, **kw)


# --- keys ---------------------------------------------------------------------------------------


def test_keys_are_chained_qualified_and_only_for_full_chunks() -> None:
    root = root_key(SHAPE)
    keys = chunk_keys(list(range(10)), root, C)
    assert len(keys) == 2  # the trailing 2 tokens make no key
    assert all(len(k) == 16 for k in keys)
    # chained: the second key depends on the first chunk's tokens
    other = chunk_keys([99, 1, 2, 3, 4, 5, 6, 7], root, C)
    assert other[1] != keys[1]
    # qualified by model, dtype, layer range and rank
    for variant in (
        root_key(ModelShape("tiny2", 3, 2, 8)),
        root_key(ModelShape("tiny", 3, 2, 8, "bf16")),
        root_key(SHAPE, layer_range=(0, 1)),
        root_key(SHAPE, tp_rank=1, tp_size=2),
    ):
        assert chunk_keys(list(range(8)), variant, C)[0] != keys[0]
    # integer types and containers do not matter
    assert chunk_keys(np.arange(8, dtype=np.int32), root, C) == keys[:2]


def test_two_processes_compute_the_same_keys(tmp_path: Path) -> None:
    code = (
        "from dpdpu.kv import ModelShape, chunk_keys, root_key;"
        "print(','.join(k.hex() for k in chunk_keys(range(0, 3000, 3), root_key(ModelShape('m', 4, 2, 8)), 256)))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    env["PYTHONHASHSEED"] = "999"
    out2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    here = ",".join(k.hex() for k in chunk_keys(list(range(0, 3000, 3)), root_key(ModelShape("m", 4, 2, 8)), 256))
    assert out.stdout.strip() == out2.stdout.strip() == here
    assert len(here.split(",")) == 3


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dram_codec": "lz4"},
        {"dram_codec": "zstd"},
        {"dram_codec": "deflate"},
        {"dram_bytes": 0},
        {"dram_bytes": 0, "disk_codec": "lz4"},
        {"dram_bytes": 0, "disk_codec": "deflate"},
        {"dram_bytes": CHUNK_BYTES, "dram_codec": "zstd", "disk_codec": "zstd"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "dram",
)
def test_round_trip_is_exact(tmp_path: Path, options: dict[str, Any]) -> None:
    tokens = list(range(100, 114))  # 3 full chunks + 2 tokens
    kv = kv_for(tokens)
    with store(tmp_path, **options) as s:
        assert s.store(tokens, kv) == 12
        assert s.store(tokens, kv) == 0  # already cached
        assert s.lookup(tokens) == 12
        assert s.lookup(tokens[:7]) == 4
        hit, out = s.retrieve(tokens)
        assert hit == 12 and out.shape == SHAPE.token_shape(12) and out.dtype == np.float16
        assert np.array_equal(out, kv[:, :, :12])
        for layer in range(SHAPE.layers):
            n, one = s.retrieve_layer(tokens, layer)
            assert n == 12 and np.array_equal(one, kv[layer, :, :12])
        st = s.stats()
        assert st["hit_tokens"] >= 12 and st["misses"] == 0
        if options.get("dram_bytes") == 0:
            assert st["disk"]["chunks"] == 3 and st["dram"]["chunks"] == 0 and st["disk"]["hits"] == 3


def test_bf16_as_uint16_round_trip_and_buffer_input(tmp_path: Path) -> None:
    shape = ModelShape("tiny", 3, 2, 8, "bf16")
    tokens = list(range(8))
    kv = kv_for(tokens, shape)
    with KvStore(shape, chunk_tokens=C, data_dir=tmp_path, dram_bytes=0, device="bluefield3") as s:
        assert s.store(tokens, kv.tobytes()) == 8  # any buffer of the layout
        _, out = s.retrieve(tokens)
        assert out.dtype == np.uint16 and np.array_equal(out, kv)
        with pytest.raises(KvShapeError):
            s.store(list(range(50, 58)), kv.view(np.float16))  # fp16 data for a bf16 model


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("tier", ["dram", "disk"])
def test_int8_error_is_within_half_a_step(tmp_path: Path, dtype: str, tier: str) -> None:
    shape = ModelShape("q", 2, 2, 16, dtype)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape.token_shape(8)) * rng.uniform(0.1, 10, (1, 1, 1, 2, 16))).astype(np.float32)
    kv = (x.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bf16" else x.astype(np.float16)
    ref = (kv.astype(np.uint32) << 16).view(np.float32) if dtype == "bf16" else kv.astype(np.float32)
    extra: dict[str, Any] = {"dram_bytes": 0} if tier == "disk" else {}
    with KvStore(shape, chunk_tokens=4, data_dir=tmp_path, quantize="int8", device="bluefield3", **extra) as s:
        s.store(list(range(8)), kv)
        _, out = s.retrieve(list(range(8)))
        got = (out.astype(np.uint32) << 16).view(np.float32) if dtype == "bf16" else out.astype(np.float32)
        err = np.abs(got - ref)
        for c in range(2):  # per chunk, per channel: half a quantization step plus the dtype's rounding
            part = slice(4 * c, 4 * c + 4)
            step = np.abs(ref[:, :, part]).max(axis=2, keepdims=True) / 127
            rounding = np.abs(ref[:, :, part]) * (2**-7 if dtype == "bf16" else 2**-10)
            assert (err[:, :, part] <= step / 2 + rounding + 1e-6).all()
        assert err.max() > 0  # it is lossy
        q = s.stats()["quantization"]
        assert q["mode"] == "int8" and 0 < q["rms_error"] <= q["max_abs_error"]
        assert q["max_abs_error"] == pytest.approx(float(err.max()), rel=0.05)


# --- tiers, eviction, pinning ------------------------------------------------------------------


def test_dram_evictions_demote_and_hits_promote(tmp_path: Path) -> None:
    a, b = list(range(4)), list(range(10, 14))
    with store(tmp_path, dram_bytes=CHUNK_BYTES) as s:
        s.store(a, kv_for(a))
        s.store(b, kv_for(b))  # a goes to disk
        st = s.stats()
        assert st["dram"]["chunks"] == 1 and st["disk"]["chunks"] == 1 and st["demotions"] == 1
        hit, out = s.retrieve(a)
        assert hit == 4 and np.array_equal(out, kv_for(a))
        st = s.stats()
        assert st["disk"]["hits"] == 1 and st["promotions"] == 1
        assert st["disk"]["chunks"] == 2  # b demoted; a keeps its disk copy
        hit, out = s.retrieve(a)
        assert s.stats()["dram"]["hits"] == 1 and np.array_equal(out, kv_for(a))


def test_lru_order_without_disk_drops(tmp_path: Path) -> None:
    a, b, c = list(range(4)), list(range(10, 14)), list(range(20, 24))
    with store(None, dram_bytes=2 * CHUNK_BYTES) as s:
        s.store(a, kv_for(a))
        s.store(b, kv_for(b))
        s.retrieve(a)  # a is now more recent than b
        s.store(c, kv_for(c))
        assert (s.lookup(a), s.lookup(b), s.lookup(c)) == (4, 0, 4)
        assert s.stats()["dram"]["evictions"] == 1


def test_pinned_chunks_are_not_evicted_and_full_pins_raise() -> None:
    a, b = list(range(4)), list(range(10, 14))
    with store(None, dram_bytes=CHUNK_BYTES) as s:
        s.store(a, kv_for(a))
        with s.pinned(a) as n:
            assert n == 4
            with pytest.raises(KvCapacityError, match="pinned"):
                s.store(b, kv_for(b))
            assert isinstance(KvCapacityError("x"), errors.DeviceMemoryError)
        s.store(b, kv_for(b))
        assert s.lookup(a) == 0 and s.lookup(b) == 4
        assert s.pin(b) == 4
        assert s.evict(b) == 0  # pinned stays
        s.unpin(b)
        assert s.evict(b) == 1 and s.lookup(b) == 0


def test_chunk_larger_than_dram_without_disk_raises() -> None:
    with store(None, dram_bytes=CHUNK_BYTES - 1) as s, pytest.raises(KvCapacityError):
        s.store(list(range(4)), kv_for(list(range(4))))


def test_clear_and_restart_keeps_the_disk_tier(tmp_path: Path) -> None:
    a = list(range(8))
    with store(tmp_path, dram_bytes=0) as s:
        s.store(a, kv_for(a))
    with store(tmp_path) as s:
        assert s.lookup(a) == 8
        _, out = s.retrieve(a)
        assert np.array_equal(out, kv_for(a))
        assert s.clear() == 2 and s.lookup(a) == 0


def test_prefetch_brings_disk_chunks_into_dram(tmp_path: Path) -> None:
    a = list(range(12))
    with store(tmp_path, dram_bytes=0) as s:
        s.store(a, kv_for(a))
    with store(tmp_path, dram_bytes=10 * CHUNK_BYTES) as s:
        assert s.stats()["dram"]["chunks"] == 0
        assert s.prefetch(a).result(timeout=30) == 12
        assert s.stats()["dram"]["chunks"] == 3 and s.stats()["prefetched_chunks"] == 3
        _, out = s.retrieve(a)
        assert s.stats()["disk"]["hits"] == 0 and np.array_equal(out, kv_for(a))


# --- bad input ----------------------------------------------------------------------------------


def test_another_models_keys_are_a_miss(tmp_path: Path) -> None:
    a = list(range(8))
    with store(tmp_path, dram_bytes=0) as s:
        s.store(a, kv_for(a))
    other = ModelShape("tiny-other", 3, 2, 8)
    with KvStore(other, chunk_tokens=C, data_dir=tmp_path, device="bluefield3") as s:
        assert s.lookup(a) == 0
        hit, out = s.retrieve(a)
        assert hit == 0 and out.shape[2] == 0
    with KvStore(SHAPE, chunk_tokens=C, data_dir=tmp_path, device="bluefield3", tp_rank=1, tp_size=2) as s:
        assert s.lookup(a) == 0


@pytest.mark.parametrize("tokens", [[[1, 2], [3, 4]], [1.0, 2.0], "abcd", [True, False], np.zeros((2, 2), int), None])
def test_tokens_must_be_1d_integers(tokens: Any) -> None:
    with store(None) as s:
        with pytest.raises(TokenError):
            s.lookup(tokens)
        with pytest.raises(TokenError):
            s.store(tokens, np.zeros(1, np.float16))
    assert issubclass(TokenError, errors.InvalidArgumentError)


def test_kv_shape_and_dtype_must_match_the_model() -> None:
    tokens = list(range(8))
    with store(None) as s:
        with pytest.raises(KvShapeError, match="shape"):
            s.store(tokens, kv_for(tokens)[:, :, :7])
        with pytest.raises(KvShapeError, match="dtype"):
            s.store(tokens, kv_for(tokens).astype(np.float32))
        with pytest.raises(KvShapeError):
            s.store(tokens, object())
        with pytest.raises(KvShapeError):
            s.store_layer(tokens, 5, kv_for(tokens)[0])
        with pytest.raises(KvShapeError):
            s.store_layer(tokens, 0, kv_for(tokens)[0, :, :4])
        assert s.lookup(tokens) == 0


def test_store_layer_commits_when_every_layer_arrived() -> None:
    tokens = list(range(9))
    kv = kv_for(tokens)
    with store(None) as s:
        assert s.store_layer(tokens, 2, kv[2]) == 0
        assert s.store_layer(tokens, 0, kv[0]) == 0
        assert s.lookup(tokens) == 0
        assert s.store_layer(tokens, 1, kv[1]) == 8
        _, out = s.retrieve(tokens)
        assert np.array_equal(out, kv[:, :, :8])
        it = s.iter_layers(tokens)
        first = next(it)
        assert s.stats()["pinned_chunks"] == 2  # pinned while the layers are read
        layers = [first, *it]
        assert s.stats()["pinned_chunks"] == 0
        assert [n for _, n, _ in layers] == [8, 8, 8] and np.array_equal(layers[1][2], kv[1, :, :8])


def _corrupt(bdev: Path, needle: bytes) -> None:
    with open(bdev, "r+b") as f, mmap.mmap(f.fileno(), 0) as data:
        at = data.find(needle)
        assert at >= 0, "pattern not found on the device"
        data[at + 3] ^= 0xFF
        data.flush()


@pytest.mark.parametrize("codec", [None, "lz4"])
def test_a_corrupted_chunk_is_a_miss_and_dropped(tmp_path: Path, codec: str | None) -> None:
    tokens = list(range(12))
    kv = kv_for(tokens)
    second = np.full(SHAPE.token_shape(C), 1234.0, dtype=np.float16)  # a pattern easy to find on the device
    kv[:, :, 4:8] = second
    with store(tmp_path, dram_bytes=0) as s:
        s.store(tokens, kv)
    needle = second[0, 0].tobytes()[:32] if codec is None else None
    if codec is not None:  # compressed segments: corrupt the second chunk's file via its key
        with store(tmp_path, dram_bytes=0, disk_codec=codec) as s:
            s.clear()
            s.store(tokens, kv)
            key = s.keys(tokens)[1]
            chunk = s._disk[key]
            raw = s._disk_tier.fs.read(chunk.path, chunk.header_bytes, chunk.lens[0]).result()  # type: ignore[union-attr]
        needle = raw[:32]
    assert needle is not None
    _corrupt(tmp_path / "data.bdev", needle)
    with store(tmp_path, disk_codec=codec) as s:
        assert s.lookup(tokens) == 12  # headers are fine: the damage shows on read
        hit, out = s.retrieve(tokens)
        assert hit == 4 and np.array_equal(out, kv[:, :, :4])  # never the damaged data
        st = s.stats()
        assert st["corrupt_dropped"] == 1 and st["misses"] == 2
        assert s.lookup(tokens) == 4  # dropped


def test_threads_storing_and_retrieving(tmp_path: Path) -> None:
    # DRAM holds 3 chunks: threads force demotions, promotions and disk reads while others read.
    prompts = [list(range(1000 * p, 1000 * p + 4 * (1 + p % 3))) for p in range(6)]
    shared = list(range(4))
    errors_seen: list[BaseException] = []
    with store(tmp_path, dram_bytes=3 * CHUNK_BYTES, policy="s3fifo") as s:

        def worker(w: int) -> None:
            try:
                for i in range(12):
                    p = prompts[(w + i) % len(prompts)]
                    tokens = shared + p
                    s.store(tokens, kv_for(tokens))
                    hit, out = s.retrieve(tokens)
                    assert np.array_equal(out, kv_for(tokens)[:, :, :hit])
            except BaseException as exc:  # reported below
                errors_seen.append(exc)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors_seen, errors_seen[0]
        st = s.stats()
        assert st["dram"]["bytes"] <= 3 * CHUNK_BYTES and st["demotions"] > 0 and st["pinned_chunks"] == 0
        for p in prompts:
            tokens = shared + p
            hit, out = s.retrieve(tokens)
            assert np.array_equal(out, kv_for(tokens)[:, :, :hit])


def test_public_module_and_closed_store() -> None:
    assert dpdpu.kv.KvStore is KvStore
    s = store(None)
    s.close()
    with pytest.raises(errors.RuntimeClosedError):
        s.lookup([1, 2, 3, 4])
    with pytest.raises(errors.InvalidArgumentError):
        KvStore(SHAPE, policy="fifo", device="bluefield3")
    with pytest.raises(errors.InvalidArgumentError):
        KvStore(SHAPE, dram_codec="snappy", device="bluefield3")
    with pytest.raises(errors.InvalidArgumentError):
        ModelShape("m", 0, 1, 1)
    with KvStore(SHAPE, device="bluefield2") as s2:
        assert s2.dram_capacity == 16 * 2**30


def test_codecs_run_on_the_given_runtime(tmp_path: Path) -> None:
    from dpdpu import Runtime

    tokens = list(range(8))
    with Runtime("bluefield2", workers=2) as rt:
        with store(tmp_path, runtime=rt, dram_codec="deflate", device=None) as s:
            assert s.dram_capacity == 16 * 2**30  # the runtime's device profile
            s.store(tokens, kv_for(tokens))
            _, out = s.retrieve(tokens)
            assert np.array_equal(out, kv_for(tokens))
        st = rt.stats()
        # 2 chunks x 3 layers compressed, then decompressed: tasks of this runtime, placed by it
        assert st.tasks >= 12 and "bluefield2" in st.device


def test_retrieve_into_a_preallocated_output_and_large_chunks(tmp_path: Path) -> None:
    # 16 MiB chunks: DRAM copies split over two threads, disk reads go straight into the output.
    shape = ModelShape("mid", layers=16, kv_heads=8, head_dim=128)
    tokens = np.arange(600)
    kv = kv_for(tokens, shape)
    with KvStore(shape, data_dir=tmp_path, dram_bytes=shape.bytes_per_token * 256, device="bluefield3") as s:
        assert s.store(tokens, kv) == 512
        out = np.zeros(shape.token_shape(600), dtype=np.float16)
        hit, got = s.retrieve(tokens, out=out)  # one chunk from DRAM, one from disk
        assert hit == 512 and np.shares_memory(got, out) and np.array_equal(out[:, :, :512], kv[:, :, :512])
        assert not out[:, :, 512:].any()
        st = s.stats()
        assert st["dram"]["hits"] == 1 and st["disk"]["hits"] == 1
        with pytest.raises(KvShapeError):
            s.retrieve(tokens, out=np.zeros(shape.token_shape(256), dtype=np.float16))  # too few tokens
        with pytest.raises(KvShapeError):
            s.retrieve(tokens, out=np.zeros(shape.token_shape(600), dtype=np.float32))
        with pytest.raises(KvShapeError):
            s.retrieve(tokens, out=np.zeros(shape.token_shape(1200), dtype=np.float16)[:, :, ::2])


# --- lossy data, shared data directories, capacity and staging -------------------------------------


@pytest.mark.parametrize("tier", ["dram", "disk"])
def test_int8_keeps_a_chunk_with_inf_or_nan_raw(tmp_path: Path, tier: str) -> None:
    tokens = list(range(8))
    kv = kv_for(tokens)
    kv[0, 0, 1, 0, 0] = np.inf  # chunk 0 only; its channel's other tokens are finite
    kv[1, 1, 2, 1, 3] = np.nan
    dram = 1 if tier == "disk" else None
    with store(tmp_path, quantize="int8", dram_bytes=dram) as s:
        assert s.store(tokens, kv) == 8
        hit, out = s.retrieve(tokens)
        assert hit == 8
        # The chunk with inf/NaN comes back exact (finite values included), not as NaN.
        np.testing.assert_array_equal(out[:, :, :C], kv[:, :, :C])
        q = s.stats()["quantization"]
        assert q["unquantized_chunks"] == 1 and np.isfinite(q["rms_error"])
        err = np.abs(out[:, :, C:].astype(np.float32) - kv[:, :, C:].astype(np.float32))
        assert 0 < err.max() <= q["max_abs_error"]


def test_a_lossless_store_never_serves_int8_chunks_and_a_reopened_one_reports_their_error(tmp_path: Path) -> None:
    tokens = list(range(8))
    kv = kv_for(tokens)
    with store(tmp_path, quantize="int8", dram_bytes=1) as s:  # straight to disk
        assert s.store(tokens, kv) == 8
        written = s.stats()["quantization"]["max_abs_error"]
    assert written > 0
    with store(tmp_path) as s:
        assert s.lookup(tokens) == 0 and s.retrieve(tokens)[0] == 0
        assert s.stats()["corrupt_dropped"] == 0 and "quantization" not in s.stats()
    with store(tmp_path, quantize="int8") as s:  # the int8 chunks are still there, with their error
        hit, out = s.retrieve(tokens)
        assert hit == 8
        q = s.stats()["quantization"]
        assert q["max_abs_error"] == written
        assert np.abs(out.astype(np.float32) - kv.astype(np.float32)).max() <= q["max_abs_error"]


def test_models_sharing_a_data_dir_leave_each_others_chunks_alone(tmp_path: Path) -> None:
    tokens = list(range(12))
    kv = kv_for(tokens)
    with store(tmp_path, dram_bytes=1) as s:
        assert s.store(tokens, kv) == 12
    other = ModelShape("other", layers=3, kv_heads=2, head_dim=8)
    with KvStore(other, chunk_tokens=C, data_dir=tmp_path, dram_bytes=1, disk_bytes=2 * 8192) as s:
        st = s.stats()
        assert st["corrupt_dropped"] == 0 and st["disk"]["chunks"] == 0 and st["disk"]["bytes"] == 0
        assert s.lookup(tokens) == 0
        for i in range(4):  # fills its own room several times over: evicts only its own chunks
            t = list(range(100 * i, 100 * i + C))
            s.store(t, kv_for(t, other))
        assert s.stats()["disk"]["chunks"] == 2
    with store(tmp_path) as s:
        hit, out = s.retrieve(tokens)
        assert hit == 12 and np.array_equal(out, kv[:, :, :12]) and s.stats()["corrupt_dropped"] == 0


def test_store_counts_only_what_stays_retrievable(tmp_path: Path) -> None:
    a, b, c = ([n] * C for n in (1, 2, 3))
    # One chunk of DRAM, one chunk's footprint (a header block and a payload block) of disk.
    with store(tmp_path, dram_bytes=CHUNK_BYTES, disk_bytes=2 * 4096) as s:
        assert s.store(a, kv_for(a)) == C and s.store(b, kv_for(b)) == C  # a demoted to disk
        assert s.pin(a) == C and s.pin(b) == C
        with pytest.raises(KvCapacityError, match="pinned"):
            s.store(c, kv_for(c))  # neither tier has room
        assert s.lookup(c) == 0 and s.stats()["stored_chunks"] == 2
        s.unpin(b)
        # Two chunks: the second pushes the first out of DRAM, and the pinned disk cannot take it.
        two = [7] * (2 * C)
        assert s.store(two, kv_for(two)) == s.lookup(two) == 0
        s.unpin(a)
        assert s.store(c, kv_for(c)) == C and s.lookup(c) == C


def test_store_layer_staging_is_bounded_freed_and_shown() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        KvStore(SHAPE, chunk_tokens=C, max_staged=0)
    reqs = [list(range(100 * i, 100 * i + C)) for i in range(3)]
    with store(None, max_staged=2) as s:
        for t in reqs:  # layer 0 only: the rest never comes
            assert s.store_layer(t, 0, kv_for(t)[0]) == 0
        st = s.stats()["staged"]
        assert st == {"requests": 2, "bytes": 2 * CHUNK_BYTES, "dropped": 1}
        # The oldest was dropped: its remaining layers do not complete it.
        assert s.store_layer(reqs[0], 1, kv_for(reqs[0])[1]) == 0
        assert s.store_layer(reqs[0], 2, kv_for(reqs[0])[2]) == 0 and s.lookup(reqs[0]) == 0
        # Staging it again dropped reqs[1]; reqs[2], still staged, completes.
        assert s.store_layer(reqs[2], 1, kv_for(reqs[2])[1]) == 0
        assert s.store_layer(reqs[2], 2, kv_for(reqs[2])[2]) == C
        assert np.array_equal(s.retrieve(reqs[2])[1], kv_for(reqs[2]))
        assert s.stats()["staged"] == {"requests": 1, "bytes": CHUNK_BYTES, "dropped": 2}
        s.clear()
        assert s.stats()["staged"] == {"requests": 0, "bytes": 0, "dropped": 2}


def test_any_positive_disk_bytes_and_a_service_sized_from_it(tmp_path: Path) -> None:
    tokens = list(range(8))
    with store(tmp_path, disk_bytes=10**6 + 1, dram_bytes=1) as s:
        assert s.store(tokens, kv_for(tokens)) == 8
        assert s.stats()["disk"]["bytes"] == 2 * 2 * 4096  # each chunk: a header block and a payload block
    # Sparse, but not inflated by the number of chunks a tiny model could have.
    assert (tmp_path / "data.bdev").stat().st_size < 2 * 10**6
    with pytest.raises(errors.InvalidArgumentError, match="disk_bytes"):
        store(tmp_path / "zero", disk_bytes=0)


def test_empty_token_arrays_are_empty() -> None:
    with store(None) as s:
        empties: list[Any] = [[], np.array([]), np.array([], dtype=np.uint8)]
        for empty in empties:
            assert s.lookup(empty) == 0 and s.retrieve(empty)[0] == 0
            assert s.store(empty, np.zeros(SHAPE.token_shape(0), np.float16)) == 0
