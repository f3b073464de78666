"""vLLM's real v1 scheduler drives DpdpuKVConnector against a live tier (see vllm_harness.py).

Chunks are 32 tokens, vLLM's blocks 16; the scheduler takes 64 tokens a step,
so longer prompts are prefilled in pieces (chunked prefill).
"""

from __future__ import annotations

from pathlib import Path

from vllm_harness import BLOCK, Engine, Worker, request, scheduler, tiny_llama, vllm_config

from dpdpu.integrations.vllm import DpdpuConnectorMetadata, DpdpuKVConnector
from dpdpu.kv import KvStorePool

PROMPT = list(range(1000, 1100))  # 100 tokens: 3 whole chunks and 4 tokens more


def engine(tmp_path: Path, store: str, num_blocks: int = 64, **kw: object) -> Engine:
    config = vllm_config(tiny_llama(tmp_path / "tiny"), store, **kw)
    sched = scheduler(config, num_blocks)
    return Engine(sched, Worker.start(config, num_blocks))


def test_scheduler_loads_the_connector_and_schedules_only_uncached_tokens(
    tmp_path: Path, tier: tuple[str, KvStorePool]
) -> None:
    store, pool = tier
    eng = engine(tmp_path, store)
    assert isinstance(eng.sched.connector, DpdpuKVConnector)  # built by vLLM from kv_transfer_config alone
    assert eng.sched.requires_kv_delivery is False  # a cache: a save lost to preemption is only a later miss

    # First request: nothing cached; prefilled 64 + 36 tokens; the prompt's whole chunks saved as they complete.
    eng.add(request("a", PROMPT, max_tokens=2))
    eng.run()
    first, second = eng.steps[0], eng.steps[1]
    assert first["scheduled"] == {"a": 64} and first["loads"] == []
    assert first["saves"] == [("a", 0, 64)] and second["saves"] == [("a", 64, 96)]
    eng.worker.connector.wait_for_saves_in_flight()
    (shard,) = pool.stores().values()
    assert shard.lookup(PROMPT) == 96

    # Same prefix, another tail: vLLM's own prefix cache is cold for it (a new scheduler), so the tier
    # supplies 96 tokens and only the other 36 are scheduled.
    eng2 = engine(tmp_path, store)
    prompt_b = PROMPT[:96] + list(range(5000, 5036))
    eng2.add(request("b", prompt_b, max_tokens=1))
    out = eng2.step()
    assert eng2.steps[0]["scheduled"] == {"b": 132 - 96}
    assert out.has_sync_kv_loads  # so vLLM's model runner starts the load before the forward pass
    meta = out.kv_connector_metadata
    assert isinstance(meta, DpdpuConnectorMetadata)
    (load,) = meta.loads
    assert (load.req_id, load.start, load.end, len(load.tokens)) == ("b", 0, 96, 96)
    assert load.block_ids == eng2.steps[0]["blocks"]["b"][: len(load.block_ids)]
    assert len(load.block_ids) == -(-132 // BLOCK)  # blocks allocated for the whole prompt
    blocks = eng2.steps[0]["blocks"]["b"]
    assert eng2.worker.holds(prompt_b, blocks, 0, 96)  # bit for bit what request a computed
    assert eng2.steps[0]["saves"] == [("b", 96, 128)]  # the new whole chunk, not the loaded ones
    assert "b" not in eng2.sched.requests  # one step: its one token sampled, finished


def test_chunked_prefill_after_a_hit_loads_once_and_saves_each_new_chunk(
    tmp_path: Path, tier: tuple[str, KvStorePool]
) -> None:
    store, _ = tier
    eng = engine(tmp_path, store)
    eng.add(request("a", PROMPT, max_tokens=1))
    eng.run()
    eng.worker.connector.wait_for_saves_in_flight()

    eng2 = engine(tmp_path, store)
    long_prompt = PROMPT[:96] + list(range(7000, 7104))  # 200 tokens, 96 of them cached
    eng2.add(request("c", long_prompt, max_tokens=1))
    eng2.run()
    steps = eng2.steps
    assert [s["scheduled"]["c"] for s in steps] == [64, 40]  # 96 loaded, 104 computed in two pieces
    assert steps[0]["loads"] == [("c", 0, 96)] and steps[1]["loads"] == []
    assert steps[0]["saves"] == [("c", 96, 160)] and steps[1]["saves"] == [("c", 160, 192)]
    assert eng2.worker.holds(long_prompt, steps[0]["blocks"]["c"], 0, 96)


def test_full_prompt_hit_leaves_the_last_token_to_compute(tmp_path: Path, tier: tuple[str, KvStorePool]) -> None:
    store, _ = tier
    eng = engine(tmp_path, store)
    eng.add(request("a", PROMPT, max_tokens=1))
    eng.run()
    eng.worker.connector.wait_for_saves_in_flight()

    eng2 = engine(tmp_path, store)
    exact = PROMPT[:96]  # every token cached
    eng2.add(request("d", exact, max_tokens=1))
    eng2.step()
    (step,) = eng2.steps
    assert step["scheduled"] == {"d": 1} and step["loads"] == [("d", 0, 95)]
    assert eng2.worker.holds(exact, step["blocks"]["d"], 0, 95)  # a load ending inside a block
    assert step["saves"] == []  # the tier has all of it


def test_preempted_request_resumes_from_the_tier(tmp_path: Path, tier: tuple[str, KvStorePool]) -> None:
    store, _ = tier
    # No prefix caching in vLLM and 12 blocks for two requests: decoding both runs out of blocks,
    # the later request is preempted (its blocks freed), and on resuming it loads its saved chunks.
    eng = engine(tmp_path, store, num_blocks=12, prefix_caching=False)
    prompt_x = list(range(100, 180))  # 80 tokens: 2 chunks, 5 blocks
    prompt_y = list(range(300, 380))
    eng.add(request("x", prompt_x, max_tokens=40))
    eng.add(request("y", prompt_y, max_tokens=40))
    eng.run(limit=200)
    preempted = [i for i, s in enumerate(eng.steps) if any(r == "y" for r, _, _ in s["loads"])]
    assert preempted, "y was never preempted and resumed from the tier"
    resumed = eng.steps[preempted[0]]
    assert resumed["preemptions"]["y"] == 1 and ("y", 0, 64) in resumed["loads"]
    assert resumed["scheduled"]["y"] == len(prompt_y) + 1 - 64  # its prompt and one sampled token, less the load
    assert eng.worker.holds(prompt_y, resumed["blocks"]["y"], 0, 64)
    assert eng.worker.connector.get_block_ids_with_load_errors() == set()
