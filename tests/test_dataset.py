"""Datasets on the file service: pushdown scans against pyarrow, statistics skipping, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dpdpu import errors
from dpdpu.storage import Dataset, FileService, open_dataset, write_dataset

FORMATS = ["ipc", "parquet"]
N = 5000


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[FileService]:
    with FileService(tmp_path / "svc", capacity=64 << 20) as service:
        yield service


def _table(n: int = N) -> pa.Table:
    rng = np.random.default_rng(7)
    ids = np.arange(n, dtype=np.int64)
    price = rng.uniform(0, 100, n)
    price_mask = rng.random(n) < 0.1
    qty = rng.integers(-50, 50, n).astype(np.int32)
    regions = np.array(["EU", "US", "APAC", "LATAM"])[rng.integers(0, 4, n)]
    region_mask = rng.random(n) < 0.05
    return pa.table(
        {
            "id": pa.array(ids),
            "price": pa.array(price, mask=price_mask),
            "qty": pa.array(qty),
            "region": pa.array(regions.tolist(), type=pa.string(), mask=region_mask),
            "flag": pa.array(rng.random(n) < 0.5),
        }
    )


def _expected(table: pa.Table, expr: Any, columns: list[str] | None) -> pa.Table:
    out = table if expr is None else table.filter(expr)
    return (out if columns is None else out.select(columns)).combine_chunks()


def _same(got: pa.Table, want: pa.Table) -> None:
    got = got.combine_chunks()
    assert got.schema.names == want.schema.names
    assert [f.type for f in got.schema] == [f.type for f in want.schema]
    assert got.num_rows == want.num_rows
    # repr makes NaN equal to NaN, which Table.equals does not.
    assert got.equals(want) or repr(got.to_pydict()) == repr(want.to_pydict()), (
        got.slice(0, 5).to_pydict(),
        want.slice(0, 5).to_pydict(),
    )


CASES: list[tuple[str, Any, list[str] | None]] = [
    ("price > 50", pc.field("price") > 50, ["id", "price"]),
    ("price > 10 and region == 'EU'", (pc.field("price") > 10) & (pc.field("region") == "EU"), ["region", "id"]),
    ("region in ('US', 'APAC') or qty < -40", pc.field("region").isin(["US", "APAC"]) | (pc.field("qty") < -40), None),
    ("region is null", pc.field("region").is_null(), ["id", "region"]),
    ("price is not null and id between 100 and 900", pc.field("price").is_valid() & (pc.field("id") >= 100)
     & (pc.field("id") <= 900), ["price"]),
    ("not (qty >= 0)", ~(pc.field("qty") >= 0), ["qty", "flag"]),
    ("flag", pc.field("flag"), ["id"]),
]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_scan_matches_pyarrow(fs: FileService, fmt: str) -> None:
    table = _table()
    ds = write_dataset(fs, f"sales/t.{fmt}", table, format=fmt, row_group_rows=700)  # type: ignore[arg-type]
    assert isinstance(ds, Dataset)
    assert ds.num_rows == N and ds.num_row_groups == 8 and ds.format == fmt
    assert ds.schema.names == table.schema.names
    assert ds.nbytes == fs.stat(f"sales/t.{fmt}").size
    for text, expr, cols in CASES:
        for predicate in (text, expr):
            r = ds.scan(predicate, cols)
            _same(r.table, _expected(table, expr, cols))
            assert r.bytes_returned == r.table.nbytes
            assert 0 < r.bytes_read <= ds.nbytes
    everything = ds.scan()
    _same(everything.table, table.combine_chunks())


@pytest.mark.parametrize("fmt", FORMATS)
def test_reopen_and_projection_reads_less(fs: FileService, fmt: str) -> None:
    table = _table()
    write_dataset(fs, "t", table, format=fmt, row_group_rows=1000)  # type: ignore[arg-type]
    ds = open_dataset(fs, "t")
    assert ds.format == fmt and ds.row_group_rows == [1000] * 5
    narrow = ds.scan(None, ["qty"])
    _same(narrow.table, table.select(["qty"]).combine_chunks())
    full = ds.scan()
    # Only the needed column's data is read.
    assert narrow.bytes_read < full.bytes_read / 3
    assert narrow.reads > 0 and narrow.modeled_s >= 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_results(fs: FileService, fmt: str) -> None:
    table = _table()
    ds = write_dataset(fs, "t", table, format=fmt, row_group_rows=1000)  # type: ignore[arg-type]
    for predicate in ("price > 1000", "id < 0 and qty > 0", "region == 'MARS'"):
        r = ds.scan(predicate, ["region", "price"])
        assert r.table.num_rows == 0
        assert r.table.schema.names == ["region", "price"]
        assert [f.type for f in r.table.schema] == [pa.string(), pa.float64()]
        assert r.bytes_returned == r.table.nbytes
    # An empty table round-trips too.
    empty = write_dataset(fs, "e", table.slice(0, 0), format=fmt)  # type: ignore[arg-type]
    assert empty.num_rows == 0
    r = empty.scan("qty > 1", ["id"])
    assert r.table.num_rows == 0 and r.table.schema.names == ["id"]


def test_statistics_skip_row_groups(fs: FileService) -> None:
    table = _table(20000)  # sorted by id
    ds = write_dataset(fs, "t.parquet", table, format="parquet", row_group_rows=1000)
    r = ds.scan("id >= 1500 and id < 2500", ["id", "price"])
    _same(r.table, _expected(table, (pc.field("id") >= 1500) & (pc.field("id") < 2500), ["id", "price"]))
    assert r.row_groups == 20 and r.row_groups_skipped == 18
    assert r.bytes_read < ds.nbytes / 8
    # Other shapes the statistics decide.
    assert ds.scan("id in (5, 19999)").row_groups_skipped == 18
    assert ds.scan("id between 3000 and 3999").row_groups_skipped == 19
    assert ds.scan("id > 100000 or qty > 1000").row_groups_skipped == 20
    assert ds.scan("id is null").row_groups_skipped == 20
    # What they cannot decide is read.
    assert ds.scan("id != 5").row_groups_skipped == 0
    assert ds.scan("not (id < 1000)").row_groups_skipped == 0
    assert ds.scan("region == 'EU' or id < 1000").row_groups_skipped == 0
    # IPC keeps no statistics: every batch is visited, with the same answer.
    ipc = write_dataset(fs, "t.arrow", table, format="ipc", row_group_rows=1000)
    ri = ipc.scan("id >= 1500 and id < 2500", ["id", "price"])
    assert ri.row_groups_skipped == 0
    _same(ri.table, r.table.combine_chunks())


def test_statistics_with_nan_and_all_null(fs: FileService) -> None:
    table = pa.table(
        {
            "f": pa.array([1.0, float("nan"), 3.0, None, None, None]),
            "g": pa.array([1, 2, 3, None, None, None], type=pa.int64()),
        }
    )
    ds = write_dataset(fs, "n", table, format="parquet", row_group_rows=3)
    for predicate, expr in [
        ("f != 2.0", pc.field("f") != 2.0),
        ("f > 0.5", pc.field("f") > 0.5),
        ("g is null", pc.field("g").is_null()),
        ("g is not null", pc.field("g").is_valid()),
        ("g < 100", pc.field("g") < 100),
    ]:
        _same(ds.scan(predicate).table, _expected(table, expr, None))
    assert ds.scan("g < 100").row_groups_skipped == 1  # the all-null group


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_inputs(fs: FileService, fmt: str) -> None:
    ds = write_dataset(fs, "t", _table(100), format=fmt)  # type: ignore[arg-type]
    with pytest.raises(errors.UnknownColumnError):
        ds.scan("nope > 1")
    with pytest.raises(errors.UnknownColumnError):
        ds.scan(pc.field("nope") > 1)
    with pytest.raises(errors.UnknownColumnError):
        ds.scan(None, ["id", "nope"])
    with pytest.raises(errors.ExpressionTypeError):
        ds.scan("region > 5")
    with pytest.raises(errors.InvalidArgumentError):
        ds.scan(None, "id")
    with pytest.raises(errors.InvalidArgumentError):
        ds.scan(None, [])
    with pytest.raises(errors.FileExistsStorageError):
        write_dataset(fs, "t", _table(10), format=fmt)  # type: ignore[arg-type]
    again = write_dataset(fs, "t", _table(10), format=fmt, overwrite=True)  # type: ignore[arg-type]
    assert again.num_rows == 10


def test_bad_arguments_and_missing(fs: FileService) -> None:
    table = _table(10)
    with pytest.raises(errors.NoSuchFileError):
        open_dataset(fs, "missing")
    with pytest.raises(errors.InvalidArgumentError):
        write_dataset(fs, "x", table, format="csv")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgumentError):
        write_dataset(fs, "x", table, row_group_rows=0)
    with pytest.raises(errors.InvalidArgumentError):
        write_dataset(fs, "x", table.to_batches()[0])
    with pytest.raises(errors.InvalidArgumentError, match="unique"):
        write_dataset(fs, "x", pa.table([pa.array([1]), pa.array([2])], names=["a", "a"]))
    with pytest.raises(errors.InvalidPathError):
        write_dataset(fs, "/abs", table)
    ds = write_dataset(fs, "gone", table)
    write_dataset(fs, "gone", _table(20), overwrite=True)
    with pytest.raises(errors.CorruptDataError, match="changed since it was opened"):
        ds.scan()
    same_size = write_dataset(fs, "gone", table, overwrite=True)
    assert same_size.nbytes == ds.nbytes
    with pytest.raises(errors.CorruptDataError, match="changed since it was opened"):
        ds.scan()
    assert same_size.scan().table.num_rows == 10
    fs.delete("gone")
    with pytest.raises(errors.NoSuchFileError):
        ds.scan()


def _put(fs: FileService, name: str, data: bytes) -> None:
    fs.create(name)
    fs.write(name, 0, data).result()


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_files(fs: FileService, fmt: str) -> None:
    ds = write_dataset(fs, "good", _table(2000), format=fmt, row_group_rows=500)  # type: ignore[arg-type]
    raw = fs.read("good", 0, ds.nbytes).result()
    magic = b"PAR1" if fmt == "parquet" else b"ARROW1"
    bad: dict[str, bytes] = {
        "garbage": b"hello, this is not a dataset at all" * 3,
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "footer": raw[:-200] + b"\xff" * 192 + raw[-8:],
        "only-magic": magic + b"\x00" * 4 + magic,
    }
    for key, data in bad.items():
        _put(fs, key, data)
        with pytest.raises(errors.CorruptDataError, match="not a readable Arrow IPC or Parquet file"):
            open_dataset(fs, key)
    if fmt == "ipc":
        return  # IPC has no checksums: damage to fixed-width values goes unseen
    # Damage inside the data is found by the scan that reads it (page checksums).
    middle = bytearray(raw)
    start = len(raw) // 3
    middle[start : start + 4000] = b"\xa5" * 4000
    _put(fs, "middle", bytes(middle))
    with pytest.raises(errors.CorruptDataError):
        open_dataset(fs, "middle").scan("qty > 0")


def test_flipped_byte_in_a_page_is_caught(fs: FileService) -> None:
    table = _table(4000)
    ds = write_dataset(fs, "p", table, format="parquet", row_group_rows=1000)
    raw = bytearray(fs.read("p", 0, ds.nbytes).result())
    chunk = ds._parquet_metadata.row_group(2).column(table.schema.get_field_index("qty"))
    at = chunk.data_page_offset + chunk.total_compressed_size // 2
    raw[at] ^= 0x40
    _put(fs, "q", bytes(raw))
    damaged = open_dataset(fs, "q")
    # Row groups and columns that avoid the damage still read.
    assert damaged.scan("id < 1000", ["qty"]).table.num_rows == 1000
    with pytest.raises(errors.CorruptDataError):
        damaged.scan("qty > 0", ["id"])


def test_damaged_ipc_offsets_are_caught(fs: FileService) -> None:
    table = pa.table({"s": pa.array(["abc", "defg", "h"] * 300)})
    ds = write_dataset(fs, "s", table, format="ipc")
    raw = bytearray(fs.read("s", 0, ds.nbytes).result())
    # The int32 offsets 3, 7, 8 of the first values start the body's offsets buffer.
    at = bytes(raw).find((3).to_bytes(4, "little") + (7).to_bytes(4, "little") + (8).to_bytes(4, "little"))
    assert at > 0
    raw[at + 4 : at + 8] = (1 << 30).to_bytes(4, "little")
    _put(fs, "t", bytes(raw))
    with pytest.raises(errors.CorruptDataError):
        open_dataset(fs, "t").scan("s == 'h'")


def test_modeled_pushdown_against_read_all(fs: FileService) -> None:
    table = _table(20000)
    ds = write_dataset(fs, "t.parquet", table, format="parquet", row_group_rows=1000)
    r = ds.scan("id >= 1500 and id < 2500", ["id", "price"])
    assert 0 < r.bytes_read < r.file_bytes == ds.nbytes
    assert r.bytes_scanned > 0 and r.dataset_bytes >= table.nbytes // 2
    for device in ("bluefield2", "bluefield3"):
        m = r.model(device)
        assert m.device == device
        assert m.pcie_bytes_pushdown == r.bytes_returned < m.pcie_bytes_read_all == ds.nbytes
        assert m.pushdown_storage_s < m.read_all_storage_s  # 2 of 20 row groups read
        assert m.pushdown_s == pytest.approx(m.pushdown_storage_s + m.pushdown_compute_s + m.pushdown_pcie_s)
        assert m.speedup > 1 and m.host_cpu_s > 0
        assert m.as_dict()["speedup"] == m.speedup
    # eMMC-class storage makes BlueField-2's reads slower than BlueField-3's NVMe-class ones.
    assert r.model("bluefield2").pushdown_storage_s > r.model("bluefield3").pushdown_storage_s
    with pytest.raises(errors.InvalidArgumentError, match="no device engine"):
        r.model("host")
