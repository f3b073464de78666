"""How much memory this machine has available, as the kernel reports it.

An emulated device keeps its "device memory" in this machine's memory, and
a profile may promise more (a BlueField-3 has 32 GiB) than the machine has
free.  The emulator therefore refuses output buffers larger than
:func:`available` (``MemAvailable``, or what the memory cgroup's limit
leaves, whichever is less), and holds outputs whose size the caller did not
bound to a quarter of it (the output and the copy handed to the caller then
take at most half), so that a hostile input ends in a typed error rather
than in the kernel's out-of-memory killer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["available"]

#: (limit, usage) files of the memory cgroup, v2 then v1.
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _cgroup_available() -> int | None:
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
            return max(0, int(limit) - usage)
        return None
    return None


#: How long an answer stands: reading the kernel's figures costs about 100 us, a small
#: decompression a few, and what is available does not change much in this time.
_FRESH_S = 0.05
_last: tuple[float, int] = (-1.0, 0)


def available() -> int:
    """Bytes of memory this machine has available now (a huge number if it cannot tell)."""
    global _last
    now = time.monotonic()
    if now - _last[0] >= _FRESH_S:
        known = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
        _last = (now, min(known) if known else 1 << 62)
    return _last[1]
