"""The worker side of DpdpuKVConnector over CPU tensors in vLLM's paged layout, against a live tier."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_vllm_scheduler import PROMPT, engine
from vllm_harness import BLOCK, CHUNK, LAYER_NAMES, Worker, request, scheduler, tiny_llama, token_kv, vllm_config

from dpdpu.integrations.vllm import (
    ConnectorConfigError,
    DpdpuConnectorMetadata,
    DpdpuKVConnector,
    DpdpuKVConnectorStats,
    LoadSpec,
    SaveSpec,
)
from dpdpu.kv import KvFlightService, KvRemoteError, KvStorePool
from dpdpu.network.flight import FlightEndpoint


def random_bits(caches: dict[str, torch.Tensor], seed: int) -> None:
    """Every bit pattern the dtype has (NaNs, infinities, -0 too): a round trip that converts anything fails."""
    gen = torch.Generator().manual_seed(seed)
    for cache in caches.values():
        bits = torch.randint(-(1 << 15), 1 << 15, cache.shape, generator=gen, dtype=torch.int32).to(torch.int16)
        cache.view(torch.int16).copy_(bits)


def step(worker: Worker, meta: DpdpuConnectorMetadata, layerwise: bool) -> set[int]:
    conn = worker.connector
    conn.bind_connector_metadata(meta)
    conn.start_load_kv(None)
    for name in LAYER_NAMES:
        conn.wait_for_layer_load(name)
        conn.save_kv_layer(name, worker.caches[name], None)
    conn.wait_for_save()
    failed = conn.get_block_ids_with_load_errors()
    conn.clear_connector_metadata()
    return failed


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layerwise", [True, False])
def test_paged_store_retrieve_round_trip_is_bit_exact(
    tmp_path: Path, tier: tuple[str, KvStorePool], dtype: str, layerwise: bool
) -> None:
    store, _ = tier
    config = vllm_config(tiny_llama(tmp_path / "tiny", dtype), store, dtype=dtype, layerwise=layerwise)
    saver, loader = Worker.start(config, 40), Worker.start(config, 40)
    random_bits(saver.caches, seed=1)
    tokens = list(range(90))  # 2 whole chunks (64 tokens) and a tail the tier never holds
    saver_blocks = [17, 3, 29, 8, 11, 30]  # scattered, in no order
    save = SaveSpec("r", tokens[:64], 0, saver_blocks[:4])
    assert step(saver, DpdpuConnectorMetadata(saves=[save]), layerwise) == set()
    saver.connector.wait_for_saves_in_flight()

    loader_blocks = [5, 38, 1, 20]
    load = LoadSpec("r", tokens[:64], 7, 64, loader_blocks)  # from inside a block: vLLM had the first 7 tokens
    assert step(loader, DpdpuConnectorMetadata(loads=[load]), layerwise) == set()
    for name in LAYER_NAMES:
        for pos in range(64):
            got = loader.read(name, loader_blocks, pos).view(torch.int16)
            want = saver.read(name, saver_blocks, pos).view(torch.int16)
            assert torch.equal(got, want) == (pos >= 7), (name, pos)  # below 7: untouched (still NaN)
    stats = loader.connector.get_kv_connector_stats()
    assert stats is not None and stats.data["loaded_tokens"] == 57 and stats.data["load_failed_blocks"] == 0
    assert saver.connector.get_kv_connector_stats().data["saved_tokens"] == 64  # type: ignore[union-attr]
    assert loader.connector.get_kv_connector_stats() is None  # counters are per interval


def test_a_missing_chunk_is_reported_by_block_and_recomputed(tmp_path: Path, tier: tuple[str, KvStorePool]) -> None:
    store, pool = tier
    # pin_seconds 0: the scheduler's pin does not keep the chunk, so it can vanish before the load.
    eng = engine(tmp_path, store, pin_seconds=0)
    eng.add(request("a", PROMPT, max_tokens=1))
    eng.run()
    eng.worker.connector.wait_for_saves_in_flight()

    eng2 = engine(tmp_path, store, pin_seconds=0)
    prompt_b = [*PROMPT[:96], 1, 2, 3]
    eng2.add(request("b", prompt_b, max_tokens=1))
    out = eng2.sched.schedule()
    (load,) = out.kv_connector_metadata.loads
    assert (load.start, load.end) == (0, 96)
    # The second chunk goes between the scheduler's lookup and the worker's load (the first and third stay).
    (shard,) = pool.stores().values()
    _, first = shard.retrieve(PROMPT[:CHUNK])
    assert shard.evict(PROMPT[: 2 * CHUNK]) == 2
    shard.store(PROMPT[:CHUNK], first)
    assert shard.lookup(PROMPT) == CHUNK
    blocks = list(eng2.sched.kv_cache_manager.get_block_ids("b")[0])
    failed = eng2.worker.step(out, {"b": prompt_b}, {"b": blocks})
    # The first chunk loaded; from token 32 on, the blocks are reported, and vLLM recomputes from there.
    assert failed == set(blocks[CHUNK // BLOCK : 96 // BLOCK])
    assert eng2.worker.holds(prompt_b, blocks, 0, CHUNK)
    stats = eng2.worker.connector.get_kv_connector_stats()
    assert stats is not None and stats.data["load_failed_blocks"] == len(failed) and stats.data["loaded_tokens"] == 32
    from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput

    eng2.sched.update_from_output(
        out,
        ModelRunnerOutput(
            req_ids=["b"], req_id_to_index={"b": 0}, sampled_token_ids=[[]],
            kv_connector_output=KVConnectorOutput(invalid_block_ids=failed),
        ),
    )  # fmt: skip
    assert eng2.sched.requests["b"].num_computed_tokens == CHUNK  # back to the last good token
    eng2.run()
    assert sum(s["scheduled"]["b"] for s in eng2.steps) == len(prompt_b) - CHUNK
    assert eng2.worker.holds(prompt_b, blocks, 0, len(prompt_b))


class GatedService(KvFlightService):
    """The tier's Flight service, answering puts only once the gate opens (a slow tier)."""

    def __init__(self, stores: Any) -> None:
        super().__init__(stores)
        self.gate = threading.Event()

    def do_put(self, request: dict[str, Any], reader: Any, writer: Any, context: Any) -> None:
        self.gate.wait(60)
        super().do_put(request, reader, writer, context)


