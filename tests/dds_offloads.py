"""Offload callables the DDS back end process imports by name in the tests."""

from __future__ import annotations

import dpdpu
from dpdpu.storage import DdsRequest


@dpdpu.offload
def not_sevens(req: DdsRequest) -> bool:
    """Serve on the DPU every key that does not end in 7."""
    return not req.key.endswith(b"7")


def chatty(req: DdsRequest) -> bool:
    """Serve everything on the DPU, printing a kilobyte per request (as debugging code does)."""
    print("x" * 1024)
    return True
