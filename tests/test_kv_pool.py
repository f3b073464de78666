"""The KV tier shared by processes: a store per model shard over Flight, and what a serving engine's connector calls.

Every test runs a real Flight endpoint on loopback.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpdpu import errors
from dpdpu.kv import (
    KvCapacityError,
    KvFlightService,
    KvRemoteError,
    KvShapeError,
    KvStore,
    KvStorePool,
    ModelShape,
    RemoteKvStore,
    store_id,
)
from dpdpu.network.flight import FlightEndpoint

SHAPE = ModelShape("tiny", layers=3, kv_heads=2, head_dim=8)
CHUNK = 4
OPTIONS = {"chunk_tokens": CHUNK, "device": "bluefield3", "policy": "lru"}
CHUNK_BYTES = CHUNK * SHAPE.bytes_per_token


def kv_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE.token_shape(n)).astype(np.float16)


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[tuple[KvStorePool, str]]:
    # DRAM for 4 chunks a model (2 a rank at tp_size 2), storage for plenty.
    pool = KvStorePool(data_dir=tmp_path / "kv", dram_bytes=4 * CHUNK_BYTES, disk_bytes=1 << 20)
    with pool, FlightEndpoint(services={"kv": KvFlightService(pool)}).serve_background() as ep:
        yield pool, ep.location


def client(location: str, rank: int = 0, size: int = 1, **options: Any) -> RemoteKvStore:
    return RemoteKvStore(location, model=SHAPE, tp_rank=rank, tp_size=size, options={**OPTIONS, **options})


def test_a_shard_is_opened_once_and_addressed_by_its_root(tier: tuple[KvStorePool, str]) -> None:
    pool, location = tier
    with client(location) as a, client(location) as b:
        assert a.store_id == b.store_id == store_id(SHAPE) and len(pool.stores()) == 1
        assert a.chunk_tokens == CHUNK
        with pytest.raises(errors.InvalidArgumentError, match="other options"):
            client(location, policy="s3fifo")
        with client(location, rank=1, size=2) as r1:
            assert r1.store_id == store_id(SHAPE, tp_rank=1, tp_size=2) != a.store_id
        (r1_store,) = (s for sid, s in pool.stores().items() if sid == store_id(SHAPE, tp_rank=1, tp_size=2))
        assert r1_store.dram_capacity == 2 * CHUNK_BYTES  # a model's DRAM split over its ranks


def test_the_pool_refuses_what_it_cannot_hold(tmp_path: Path) -> None:
    with KvStorePool(max_stores=1, dram_bytes=1 << 16) as pool:
        pool.open(SHAPE, chunk_tokens=CHUNK)
        with pytest.raises(KvCapacityError):
            pool.open(SHAPE, tp_rank=1, tp_size=2, chunk_tokens=CHUNK)
        with pytest.raises(errors.InvalidArgumentError, match="not a rank"):
            pool.open(SHAPE, tp_rank=2, tp_size=2)
        with pytest.raises(errors.InvalidArgumentError, match="unknown store options"):
            pool.open(SHAPE, colour="blue")
    with pytest.raises(errors.RuntimeClosedError):
        pool.open(SHAPE)


def test_a_restarted_tier_finds_each_shards_chunks(tmp_path: Path) -> None:
    tokens = list(range(12))
    for run in range(2):
        with KvStorePool(data_dir=tmp_path, dram_bytes=0, disk_bytes=1 << 20) as pool:
            _, store = pool.open(SHAPE, tp_rank=1, tp_size=2, chunk_tokens=CHUNK)
            if run == 0:
                assert store.store(tokens, kv_for(12)) == 12
                store.flush()
            else:
                hit, kv = store.retrieve(tokens)
                assert hit == 12 and np.array_equal(kv, kv_for(12))
    assert (tmp_path / store_id(SHAPE, tp_rank=1, tp_size=2)).is_dir()


def test_lookup_changes_nothing(tier: tuple[KvStorePool, str]) -> None:
    pool, location = tier
    with client(location) as remote:
        streams = [list(range(i * 100, i * 100 + CHUNK)) for i in range(5)]
        for i, tokens in enumerate(streams[:4]):  # DRAM full: 4 chunks, LRU order 0..3
            remote.store(tokens, kv_for(CHUNK, i))
        (store,) = pool.stores().values()
        before = store.stats()
        for _ in range(3):
            assert remote.lookup(streams[0]) == CHUNK
            assert remote.lookup(streams[0], dram=True) == (CHUNK, CHUNK)
        after = store.stats()
        assert after["pinned_chunks"] == before["pinned_chunks"] == 0
        assert after["hit_tokens"] == before["hit_tokens"] and after["promotions"] == before["promotions"]
        remote.store(streams[4], kv_for(CHUNK, 4))  # evicts the least recently used: still chunk 0
        assert remote.lookup(streams[0], dram=True) == (CHUNK, 0)


def test_pins_hold_until_released_or_expired(tier: tuple[KvStorePool, str]) -> None:
    pool, location = tier
    with client(location) as remote:
        (store,) = pool.stores().values()
        held = list(range(CHUNK))
        remote.store(held, kv_for(CHUNK))
        assert remote.pin(held, seconds=60) == CHUNK and store.stats()["pinned_chunks"] == 1
        assert store.evict(held) == 0  # pinned: stays
        assert remote.unpin(held) == 1 and store.stats()["pinned_chunks"] == 0
        assert remote.unpin(held) == 0  # nothing left to release
        assert remote.pin(held, seconds=0.05) == CHUNK
        time.sleep(0.1)
        remote.lookup(held)  # any call releases expired pins
        assert store.stats()["pinned_chunks"] == 0 and store.evict(held) == 1
        with pytest.raises(errors.InvalidArgumentError, match="seconds"):
            remote.pin(held, seconds=-1)


def test_prefetch_brings_storage_chunks_into_dram(tier: tuple[KvStorePool, str]) -> None:
    pool, location = tier
    with client(location) as remote:
        tokens = list(range(6 * CHUNK))  # 6 chunks, DRAM holds 4: the first two go to storage
        remote.store(tokens, kv_for(6 * CHUNK))
        assert remote.lookup(tokens, dram=True) == (6 * CHUNK, 0)  # a prefix in DRAM starts at chunk 0
        assert remote.prefetch(tokens[: 2 * CHUNK]) == 2 * CHUNK
        (store,) = pool.stores().values()
        deadline = time.monotonic() + 10
        while remote.lookup(tokens, dram=True)[1] < 2 * CHUNK and time.monotonic() < deadline:
            time.sleep(0.01)
        assert remote.lookup(tokens, dram=True)[1] >= 2 * CHUNK
        assert store.stats()["prefetched_chunks"] == 2


def test_layers_stream_both_ways_from_a_start(tier: tuple[KvStorePool, str]) -> None:
    _, location = tier
    tokens = list(range(5 * CHUNK + 2))  # 5 whole chunks and a tail
    kv = kv_for(len(tokens))
    with client(location) as remote:
        up = remote.store_layers(tokens, start=2 * CHUNK)  # chunks 2..4 only
        for layer in reversed(range(SHAPE.layers)):  # any order, each layer once
            up.write(layer, kv[layer, :, 2 * CHUNK : 5 * CHUNK])
        assert up.finish() == 3 * CHUNK
        assert remote.lookup(tokens) == 0  # chunks 0 and 1 were never sent
        got = list(remote.retrieve_layers(tokens, start=2 * CHUNK))
        assert [layer for layer, _ in got] == list(range(SHAPE.layers))
        for layer, arr in got:
            assert np.array_equal(arr, kv[layer, :, 2 * CHUNK : 5 * CHUNK])
        remote.store(tokens[: 2 * CHUNK], kv[:, :, : 2 * CHUNK])
        assert remote.lookup(tokens) == 5 * CHUNK
        assert all(np.array_equal(a, kv[i, :, : 5 * CHUNK]) for i, a in remote.retrieve_layers(tokens))
        # An upload broken off after two layers stores nothing.
        other = list(range(900, 900 + 2 * CHUNK))
        up = remote.store_layers(other)
        up.write(0, kv_for(2 * CHUNK)[0])
        up.write(1, kv_for(2 * CHUNK)[1])
        up.abort()
        with pytest.raises(KvShapeError):
            remote.store_layers(other).write(0, kv_for(CHUNK)[0])  # a layer of the wrong length
        assert remote.lookup(other) == 0


def test_all_ranks_answer_for_the_prefix_every_rank_holds(tier: tuple[KvStorePool, str]) -> None:
    _, location = tier
    tokens = list(range(3 * CHUNK))
    with client(location, 0, 2) as r0:
        r0.store(tokens, kv_for(3 * CHUNK))
        assert r0.lookup(tokens) == 3 * CHUNK
        assert r0.lookup(tokens, all_ranks=True) == 0  # rank 1's store is not even open
        with client(location, 1, 2) as r1:
            r1.store(tokens[: 2 * CHUNK], kv_for(2 * CHUNK, 1))
            assert r0.lookup(tokens, all_ranks=True) == r1.lookup(tokens, all_ranks=True) == 2 * CHUNK
            assert r0.pin(tokens, seconds=10, all_ranks=True) == 2 * CHUNK
            assert r0.unpin(tokens, all_ranks=True) == 2


def test_bad_requests_are_refused_and_the_tier_keeps_serving(tier: tuple[KvStorePool, str]) -> None:
    _, location = tier
    with client(location) as remote:
        for request, message in [
            ({"op": "lookup", "tokens": [1], "store": "zz"}, "store id"),
            ({"op": "lookup", "tokens": [1], "store": "0" * 32}, "no such store"),
            ({"op": "lookup", "tokens": [1], "stores": []}, "stores must be"),
            ({"op": "lookup", "tokens": [1], "colour": 1}, "unknown fields"),
            ({"op": "retrieve_layers", "tokens": list(range(8)), "start": 3}, "whole number"),
            ({"op": "open", "model": {"name": "m"}, "tp": [0, 1]}, "model must be"),
            ({"op": "store_layers", "tokens": []}, "do_put"),
        ]:
            with pytest.raises(errors.InvalidArgumentError, match=message):
                remote._get(request).read_all()
        model = {"name": "m", "layers": 1, "kv_heads": 1, "head_dim": 2, "dtype": "fp16"}
        for options, message in [
            ({"device": "/etc/passwd"}, "device must be one of"),
            ({"chunk_tokens": 1 << 21}, "chunk_tokens"),
            ({"quantize": "int4"}, "quantize"),
        ]:
            with pytest.raises(errors.InvalidArgumentError, match=message):
                remote._get({"op": "open", "model": model, "tp": [0, 1], "options": options}).read_all()
        assert remote.lookup(list(range(8))) == 0
    with pytest.raises(KvRemoteError):
        RemoteKvStore("grpc://127.0.0.1:1", model=SHAPE, options=OPTIONS)


def test_a_single_store_is_still_served_as_before(tmp_path: Path) -> None:
    store = KvStore(SHAPE, chunk_tokens=CHUNK, dram_bytes=1 << 16)
    with store, FlightEndpoint(services={"kv": KvFlightService(store)}).serve_background() as ep:
        remote = RemoteKvStore(ep.location, model=SHAPE)
        with remote:
            assert remote.store_id == store.root.hex()
            assert remote.store(list(range(8)), kv_for(8)) == 8 and store.lookup(list(range(8))) == 8


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
_ops = st.sampled_from(["info", "open", "lookup", "pin", "unpin", "prefetch", "retrieve", "retrieve_layers", "x"])
_fields = st.dictionaries(
    st.sampled_from(["tokens", "store", "stores", "seconds", "start", "dram", "model", "tp", "options", "layer"]),
    _json,
    max_size=5,
)


@pytest.fixture(scope="module")
def fuzz_tier() -> Iterator[RemoteKvStore]:
    pool = KvStorePool(dram_bytes=1 << 16, max_stores=8)
    with pool, FlightEndpoint(services={"kv": KvFlightService(pool)}).serve_background() as ep:
        remote = client(ep.location)
        with remote:
            yield remote


@given(op=_ops, fields=_fields)
def test_fuzzed_tickets_get_a_typed_refusal_or_an_answer(
    fuzz_tier: RemoteKvStore, op: str, fields: dict[str, Any]
) -> None:
    remote = fuzz_tier
    with contextlib.suppress(errors.InvalidArgumentError, KvCapacityError):
        remote._call(lambda: remote._get({"op": op, **fields}).read_all())
    assert remote.lookup([1, 2, 3, 4]) == 0  # still serving


def test_kv_serve_command_serves_until_terminated(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "dpdpu", "kv-serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            with client(info["location"]) as remote:
                assert remote.store(list(range(8)), kv_for(8)) == 8 and remote.lookup(list(range(8))) == 8
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            proc.kill()
    assert (tmp_path / store_id(SHAPE)).is_dir()
