"""Keys agree across processes and tensor-parallel ranks: each rank in its own process, one shared tier."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from test_vllm_scheduler import PROMPT
from vllm_harness import CHUNK, HEAD_DIM, LAYERS, Engine, Worker, request, scheduler, tiny_llama, token_kv, vllm_config

from dpdpu.kv import KvStorePool, ModelShape, chunk_keys, store_id

HERE = Path(__file__).resolve().parent


def test_a_rank_in_another_process_completes_the_prefix(tmp_path: Path, tier: tuple[str, KvStorePool]) -> None:
    store, pool = tier
    model = tiny_llama(tmp_path / "tiny")
    sched = scheduler(vllm_config(model, store, tp_size=2), 64)
    eng = Engine(sched, Worker.start(vllm_config(model, store, tp_size=2, rank=0), 64))
    eng.add(request("a", PROMPT, max_tokens=1))
    eng.run()
    eng.worker.connector.wait_for_saves_in_flight()
    lookup = sched.connector.client.lookup
    assert lookup(PROMPT) == 96 and lookup(PROMPT, all_ranks=True) == 0  # rank 1 has not saved its share yet

    # Rank 1 replays the same steps in another process, with another hash seed.
    plans = tmp_path / "plans.pkl"
    plans.write_bytes(pickle.dumps(eng.plans))
    env = {**os.environ, "PYTHONHASHSEED": "4242", "HF_HUB_OFFLINE": "1"}
    script = [sys.executable, str(HERE / "vllm_rank_worker.py"), str(model), store, "1", "2", str(plans)]
    res = subprocess.run(script, capture_output=True, text=True, timeout=300, env=env, cwd=HERE)
    assert res.returncode == 0, res.stderr[-3000:]
    other = json.loads(res.stdout.strip().splitlines()[-1])

    per_rank = ModelShape(str(model), LAYERS, 1, HEAD_DIM, "fp16")  # 2 KV heads over 2 ranks
    assert other["rank"] == 1
    assert other["store"] == store_id(per_rank, tp_rank=1, tp_size=2) != store_id(per_rank, tp_rank=0, tp_size=2)
    saved = [list(s.tokens) for step in eng.plans for s in step["meta"].saves]
    root = bytes.fromhex(other["store"])
    assert other["keys"] == [[k.hex() for k in chunk_keys(t, root, CHUNK)] for t in saved]
    assert lookup(PROMPT, all_ranks=True) == 96

    # Rank 1's share in the tier is the second KV head, bit for bit.
    hit, kv = pool.stores()[other["store"]].retrieve(PROMPT)
    assert hit == 96
    for pos in range(0, 96, 7):
        want = token_kv(PROMPT, pos, torch.float16)[:, 1:2]  # [layers, 1 head, 2 * dim]
        got = torch.from_numpy(np.ascontiguousarray(kv[:, :, pos].transpose(0, 2, 1, 3))).reshape(want.shape)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), pos

    # Now the scheduler offers the prefix every rank holds.
    sched.add_request(request("b", [*PROMPT[:96], 5, 6], max_tokens=1))
    assert sched.schedule().num_scheduled_tokens == {"b": 2}
