"""The connector's counters as vLLM's :class:`KVConnectorStats` (summed across workers and intervals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

__all__ = ["COUNTERS", "DpdpuKVConnectorStats"]

#: What the connector counts: tokens and bytes loaded and saved, blocks that failed to load, saves that failed.
COUNTERS = (
    "loaded_tokens", "loaded_bytes", "load_failed_blocks", "saved_tokens", "saved_bytes", "save_failures",
    "lookup_failures",
)  # fmt: skip


@dataclass
class DpdpuKVConnectorStats(KVConnectorStats):  # type: ignore[misc]
    """Counters of one interval; ``data`` maps each of :data:`COUNTERS` to an integer."""

    def reset(self) -> None:
        """Zero every counter."""
        self.data = dict[str, Any]()

    def aggregate(self, other: KVConnectorStats) -> DpdpuKVConnectorStats:
        """Add ``other``'s counters to these."""
        for key, value in other.data.items():
            self.data[key] = self.data.get(key, 0) + value
        return self

    def reduce(self) -> dict[str, int | float]:
        """The interval's totals, every counter named."""
        return {key: self.data.get(key, 0) for key in COUNTERS}

    def is_empty(self) -> bool:
        """Whether nothing was counted."""
        return not any(self.data.values())

    @classmethod
    def of(cls, counts: dict[str, Any]) -> DpdpuKVConnectorStats:
        """Stats holding a copy of ``counts``."""
        return cls(data=dict(counts))
