"""The KV tier over Flight, as a serving engine's connector reads it: layer by layer vs the whole prefix at once.

A 7B-class shape (32 layers, 8 KV heads as on one of 4 tensor-parallel
ranks, head dim 128, fp16), 4 chunks of 256 tokens in the tier's DRAM, served
by a Flight endpoint on loopback.

- ``kv-flight-layers``: ``RemoteKvStore.retrieve_layers`` (every layer, each
  chunk of it a record batch) against ``RemoteKvStore.retrieve`` of the same
  prefix (one batch per chunk, all layers).  The time to the first layer, what
  a model waits before its first attention layer can run, is in
  ``extra_info["first_layer_ms"]``: it is a fraction of the whole load,
  which is the point of loading layer by layer.

Run: ``pytest benchmarks/test_bench_kv_layers.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from dpdpu.kv import KvFlightService, KvStore, ModelShape, RemoteKvStore
from dpdpu.network.flight import FlightEndpoint

SHAPE = ModelShape("llama-7b-tp4", layers=32, kv_heads=8, head_dim=128, dtype="fp16")
TOKENS = np.arange(4 * 256) + 7
ROUNDS = 5


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteKvStore]:
    kv = np.random.default_rng(0).standard_normal(SHAPE.token_shape(len(TOKENS))).astype(np.float16)
    store = KvStore(SHAPE, dram_bytes=2 * kv.nbytes, device="bluefield3")
    with store, FlightEndpoint(services={"kv": KvFlightService(store)}).serve_background() as ep:
        store.store(TOKENS, kv)
        with RemoteKvStore(ep.location, model=SHAPE) as client:
            yield client


def test_flight_retrieve_baseline(benchmark: Any, remote: RemoteKvStore) -> None:
    benchmark.group = "kv-flight-layers"
    benchmark.extra_info["role"] = "baseline"
    hit, _ = benchmark.pedantic(remote.retrieve, args=(TOKENS,), rounds=ROUNDS, warmup_rounds=1)
    assert hit == len(TOKENS)


def test_flight_retrieve_layers(benchmark: Any, remote: RemoteKvStore) -> None:
    benchmark.group = "kv-flight-layers"
    firsts: list[float] = []

    def load() -> int:
        t0 = time.perf_counter()
        layers = 0
        for layer, kv in remote.retrieve_layers(TOKENS):
            if layer == 0:
                firsts.append(time.perf_counter() - t0)
            layers += kv.shape[1] == len(TOKENS)
        return layers

    assert benchmark.pedantic(load, rounds=ROUNDS, warmup_rounds=1) == SHAPE.layers
    benchmark.extra_info["first_layer_ms"] = float(np.median(firsts)) * 1e3
