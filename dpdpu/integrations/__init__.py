"""dpdpu plugged into other systems; each module needs its own extra.

- :mod:`dpdpu.integrations.vllm` -- :class:`~dpdpu.integrations.vllm.DpdpuKVConnector`,
  the KV tier as vLLM's KV connector (``pip install 'dpdpu[vllm]'``)

Nothing here is imported by the rest of dpdpu, and this package imports no
module of an extra on its own import.
"""
