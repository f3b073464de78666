"""vLLM's real scheduler and a worker-side connector over CPU paged caches, driven step by step.

Nothing here stands in for vLLM: the configuration, the v1 ``Scheduler``, its
requests and outputs are vLLM's own, and the connector is built by vLLM's
connector factory from ``kv_transfer_config``.  What a GPU would do in a step
(the model's forward pass) is replaced by writing each scheduled token's KV
into its slots of the paged cache: a value that depends only on the token's
prefix, as a real model's does, so two requests sharing a prefix share its KV
and a load can be checked bit for bit.

(conftest.py skips this directory without vLLM.)
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch
    from vllm import SamplingParams
    from vllm.config import CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput
    from vllm.v1.request import Request
    from vllm.v1.structured_output import StructuredOutputManager

from dpdpu.integrations.vllm import DpdpuKVConnector

LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
BLOCK = 16
CHUNK = 32
EOS = 999
LAYER_NAMES = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]


def tiny_llama(directory: Path, dtype: str = "float16") -> Path:
    """A config-only Llama (a ``config.json``, no weights): enough for vLLM's configuration and scheduler."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HEADS * HEAD_DIM,
        "intermediate_size": 128, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS, "head_dim": HEAD_DIM, "vocab_size": 1000, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "torch_dtype": dtype, "eos_token_id": EOS,
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def vllm_config(
    model_dir: Path,
    store: str,
    *,
    dtype: str = "float16",
    max_num_batched_tokens: int = 64,
    prefix_caching: bool = True,
    tp_size: int = 1,
    rank: int = 0,
    **extra: Any,
) -> Any:
    """A CPU ``VllmConfig`` whose ``kv_transfer_config`` names the dpdpu connector and the tier at ``store``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ModelConfig(model=str(model_dir), dtype=dtype, seed=0, skip_tokenizer_init=True)
        config = VllmConfig(
            model_config=model,
            scheduler_config=SchedulerConfig(
                max_num_seqs=8,
                max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=2048,
                enable_chunked_prefill=True,
                is_encoder_decoder=False,
            ),
            cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=prefix_caching),
            kv_transfer_config=KVTransferConfig(
                kv_connector="DpdpuKVConnector",
                kv_connector_module_path="dpdpu.integrations.vllm",
                kv_role="kv_both",
                kv_load_failure_policy="recompute",
                kv_connector_extra_config={"store": store, "chunk_tokens": CHUNK, **extra},
            ),
            device_config=DeviceConfig("cpu"),
        )
    config.parallel_config.tensor_parallel_size = tp_size
    config.parallel_config.rank = rank
    return config


def kv_cache_config(num_blocks: int, dtype: Any = torch.float16) -> Any:
    """One full-attention group over the tiny model's layers."""
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=KV_HEADS, head_size=HEAD_DIM, dtype=dtype)
    return KVCacheConfig(
        num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(list(LAYER_NAMES), spec)]
    )


def scheduler(config: Any, num_blocks: int = 200) -> Any:
    """vLLM's v1 scheduler; it builds its connector from ``config.kv_transfer_config``."""
    config.cache_config.num_gpu_blocks = num_blocks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Scheduler(
            vllm_config=config,
            kv_cache_config=kv_cache_config(num_blocks, config.model_config.dtype),
            structured_output_manager=StructuredOutputManager(config),
            block_size=BLOCK,
            log_stats=True,
        )


_hash_ready = False


def request(req_id: str, prompt: list[int], max_tokens: int = 4) -> Any:
    """A vLLM request for ``prompt`` that decodes ``max_tokens`` tokens (never EOS)."""
    global _hash_ready
    if not _hash_ready:
        init_none_hash(sha256)
        _hash_ready = True
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    params.update_from_generation_config({}, EOS)
    return Request(
        request_id=req_id,
        prompt_token_ids=list(prompt),
        sampling_params=params,
        pooling_params=None,
        block_hasher=get_request_block_hasher(BLOCK, sha256),
    )


def token_kv(tokens: list[int], position: int, dtype: torch.dtype) -> torch.Tensor:
    """What a model computes for ``tokens[position]``, ``[LAYERS, KV_HEADS, 2 * HEAD_DIM]``, from the prefix alone."""
    seed = hashlib.blake2b(np.asarray(tokens[: position + 1], dtype="<i8").tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(seed, "little"))
    return torch.from_numpy(rng.standard_normal((LAYERS, KV_HEADS, 2 * HEAD_DIM)).astype(np.float32)).to(dtype)


def paged_caches(num_blocks: int, dtype: torch.dtype, heads: int = KV_HEADS) -> dict[str, torch.Tensor]:
    """Per-layer CPU caches in vLLM's layout: logical ``[blocks, kv_heads, block, 2 * head_dim]``, stored NHD-first."""
    out = {}
    for name in LAYER_NAMES:
        physical = torch.full((num_blocks, BLOCK, heads, 2 * HEAD_DIM), float("nan"), dtype=dtype)
        out[name] = physical.permute(0, 2, 1, 3)
    return out


