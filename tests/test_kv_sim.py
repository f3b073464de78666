"""The KV-tier serving-trace simulator and the ``dpdpu kv-sim`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dpdpu.cli import main
from dpdpu.kv.sim import TraceError, generate_trace, load_trace, simulate, trace_tokens
from dpdpu.runtime.profile import Profile

MODEL = "t:2:1:4"  # 2 layers x 2 x 1 head x 4 dims x 2 bytes = 32 bytes per token
CHUNK_BYTES = 4 * 32


def hand_trace() -> dict[str, Any]:
    return {
        "format": "dpdpu-kv-trace",
        "version": 1,
        "requests": [
            {"t": 0.0, "prompt": [{"ids": list(range(10))}]},
            {"t": 1.0, "prompt": [{"ids": [*range(8), 100, 101, 102, 103]}]},
            {"t": 2.0, "prompt": [{"ids": [0, 1, 2, 3, *range(50, 58)]}]},
            {"t": 3.0, "prompt": [{"stream": "s", "tokens": 8}]},
            {"t": 4.0, "prompt": [{"stream": "s", "tokens": 12}]},
        ],
    }


def test_hand_worked_trace_hits(tmp_path: Path) -> None:
    # DRAM holds 2 chunks (LRU), the storage tier the rest:
    # r1 stores c0 c1; r2 hits c0 c1 in DRAM (8), stores c2 (c0 -> disk);
    # r3 hits c0 on disk (4), promotes it, stores two chunks; r4 misses; r5 hits s0 s1 in DRAM (8).
    path = tmp_path / "t.json"
    path.write_text(json.dumps(hand_trace()))
    r = simulate(path, device="bluefield3", model=MODEL, chunk_tokens=4, dram_bytes=2 * CHUNK_BYTES,
                 prefill_tokens_per_s=1000.0, keep_requests=True)  # fmt: skip
    assert r.requests == 5 and r.prompt_tokens == 54
    assert (r.hit_tokens, r.dram_hit_tokens, r.disk_hit_tokens) == (20, 16, 4)
    assert [row["dram_hit"] + row["disk_hit"] for row in r.per_request] == [0, 8, 4, 0, 8]
    assert r.hit_rate == pytest.approx(20 / 54)
    assert r.pcie_bytes == 5 * CHUNK_BYTES and r.disk_read_bytes == CHUNK_BYTES
    assert r.ttft_recompute["mean"] == pytest.approx(54 / 5 / 1000)
    # request 2: two DRAM chunks over PCIe while 4 tokens are prefilled, overlapped layer by layer
    p = Profile.load("bluefield3")
    load = 2 * (p.pcie_fixed_s + CHUNK_BYTES / p.pcie_bytes_per_s)  # type: ignore[operator]
    rest = 4 / 1000
    assert r.per_request[1]["ttft_tier"] == pytest.approx(max(load, rest) + min(load, rest) / 2)
    # request 3 reads its chunk from storage
    st = p.storage
    assert st is not None
    disk = st.read_fixed_s + CHUNK_BYTES / st.read_bytes_per_s + p.pcie_fixed_s + CHUNK_BYTES / p.pcie_bytes_per_s  # type: ignore[operator]
    assert r.per_request[2]["ttft_tier"] == pytest.approx(max(disk, 8 / 1000) + min(disk, 8 / 1000) / 2)
    # everything fits in DRAM: the same hits, none from storage
    big = simulate(path, model=MODEL, chunk_tokens=4, prefill_tokens_per_s=1000.0)
    assert (big.hit_tokens, big.disk_hit_tokens, big.disk_write_bytes) == (20, 0, 0)


def test_fast_prefill_and_slow_storage_make_offload_worse() -> None:
    slow = simulate(None, device="bluefield2", dram_bytes=1 << 30, prefill_tokens_per_s=50000.0)
    assert slow.disk_hit_tokens > 0 and slow.speedup_tier < 1.0 and "worse" in slow.verdict
    assert slow.speedup_adaptive >= 1.0
    fast = simulate(None, device="bluefield3", prefill_tokens_per_s=2000.0)
    assert fast.speedup_tier > 1.0 and fast.slower_requests == 0 and "pays" in fast.verdict
    # deterministic
    again = simulate(None, device="bluefield2", dram_bytes=1 << 30, prefill_tokens_per_s=50000.0)
    assert again.as_dict() == slow.as_dict()


def test_generator_is_deterministic_and_shares_prefixes() -> None:
    a, b = generate_trace(3, conversations=5), generate_trace(3, conversations=5)
    assert a == b and a != generate_trace(4, conversations=5)
    reqs = load_trace(None)
    assert len(reqs) > 50
    cache: dict[str, Any] = {}
    by_chat: dict[str, list[Any]] = {}
    for req in reqs:
        by_chat.setdefault(req["session"], []).append(trace_tokens(req, cache))
    turns = next(t for t in by_chat.values() if len(t) > 1)
    assert (turns[1][: len(turns[0])] == turns[0]).all()  # the next turn repeats the history


def test_bad_traces(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"requests": [{"prompt": [{"ids": [1.5]}]}]}')
    with pytest.raises(TraceError):
        load_trace(bad)
    bad.write_text("not json")
    with pytest.raises(TraceError):
        load_trace(bad)
    with pytest.raises(TraceError):
        load_trace(tmp_path / "missing.json")


def test_csv_trace(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("t,session,prompt\n0,a,sys:8+a:4\n1,a,sys:8+a:9\n")
    r = simulate(path, model=MODEL, chunk_tokens=4)
    assert r.prompt_tokens == 29 and r.hit_tokens == 12


def test_cli_kv_sim(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(hand_trace()))
    runner = CliRunner()
    res = runner.invoke(main, ["kv-sim", str(path), "--model", MODEL, "--chunk-tokens", "4",
                               "--dram-gb", str(2 * CHUNK_BYTES / 2**30), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["hit_tokens"], out["dram_hit_tokens"], out["disk_hit_tokens"]) == (20, 16, 4)
    res = runner.invoke(main, ["kv-sim", "--device", "bluefield2", "--prefill-tokens-per-s", "50000"])
    assert res.exit_code == 0, res.output
    assert "modeled time to first token" in res.output and "bluefield2" in res.output
    gen = tmp_path / "gen.json"
    res = runner.invoke(main, ["kv-sim", "--generate", str(gen), "--seed", "5", "--conversations", "3"])
    assert res.exit_code == 0 and gen.exists() and "requests" in json.loads(gen.read_text())
    res = runner.invoke(main, ["kv-sim", "--model", "gpt-17"])
    assert res.exit_code != 0 and "unknown model" in res.output


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.json", b'{"requests": [{"t": "abc", "prompt": [{"ids": [1]}]}]}', "bad time"),
        ("t.json", b'{"requests": [{"t": null, "prompt": [{"ids": [1]}]}]}', "bad time"),
        ("t.json", b'{"requests": [{"t": NaN, "prompt": [{"ids": [1]}]}]}', "bad time"),
        ("t.json", b'{"requests": [{"t": 0, "prompt": [{"ids": [1, 99999999999999999999]}]}]}', "64-bit"),
        ("t.json", b'{"requests": [{"t": 0, "prompt": [{"stream": "s", "tokens": 100000000000}]}]}', "prompt tokens"),
        ("t.json", b'\xff\xfe{"requests": []}', "not UTF-8"),
        ("t.csv", b"t,session,prompt\n0,a\n", "bad CSV row"),
        ("t.csv", b"t,session,prompt\nabc,a,s:4\n", "bad CSV row"),
    ],
)
def test_cli_kv_sim_malformed_traces_are_usage_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    res = CliRunner().invoke(main, ["kv-sim", str(path), "--model", MODEL, "--chunk-tokens", "4"])
    assert res.exit_code == 2, res.output
    assert "Error:" in res.output and message in res.output and "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)  # click's clean exit, not an escaped exception


def test_traces_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    (tmp_path / "t.csv").write_bytes(bom + b"t,session,prompt\n0,a,s:8\n1,a,s:12\n")
    (tmp_path / "t.json").write_bytes(bom + json.dumps(hand_trace()).encode())
    assert simulate(tmp_path / "t.csv", model=MODEL, chunk_tokens=4).hit_tokens == 8
    assert simulate(tmp_path / "t.json", model=MODEL, chunk_tokens=4).hit_tokens == 20


@pytest.mark.parametrize("option", ["--dram-gb", "--disk-gb"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_cli_kv_sim_rejects_negative_or_non_finite_sizes(option: str, value: str) -> None:
    res = CliRunner().invoke(main, ["kv-sim", "--model", MODEL, option, value])
    assert res.exit_code == 2 and "Error:" in res.output and option in res.output


def test_a_trace_of_empty_prompts_replays() -> None:
    report = simulate([{"t": 0.0, "prompt": []}, {"t": 1.0, "prompt": [{"ids": []}]}], model=MODEL, chunk_tokens=4)
    assert report.requests == 2 and report.prompt_tokens == 0 and report.speedup_tier == 1.0


@pytest.mark.parametrize(
    "request_",
    [
        {"prompt": [{"stream": "s" * 1_000_000, "tokens": -1}]},
        {"prompt": [{"ids": ["x" * 1_000_000]}]},
        {"t": "x" * 1_000_000, "prompt": []},
        '{"t": 1' + "0" * 5000 + ', "prompt": []}',  # an integer too long for Python to read
    ],
)
def test_trace_errors_quote_a_bounded_prefix(tmp_path: Path, request_: dict[str, Any] | str) -> None:
    path = tmp_path / "t.json"
    text = request_ if isinstance(request_, str) else json.dumps(request_)
    path.write_text('{"requests": [' + text + "]}")
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert len(str(info.value)) < 300 + len(str(path))


def test_csv_row_errors_quote_a_bounded_prefix(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("t,session,prompt\n0," + "s" * 100_000 + ",x:notanumber\n")
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert len(str(info.value)) < 300 + len(str(path))
