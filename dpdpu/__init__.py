"""dpdpu: program DPUs (SmartNICs) from Python, on real hardware or an emulator.

>>> import dpdpu
>>> with dpdpu.Runtime("bluefield2") as rt:
...     fut = rt.submit(dpdpu.compute.compress, b"x" * 4096)
...     blob = fut.result()
...     print(rt.explain(fut).engine)
bluefield2/accelerator
"""

from . import compute, errors
from ._version import __version__
from .errors import DpdpuError
from .runtime import (
    DeviceBuffer,
    Placement,
    Profile,
    Runtime,
    RuntimeStats,
    TaskFuture,
    current_runtime,
    default_runtime,
    offload,
)

__all__ = [
    "DeviceBuffer",
    "DpdpuError",
    "Placement",
    "Profile",
    "Runtime",
    "RuntimeStats",
    "TaskFuture",
    "__version__",
    "compute",
    "current_runtime",
    "default_runtime",
    "errors",
    "offload",
]
