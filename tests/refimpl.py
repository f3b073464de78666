"""Reference implementations the tests compare dpdpu against (slow, obviously correct)."""

from __future__ import annotations

_POLY = 0x82F63B78


def _table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _table()


def crc32c_reference(data: bytes, value: int = 0) -> int:
    """CRC-32C, bytewise from the polynomial."""
    c = value ^ 0xFFFFFFFF
    for byte in data:
        c = _TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
