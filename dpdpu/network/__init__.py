"""The network engine (host<->DPU channel, Arrow Flight endpoint).

:class:`Channel` is one end of a lock-free shared-memory ring between two
processes (message mode for small records, bulk mode for large payloads);
:class:`ChannelPair` joins two of them into a request/response link.
"""

from .channel import DEFAULT_CAPACITY, Channel, ChannelPair, ChannelStats, Role, TransferCost

__all__ = ["DEFAULT_CAPACITY", "Channel", "ChannelPair", "ChannelStats", "Role", "TransferCost"]
