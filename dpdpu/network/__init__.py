"""The network engine (host<->DPU channel, Arrow Flight endpoint).

:class:`Channel` is one end of a lock-free shared-memory ring between two
processes (message mode for small records, bulk mode for large payloads);
:class:`ChannelPair` joins two of them into a request/response link.
:class:`FlightEndpoint` (:mod:`dpdpu.network.flight`) is the Arrow Flight
server through which clients send data to the DPU and get back results.
"""

from typing import TYPE_CHECKING, Any

from .channel import DEFAULT_CAPACITY, Channel, ChannelPair, ChannelStats, Role, TransferCost

if TYPE_CHECKING:
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

_FLIGHT = frozenset({"FlightEndpoint", "FlightService", "HostHandler"})


def __getattr__(name: str) -> Any:
    # The Flight endpoint loads pyarrow.flight (gRPC): only when asked for.
    if name in _FLIGHT:
        from . import flight

        return getattr(flight, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
