""":class:`DpdpuKVConnector`: vLLM's KV connector (v1) over dpdpu's KV tier served on Flight.

One connector object runs in vLLM's scheduler process and one in every
worker; all of them talk to the same tier (a :class:`~dpdpu.kv.KvFlightService`
over a :class:`~dpdpu.kv.KvStorePool`, e.g. ``dpdpu kv-serve``), each rank to
its own store, whose keys name the model, its shape and the rank.

**Scheduler side.**  :meth:`~DpdpuKVConnector.get_num_new_matched_tokens`
asks the tier how much of the prompt every rank holds (a lookup with no side
effects) and offers what lies beyond vLLM's own prefix cache, never the whole
prompt (the last token is computed for its logits).  When vLLM allocates the
blocks, the connector pins the prefix on the tier for ``pin_seconds`` and asks
it to prefetch storage chunks into DRAM; :meth:`build_connector_meta` then
tells the workers which tokens to load into which blocks and which prompt
chunks became complete this step and are to be saved.

**Worker side.**  :meth:`start_load_kv` starts one streaming load per request,
layer after layer; :meth:`wait_for_layer_load` (called before each attention
layer) writes that layer into the paged cache, so the transfer of later layers
overlaps the computation of earlier ones.  :meth:`save_kv_layer` copies each
layer's new chunks out of the paged cache into host memory and streams them to
the tier in the background; :meth:`wait_for_save` returns once every copy is
taken (the blocks may then be freed and reused: the saves in flight no longer
read them).  Tokens the tier failed to deliver are reported by block through
:meth:`get_block_ids_with_load_errors`, and vLLM recomputes them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from ... import errors
from ...kv import KvRemoteError, RemoteKvStore
from .paged import PagedLayout, from_numpy, gather, scatter, to_numpy
from .settings import ModelPlace, TierSettings, model_place
from .stats import COUNTERS, DpdpuKVConnectorStats

__all__ = ["DpdpuConnectorMetadata", "DpdpuKVConnector", "LoadSpec", "SaveSpec"]

log = logging.getLogger(__name__)

#: Saves whose data is copied out but not yet acknowledged by the tier; a step beyond waits for the oldest.
MAX_SAVES_IN_FLIGHT = 16


@dataclass
class LoadSpec:
    """Load tokens ``[start, end)`` of a request into its blocks.

    ``tokens`` are the prompt's tokens through the last chunk the load touches
    (the chunk keys are computed from them); ``block_ids`` are the request's
    blocks from its first token.
    """

    req_id: str
    tokens: list[int]
    start: int
    end: int
    block_ids: list[int]


@dataclass
class SaveSpec:
    """Save the chunks of tokens ``[start, len(tokens))`` of a request (whole chunks) from its blocks."""

    req_id: str
    tokens: list[int]
    start: int
    block_ids: list[int]


@dataclass
class DpdpuConnectorMetadata(KVConnectorMetadata):  # type: ignore[misc]
    """One step's plan, from the scheduler to every worker."""

    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)


def _tp_rank(vllm_config: Any) -> int:
    from vllm.distributed import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return int(parallel_state.get_tensor_model_parallel_rank())
    parallel = vllm_config.parallel_config
    return int(parallel.rank) % int(parallel.tensor_parallel_size)


