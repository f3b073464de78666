"""The KV tier over a real Arrow Flight endpoint on loopback, and the serving-engine-shaped connector."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dpdpu import errors
from dpdpu.kv import KvShapeError, KvStore, ModelShape, TokenError
from dpdpu.kv.connector import KvConnector
from dpdpu.kv.remote import KvFlightService, KvRemoteError, RemoteKvStore
from dpdpu.network.flight import FlightEndpoint

SHAPE = ModelShape("tiny", layers=3, kv_heads=2, head_dim=8)
ROOT = Path(__file__).resolve().parents[1]


def kv_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE.token_shape(n)).astype(np.float16)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[KvStore, FlightEndpoint]]:
    dram = 4 * 4 * SHAPE.bytes_per_token
    store = KvStore(SHAPE, chunk_tokens=4, data_dir=tmp_path / "kv", dram_bytes=dram, disk_bytes=1 << 20)
    endpoint = FlightEndpoint(token="s3cret", services={"kv": KvFlightService(store)})
    with store, endpoint.serve_background() as ep:
        yield store, ep


def test_remote_round_trip(served: tuple[KvStore, FlightEndpoint]) -> None:
    store, ep = served
    tokens = list(range(30))  # 7 chunks: more than DRAM holds, so some come back from disk
    kv = kv_for(30)
    with RemoteKvStore(ep.location, token="s3cret", model=SHAPE) as remote:
        assert remote.lookup(tokens) == 0
        assert remote.store(tokens, kv) == 28
        assert remote.lookup(tokens) == 28 == store.lookup(tokens)
        hit, out = remote.retrieve(tokens)
        assert hit == 28 and np.array_equal(out, kv[:, :, :28])
        assert store.stats()["disk"]["hits"] > 0
        hit, out = remote.retrieve(list(range(100, 110)))
        assert hit == 0 and out.shape == SHAPE.token_shape(0)
        # data stored locally is found remotely, and the other way round
        store.store(list(range(500, 508)), kv_for(8, 1))
        assert np.array_equal(remote.retrieve(list(range(500, 508)))[1], kv_for(8, 1))


def test_remote_errors(served: tuple[KvStore, FlightEndpoint]) -> None:
    _, ep = served
    with pytest.raises(KvRemoteError, match="token"):
        RemoteKvStore(ep.location, token="wrong")
    with pytest.raises(KvShapeError):
        RemoteKvStore(ep.location, token="s3cret", model=ModelShape("other", 3, 2, 8))
    with RemoteKvStore(ep.location, token="s3cret") as remote:
        assert remote.model == SHAPE and remote.chunk_tokens == 4
        with pytest.raises(TokenError):
            remote.lookup([[1, 2]])
        with pytest.raises(KvShapeError):
            remote.store(list(range(8)), kv_for(7))
        with pytest.raises(errors.InvalidArgumentError, match="unknown kv op"):
            remote._get({"op": "drop-everything"}).read_all()
        assert remote.lookup(list(range(8))) == 0  # the server kept serving


def test_connector_loads_layer_by_layer_and_saves(tmp_path: Path) -> None:
    tokens = np.arange(13)
    kv = kv_for(13)
    store = KvStore(SHAPE, chunk_tokens=4, data_dir=tmp_path, dram_bytes=0, disk_bytes=1 << 20, device="bluefield3")
    with store as s, KvConnector(s) as conn:
        assert conn.get_num_matched_tokens(tokens) == 0
        assert conn.start_load_kv(tokens, request_id="a") == 0
        for layer in range(SHAPE.layers):
            assert conn.wait_for_layer_load(layer, request_id="a") is None
            conn.save_kv_layer(layer, kv[layer], request_id="a")
        assert conn.wait_for_save(request_id="a") == 12
        assert conn.get_num_matched_tokens(tokens) == 12
        assert conn.start_load_kv(tokens, request_id="b") == 12
        for layer in range(SHAPE.layers):
            got = conn.wait_for_layer_load(layer, request_id="b", timeout=30)
            assert np.array_equal(got, kv[layer, :, :12])
        assert conn.wait_for_save(request_id="b") == 0
        with pytest.raises(errors.InvalidArgumentError):
            conn.wait_for_layer_load(0, request_id="b")  # forgotten after wait_for_save


def test_connector_example_runs() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "kv_connector.py")], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "req-2: 812 prompt tokens, 512 loaded from the KV tier" in res.stdout
