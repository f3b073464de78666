"""The device registry: backend names -> device classes, and device specs -> devices.

Backends are registered lazily as ``"package.module:Class"`` strings so that
importing dpdpu never imports a backend nobody uses; third-party packages add
theirs through the ``dpdpu.devices`` entry-point group.  A *device spec* is
what users write to pick a device:

- ``None``: the ``DPDPU_DEVICE`` environment variable, else ``bluefield3``;
- ``"bluefield2"``: a built-in profile on the default backend (the emulator);
- ``"path/to/profile.toml"``: a profile file on the default backend;
- ``"backend:profile"``: an explicit backend, e.g. ``"emulator:bluefield3"``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, UnknownDeviceError
from .profile import Profile, builtin_profiles

if TYPE_CHECKING:
    from .device import Device

__all__ = ["DEFAULT_DEVICE", "ENTRY_POINT_GROUP", "DeviceRegistry", "open_device", "register_device", "registry"]

DEFAULT_BACKEND = "emulator"
DEFAULT_DEVICE = "bluefield3"
ENTRY_POINT_GROUP = "dpdpu.devices"
ENV_VAR = "DPDPU_DEVICE"


class DeviceRegistry(Mapping[str, type]):
    """Read-only mapping of backend name -> Device class, loaded on first use."""

    def __init__(self, builtin: Mapping[str, str]) -> None:
        self._targets: dict[str, str | type] = dict(builtin)
        self._hints: dict[str, str] = {}
        self._entry_points_loaded = False

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._targets.setdefault(ep.name, ep.value)

    def register(self, name: str, target: str | type, *, clobber: bool = False, hint: str = "") -> None:
        """Register a backend as a class or a lazy ``"module:Class"`` string.

        Refuses to replace an existing name unless ``clobber`` is true.
        ``hint`` is shown if importing the target fails (e.g. what to install).
        """
        self._load_entry_points()
        if not clobber and name in self._targets and self._targets[name] != target:
            raise InvalidArgumentError(f"a device backend named {name!r} is already registered")
        if isinstance(target, str) and ":" not in target:
            raise InvalidArgumentError(f"target {target!r} must look like 'package.module:Class'")
        self._targets[name] = target
        if hint:
            self._hints[name] = hint

    def __getitem__(self, name: str) -> type:
        self._load_entry_points()
        try:
            target = self._targets[name]
        except KeyError:
            raise UnknownDeviceError(
                f"no device backend named {name!r}; known backends: {', '.join(sorted(self._targets))}"
            ) from None
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                hint = self._hints.get(name, "")
                raise UnknownDeviceError(
                    f"device backend {name!r} ({target}) cannot be loaded: {exc}" + (f"; {hint}" if hint else "")
                ) from exc
            self._targets[name] = cls
            return cls  # type: ignore[no-any-return]
        return target

    def __iter__(self) -> Iterator[str]:
        self._load_entry_points()
        return iter(sorted(self._targets))

    def __len__(self) -> int:
        self._load_entry_points()
        return len(self._targets)


registry = DeviceRegistry({DEFAULT_BACKEND: "dpdpu.runtime.emulator:EmulatorDevice"})


def register_device(name: str, target: str | type, *, clobber: bool = False, hint: str = "") -> None:
    """Register a device backend (see :meth:`DeviceRegistry.register`)."""
    registry.register(name, target, clobber=clobber, hint=hint)


def resolve_spec(spec: str | None) -> tuple[str, str]:
    """Split a device spec into ``(backend, profile)``."""
    if spec is None:
        spec = os.environ.get(ENV_VAR) or DEFAULT_DEVICE
    spec = spec.strip()
    if not spec:
        raise InvalidArgumentError("empty device spec")
    backend, sep, rest = spec.partition(":")
    if sep and backend in registry:
        return backend, rest
    if sep and not (spec.endswith(".toml") or os.sep in spec):
        raise UnknownDeviceError(
            f"unknown device backend {backend!r} in {spec!r}; known backends: {', '.join(registry)}"
        )
    return DEFAULT_BACKEND, spec


def open_device(spec: Device | Profile | str | None = None, **options: Any) -> Device:
    """Create (not start) the device a spec names; ``options`` go to the backend."""
    from .device import Device

    if isinstance(spec, Device):
        return spec
    if isinstance(spec, Profile):
        device: Device = registry[DEFAULT_BACKEND](spec, **options)
        return device
    if spec is not None and not isinstance(spec, str):
        raise InvalidArgumentError(f"a device spec is a name, a profile or a Device, not {type(spec).__name__}")
    backend, profile = resolve_spec(spec)
    if not profile:
        raise UnknownDeviceError(f"no profile given for backend {backend!r}; try {backend}:{DEFAULT_DEVICE}")
    opened: Device = registry[backend](profile, **options)
    return opened


def known_devices() -> list[str]:
    """Built-in device names (profiles) usable as specs."""
    return builtin_profiles()
