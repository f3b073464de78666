"""How dpdpu writes durations and sizes for people: ``explain()``, plans, reports and the CLI."""

from __future__ import annotations

__all__ = ["fmt_bytes", "fmt_seconds"]


def fmt_seconds(seconds: float) -> str:
    """``seconds`` in the unit that reads best: ``1.250 s``, ``3.20 ms`` or ``12.5 us``."""
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_bytes(nbytes: int) -> str:
    """``nbytes`` in binary units: ``1.5 GiB``, ``16.0 KiB`` or ``512 B``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"
