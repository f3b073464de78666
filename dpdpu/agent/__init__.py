"""The dpdpu agent: a long-running process on the DPU that engineers deploy offloads to.

- :mod:`dpdpu.agent.server` -- :class:`Agent`, :func:`run_agent` (``dpdpu agent``)
- :mod:`dpdpu.agent.client` -- :class:`AgentClient`, a typed client
- :mod:`dpdpu.agent.deployments` -- the store of deployed modules
- :mod:`dpdpu.agent.isolation` -- worker processes that run offloads (with
  :mod:`~dpdpu.agent.worker`, :mod:`~dpdpu.agent.zygote`, :mod:`~dpdpu.agent.frames`)
- :mod:`dpdpu.agent.payloads` -- arguments, results and short messages
- :mod:`dpdpu.agent.security` -- token, TLS and bind rules
- ``control.proto`` -- the gRPC control service

Names are imported on first use so that importing this package (the ``dpdpu`` command does,
for its payload limits) does not load grpc.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Agent", "AgentClient", "AgentConfig", "AgentError", "run_agent"]

_WHERE = {
    "Agent": "server",
    "AgentConfig": "server",
    "run_agent": "server",
    "AgentClient": "client",
    "AgentError": "client",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