class DpdpuKVConnector(KVConnectorBase_V1):  # type: ignore[misc]
    """vLLM's KV connector over dpdpu's KV tier (see the module docstring).

    vLLM builds it from ``--kv-transfer-config``: ``kv_connector`` ``"DpdpuKVConnector"``,
    ``kv_connector_module_path`` ``"dpdpu.integrations.vllm"``, ``kv_role`` ``"kv_both"`` and
    ``kv_connector_extra_config`` with ``store`` (the tier's ``HOST:PORT``) and optionally
    ``token``, ``device``, ``policy``, ``disk_policy``, ``chunk_tokens``, ``dram_codec``,
    ``disk_codec``, ``quantize``, ``model_name``, ``layerwise`` (default true) and ``pin_seconds``.
    """

    _cache_hit_source = CacheHitSource.DISK

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.settings = TierSettings.from_extra(self._kv_transfer_config.kv_connector_extra_config)
        rank = 0 if role == KVConnectorRole.SCHEDULER else _tp_rank(vllm_config)
        self.place: ModelPlace = model_place(vllm_config, kv_cache_config, self.settings, rank)
        self.chunk_tokens = self.settings.chunk_for(self.place.block_size)
        self.client = RemoteKvStore(
            self.settings.location,
            token=self.settings.token,
            model=self.place.shape,
            tp_rank=self.place.tp_rank,
            tp_size=self.place.tp_size,
            options=self.settings.store_options(self.chunk_tokens),
        )
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        # scheduler side
        self._tracks: dict[str, _Track] = {}
        self._lookups: dict[str, _Lookup] = {}
        self._pending_loads: dict[str, tuple[int, int]] = {}
        # worker side
        self._caches: dict[str, torch.Tensor] = {}
        self._layer_of: dict[str, int] = {}
        self._layout: PagedLayout | None = None
        self._loads: list[_LoadJob] = []
        self._saves: list[_SaveJob] = []
        self._in_flight: deque[concurrent.futures.Future[int]] = deque()
        self._failed_blocks: set[int] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dpdpu-vllm")
        self._savers = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dpdpu-vllm-save")

    # --- counters ----------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def get_kv_connector_stats(self) -> DpdpuKVConnectorStats | None:
        """This process's counters since the last call (None when nothing happened)."""
        with self._lock:
            counts, self._counts = self._counts, dict.fromkeys(COUNTERS, 0)
        stats = DpdpuKVConnectorStats.of(counts)
        return None if stats.is_empty() else stats

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> DpdpuKVConnectorStats:
        """Stats rebuilt from their ``data`` (as they cross process boundaries)."""
        return DpdpuKVConnectorStats.of(data or {})

    @property
    def requires_kv_delivery(self) -> bool:
        """A cache, not a hand-off: a save lost to preemption is a later miss, so vLLM need not recompute for it."""
        return False

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        """Layer-by-layer loading and saving run Python between layers: CUDA graphs must be piecewise."""
        return bool((extra_config or {}).get("layerwise", True))

    # --- scheduler side ----------------------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        """Prompt tokens beyond ``num_computed_tokens`` every rank's store holds (loaded synchronously)."""
        prompt = list(request.prompt_token_ids or [])
        if len(prompt) < self.chunk_tokens:
            return 0, False
        try:
            hit, in_dram = self.client.lookup(prompt, all_ranks=True, dram=True)
        except (KvRemoteError, errors.InvalidArgumentError) as exc:
            # The tier being away is a cache miss, not a failed request.
            log.warning("dpdpu KV tier lookup failed: %s", exc)
            self._count("lookup_failures")
            return 0, False
        usable = min(hit, len(prompt) - 1)  # the last prompt token is computed for its logits
        self._lookups[request.request_id] = _Lookup(hit, in_dram, num_computed_tokens)
        return max(0, usable - num_computed_tokens), False

    def get_external_cache_hit_sources(self, request: Any, num_external_tokens: int) -> dict[CacheHitSource, int]:
        """The tokens to load split by tier: the tier's DRAM as host memory, its storage as disk."""
        if num_external_tokens <= 0:
            return {}
        found = self._lookups.get(request.request_id)
        if found is None:
            return {CacheHitSource.DISK: num_external_tokens}
        from_dram = max(0, min(num_external_tokens, found.in_dram - found.computed))
        out = {CacheHitSource.HOST: from_dram, CacheHitSource.DISK: num_external_tokens - from_dram}
        return {k: v for k, v in out.items() if v}

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        """Plan the load of the ``num_external_tokens`` vLLM accepted; pin and prefetch them on the tier."""
        if num_external_tokens <= 0:
            self._pending_loads.pop(request.request_id, None)
            return
        found = self._lookups[request.request_id]
        start = found.computed
        end = start + num_external_tokens
        self._pending_loads[request.request_id] = (start, end)
        prefix = list(request.prompt_token_ids)[: self._chunk_end(end)]
        try:
            # A pin holds the chunks until the workers have read them (or pin_seconds pass); a prefetch
            # brings storage chunks into DRAM while the step is being planned.
            self.client.pin(prefix, seconds=self.settings.pin_seconds, all_ranks=True)
            self.client.prefetch(prefix, all_ranks=True)
        except (KvRemoteError, errors.InvalidArgumentError) as exc:
            log.warning("dpdpu KV tier pin failed: %s", exc)  # the load reports what it cannot read

    def _chunk_end(self, tokens: int) -> int:
        c = self.chunk_tokens
        return -(-tokens // c) * c

    def build_connector_meta(self, scheduler_output: Any) -> DpdpuConnectorMetadata:
        """This step's loads (planned at allocation) and saves (prompt chunks complete after this step)."""
        meta = DpdpuConnectorMetadata()
        computed: dict[str, int] = {}
        for new in scheduler_output.scheduled_new_reqs:
            found = self._lookups.get(new.req_id)
            track = _Track(list(new.prompt_token_ids or []), list(new.block_ids[0]), 0)
            old = self._tracks.get(new.req_id)
            # What the tier held at the lookup, or what this connector already saved, needs no save.
            track.saved = max(old.saved if old else 0, (found.hit if found else 0))
            self._tracks[new.req_id] = track
            computed[new.req_id] = new.num_computed_tokens
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            track_or_none = self._tracks.get(req_id)
            if track_or_none is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                # A preempted request comes back with a whole new block list.
                track_or_none.blocks = list(new_blocks[0]) if new_blocks is not None else []
            elif new_blocks is not None:
                track_or_none.blocks.extend(new_blocks[0])
            computed[req_id] = cached.num_computed_tokens[i]
        for req_id, (start, end) in self._pending_loads.items():
            loading = self._tracks.get(req_id)
            if loading is None:
                continue
            meta.loads.append(
                LoadSpec(req_id, loading.prompt[: self._chunk_end(end)], start, end, list(loading.blocks))
            )
        self._pending_loads.clear()
        c = self.chunk_tokens
        for req_id, done in computed.items():
            track = self._tracks[req_id]
            after = done + int(scheduler_output.num_scheduled_tokens.get(req_id, 0))
            end = min(after, len(track.prompt)) // c * c
            if end > track.saved:
                nblocks = end // self.place.block_size
                meta.saves.append(SaveSpec(req_id, track.prompt[:end], track.saved, list(track.blocks[:nblocks])))
                track.saved = end
        return meta

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """Forget the request; its blocks may be freed now (saves copy their data out within the step)."""
        self._tracks.pop(request.request_id, None)
        self._lookups.pop(request.request_id, None)
        self._pending_loads.pop(request.request_id, None)
        return False, None

    # --- worker side -------------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Take the paged caches, one per attention layer, in the model's layer order."""
        from vllm.model_executor.models.utils import extract_layer_index

        shape = self.place.shape
        names = sorted(kv_caches, key=extract_layer_index)
        if len(names) != shape.layers:
            raise errors.InvalidArgumentError(f"{len(names)} KV caches for a model of {shape.layers} layers")
        kernel_block = None
        for name in names:
            cache = kv_caches[name]
            want = (shape.kv_heads, 2 * shape.head_dim)
            if cache.ndim != 4 or (cache.shape[1], cache.shape[3]) != want:
                raise errors.InvalidArgumentError(
                    f"the KV cache of {name[:80]} is {tuple(cache.shape)}, not [blocks, {want[0]}, block, {want[1]}]"
                )
            if kernel_block not in (None, cache.shape[2]):
                raise errors.InvalidArgumentError("the layers' KV caches page at different block sizes")
            kernel_block = int(cache.shape[2])
        assert kernel_block is not None
        self._layout = PagedLayout(self.place.block_size, kernel_block)
        self._caches = {name: kv_caches[name] for name in names}
        self._layer_of = {name: i for i, name in enumerate(names)}

    def _meta(self) -> DpdpuConnectorMetadata | None:
        if not self.has_connector_metadata():
            return None
        meta = self._get_connector_metadata()
        return meta if isinstance(meta, DpdpuConnectorMetadata) else None

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        """Start this step's loads, each streaming layer after layer (all of them first unless layer-wise)."""
        meta = self._meta()
        if meta is None or not meta.loads:
            return
        layers = self.place.shape.layers
        for spec in meta.loads:
            job = _LoadJob(spec, spec.start // self.chunk_tokens * self.chunk_tokens, layers)
            job.future = self._pool.submit(self._stream_load, job)
            self._loads.append(job)
        if not self.settings.layerwise:
            for name in self._caches:
                self._apply_layer(name)
            self._finish_loads()

    def _stream_load(self, job: _LoadJob) -> None:
        try:
            for layer, kv in self.client.retrieve_layers(job.spec.tokens, start=job.first):
                job.layers[layer] = kv
                job.ready[layer].set()
        except Exception as exc:
            job.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            for event in job.ready:
                event.set()

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Write this layer of every load of the step into the paged cache (waiting for it to arrive)."""
        if self.settings.layerwise and layer_name in self._caches:
            self._apply_layer(layer_name)

    def _apply_layer(self, name: str) -> None:
        assert self._layout is not None
        layer = self._layer_of[name]
        cache = self._caches[name]
        for job in self._loads:
            if layer in job.applied:
                continue
            job.ready[layer].wait()
            kv, job.layers[layer] = job.layers[layer], None
            spec = job.spec
            have = job.first + (kv.shape[1] if kv is not None else 0)
            upto = min(spec.end, have)
            if upto > spec.start:
                assert kv is not None
                data = from_numpy(kv[:, spec.start - job.first : upto - job.first], cache.dtype)
                scatter(cache, self._layout, spec.block_ids, spec.start, data)
            job.good = min(job.good, max(upto, spec.start))
            job.applied.add(layer)

    def _finish_loads(self) -> None:
        """Apply what no layer wait applied, then report each load: tokens loaded or blocks failed."""
        for name in self._caches:
            self._apply_layer(name)
        bs = self.place.block_size
        for job in self._loads:
            spec = job.spec
            if job.error is not None:
                log.warning("dpdpu KV tier load of %s failed: %s", spec.req_id, job.error)
            if job.good < spec.end:
                failed = spec.block_ids[job.good // bs : -(-spec.end // bs)]
                self._failed_blocks.update(failed)
                self._count("load_failed_blocks", len(failed))
            loaded = job.good - spec.start
            self._count("loaded_tokens", loaded)
            self._count("loaded_bytes", loaded * self.place.shape.bytes_per_token)
        self._loads = []

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        """Copy this layer's chunks to save out of the paged cache and queue them for the tier."""
        if not self.settings.layerwise or layer_name not in self._layer_of:
            return
        meta = self._meta()
        if meta is None or not meta.saves:
            return
        if not self._saves:
            self._start_saves(meta)
        self._feed(self._layer_of[layer_name], kv_layer)

    def _start_saves(self, meta: DpdpuConnectorMetadata) -> None:
        for spec in meta.saves:
            job = _SaveJob(spec)
            job.future = self._savers.submit(self._stream_save, job)
            self._saves.append(job)

    def _feed(self, layer: int, cache: torch.Tensor) -> None:
        assert self._layout is not None
        for job in self._saves:
            if layer in job.fed:
                continue
            spec = job.spec
            kv = gather(cache, self._layout, spec.block_ids, spec.start, len(spec.tokens))
            job.queue.put((layer, to_numpy(kv)))
            job.fed.add(layer)

    def _stream_save(self, job: _SaveJob) -> int:
        spec = job.spec
        upload = self.client.store_layers(spec.tokens, start=spec.start)
        try:
            for _ in range(self.place.shape.layers):
                layer, kv = job.queue.get()
                upload.write(layer, kv)
            return upload.finish()
        except BaseException:
            upload.abort()
            raise

    def wait_for_save(self) -> None:
        """Finish the step: loads reported, every save's data copied out and handed to the background."""
        if self._loads:
            self._finish_loads()
        meta = self._meta()
        if meta is not None and meta.saves:
            if not self._saves:
                self._start_saves(meta)
            names = list(self._caches)
            for name in names:  # layers no save_kv_layer call delivered (all of them unless layer-wise)
                self._feed(self._layer_of[name], self._caches[name])
        for job in self._saves:
            assert job.future is not None
            job.future.add_done_callback(self._saved)
            self._in_flight.append(job.future)
        self._saves = []
        while len(self._in_flight) > MAX_SAVES_IN_FLIGHT:
            concurrent.futures.wait([self._in_flight.popleft()])
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft()

    def _saved(self, future: concurrent.futures.Future[int]) -> None:
        exc = future.exception()
        if exc is not None:
            log.warning("dpdpu KV tier save failed: %s", exc)
            self._count("save_failures")
            return
        stored = future.result()
        self._count("saved_tokens", stored)
        self._count("saved_bytes", stored * self.place.shape.bytes_per_token)

    def wait_for_saves_in_flight(self, timeout: float | None = None) -> None:
        """Block until every save handed to the background is acknowledged (or failed)."""
        concurrent.futures.wait(list(self._in_flight), timeout=timeout)

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Blocks whose tokens the tier did not deliver since the last call (vLLM recomputes them)."""
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed

    def shutdown(self) -> None:
        """Wait for the saves in flight, then close the connection."""
        self.wait_for_saves_in_flight()
        self._pool.shutdown(wait=True)
        self._savers.shutdown(wait=True)
        self.client.close()


@dataclass
class _Lookup:
    hit: int
    in_dram: int
    computed: int


@dataclass
class _Track:
    prompt: list[int]
    blocks: list[int]
    saved: int


class _LoadJob:
    def __init__(self, spec: LoadSpec, first: int, layers: int) -> None:
        self.spec = spec
        self.first = first
        self.layers: list[np.ndarray[Any, Any] | None] = [None] * layers
        self.ready = [threading.Event() for _ in range(layers)]
        self.applied: set[int] = set()
        self.good = spec.end
        self.error: str | None = None
        self.future: concurrent.futures.Future[None] | None = None


class _SaveJob:
    def __init__(self, spec: SaveSpec) -> None:
        self.spec = spec
        self.queue: queue.Queue[tuple[int, np.ndarray[Any, Any]]] = queue.Queue()
        self.fed: set[int] = set()
        self.future: concurrent.futures.Future[int] | None = None
