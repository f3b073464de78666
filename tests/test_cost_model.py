"""Cost forms: set-up, input and output terms, fits of published points, split jobs, job limits."""

from __future__ import annotations

import textwrap
import zlib
from pathlib import Path

import pytest

import dpdpu
from dpdpu import compute, errors
from dpdpu.runtime.model import DeviceModel
from dpdpu.runtime.profile import Profile

MIB = 1 << 20

BASE = """
name = "forms"
kind = "dpu"
description = "cost forms under test"
[memory]
value = 1073741824
source = "test fixture"
[pcie]
gb_per_s = {{ value = 10.0, source = "test fixture" }}
fixed_us = {{ value = 1.0, source = "test fixture" }}
[hardware]
deflate_decompress = {{ value = true, source = "test fixture" }}
[engines.accelerator]
kind = "accelerator"
lanes = {{ value = 1, source = "test fixture" }}
[engines.accelerator.ops.deflate_decompress]
{op}
[engines.arm]
kind = "arm"
lanes = {{ value = 2, source = "test fixture" }}
dispatch_us = {{ value = 1.0, source = "test fixture" }}
python_slowdown = {{ value = 2.0, source = "test fixture" }}
[engines.arm.ops.crc32c]
mib_per_s = 100.0
source = "test fixture"
"""


def load(tmp_path: Path, op: str) -> Profile:
    path = tmp_path / "forms.toml"
    path.write_text(textwrap.dedent(BASE.format(op=textwrap.dedent(op))))
    return Profile.load(path)


def test_a_flat_per_job_time_needs_the_fixed_form(tmp_path: Path) -> None:
    flat = 'points = [[51, 64, 226.0], [1647, 4096, 7300.0]]\nsource = "x"\n'
    with pytest.raises(errors.ProfileError, match='fit = "fixed"'):
        load(tmp_path, flat)
    cost = load(tmp_path, flat + 'fit = "fixed"\n').engine("accelerator").costs["deflate_decompress"]
    assert cost.per_in_s == 0 and cost.fixed_s == pytest.approx(0.214e-6, rel=0.01)
    # every published point within a percent: the input is what the rate counts
    for p in cost.points:
        assert p.in_bytes / cost.seconds(p.in_bytes, p.out_bytes or 0) / MIB == pytest.approx(p.mib_per_s, rel=0.01)


def test_linear_fit_minimizes_relative_error_and_output_sets_a_floor(tmp_path: Path) -> None:
    op = """
    points = [[100, 400, 10.0], [1000, 4000, 50.0], [10000, 40000, 100.0]]
    out_mib_per_s = { value = 200.0, source = "x" }
    source = "x"
    """
    cost = load(tmp_path, op).engine("accelerator").costs["deflate_decompress"]
    for p in cost.points:  # within 20% everywhere, although the sizes span two decades
        assert p.in_bytes / cost.seconds(p.in_bytes) / MIB == pytest.approx(p.mib_per_s, rel=0.2)
    small_input_big_output = cost.seconds(8192, 8 * MIB)
    assert small_input_big_output == pytest.approx(8 * MIB / (200 * MIB))  # the output ceiling binds
    assert cost.seconds(8192, 8192) == pytest.approx(cost.seconds(8192))  # the input binds


def test_unsourced_figures_are_labelled_assumptions(tmp_path: Path) -> None:
    profile = load(tmp_path, 'mib_per_s = 50.0\nfixed_us = 3.0\nsource = "published"\n')
    cost = profile.engine("accelerator").costs["deflate_decompress"]
    assert cost.fixed_s == pytest.approx(3e-6) and cost.setup.assumption and not cost.assumption
    assert any("deflate_decompress.fixed_us: no source given" in line for line in profile.assumptions())
    with pytest.raises(errors.ProfileError, match="unknown keys"):
        load(tmp_path, 'mib_per_s = 50.0\nfixd_us = 3.0\nsource = "x"\n')


def test_decompression_is_charged_on_input_and_output() -> None:
    page = bytes(8 * MIB)
    blob = zlib.compress(page)  # about 8 KB that inflates to 8 MiB
    with dpdpu.Runtime("bluefield3", workers=1) as rt:
        buf = rt.alloc(len(blob))
        buf.view()[:] = blob
        with rt.data_on("bluefield3", keep_output=True):
            fut = rt.submit(compute.decompress, buf, output_size=len(page), engine="arm")
        assert fut.result() == page
        exec_s = rt.explain(fut).timeline.exec_s  # type: ignore[union-attr]
    # one core writes the output no faster than its published points show (907.8 MiB/s)
    assert len(page) / exec_s / MIB == pytest.approx(907.8, rel=0.01)


def test_a_guessed_output_is_charged_once_known() -> None:
    page = bytes(4 * MIB)
    blob = zlib.compress(page)
    with dpdpu.Runtime("bluefield3", workers=1) as rt, rt.data_on("bluefield3", keep_output=True):
        fut = rt.submit(compute.decompress, blob, engine="arm")  # no output_size: the model guesses
        assert fut.result() == page
        exec_s = rt.explain(fut).timeline.exec_s  # type: ignore[union-attr]
    assert len(page) / exec_s / MIB == pytest.approx(907.8, rel=0.01)


def test_compression_above_the_largest_job_is_split_into_one_stream() -> None:
    data = (b"GET /index.html 200 " * 60_000)[:MIB]
    with dpdpu.Runtime("bluefield2", workers=2) as rt:
        fut = rt.submit(compute.compress, data, engine="accelerator", fallback=False)
        blob = fut.result()
        placed = rt.explain(fut)
    assert zlib.decompress(blob) == data  # one standard zlib stream
    assert placed.kind == "accelerator" and any("64 jobs of at most 16.0 KiB" in n for n in placed.notes or ())
    model = DeviceModel(Profile.load("bluefield2"))
    one_job = model.exec_seconds("accelerator", "deflate_compress", 16 << 10)
    assert model.exec_seconds("accelerator", "deflate_compress", MIB) == pytest.approx(64 * one_job)
    # every segment decodes on its own: the dictionary is reset at each full flush
    d = zlib.decompressobj()
    assert d.decompress(blob) == data and d.eof


def test_lz4_hardware_takes_small_pages_only() -> None:
    page = b"x" * 4096
    with dpdpu.Runtime("bluefield3", policy="greedy-accelerator") as rt:
        small = rt.submit(compute.decompress, compute.compress(page, "lz4"), "lz4", output_size=len(page))
        assert small.result() == page and rt.explain(small).kind == "accelerator"
        big = rt.submit(compute.decompress, compute.compress(page * 64, "lz4"), "lz4", output_size=len(page) * 64)
        assert big.result() == page * 64 and rt.explain(big).kind == "arm"
        assert "largest job" in (rt.explain(big).fallback or "")


def test_lz4_output_of_unknown_size_leaves_the_hardware_when_it_outgrows_a_job() -> None:
    page = b"y" * (64 << 10)
    blob = compute.compress(page, "lz4")  # a small frame whose output passes the 16 KiB largest job
    with dpdpu.Runtime("bluefield3", policy="greedy-accelerator") as rt:
        fut = rt.submit(compute.decompress, blob, "lz4")
        assert fut.result() == page
        placed = rt.explain(fut)
        assert placed.kind == "arm" and "largest job" in (placed.fallback or "") and placed.attempts == 2
        with pytest.raises(errors.JobTooLargeError, match="largest job"):
            rt.submit(compute.decompress, blob, "lz4", engine="accelerator", fallback=False).result()
