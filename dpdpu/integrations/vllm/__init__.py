"""dpdpu's KV tier as vLLM's KV cache connector (the ``vllm`` extra: ``pip install 'dpdpu[vllm]'``).

Serve the tier (``dpdpu kv-serve``), then point vLLM at it::

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "DpdpuKVConnector",
        "kv_connector_module_path": "dpdpu.integrations.vllm", "kv_role": "kv_both",
        "kv_connector_extra_config": {"store": "127.0.0.1:8815"}}'

- :mod:`.connector` -- :class:`DpdpuKVConnector` and the metadata it sends to the workers
- :mod:`.paged` -- copies between vLLM's paged cache and the tier's layer layout
- :mod:`.settings` -- ``kv_connector_extra_config`` and the model's KV shape from ``vllm_config``
- :mod:`.stats` -- the connector's counters as vLLM's ``KVConnectorStats``
"""

from __future__ import annotations

from .connector import DpdpuConnectorMetadata, DpdpuKVConnector, LoadSpec, SaveSpec
from .settings import ConnectorConfigError, TierSettings
from .stats import DpdpuKVConnectorStats

__all__ = [
    "ConnectorConfigError",
    "DpdpuConnectorMetadata",
    "DpdpuKVConnector",
    "DpdpuKVConnectorStats",
    "LoadSpec",
    "SaveSpec",
    "TierSettings",
]
