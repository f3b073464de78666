"""A toy serving loop using dpdpu's KV tier through its serving-engine-shaped connector.

Two requests share a 512-token system prompt.  The first computes every layer
("prefill", here random numbers) and saves it layer by layer; the second asks
the scheduler-side call how much is cached, loads those layers while it
"computes" the rest, and checks that what came back is what was saved.

Run: ``python examples/kv_connector.py``.
"""

from __future__ import annotations

import tempfile

import numpy as np

from dpdpu.kv import KvStore, ModelShape
from dpdpu.kv.connector import KvConnector

SHAPE = ModelShape("toy-llm", layers=4, kv_heads=4, head_dim=32, dtype="fp16")


def fake_layer(tokens: np.ndarray, layer: int) -> np.ndarray:
    """Stand-in for attention: a deterministic [2, tokens, heads, dim] per token and layer."""
    rng = np.random.default_rng(layer)
    table = rng.standard_normal((2, 50_000, SHAPE.kv_heads, SHAPE.head_dim)).astype(np.float16)
    return table[:, tokens % 50_000]


def serve(connector: KvConnector, tokens: np.ndarray, request_id: str) -> int:
    """One request: load what the tier has, compute the rest, save every layer; returns tokens loaded."""
    matched = connector.get_num_matched_tokens(tokens)
    connector.start_load_kv(tokens, request_id=request_id)
    for layer in range(SHAPE.layers):
        cached = connector.wait_for_layer_load(layer, request_id=request_id)
        kv = fake_layer(tokens, layer)
        if cached is not None:
            assert np.array_equal(cached, kv[:, : cached.shape[1]]), "the tier returned other data"
        connector.save_kv_layer(layer, kv, request_id=request_id)
    stored = connector.wait_for_save(request_id=request_id)
    print(f"{request_id}: {len(tokens)} prompt tokens, {matched} loaded from the KV tier, {stored} newly stored")
    return matched


def main() -> None:
    system = np.arange(512)
    first = np.concatenate([system, np.arange(10_000, 10_100)])
    second = np.concatenate([system, np.arange(20_000, 20_300)])
    with tempfile.TemporaryDirectory() as data_dir:
        # DRAM holds two chunks: the rest is demoted to the storage tier and promoted back on a hit.
        dram = 2 * 256 * SHAPE.bytes_per_token
        with (
            KvStore(SHAPE, data_dir=data_dir, dram_bytes=dram, device="bluefield3") as store,
            KvConnector(store) as conn,
        ):
            serve(conn, first, "req-1")
            assert serve(conn, second, "req-2") == 512
            print({k: v for k, v in store.stats().items() if k in ("hit_tokens", "miss_tokens", "hit_rate")})


if __name__ == "__main__":
    main()
