"""What the connector reads from vLLM's configuration: the tier's settings and the model's KV shape."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ... import errors
from ...kv import ModelShape
from ...kv.codec import CODECS
from ...kv.policies import POLICIES

__all__ = ["DEFAULT_CHUNK_TOKENS", "ConnectorConfigError", "ModelPlace", "TierSettings", "model_place"]

#: Tokens per chunk when the configuration names none: the smallest multiple of vLLM's block size at least this.
DEFAULT_CHUNK_TOKENS = 256
_MAX_PIN_SECONDS = 3600.0


class ConnectorConfigError(errors.InvalidArgumentError):
    """``kv_connector_extra_config`` or the model does not suit the connector."""


def _str(extra: dict[str, Any], key: str, default: str | None) -> str | None:
    value = extra.get(key, default)
    if value is not None and (not isinstance(value, str) or not value or len(value) > 4096):
        raise ConnectorConfigError(f"kv_connector_extra_config[{key!r}] must be a non-empty string")
    return value


def _choice(extra: dict[str, Any], key: str, default: str | None, choices: tuple[str, ...]) -> str | None:
    value = extra.get(key, default)
    if value is not None and value not in choices:
        raise ConnectorConfigError(
            f"kv_connector_extra_config[{key!r}] must be one of {', '.join(choices)}, not {errors.shown(value)}"
        )
    return value


@dataclass(frozen=True)
class TierSettings:
    """The connector's part of ``kv_connector_extra_config`` (see :mod:`dpdpu.integrations.vllm`)."""

    store: str
    token: str | None = None
    device: str = "bluefield3"
    policy: str = "lru"
    disk_policy: str | None = None
    chunk_tokens: int | None = None
    dram_codec: str | None = None
    disk_codec: str | None = None
    quantize: str | None = None
    model_name: str | None = None
    layerwise: bool = True
    pin_seconds: float = 30.0

    KEYS = (
        "store", "token", "device", "policy", "disk_policy", "chunk_tokens", "dram_codec", "disk_codec",
        "quantize", "model_name", "layerwise", "pin_seconds",
    )  # fmt: skip

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> TierSettings:
        """Read and check the settings; unknown keys are an error, so a typo is not silently ignored."""
        extra = dict(extra or {})
        unknown = sorted(str(k)[:40] for k in extra if k not in cls.KEYS)
        if unknown:
            raise ConnectorConfigError(f"unknown kv_connector_extra_config keys {unknown}: use {', '.join(cls.KEYS)}")
        store = _str(extra, "store", None)
        if store is None:
            raise ConnectorConfigError("kv_connector_extra_config needs 'store': the KV tier's address (HOST:PORT)")
        chunk = extra.get("chunk_tokens")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0):
            raise ConnectorConfigError(f"chunk_tokens must be a positive integer, not {errors.shown(chunk)}")
        layerwise = extra.get("layerwise", True)
        if not isinstance(layerwise, bool):
            raise ConnectorConfigError(f"layerwise must be true or false, not {errors.shown(layerwise)}")
        pin = extra.get("pin_seconds", 30.0)
        if isinstance(pin, bool) or not isinstance(pin, (int, float)) or not 0 <= pin <= _MAX_PIN_SECONDS:
            raise ConnectorConfigError(f"pin_seconds must be a number in [0, {_MAX_PIN_SECONDS:g}]")
        return cls(
            store=store,
            token=_str(extra, "token", None),
            device=_str(extra, "device", "bluefield3") or "bluefield3",
            policy=_choice(extra, "policy", "lru", POLICIES) or "lru",
            disk_policy=_choice(extra, "disk_policy", None, POLICIES),
            chunk_tokens=chunk,
            dram_codec=_choice(extra, "dram_codec", None, CODECS),
            disk_codec=_choice(extra, "disk_codec", None, CODECS),
            quantize=_choice(extra, "quantize", None, ("int8",)),
            model_name=_str(extra, "model_name", None),
            layerwise=layerwise,
            pin_seconds=float(pin),
        )

    @property
    def location(self) -> str:
        """The Flight location of ``store`` (a bare ``HOST:PORT`` is plain gRPC)."""
        return self.store if "://" in self.store else f"grpc+tcp://{self.store}"

    def chunk_for(self, block_size: int) -> int:
        """Tokens per chunk: the configured count (a multiple of ``block_size``) or the default rounded up to one."""
        if self.chunk_tokens is None:
            return math.ceil(DEFAULT_CHUNK_TOKENS / block_size) * block_size
        if self.chunk_tokens % block_size:
            raise ConnectorConfigError(
                f"chunk_tokens ({self.chunk_tokens}) must be a multiple of vLLM's block size ({block_size})"
            )
        return self.chunk_tokens

    def store_options(self, chunk_tokens: int) -> dict[str, Any]:
        """How the tier's store for this model is opened (every process of the model sends the same)."""
        return {
            "chunk_tokens": chunk_tokens,
            "device": self.device,
            "policy": self.policy,
            "disk_policy": self.disk_policy,
            "dram_codec": self.dram_codec,
            "disk_codec": self.disk_codec,
            "quantize": self.quantize,
        }


_DTYPES = {"float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class ModelPlace:
    """The model's KV shape on one tensor-parallel rank, and which rank of how many."""

    shape: ModelShape
    tp_rank: int
    tp_size: int
    block_size: int


def model_place(vllm_config: Any, kv_cache_config: Any, settings: TierSettings, tp_rank: int) -> ModelPlace:
    """The shape and rank the tier's keys name, from ``vllm_config`` (refusing what the tier cannot hold)."""
    model = vllm_config.model_config
    parallel = vllm_config.parallel_config
    cache = vllm_config.cache_config
    if parallel.pipeline_parallel_size != 1:
        raise ConnectorConfigError("the dpdpu KV connector supports pipeline_parallel_size 1 only")
    if getattr(model, "use_mla", False):
        raise ConnectorConfigError("the dpdpu KV connector holds keys and values per head, not MLA's latent cache")
    groups = list(getattr(kv_cache_config, "kv_cache_groups", None) or [])
    if len(groups) > 1:
        raise ConnectorConfigError("the dpdpu KV connector supports models with one KV cache group (full attention)")
    cache_dtype = str(cache.cache_dtype)
    dtype_name = str(model.dtype).removeprefix("torch.") if cache_dtype == "auto" else cache_dtype
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise ConnectorConfigError(f"the KV tier holds float16 or bfloat16 caches, not {dtype_name[:40]}")
    shape = ModelShape(
        settings.model_name or str(model.model),
        layers=model.get_num_layers(parallel),
        kv_heads=model.get_num_kv_heads(parallel),
        head_dim=model.get_head_size(),
        dtype=dtype,
    )
    return ModelPlace(shape, tp_rank, parallel.tensor_parallel_size, cache.block_size)
