"""Predicate and projection pushdown on a Parquet dataset in the file service vs reading it all.

A ~1M-row table (``id`` sorted, ``key`` uniform in 0..999, ``price``,
``qty``, ``region``, a free-text ``comment``) is stored as Parquet in a
:class:`FileService`.  Each query keeps about 10% of the rows (``key < 100``,
and a range of the sorted ``id``, where row-group statistics skip most of the
file) and the columns ``id``, ``price``:

* baseline: read the whole file to the host and filter and select there with
  pyarrow (every byte of the file moves);
* pushdown: :meth:`Dataset.scan` reads the needed column chunks,
  filters and projects with the dpdpu kernels on the runtime, and returns
  only the result.

``extra_info`` records the bytes each side moves to the host and the modeled
time of both sides on BlueField-2 and BlueField-3 (:func:`dpdpu.storage.model_scan`);
the pushdown asserts that what it returns is at most (selectivity + 5%) of the file.
Run: ``pytest benchmarks/test_bench_pushdown.py`` (``DPDPU_BENCH_ROWS`` sizes
the table).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dpdpu import Runtime
from dpdpu.storage import Dataset, FileService, write_dataset

ROWS = int(os.environ.get("DPDPU_BENCH_ROWS", str(1_000_000)))
NAME = "sales.parquet"
COLUMNS = ["id", "price"]
#: name -> (dpdpu predicate, the same as a pyarrow expression); both keep about 10% of rows.
QUERIES: dict[str, tuple[str, Any]] = {
    "key<100": ("key < 100", pc.field("key") < 100),
    "sorted-id-range": (f"id < {ROWS // 10}", pc.field("id") < ROWS // 10),
}


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with Runtime() as rt:
        yield rt


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileService, Dataset]]:
    rng = np.random.default_rng(3)
    table = pa.table(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "key": rng.integers(0, 1000, ROWS),
            "price": rng.uniform(0, 100, ROWS),
            "qty": rng.integers(0, 50, ROWS).astype(np.int32),
            "region": pa.array(np.array(["EU", "US", "APAC", "LATAM"])[rng.integers(0, 4, ROWS)].tolist()),
            "comment": pa.array([f"order {i:x} shipped by carrier {i * 7919 % 104729:x}" for i in range(ROWS)]),
        }
    )
    path: Path = tmp_path_factory.mktemp("pushdown") / "svc"
    with FileService(path, capacity=max(1 << 30, ROWS * 256)) as fs:
        ds = write_dataset(fs, NAME, table, format="parquet", row_group_rows=max(1, ROWS // 16))
        yield fs, ds


def _read_all_then_filter(fs: FileService, ds: Dataset, expr: Any) -> tuple[pa.Table, int]:
    data = fs.read(ds.name, 0, ds.nbytes).result()
    table = pq.read_table(pa.BufferReader(data)).filter(expr).select(COLUMNS)
    return table, len(data)


@pytest.mark.parametrize("query", list(QUERIES))
def test_read_all_then_filter_on_host(benchmark: Any, stored: tuple[FileService, Dataset], query: str) -> None:
    fs, ds = stored
    expr = QUERIES[query][1]
    benchmark.group = f"pushdown-parquet-{query}"
    benchmark.extra_info["role"] = "baseline"
    _, moved = _read_all_then_filter(fs, ds, expr)
    benchmark.extra_info["bytes_to_host"] = moved
    benchmark.extra_info["file_bytes"] = ds.nbytes
    benchmark.pedantic(lambda: _read_all_then_filter(fs, ds, expr), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("query", list(QUERIES))
def test_pushdown_scan(benchmark: Any, stored: tuple[FileService, Dataset], runtime: Runtime, query: str) -> None:
    fs, ds = stored
    predicate, expr = QUERIES[query]
    benchmark.group = f"pushdown-parquet-{query}"
    benchmark.extra_info["goal"] = 1.0
    expected, baseline_bytes = _read_all_then_filter(fs, ds, expr)
    pcie_before = runtime.stats().pcie_bytes
    result = ds.scan(predicate, COLUMNS, runtime=runtime)
    pcie = runtime.stats().pcie_bytes - pcie_before
    assert result.table.combine_chunks().equals(expected.combine_chunks())
    selectivity = result.table.num_rows / ds.num_rows
    ratio = result.bytes_returned / baseline_bytes
    benchmark.extra_info.update(
        bytes_to_host=result.bytes_returned,
        bytes_read_from_storage=result.bytes_read,
        file_bytes=ds.nbytes,
        returned_over_baseline=round(ratio, 4),
        read_over_file=round(result.bytes_read / ds.nbytes, 4),
        selectivity=round(selectivity, 4),
        row_groups_skipped=f"{result.row_groups_skipped}/{result.row_groups}",
        runtime_pcie_bytes=pcie,
    )
    for device in ("bluefield2", "bluefield3"):
        m = result.model(device)
        benchmark.extra_info[f"modeled_{device}"] = {
            "pushdown_s": m.pushdown_s,
            "read_all_s": m.read_all_s,
            "speedup": round(m.speedup, 2),
            "host_cpu_s_saved": m.host_cpu_s,
        }
        print(
            f"modeled on {device}: pushdown {m.pushdown_s * 1e3:.2f} ms "
            f"(storage {m.pushdown_storage_s * 1e3:.2f}, Arm {m.pushdown_compute_s * 1e3:.2f}, "
            f"PCIe {m.pushdown_pcie_s * 1e3:.2f}) vs read-all {m.read_all_s * 1e3:.2f} ms "
            f"(storage {m.read_all_storage_s * 1e3:.2f}, PCIe {m.read_all_pcie_s * 1e3:.2f}, "
            f"host {m.read_all_host_s * 1e3:.2f}): {m.speedup:.2f}x"
        )
    print(
        f"\npushdown {query}: returned {result.bytes_returned} B of a {baseline_bytes} B file "
        f"({ratio:.1%}, selectivity {selectivity:.1%}); read {result.bytes_read} B from storage "
        f"({result.bytes_read / ds.nbytes:.1%}), {result.row_groups_skipped}/{result.row_groups} row groups skipped"
    )
    assert ratio <= selectivity + 0.05
    benchmark.pedantic(lambda: ds.scan(predicate, COLUMNS, runtime=runtime), rounds=5, warmup_rounds=1)