def plan(output: Any, tokens_of: dict[str, list[int]], blocks_of: dict[str, list[int]]) -> dict[str, Any]:
    """What a step asks of every worker: the connector's metadata, the tokens to compute, where they live."""
    computed = {new.req_id: new.num_computed_tokens for new in output.scheduled_new_reqs}
    cached = output.scheduled_cached_reqs
    computed.update(zip(cached.req_ids, cached.num_computed_tokens, strict=True))
    compute = {r: (done, done + output.num_scheduled_tokens[r]) for r, done in computed.items()}
    return {"meta": output.kv_connector_metadata, "compute": compute, "tokens": tokens_of, "blocks": blocks_of}


@dataclass
class Worker:
    """A worker process's part: the connector in the worker role over paged CPU caches."""

    connector: DpdpuKVConnector
    caches: dict[str, torch.Tensor]
    dtype: torch.dtype
    heads: slice = field(default_factory=lambda: slice(None))

    @classmethod
    def start(cls, config: Any, num_blocks: int) -> Worker:
        """The worker of ``config``'s tensor-parallel rank: it holds that rank's share of the KV heads."""
        dtype = config.model_config.dtype
        connector = DpdpuKVConnector(config, KVConnectorRole.WORKER, kv_cache_config(num_blocks, dtype))
        per_rank = KV_HEADS // config.parallel_config.tensor_parallel_size
        rank = connector.place.tp_rank
        caches = paged_caches(num_blocks, dtype, per_rank)
        connector.register_kv_caches(caches)
        return cls(connector, caches, dtype, slice(rank * per_rank, (rank + 1) * per_rank))

    def step(self, output: Any, tokens_of: dict[str, list[int]], blocks_of: dict[str, list[int]]) -> set[int]:
        """One forward pass as vLLM's model runner drives the connector; returns the blocks that failed to load."""
        return self.run(plan(output, tokens_of, blocks_of))

    def run(self, step: dict[str, Any]) -> set[int]:
        """:meth:`step` of a :func:`plan` (which another process may have made)."""
        conn = self.connector
        conn.bind_connector_metadata(step["meta"])
        conn.start_load_kv(None)
        for layer, name in enumerate(LAYER_NAMES):
            conn.wait_for_layer_load(name)
            for req_id, (start, end) in step["compute"].items():
                self.write(name, layer, step["tokens"][req_id], step["blocks"][req_id], start, end)
            conn.save_kv_layer(name, self.caches[name], None)
        conn.wait_for_save()
        failed = conn.get_block_ids_with_load_errors()
        conn.clear_connector_metadata()
        return failed

    def write(self, name: str, layer: int, tokens: list[int], blocks: list[int], start: int, end: int) -> None:
        cache = self.caches[name]
        for pos in range(start, end):
            cache[blocks[pos // BLOCK], :, pos % BLOCK] = token_kv(tokens, pos, self.dtype)[layer, self.heads]

    def read(self, name: str, blocks: list[int], pos: int) -> torch.Tensor:
        return self.caches[name][blocks[pos // BLOCK], :, pos % BLOCK]

    def holds(self, tokens: list[int], blocks: list[int], start: int, end: int) -> bool:
        """Whether tokens ``[start, end)`` in these blocks are bit for bit the KV of ``tokens``' prefix."""
        for layer, name in enumerate(LAYER_NAMES):
            for pos in range(start, end):
                want = token_kv(tokens, pos, self.dtype)[layer, self.heads]
                if not torch.equal(self.read(name, blocks, pos).view(torch.int16), want.view(torch.int16)):
                    return False
        return True


@dataclass
class Engine:
    """vLLM's scheduler and one worker, stepped by hand; records what each step scheduled."""

    sched: Any
    worker: Worker
    steps: list[dict[str, Any]] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    sampled: int = 7

    def add(self, req: Any) -> None:
        self.sched.add_request(req)

    def step(self, fail_blocks: bool = True) -> Any:
        out = self.sched.schedule()
        tokens_of, blocks_of = {}, {}
        for req_id in out.num_scheduled_tokens:
            req = self.sched.requests[req_id]
            tokens_of[req_id] = list(req.all_token_ids)
            blocks_of[req_id] = list(self.sched.kv_cache_manager.get_block_ids(req_id)[0])
        step = plan(out, tokens_of, blocks_of)
        self.plans.append(step)
        failed = self.worker.run(step)
        meta = out.kv_connector_metadata
        self.steps.append({
            "scheduled": dict(out.num_scheduled_tokens),
            "loads": [(s.req_id, s.start, s.end) for s in meta.loads],
            "saves": [(s.req_id, s.start, len(s.tokens)) for s in meta.saves],
            "failed": failed,
            "blocks": blocks_of,
            "preemptions": {r: self.sched.requests[r].num_preemptions for r in out.num_scheduled_tokens},
        })  # fmt: skip
        req_ids = list(out.num_scheduled_tokens)
        # A request still prefilling its prompt samples nothing this step.
        sampled = []
        for req_id in req_ids:
            req = self.sched.requests[req_id]  # its num_computed_tokens already counts this step
            sampled.append([self.sampled] if req.num_computed_tokens >= req.num_prompt_tokens else [])
        model_out = ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index={r: i for i, r in enumerate(req_ids)},
            sampled_token_ids=sampled,
            kv_connector_output=KVConnectorOutput(invalid_block_ids=failed) if failed else None,
        )
        self.sched.update_from_output(out, model_out)
        return out

    def run(self, limit: int = 50) -> None:
        """Step until no request is left."""
        for _ in range(limit):
            if not self.sched.has_unfinished_requests():
                return
            self.step()
        raise AssertionError("requests did not finish")
