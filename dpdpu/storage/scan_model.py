"""Modeled time of a pushdown scan on a DPU against reading the whole dataset to the host.

A :class:`~dpdpu.storage.dataset.ScanResult` records what a scan read, decoded
and returned.  :func:`model_scan` prices both ways of answering the same query
on a device profile, stage by stage, with the stages of each side taken one
after the other (no overlap, for both sides):

* **pushdown**: the DPU reads ``bytes_read`` from its storage (one fixed
  latency per read plus the bytes at the profile's read bandwidth), filters
  and projects the ``bytes_scanned`` it decoded on its Arm cores (the profile's
  ``filter`` and ``project`` costs, spread over the engine's lanes, as the
  kernels split work into morsels), and sends ``bytes_returned`` over PCIe;
* **read-all**: the DPU reads the whole file from its storage, sends all of it
  over PCIe, and the host filters the whole decoded dataset (``dataset_bytes``)
  on its cores.  Decoding Parquet on the host is not charged, which favours
  this side.

Every figure comes from the profiles (``dpdpu devices --assumptions`` lists
which are assumptions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .. import errors
from ..runtime.cost import CostModel
from ..runtime.profile import EngineProfile, Profile

__all__ = ["ScanFigures", "ScanModel", "model_scan"]


class ScanFigures(Protocol):
    """What a scan read, decoded and returned (a :class:`~dpdpu.storage.dataset.ScanResult` has these)."""

    @property
    def reads(self) -> int:
        """Reads issued to storage."""

    @property
    def bytes_read(self) -> int:
        """Bytes read from storage."""

    @property
    def bytes_scanned(self) -> int:
        """Decoded bytes the kernels went through."""

    @property
    def bytes_returned(self) -> int:
        """Bytes of the result."""

    @property
    def file_bytes(self) -> int:
        """Bytes of the whole file."""

    @property
    def dataset_bytes(self) -> int:
        """Decoded bytes of the whole dataset."""


@dataclass(frozen=True)
class ScanModel:
    """The two sides of a scan, modeled on one device (seconds and bytes).

    Attributes:
        device: the DPU profile's name.
        pushdown_s: storage + Arm compute + PCIe of the result.
        read_all_s: storage of the whole file + PCIe of the whole file + host filter.
        pushdown_storage_s, pushdown_compute_s, pushdown_pcie_s: the pushdown's stages.
        read_all_storage_s, read_all_pcie_s, read_all_host_s: the read-all side's stages.
        pcie_bytes_pushdown, pcie_bytes_read_all: bytes each side moves to the host.
        host_cpu_s: host CPU time the pushdown saves (the read-all side's host filter).
    """

    device: str
    pushdown_s: float
    read_all_s: float
    pushdown_storage_s: float
    pushdown_compute_s: float
    pushdown_pcie_s: float
    read_all_storage_s: float
    read_all_pcie_s: float
    read_all_host_s: float
    pcie_bytes_pushdown: int
    pcie_bytes_read_all: int
    host_cpu_s: float

    @property
    def speedup(self) -> float:
        """``read_all_s / pushdown_s``: above 1 the pushdown answers sooner."""
        return self.read_all_s / self.pushdown_s if self.pushdown_s > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict (``speedup`` included)."""
        return {**asdict(self), "speedup": self.speedup}


def _fastest(profile: Profile, op: str, *, on_device: bool) -> EngineProfile:
    """The engine of ``profile`` on the wanted side that runs ``op`` fastest over all its lanes."""
    engines = [e for e in profile.engines if e.on_device == on_device and op in e.costs]
    if not engines:
        side = "device" if on_device else "host"
        raise errors.InvalidArgumentError(f"profile {profile.name!r} has no {side} engine that runs {op!r}")
    return min(engines, key=lambda e: e.costs[op].per_in_s / max(1.0, float(e.lanes.value)))


def _spread(model: CostModel, engine: EngineProfile, op: str, nbytes: int) -> float:
    lanes = max(1, int(engine.lanes.value))
    return model.exec_seconds(engine, op, -(-nbytes // lanes)) if nbytes > 0 else 0.0


def model_scan(result: ScanFigures, device: str | Profile = "bluefield3", host: str | Profile = "host") -> ScanModel:
    """Price ``result``'s scan as a pushdown on ``device`` and as a read of everything to ``host``.

    Raises:
        InvalidArgumentError: the device profile has no ``[storage]`` section or
            no engine that runs the kernels.
    """
    dpu, cpu = Profile.of(device), Profile.of(host)
    if dpu.storage is None:
        raise errors.InvalidArgumentError(f"profile {dpu.name!r} describes no storage ([storage] section)")
    read_fixed, read_rate = dpu.storage.read_fixed_s, dpu.storage.read_bytes_per_s
    link = CostModel(dpu)

    arm_filter = _fastest(dpu, "filter", on_device=True)
    arm_project = _fastest(dpu, "project", on_device=True)
    storage_s = result.reads * read_fixed + result.bytes_read / read_rate
    compute_s = _spread(link, arm_filter, "filter", result.bytes_scanned) + _spread(
        link, arm_project, "project", result.bytes_scanned
    )
    pcie_s = link.transfer_seconds(result.bytes_returned)

    host_filter = _fastest(cpu, "filter", on_device=False)
    all_storage_s = read_fixed + result.file_bytes / read_rate
    all_pcie_s = link.transfer_seconds(result.file_bytes)
    host_s = _spread(CostModel(cpu), host_filter, "filter", result.dataset_bytes)
    return ScanModel(
        device=dpu.name,
        pushdown_s=storage_s + compute_s + pcie_s,
        read_all_s=all_storage_s + all_pcie_s + host_s,
        pushdown_storage_s=storage_s,
        pushdown_compute_s=compute_s,
        pushdown_pcie_s=pcie_s,
        read_all_storage_s=all_storage_s,
        read_all_pcie_s=all_pcie_s,
        read_all_host_s=host_s,
        pcie_bytes_pushdown=result.bytes_returned,
        pcie_bytes_read_all=result.file_bytes,
        host_cpu_s=host_s,
    )
