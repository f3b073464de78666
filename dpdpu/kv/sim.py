"""Serving-trace simulator of the KV-cache tier: hit rate, bytes moved, modeled TTFT.

It replays a request trace against a model shape and a device profile in
modeled time only (no KV data exists): each request's prompt is cut into
chunk keys exactly as :class:`~dpdpu.kv.store.KvStore` cuts them, looked up
in a DRAM tier and a storage tier with the store's eviction policies, and the
time to first token (TTFT) is modeled twice:

* **recompute**: the whole prompt is prefilled, ``prompt / prefill_tokens_per_s``;
* **KV tier**: the cached prefix is loaded (DRAM chunks over PCIe: a fixed
  cost per chunk plus bytes over the link; storage chunks: the profile's
  ``[storage]`` read latency per chunk, spread over its ``parallelism`` slots,
  plus bytes over the read bandwidth, then PCIe) while the rest of the prompt
  is prefilled.  Loading is layer-wise, so it overlaps the prefill:
  ``max(load, prefill) + min(load, prefill) / layers``.  A prompt served
  entirely from the tier still computes one token.
* **adaptive**: per request the smaller of the two (what a server that knows
  these figures would pick).

After its prefill a request's full chunks are stored (DRAM first; DRAM
evictions are written to storage, whose write time is reported as the
storage's utilization over the trace: above 100% it cannot keep up).  Disk
hits are promoted to DRAM.  Requests do not queue behind each other: every
TTFT is the request's own.  The same trace, seed and options always give the
same report.

**Trace format** (JSON)::

    {"format": "dpdpu-kv-trace", "version": 1,
     "requests": [
       {"t": 0.0, "session": "chat-0",
        "prompt": [{"stream": "system-1", "tokens": 1024},
                   {"stream": "chat-0", "tokens": 300}],
        "output_tokens": 128},
       {"t": 0.5, "prompt": [{"ids": [1, 2, 3, 4]}]}]}

A prompt is a list of spans: ``{"stream": NAME, "tokens": N}`` is the first N
tokens of the deterministic token stream NAME (the same name always gives the
same tokens, so a later turn of a chat that repeats ``"chat-0"`` with more
tokens shares its prefix); ``{"ids": [...]}`` gives token ids outright.
``t`` (arrival, seconds) orders the requests; ``session`` and
``output_tokens`` are informational (the generator grows a chat's history
by its user and output tokens).  CSV traces (``t,session,prompt``) are
accepted too, ``prompt`` being spans ``NAME:N`` separated by ``+``
(``0.5,chat-0,system-1:1024+chat-0:300``).  Traces are UTF-8 (a byte order
mark is allowed); ``t`` is a finite number, ids fit in 64 bits, and a request
has at most :data:`MAX_REQUEST_TOKENS` tokens (anything else is a
:class:`TraceError`).

:func:`generate_trace` writes multi-turn chats sharing a few system prompts;
``dpdpu/kv/traces/chat-small.json`` ships (seed 7).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors
from ..runtime.cost import CostModel
from ..runtime.profile import Profile
from ..storage.bdev import StorageModel
from .keys import ModelShape, chunk_keys, root_key
from .policies import make_policy

__all__ = [
    "MAX_REQUEST_TOKENS",
    "MODELS",
    "SHIPPED_TRACE",
    "KvSimReport",
    "generate_trace",
    "load_trace",
    "model_shape",
    "simulate",
    "trace_tokens",
]

#: KV shapes of common models (per tensor-parallel rank of 1).
MODELS: dict[str, ModelShape] = {
    "llama-7b": ModelShape("llama-7b", 32, 32, 128, "fp16"),
    "llama-13b": ModelShape("llama-13b", 40, 40, 128, "fp16"),
    "llama-70b": ModelShape("llama-70b", 80, 8, 128, "fp16"),
    "llama3-8b": ModelShape("llama3-8b", 32, 8, 128, "bf16"),
    "mistral-7b": ModelShape("mistral-7b", 32, 8, 128, "bf16"),
}
SHIPPED_TRACE = "chat-small.json"
_VOCAB = 32000
#: Most prompt tokens of one trace request: far beyond any model's context, yet the
#: request's token ids (8 bytes each) still fit in memory.
MAX_REQUEST_TOKENS = 1 << 24
_INT64 = (-(1 << 63), (1 << 63) - 1)


class TraceError(errors.InvalidArgumentError):
    """A trace file is malformed."""


def model_shape(spec: str | ModelShape) -> ModelShape:
    """A model by preset name or as ``NAME:LAYERS:KV_HEADS:HEAD_DIM[:DTYPE]``."""
    if isinstance(spec, ModelShape):
        return spec
    if spec in MODELS:
        return MODELS[spec]
    parts = spec.split(":")
    if len(parts) in (4, 5):
        try:
            return ModelShape(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), *(parts[4:] or ["fp16"]))
        except ValueError:
            pass
    raise errors.InvalidArgumentError(
        f"unknown model {errors.shown(spec)}: use one of {', '.join(MODELS)} or NAME:LAYERS:KV_HEADS:HEAD_DIM[:DTYPE]"
    )


# --- traces -------------------------------------------------------------------------------------


def _stream(name: str, n: int, cache: dict[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    have = cache.get(name)
    if have is None or len(have) < n:
        seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
        size = max(n, 2 * len(have) if have is not None else 0, 1024)
        have = np.random.default_rng(seed).integers(0, _VOCAB, size, dtype=np.int64)
        cache[name] = have
    return have[:n]


def trace_tokens(
    request: Mapping[str, Any], cache: dict[str, np.ndarray[Any, Any]] | None = None
) -> np.ndarray[Any, Any]:
    """The prompt token ids of one trace request."""
    cache = {} if cache is None else cache
    parts = []
    for span in request.get("prompt", []):
        if "ids" in span:
            parts.append(np.asarray(span["ids"], dtype=np.int64))
        else:
            parts.append(_stream(str(span["stream"]), int(span["tokens"]), cache))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(data: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
        raise TraceError(f"{where}: a trace is a JSON object with a list of requests")
    lo, hi = _INT64
    out = []
    for i, req in enumerate(data["requests"]):
        if not isinstance(req, dict) or not isinstance(req.get("prompt"), list):
            raise TraceError(f"{where}: request {i} needs a prompt (a list of spans)")
        tokens = 0
        for span in req["prompt"]:
            if isinstance(span, dict) and "ids" in span:
                ids = span["ids"]
                ok = isinstance(ids, list) and all(_is_int(t) and lo <= t <= hi for t in ids)
                n = len(ids) if ok else 0
            else:
                ok = isinstance(span, dict) and "stream" in span and _is_int(span.get("tokens"))
                n = span["tokens"] if ok else 0
                ok = ok and n >= 0
            if not ok:
                raise TraceError(
                    f"{where}: request {i} has a bad span {errors.shown(span)} (ids must be 64-bit integers)"
                )
            tokens += n
            if tokens > MAX_REQUEST_TOKENS:
                raise TraceError(f"{where}: request {i} has more than {MAX_REQUEST_TOKENS} prompt tokens")
        t = req.get("t", i)
        try:
            ok = isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(float(t))
        except OverflowError:
            ok = False
        if not ok:
            raise TraceError(f"{where}: request {i} has a bad time {errors.shown(t)} (a finite number of seconds)")
        out.append({"t": float(t), **{k: v for k, v in req.items() if k != "t"}})
    out.sort(key=lambda r: r["t"])  # stable: equal times keep file order
    return out


def load_trace(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Read a JSON (or CSV) trace; ``None`` reads the shipped one."""
    if path is None:
        text = resources.files("dpdpu.kv").joinpath("traces").joinpath(SHIPPED_TRACE).read_text()
        return _validate(json.loads(text), SHIPPED_TRACE)
    p = Path(path)
    try:
        # ``utf-8-sig``: editors on Windows start UTF-8 files with a byte order mark.
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise TraceError(f"cannot read trace {p}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise TraceError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if p.suffix.lower() == ".csv":
        reqs = []
        try:
            rows = list(csv.DictReader(text.splitlines(), skipinitialspace=True))
        except csv.Error as exc:
            raise TraceError(f"{p}: not CSV: {str(exc)[:200]}") from exc
        for row in rows:
            try:
                spans = [
                    {"stream": s.rsplit(":", 1)[0].strip(), "tokens": int(s.rsplit(":", 1)[1])}
                    for s in row["prompt"].split("+")
                ]
                reqs.append({"t": float(row["t"]), "session": row.get("session", ""), "prompt": spans})
            except (KeyError, ValueError, IndexError, AttributeError, TypeError) as exc:
                # (a short row has None for its missing fields)
                raise TraceError(f"{p}: bad CSV row {errors.shown(row)}") from exc
        return _validate({"requests": reqs}, str(p))
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an integer of too many digits
        raise TraceError(f"{p}: not JSON: {str(exc)[:200]}") from exc
    return _validate(data, str(p))


def generate_trace(
    seed: int = 0,
    *,
    conversations: int = 40,
    max_turns: int = 6,
    system_prompts: int = 4,
    system_tokens: int = 1024,
    user_tokens: int = 200,
    output_tokens: int = 250,
    rate_per_s: float = 2.0,
    think_s: float = 20.0,
) -> dict[str, Any]:
    """A multi-turn chat trace: conversations share system prompts, each turn repeats the history.

    Conversations start as a Poisson process of ``rate_per_s``; turns follow
    after an exponential think time; user and output lengths are exponential
    around their means.  Deterministic for a seed.
    """
    rng = random.Random(seed)
    reqs = []
    start = 0.0
    for c in range(conversations):
        start += rng.expovariate(rate_per_s)
        system = f"system-{rng.randrange(system_prompts)}"
        history = 0
        t = start
        for turn in range(rng.randint(1, max_turns)):
            history += max(1, int(rng.expovariate(1 / user_tokens)))
            out = max(1, int(rng.expovariate(1 / output_tokens)))
            reqs.append(
                {
                    "t": round(t, 3),
                    "session": f"chat-{c}",
                    "turn": turn,
                    "prompt": [{"stream": system, "tokens": system_tokens}, {"stream": f"chat-{c}", "tokens": history}],
                    "output_tokens": out,
                }
            )
            history += out
            t += rng.expovariate(1 / think_s)
    reqs.sort(key=lambda r: float(r["t"]))  # type: ignore[arg-type]
    return {"format": "dpdpu-kv-trace", "version": 1, "seed": seed, "requests": reqs}


# --- simulation ---------------------------------------------------------------------------------


@dataclass
class KvSimReport:
    """What :func:`simulate` found (times in seconds, sizes in bytes)."""

    device: str
    model: str
    requests: int
    prompt_tokens: int
    hit_tokens: int
    dram_hit_tokens: int
    disk_hit_tokens: int
    hit_rate: float
    pcie_bytes: int
    disk_read_bytes: int
    disk_write_bytes: int
    storage_write_utilization: float
    ttft_recompute: dict[str, float]
    ttft_tier: dict[str, float]
    ttft_adaptive: dict[str, float]
    speedup_tier: float
    speedup_adaptive: float
    slower_requests: int
    settings: dict[str, Any] = field(default_factory=dict)
    per_request: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for JSON)."""
        return asdict(self)

    @property
    def verdict(self) -> str:
        """One sentence: does offload pay on this device and trace."""
        if self.hit_tokens == 0:
            return "no prefix hits: the KV tier cannot help this trace"
        if self.speedup_tier >= 1.0 and self.slower_requests == 0:
            return f"offload pays: mean TTFT {self.speedup_tier:.2f}x faster than recomputing"
        if self.speedup_tier >= 1.0:
            return (
                f"offload pays on average ({self.speedup_tier:.2f}x) but {self.slower_requests} requests load slower "
                f"than they recompute; choosing per request gives {self.speedup_adaptive:.2f}x"
            )
        return (
            f"offload makes TTFT worse ({self.speedup_tier:.2f}x): loading is slower than the prefill; "
            f"choosing per request gives {self.speedup_adaptive:.2f}x"
        )


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


def _ratio(recompute_s: float, tier_s: float) -> float:
    # Requests with no prompt tokens take no time either way: no speed-up.
    return recompute_s / tier_s if tier_s > 0 else 1.0


def simulate(
    trace: Sequence[Mapping[str, Any]] | str | Path | None = None,
    *,
    device: str | Profile = "bluefield3",
    model: str | ModelShape = "llama-7b",
    prefill_tokens_per_s: float = 8000.0,
    chunk_tokens: int = 256,
    dram_bytes: int | None = None,
    disk_bytes: int = 256 << 30,
    policy: str = "lru",
    keep_requests: bool = False,
) -> KvSimReport:
    """Replay ``trace`` (requests, a path, or None for the shipped trace); see the module docstring."""
    requests = (
        load_trace(trace)
        if trace is None or isinstance(trace, (str, Path))
        else _validate({"requests": list(trace)}, "trace")
    )
    profile = Profile.of(device)
    shape = model_shape(model)
    if prefill_tokens_per_s <= 0 or not math.isfinite(prefill_tokens_per_s):
        raise errors.InvalidArgumentError(
            f"prefill_tokens_per_s must be positive, not {errors.shown(prefill_tokens_per_s)}"
        )
    storage = profile.storage
    if storage is None and disk_bytes > 0:
        disk_bytes = 0  # a profile without storage has no disk tier
    dram_cap = int(profile.memory.value) if dram_bytes is None else int(dram_bytes)
    chunk_bytes = chunk_tokens * shape.bytes_per_token
    # Every chunk is the same size: its PCIe and storage write times are fixed for the run.
    chunk_pcie_s = CostModel(profile).transfer_seconds(chunk_bytes)
    chunk_write_s = StorageModel(storage).service_s("write", chunk_bytes) if storage is not None else 0.0
    root = root_key(shape)
    dram = make_policy(policy, dram_cap)
    disk = make_policy(policy, disk_bytes)
    in_dram: set[bytes] = set()
    on_disk: set[bytes] = set()
    totals = dict(prompt=0, hit=0, dram_hit=0, disk_hit=0, pcie=0, disk_read=0, disk_write=0)
    write_s = 0.0
    recompute, tier, adaptive = [], [], []
    slower = 0
    rows = []
    cache: dict[str, np.ndarray[Any, Any]] = {}

    def to_disk(key: bytes) -> None:
        nonlocal write_s
        if key in on_disk or chunk_bytes > disk_bytes:
            return
        while len(on_disk) * chunk_bytes + chunk_bytes > disk_bytes:
            victim = disk.victim(lambda k: True)
            on_disk.discard(victim)  # type: ignore[arg-type]
        on_disk.add(key)
        disk.insert(key, chunk_bytes)
        totals["disk_write"] += chunk_bytes
        write_s += chunk_write_s

    def to_dram(key: bytes) -> None:
        if key in in_dram:
            return
        if chunk_bytes > dram_cap:
            to_disk(key)
            return
        while len(in_dram) * chunk_bytes + chunk_bytes > dram_cap:
            victim = dram.victim(lambda k: True)
            assert isinstance(victim, bytes)
            in_dram.discard(victim)
            if disk_bytes:
                to_disk(victim)
        in_dram.add(key)
        dram.insert(key, chunk_bytes)

    for req in requests:
        tokens = trace_tokens(req, cache)
        keys = chunk_keys(tokens, root, chunk_tokens)
        n_dram = n_disk = 0
        for key in keys:
            if key in in_dram:
                n_dram += 1
                dram.hit(key)
            elif key in on_disk:
                n_disk += 1
                disk.hit(key)
            else:
                break
        hit_chunks = n_dram + n_disk
        prompt = len(tokens)
        hit = hit_chunks * chunk_tokens
        # Every hit crosses PCIe; disk hits are read first, their latencies spread over the slots.
        load = hit_chunks * chunk_pcie_s
        if n_disk:
            assert storage is not None
            load += (
                math.ceil(n_disk / storage.slots) * storage.read_fixed_s
                + n_disk * chunk_bytes / storage.read_bytes_per_s
            )
        full = prompt / prefill_tokens_per_s
        rest = max(prompt - hit, 1 if hit else 0) / prefill_tokens_per_s
        with_tier = max(load, rest) + min(load, rest) / shape.layers if hit else full
        recompute.append(full)
        tier.append(with_tier)
        adaptive.append(min(full, with_tier))
        slower += with_tier > full
        totals["prompt"] += prompt
        totals["hit"] += hit
        totals["dram_hit"] += n_dram * chunk_tokens
        totals["disk_hit"] += n_disk * chunk_tokens
        totals["pcie"] += hit_chunks * chunk_bytes
        totals["disk_read"] += n_disk * chunk_bytes
        # Disk hits are promoted; then every full chunk of the prompt is stored.
        for key in keys[n_dram : n_dram + n_disk]:
            to_dram(key)
        for key in keys:
            if key not in in_dram and key not in on_disk:
                to_dram(key)
        if keep_requests:
            rows.append(
                dict(t=req["t"], prompt=prompt, dram_hit=n_dram * chunk_tokens, disk_hit=n_disk * chunk_tokens,
                     ttft_recompute=full, ttft_tier=with_tier)
            )  # fmt: skip
    span = (requests[-1]["t"] - requests[0]["t"]) if len(requests) > 1 else 0.0
    r_mean = _summary(recompute)["mean"]
    return KvSimReport(
        device=profile.name,
        model=shape.name,
        requests=len(requests),
        prompt_tokens=totals["prompt"],
        hit_tokens=totals["hit"],
        dram_hit_tokens=totals["dram_hit"],
        disk_hit_tokens=totals["disk_hit"],
        hit_rate=totals["hit"] / totals["prompt"] if totals["prompt"] else 0.0,
        pcie_bytes=totals["pcie"],
        disk_read_bytes=totals["disk_read"],
        disk_write_bytes=totals["disk_write"],
        storage_write_utilization=write_s / span if span > 0 else 0.0,
        ttft_recompute=_summary(recompute),
        ttft_tier=_summary(tier),
        ttft_adaptive=_summary(adaptive),
        speedup_tier=_ratio(r_mean, _summary(tier)["mean"]),
        speedup_adaptive=_ratio(r_mean, _summary(adaptive)["mean"]),
        slower_requests=slower,
        settings=dict(
            prefill_tokens_per_s=prefill_tokens_per_s,
            chunk_tokens=chunk_tokens,
            chunk_bytes=chunk_bytes,
            dram_bytes=dram_cap,
            disk_bytes=disk_bytes,
            policy=policy,
            storage=None if storage is None else str(storage.medium.value),
        ),
        per_request=rows,
    )
