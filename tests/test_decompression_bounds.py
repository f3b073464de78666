"""Decompression holds no more memory than its output may take, for every codec.

Each bomb runs in a fresh process (tests/bomb_worker.py) so that its peak resident set
(``VmHWM``) is its own; the streams do not declare their size, as a hostile one would not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import dpdpu
from dpdpu import compute, errors

WORKER = Path(__file__).with_name("bomb_worker.py")
MIB = 1 << 20

SMALL_DPU = """
name = "smalldpu"
kind = "dpu"
description = "a DPU with 16 MiB of memory whose Arm cores run every codec"

[memory]
value = 16777216
source = "test fixture"

[pcie]
gb_per_s = { value = 10.0, source = "test fixture" }
fixed_us = { value = 1.0, source = "test fixture" }

[engines.arm]
kind = "arm"
lanes = { value = 1, source = "test fixture" }
dispatch_us = { value = 1.0, source = "test fixture" }
python_slowdown = { value = 4.0, source = "test fixture" }
"""
_CODEC_OPS = [f"{codec}_{way}" for codec in compute.CODECS for way in ("compress", "decompress")]


@pytest.fixture
def small_dpu(tmp_path: Path) -> Path:
    """A profile with 16 MiB of device memory whose Arm engine runs every codec."""
    path = tmp_path / "smalldpu.toml"
    ops = "".join(f'\n[engines.arm.ops.{op}]\nmib_per_s = 100.0\nsource = "test fixture"\n' for op in _CODEC_OPS)
    path.write_text(textwrap.dedent(SMALL_DPU) + ops)
    return path


def run_bomb(codec: str, output_size: int | None, mib: int, *options: str) -> dict[str, Any]:
    cmd = [sys.executable, str(WORKER), codec, str(output_size or "none"), str(mib), *options]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    report["growth"] = report["hwm_after"] - report["hwm_before"]
    return report


@pytest.mark.parametrize("codec", compute.CODECS)
def test_a_bomb_with_output_size_holds_a_small_multiple_of_it(codec: str) -> None:
    # 512 MiB of output from a few KiB (zstd) to a few MiB (lz4, deflate) of input, 4 MiB allowed.
    report = run_bomb(codec, 4 * MIB, 512)
    assert report["outcome"][:2] == ["BufferTooSmallError", "DpdpuError"], report
    assert report["growth"] <= 4 * 4 * MIB, report  # before: zstd and lz4 held all 512 MiB
    assert report["memory_used"] == 0


@pytest.mark.parametrize("codec", compute.CODECS)
def test_a_bomb_without_output_size_stops_at_the_device_memory(codec: str, small_dpu: Path) -> None:
    # The Arm cores of a 16 MiB DPU: the output may take what is free there, and is charged while it grows.
    report = run_bomb(codec, None, 512, "--profile", str(small_dpu), "--engine", "arm", "--policy", "dpu-only")
    assert report["outcome"][:3] == ["DeviceMemoryError", "DpdpuError", "MemoryError"], report
    assert report["growth"] <= 4 * 16 * MIB, report
    assert report["memory_used"] == 0  # everything it held is given back


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_running_out_of_host_memory_is_a_typed_memory_error(codec: str) -> None:
    # A process whose address space ends at 1.5 GiB decompresses a 4 GiB bomb: the allocation that fails
    # is reported as the DeviceMemoryError it is (LZ4's used to read as CorruptDataError, zstd's as a bare
    # MemoryError).
    report = run_bomb(codec, None, 4096, "--address-space", str(1536 * MIB))
    assert report["outcome"][:3] == ["DeviceMemoryError", "DpdpuError", "MemoryError"], report


def test_lz4_and_zstd_output_is_charged_to_device_memory(small_dpu: Path) -> None:
    data = bytes(range(256)) * (40 * 1024)  # 10 MiB
    with dpdpu.Runtime(str(small_dpu), workers=1, policy="dpu-only") as rt:
        for codec in ("lz4", "zstd"):
            blob = compute.compress(data, codec)
            assert rt.submit(compute.decompress, blob, codec, engine="arm").result() == data
            held = rt.alloc(8 * MIB)  # leaves less than the 10 MiB output free
            with pytest.raises(errors.DeviceMemoryError):
                rt.submit(compute.decompress, blob, codec, engine="arm", fallback=False).result()
            with pytest.raises(errors.DeviceMemoryError):  # refused at placement: the output cannot fit
                rt.submit(compute.decompress, blob, codec, output_size=len(data), engine="arm", fallback=False)
            assert rt.device.memory_used == 8 * MIB
            del held
            assert rt.submit(compute.decompress, blob, codec, output_size=len(data)).result() == data
