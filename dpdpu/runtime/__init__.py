"""The runtime: devices, the emulator, the cost model, placement and futures.

Backend authors implement :class:`Device` (see :mod:`dpdpu.runtime.device`)
and register it with :func:`register_device`.
"""

from .device import Device, DeviceBuffer, EngineInfo, EngineStats, Refusal, Task
from .emulator import EmulatorDevice
from .future import TaskFuture
from .offload import OffloadFunction, offload
from .placement import Placement
from .profile import Profile, builtin_profiles
from .registry import open_device, register_device, registry
from .runtime import Runtime, RuntimeStats, current_runtime, default_runtime

__all__ = [
    "Device",
    "DeviceBuffer",
    "EmulatorDevice",
    "EngineInfo",
    "EngineStats",
    "OffloadFunction",
    "Placement",
    "Profile",
    "Refusal",
    "Runtime",
    "RuntimeStats",
    "Task",
    "TaskFuture",
    "builtin_profiles",
    "current_runtime",
    "default_runtime",
    "offload",
    "open_device",
    "register_device",
    "registry",
]
