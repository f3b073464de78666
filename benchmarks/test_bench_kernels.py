"""Arrow kernels on 10M rows through the runtime vs pyarrow.compute.

* filter: ``a > 500 and b < 0.5`` over an int64 and a float64 column (about
  25% of rows kept, three columns gathered) vs ``table.filter(expression)``;
* aggregate: sum, mean and count of a float64 column grouped by an int64 key
  with 1000 distinct values vs ``table.group_by("k").aggregate(...)``.

Both sides may use every core (pyarrow its thread pool, dpdpu the host
engine's workers).  Run: ``pytest benchmarks/test_bench_kernels.py``
(``DPDPU_BENCH_ROWS`` shrinks the tables).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dpdpu import Runtime
from dpdpu.compute import aggregate, filter
from dpdpu.compute.ast import And, Column, Compare, Literal

ROWS = int(os.environ.get("DPDPU_BENCH_ROWS", str(10_000_000)))
GROUPS = 1000
AGGS = [("v", "sum"), ("v", "mean"), ("v", "count")]


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with Runtime("host") as rt:
        yield rt


@pytest.fixture(scope="module")
def numbers() -> pa.Table:
    rng = np.random.default_rng(1)
    return pa.table({"a": rng.integers(0, 1000, ROWS), "b": rng.random(ROWS), "c": rng.integers(0, 1 << 40, ROWS)})


@pytest.fixture(scope="module")
def groups() -> pa.Table:
    rng = np.random.default_rng(2)
    return pa.table({"k": rng.integers(0, GROUPS, ROWS), "v": rng.random(ROWS)})


PREDICATE = And(
    Compare(">", Column("a"), Literal(500, pa.int64())), Compare("<", Column("b"), Literal(0.5, pa.float64()))
)
ARROW_PREDICATE = (pc.field("a") > 500) & (pc.field("b") < 0.5)


@pytest.mark.benchmark(group="filter-10M")
def test_pyarrow_filter(benchmark, numbers) -> None:
    benchmark.extra_info["role"] = "baseline"
    benchmark.pedantic(lambda: numbers.filter(ARROW_PREDICATE), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="filter-10M")
def test_dpdpu_filter(benchmark, numbers, runtime) -> None:
    benchmark.extra_info["goal"] = 1.0
    assert filter(numbers, PREDICATE, runtime=runtime).equals(numbers.filter(ARROW_PREDICATE))
    benchmark.pedantic(lambda: filter(numbers, PREDICATE, runtime=runtime), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="aggregate-10M-1k-groups")
def test_pyarrow_group_by(benchmark, groups) -> None:
    benchmark.extra_info["role"] = "baseline"
    benchmark.pedantic(lambda: groups.group_by("k").aggregate(AGGS), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="aggregate-10M-1k-groups")
def test_dpdpu_aggregate(benchmark, groups, runtime) -> None:
    benchmark.extra_info["goal"] = 0.8
    got = aggregate(groups, ["k"], AGGS, runtime=runtime).sort_by("k")
    expected = groups.group_by("k").aggregate(AGGS).sort_by("k")
    assert got.column_names == expected.column_names and got["k"].equals(expected["k"])
    assert got["v_count"].equals(expected["v_count"])
    for name in ("v_sum", "v_mean"):  # float sums: the order of additions differs
        assert np.allclose(got[name].to_numpy(), expected[name].to_numpy(), rtol=1e-9)
    benchmark.pedantic(lambda: aggregate(groups, ["k"], AGGS, runtime=runtime), rounds=5, warmup_rounds=1)
