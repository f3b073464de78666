"""The network engine: the Arrow Flight endpoint, and the host<->DPU channel for its users.

:class:`FlightEndpoint` (:mod:`dpdpu.network.flight`) is the Arrow Flight
server through which clients send data to the DPU and get back results;
:class:`HostHandler` answers the reads it routes to the host.
:class:`Channel` and :class:`ChannelPair` live in the core
(:mod:`dpdpu.runtime.channel`), since the storage engine runs over them too;
they are named here as well, where users of the network look for them.
"""

from ..runtime.channel import DEFAULT_CAPACITY, Channel, ChannelPair, ChannelStats, Role, TransferCost
from .flight import FlightEndpoint, FlightService, HostHandler

__all__ = [
    "DEFAULT_CAPACITY",
    "Channel",
    "ChannelPair",
    "ChannelStats",
    "FlightEndpoint",
    "FlightService",
    "HostHandler",
    "Role",
    "TransferCost",
]