@pytest.fixture
def slow_tier(tmp_path: Path) -> Iterator[tuple[str, KvStorePool, GatedService]]:
    pool = KvStorePool(dram_bytes=1 << 20)
    service = GatedService(pool)
    with pool, FlightEndpoint("grpc://127.0.0.1:0", services={"kv": service}).serve_background() as ep:
        yield f"127.0.0.1:{ep.port}", pool, service
        service.gate.set()


def test_request_finishing_while_its_save_is_in_flight(
    tmp_path: Path, slow_tier: tuple[str, KvStorePool, GatedService]
) -> None:
    store, pool, service = slow_tier
    # 7 blocks, no prefix caching: the second request takes over the first one's freed blocks.
    eng = engine(tmp_path, store, num_blocks=8, prefix_caching=False)
    prompt_a = list(range(64))
    eng.add(request("a", prompt_a, max_tokens=1))
    eng.step()
    assert "a" not in eng.sched.requests  # finished; vLLM freed its blocks at once
    blocks_a = eng.steps[0]["blocks"]["a"]
    assert eng.worker.connector._in_flight  # its save is still on its way
    prompt_b = list(range(500, 564))
    eng.add(request("b", prompt_b, max_tokens=1))
    eng.step()
    assert set(eng.steps[1]["blocks"]["b"]) & set(blocks_a)  # a's blocks now hold b's KV
    service.gate.set()
    eng.worker.connector.wait_for_saves_in_flight(timeout=60)
    (shard,) = pool.stores().values()
    hit, kv = shard.retrieve(prompt_a)
    assert hit == 64
    for pos in range(64):
        want = token_kv(prompt_a, pos, torch.float16)  # [layers, heads, 2 * dim]
        got = torch.from_numpy(np.ascontiguousarray(kv[:, :, pos].transpose(0, 2, 1, 3))).reshape(want.shape)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), pos


def test_configuration_errors_are_typed(tmp_path: Path, tier: tuple[str, KvStorePool]) -> None:
    store, _ = tier
    model = tiny_llama(tmp_path / "tiny")
    with pytest.raises(ConnectorConfigError, match="needs 'store'"):
        scheduler(_without_store(vllm_config(model, store)))
    with pytest.raises(ConnectorConfigError, match="unknown kv_connector_extra_config keys"):
        scheduler(vllm_config(model, store, chunk_size=64))
    with pytest.raises(ConnectorConfigError, match="multiple of vLLM's block size"):
        scheduler(vllm_config(model, store, chunk_tokens=40))
    with pytest.raises(ConnectorConfigError, match="float16 or bfloat16"):
        scheduler(vllm_config(tiny_llama(tmp_path / "f32", "float32"), store, dtype="float32"))
    assert DpdpuKVConnector.requires_piecewise_for_cudagraph({"store": store})
    assert not DpdpuKVConnector.requires_piecewise_for_cudagraph({"store": store, "layerwise": False})
    merged = DpdpuKVConnector.build_kv_connector_stats({"loaded_tokens": 3}).aggregate(
        DpdpuKVConnectorStats.of({"loaded_tokens": 4, "saved_tokens": 1})
    )
    assert merged.reduce()["loaded_tokens"] == 7 and merged.reduce()["save_failures"] == 0


def _without_store(config: Any) -> Any:
    del config.kv_transfer_config.kv_connector_extra_config["store"]
    return config


def test_a_tier_that_goes_away_is_a_miss_and_one_never_there_an_error(tmp_path: Path) -> None:
    pool = KvStorePool(dram_bytes=1 << 20)
    endpoint = FlightEndpoint("grpc://127.0.0.1:0", services={"kv": KvFlightService(pool)}).serve_background()
    store = f"127.0.0.1:{endpoint.port}"
    with pool:
        eng = engine(tmp_path, store)
        endpoint.close()
        req = request("a", PROMPT, max_tokens=1)
        assert eng.sched.connector.get_num_new_matched_tokens(req, 0) == (0, False)
        stats = eng.sched.connector.get_kv_connector_stats()
        assert stats is not None and stats.data["lookup_failures"] == 1
        eng.add(req)
        eng.step()
        assert eng.steps[0]["scheduled"] == {"a": 64}  # prefilled as if nothing were cached
    with pytest.raises(KvRemoteError):  # at start-up, a wrong address fails loudly
        scheduler(vllm_config(tiny_llama(tmp_path / "tiny"), store))
