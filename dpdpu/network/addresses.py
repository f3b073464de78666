"""Network addresses: which ones stay on this machine."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_loopback", "is_unspecified"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses; a name only if every address it resolves to is."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def is_unspecified(host: str) -> bool:
    """True for the wildcard addresses (``0.0.0.0``, ``::``) that listen on every interface."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
