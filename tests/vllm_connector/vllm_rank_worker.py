"""Another tensor-parallel rank's worker in a process of its own: ``vllm_rank_worker.py MODEL STORE RANK SIZE PLANS``.

It replays the steps in the pickled PLANS file (what the scheduler sent every
worker) with its own share of the KV heads, then prints its store id and the
chunk keys of every token list it saved, as JSON.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from vllm_harness import Worker, vllm_config

from dpdpu.kv import chunk_keys


def main() -> None:
    model_dir, store, rank, size, plans = sys.argv[1:]
    config = vllm_config(Path(model_dir), store, tp_size=int(size), rank=int(rank))
    worker = Worker.start(config, 64)
    steps = pickle.loads(Path(plans).read_bytes())
    for step in steps:
        worker.run(step)
    worker.connector.shutdown()  # waits for the saves in flight
    root = bytes.fromhex(worker.connector.client.store_id)
    saved = [list(s.tokens) for step in steps for s in step["meta"].saves]
    keys = [[k.hex() for k in chunk_keys(t, root, worker.connector.chunk_tokens)] for t in saved]
    print(json.dumps({"store": worker.connector.client.store_id, "rank": worker.connector.place.tp_rank, "keys": keys}))


if __name__ == "__main__":
    main()
