"""An adapter shaped like a serving engine's KV connector, over a :class:`~dpdpu.kv.store.KvStore`.

It depends on no serving engine and runs in one process (vLLM's own
connector, with its scheduler and workers in separate processes, is
:class:`dpdpu.integrations.vllm.DpdpuKVConnector`); its calls follow the usual split:

* **scheduler side**: :meth:`KvConnector.get_num_matched_tokens` says how
  many prompt tokens the tier can supply, so the scheduler only plans the
  prefill of the rest;
* **worker side**: :meth:`~KvConnector.start_load_kv` starts loading the
  cached prefix layer by layer in the background (the chunks pinned until the
  load ends); the model's forward pass calls
  :meth:`~KvConnector.wait_for_layer_load` before attention of layer ``i``,
  so loading layer ``i+1`` overlaps computing layer ``i``; after computing a
  layer it hands the layer's KV to :meth:`~KvConnector.save_kv_layer`
  (saved in the background) and finally waits with
  :meth:`~KvConnector.wait_for_save`.

Several requests may be in flight at once; each call names its
``request_id``.  If a chunk turns out corrupt mid-load, later layers carry
fewer tokens than announced: :meth:`wait_for_layer_load` returns what it has
and the engine recomputes the rest.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import errors
from .keys import as_tokens
from .store import KvStore

__all__ = ["KvConnector"]


@dataclass
class _Request:
    tokens: np.ndarray[Any, Any]
    hit: int = 0
    layers: list[np.ndarray[Any, Any] | None] = field(default_factory=list)
    ready: list[threading.Event] = field(default_factory=list)
    error: BaseException | None = None
    saves: list[concurrent.futures.Future[int]] = field(default_factory=list)


class KvConnector:
    """Scheduler- and worker-side calls of a serving engine's KV connector (see the module docstring).

    Args:
        store: the KV store to load from and save to.
        save_workers: threads saving layers in the background.
    """

    def __init__(self, store: KvStore, *, save_workers: int = 1) -> None:
        self.store = store
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()
        self._loader = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="dpdpu-kv-load")
        self._saver = concurrent.futures.ThreadPoolExecutor(
            max_workers=save_workers, thread_name_prefix="dpdpu-kv-save"
        )

    # --- scheduler side ----------------------------------------------------------------------------

    def get_num_matched_tokens(self, tokens: Any) -> int:
        """Prompt tokens the KV tier holds (a multiple of the chunk size; the rest must be prefilled)."""
        return self.store.lookup(tokens)

    # --- worker side -------------------------------------------------------------------------------

    def _request(self, request_id: str) -> _Request:
        with self._lock:
            req = self._requests.get(request_id)
        if req is None:
            raise errors.InvalidArgumentError(f"no request {errors.shown(request_id)}: call start_load_kv first")
        return req

    def start_load_kv(self, tokens: Any, *, request_id: str = "default") -> int:
        """Start loading the cached prefix of ``tokens`` layer by layer; returns the tokens being loaded."""
        arr = as_tokens(tokens)
        layers = self.store.model.layers
        req = _Request(arr, layers=[None] * layers, ready=[threading.Event() for _ in range(layers)])
        with self._lock:
            if request_id in self._requests:
                raise errors.InvalidArgumentError(f"request {errors.shown(request_id)} is already in flight")
            self._requests[request_id] = req
        hit = self.store.lookup(arr)
        req.hit = hit
        if hit == 0:
            for event in req.ready:
                event.set()
            return 0
        self._loader.submit(self._load, req)
        return hit

    def _load(self, req: _Request) -> None:
        try:
            with self.store.pinned(req.tokens[: req.hit]):
                for layer in range(self.store.model.layers):
                    n, arr = self.store.retrieve_layer(req.tokens[: req.hit], layer)
                    req.layers[layer] = arr[:, : min(n, req.hit)]
                    req.ready[layer].set()
        except BaseException as exc:
            req.error = exc
        finally:
            for event in req.ready:
                event.set()

    def wait_for_layer_load(self, layer: int, *, request_id: str = "default", timeout: float | None = None) -> Any:
        """Block until ``layer`` is loaded; returns it as ``[2, tokens, kv_heads, head_dim]`` (None without a hit)."""
        req = self._request(request_id)
        if not 0 <= layer < len(req.ready):
            raise errors.InvalidArgumentError(f"layer must be in [0, {len(req.ready)}), not {errors.shown(layer)}")
        if not req.ready[layer].wait(timeout):
            raise errors.QueueFullError(
                f"layer {layer} of request {errors.shown(request_id)} did not load in {timeout} s"
            )
        if req.error is not None:
            raise req.error
        return req.layers[layer] if req.hit else None

    def save_kv_layer(self, layer: int, kv_layer: Any, *, request_id: str = "default") -> None:
        """Save one computed layer (``[2, len(tokens), kv_heads, head_dim]``) in the background."""
        req = self._request(request_id)
        req.saves.append(self._saver.submit(self.store.store_layer, req.tokens, layer, kv_layer))

    def wait_for_save(self, *, request_id: str = "default") -> int:
        """Wait for the request's saves; returns the tokens newly stored and forgets the request."""
        req = self._request(request_id)
        for event in req.ready:
            event.wait()
        stored = sum(f.result() for f in req.saves)
        with self._lock:
            self._requests.pop(request_id, None)
        return stored

    def close(self) -> None:
        """Finish background loads and saves (the store stays open)."""
        self._loader.shutdown(wait=True)
        self._saver.shutdown(wait=True)

    def __enter__(self) -> KvConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
