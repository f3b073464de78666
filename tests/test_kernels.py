"""The Arrow kernels (filter, project, aggregate, partition) against pyarrow.compute.

Tables are generated with nulls, NaN and -0.0, unicode strings, dictionary
columns (one dictionary per chunk), sliced arrays and several chunks; the
morsel size is shrunk so small tables still split into many parallel tasks.
"""

from __future__ import annotations

import decimal
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels_reference import arith_eval, canonical, close, decoded, sort_by, to_pc

import dpdpu
from dpdpu import errors
from dpdpu.compute import aggregate, arrow, filter, partition, project
from dpdpu.compute.ast import And, Arith, Between, Column, Compare, Expr, IsIn, IsNull, Literal, Negate, Not, Or
from dpdpu.runtime.device import Task
from dpdpu.runtime.native import ffi, lib

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["host", "bluefield3"])
def rt(request: pytest.FixtureRequest) -> Iterator[dpdpu.Runtime]:
    with dpdpu.Runtime(request.param, workers=2) as runtime:
        yield runtime


@pytest.fixture(autouse=True)
def small_morsels(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small tables then still run as several tasks whose results are stitched together.
    monkeypatch.setattr(arrow, "MORSEL_ROWS", 7)


#: DPDPU_KERNEL_EXAMPLES raises the number of generated cases for a longer hunt.
EXAMPLES = int(os.environ.get("DPDPU_KERNEL_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

# --------------------------------------------------------------------------- tables

TYPES: dict[str, pa.DataType] = {
    "i8": pa.int8(),
    "i64": pa.int64(),
    "u64": pa.uint64(),
    "f32": pa.float32(),
    "f64": pa.float64(),
    "b": pa.bool_(),
    "s": pa.string(),
    "ls": pa.large_string(),
    "d": pa.dictionary(pa.int32(), pa.string()),
    "ts": pa.timestamp("ms"),
    "dt": pa.date32(),
}
NUMERIC = ["i8", "i64", "u64", "f32", "f64"]
STRINGS = ["s", "ls", "d"]

_special_floats = st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1.5, -2.25])
_pieces = st.sampled_from(["a", "b", "ab", "é", "日本", "z\u0301", "🙂", "\x00"])
_text = st.lists(_pieces, max_size=3).map("".join)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "i8": st.integers(-128, 127),
    "i64": st.integers(-(2**20), 2**20) | st.sampled_from([0, 1, -1]),
    "u64": st.sampled_from([0, 1, 5, 2**63 - 1, 2**63 + 3, 2**64 - 1]),
    "f32": _special_floats | st.floats(-1e6, 1e6, width=32),
    "f64": _special_floats | st.floats(-1e6, 1e6),
    "b": st.booleans(),
    "s": _text,
    "ls": _text,
    "d": st.sampled_from(["x", "y", "zz", "", "ü"]),
    "ts": st.integers(-5, 5),
    "dt": st.integers(-3, 3),
}


def _array(values: list[Any], name: str, pad: int) -> pa.Array:
    t = TYPES[name]
    # Padding rows around the data leave the array sliced: a non-zero offset.
    filler = values[:1] * pad if values else []
    full = filler + values + filler
    arr = pa.array(full, pa.string()).dictionary_encode() if pa.types.is_dictionary(t) else pa.array(full, t)
    return arr.slice(pad, len(values))


@st.composite
def tables(draw: st.DrawFn, max_rows: int = 30) -> pa.Table:
    n = draw(st.integers(0, max_rows))
    columns = {}
    for name in TYPES:
        nullable = draw(st.booleans())
        values = st.none() | VALUES[name] if nullable else VALUES[name]
        columns[name] = draw(st.lists(values, min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=3))))
    bounds = [0, *[c for c in cuts if 0 < c < n], n]
    pad = draw(st.integers(0, 3))
    batches = []
    for lo, hi in itertools.pairwise(bounds):
        arrays = [_array(columns[name][lo:hi], name, pad) for name in TYPES]
        batches.append(pa.RecordBatch.from_arrays(arrays, names=list(TYPES)))
    schema = pa.schema([(name, TYPES[name]) for name in TYPES])
    table = pa.Table.from_batches(batches, schema=schema)
    table = table.append_column("rid", pa.array(np.arange(n, dtype=np.int64)))
    if draw(st.booleans()) and n:
        return table.combine_chunks() if draw(st.booleans()) else table
    return table


# --------------------------------------------------------------------------- predicates


def _literal_for(name: str) -> st.SearchStrategy[Literal]:
    if name in ("i8", "i64"):
        ints = st.integers(-300, 300) if name == "i8" else st.integers(-(2**21), 2**21)
        return ints.map(lambda v: Literal(v, pa.int64())) | st.sampled_from([0.5, -1.0, 3.0]).map(
            lambda v: Literal(v, pa.float64())
        )
    if name == "u64":
        return st.sampled_from([0, 1, 5, 2**63 - 1, 2**63 + 3, 2**64 - 1]).map(
            lambda v: Literal(v, pa.uint64() if v > 2**63 - 1 else pa.int64())
        )
    if name in ("f32", "f64"):
        floats = (_special_floats | st.floats(-1e6, 1e6, width=32)).map(lambda v: Literal(v, pa.float64()))
        return floats | st.integers(-5, 5).map(lambda v: Literal(v, pa.int64()))
    if name == "b":
        return st.booleans().map(lambda v: Literal(v, pa.bool_()))
    if name in STRINGS:
        return (_text | st.sampled_from(["x", "zz"])).map(lambda v: Literal(v, pa.string()))
    return st.integers(-6, 6).map(lambda v, t=TYPES[name]: Literal(v, t))


_ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
_column_pairs = [
    ("i8", "i64"),
    ("i64", "f64"),
    ("f32", "f64"),
    ("i8", "f32"),
    ("f64", "f64"),
    ("i64", "i64"),
    ("s", "ls"),
    ("s", "d"),
    ("d", "d"),
    ("ts", "ts"),
    ("b", "b"),
]


@st.composite
def _compare_literal(draw: st.DrawFn) -> Expr:
    name = draw(st.sampled_from([n for n in TYPES if n != "b"] + ["b"]))
    lit = draw(_literal_for(name))
    op = draw(_ops)
    if draw(st.booleans()):
        return Compare(op, lit, Column(name))
    return Compare(op, Column(name), lit)


@st.composite
def _between(draw: st.DrawFn) -> Expr:
    name = draw(st.sampled_from(["i8", "i64", "f64", "s", "d", "ts"]))
    return Between(Column(name), draw(_literal_for(name)), draw(_literal_for(name)))


@st.composite
def _isin(draw: st.DrawFn) -> Expr:
    name = draw(st.sampled_from([n for n in TYPES if n != "u64"]))
    values = draw(st.lists(_literal_for(name), max_size=4))
    if draw(st.booleans()):
        values.append(Literal(None, pa.null()))
    if name == "i64" or name == "i8":  # float values in an integer set: only whole ones can match
        values = [v for v in values if isinstance(v.value, int) or v.value is None]
    # The binder merges equal values, and 0 == 0.0 == -0.0, while Arrow's set tells -0.0 apart.
    unique: list[Literal] = []
    for v in values:
        if not any(u.value == v.value and type(u.value) is not bool for u in unique):
            unique.append(v)
    return IsIn(Column(name), tuple(unique))


_leaves = st.one_of(
    _compare_literal(),
    st.sampled_from(_column_pairs).flatmap(
        lambda pair: _ops.map(lambda op: Compare(op, Column(pair[0]), Column(pair[1])))
    ),
    _between(),
    _isin(),
    st.builds(IsNull, st.sampled_from([*TYPES, "rid"]).map(Column), st.booleans()),
    st.just(Column("b")),
    st.sampled_from([True, False, None]).map(lambda v: Literal(v, pa.bool_())),
)

predicates = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.builds(And, inner, inner),
        st.builds(Or, inner, inner),
        st.builds(Not, inner),
    ),
    max_leaves=5,
)


def _reference_filter(table: pa.Table, tree: Expr) -> pa.Table:
    if isinstance(tree, Column):
        return table.filter(pc.field(tree.name))
    if isinstance(tree, Literal):
        return table.filter(pc.scalar(pa.scalar(tree.value, pa.bool_())))
    return table.filter(to_pc(tree, table.schema))


# --------------------------------------------------------------------------- filter


@SETTINGS
@given(table=tables(), tree=predicates)
def test_filter_matches_arrow(rt: dpdpu.Runtime, table: pa.Table, tree: Expr) -> None:
    expected = _reference_filter(table, tree)
    got = filter(table, tree, runtime=rt)
    assert isinstance(got, pa.Table)
    assert got.schema == table.schema
    assert canonical(got).equals(canonical(expected)), (tree, got.to_pydict(), expected.to_pydict())


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(table=tables(max_rows=20), tree=predicates)
def test_filter_record_batch(rt: dpdpu.Runtime, table: pa.Table, tree: Expr) -> None:
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else table.schema.empty_table().to_batches()
    if not isinstance(batch, pa.RecordBatch):
        batch = pa.RecordBatch.from_pylist([], schema=table.schema)
    got = filter(batch, tree, runtime=rt)
    assert isinstance(got, pa.RecordBatch)
    expected = _reference_filter(pa.Table.from_batches([batch]), tree)
    assert canonical(got).equals(canonical(expected))


def test_filter_text_and_arrow_expressions(rt: dpdpu.Runtime) -> None:
    t = pa.table({"a": [1, 5, None, 7, 2], "s": ["x", "y", "z", "w", None], "f": [1.5, float("nan"), 2.0, None, 0.0]})
    got = filter(t, "a > 2 and s != 'w'", runtime=rt)
    assert got.select(["a", "s"]).to_pydict() == {"a": [5], "s": ["y"]} and pc.is_nan(got["f"]).to_pylist() == [True]
    got = filter(t, (pc.field("f") > 1.0) | pc.field("s").isin(["w"]), runtime=rt)
    assert got["a"].to_pylist() == [1, None, 7]


def test_filter_keeps_dictionaries_and_nested_columns(rt: dpdpu.Runtime) -> None:
    d = pa.array(["a", "b", None, "a", "c"] * 3).dictionary_encode()
    lists = pa.array([[1], [], None, [2, 3], [4]] * 3)
    t = pa.table({"d": d, "l": lists, "k": list(range(15))})
    got = filter(t, Compare("!=", Column("d"), Literal("a", pa.string())), runtime=rt)
    expected = t.filter(pc.field("d") != "a")
    assert got.equals(expected)
    for chunk in got["d"].chunks:
        assert chunk.dictionary.equals(d.dictionary)


def test_filter_empty_and_all_filtered(rt: dpdpu.Runtime) -> None:
    t = pa.table({"a": pa.array([], pa.int64()), "s": pa.array([], pa.string())})
    tree = Compare(">", Column("a"), Literal(1, pa.int64()))
    assert filter(t, tree, runtime=rt).equals(t)
    full = pa.table({"a": [1, 2, 3], "s": ["a", "b", "c"]})
    none = filter(full, Compare(">", Column("a"), Literal(10, pa.int64())), runtime=rt)
    assert none.num_rows == 0 and none.schema == full.schema
    batch = full.to_batches()[0]
    none_batch = filter(batch, Literal(False, pa.bool_()), runtime=rt)
    assert isinstance(none_batch, pa.RecordBatch) and none_batch.num_rows == 0
    assert none_batch.schema == batch.schema


def test_filter_many_morsels_run_in_parallel(rt: dpdpu.Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrow, "MORSEL_ROWS", 1000)
    rng = np.random.default_rng(7)
    n = 20_000
    t = pa.table({"a": rng.integers(0, 100, n), "b": rng.random(n), "s": rng.integers(0, 9, n).astype(str)})
    tree = And(
        Compare(">", Column("a"), Literal(30, pa.int64())), Compare("<", Column("b"), Literal(0.7, pa.float64()))
    )
    before = rt.stats().tasks
    got = filter(t, tree, runtime=rt)
    assert rt.stats().tasks - before >= 20
    assert got["a"].num_chunks > 1
    assert got.equals(t.filter((pc.field("a") > 30) & (pc.field("b") < 0.7)))


def _every_layout() -> pa.Table:
    n = 12
    dictionary = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, None, 2] * 3, pa.int8()), pa.array(["a", None, "c"])
    )  # a null among the dictionary's values, too
    return pa.table(
        {
            "k": pa.array([i % 4 if i % 5 else None for i in range(n)], pa.int64()),
            "dec": pa.array([decimal.Decimal(i) / 4 if i % 3 else None for i in range(n)], pa.decimal128(9, 2)),
            "fsb": pa.array([bytes([i, i + 1, i + 2]) if i % 4 else None for i in range(n)], pa.binary(3)),
            "tm": pa.array(list(range(n)), pa.time32("s")),
            "du": pa.array([i if i % 2 else None for i in range(n)], pa.duration("us")),
            "bin": pa.array([bytes([i]) * (i % 3) for i in range(n)], pa.binary()),
            "lbin": pa.array([bytes([i]) * (i % 2) for i in range(n)], pa.large_binary()),
            "bools": pa.array([None if i % 7 == 0 else i % 2 == 0 for i in range(n)]),
            "none": pa.nulls(n),
            "list": pa.array([[i] * (i % 3) if i % 4 else None for i in range(n)]),
            "struct": pa.array([{"x": i} for i in range(n)]),
            "d": dictionary,
        }
    ).slice(1)


def test_filter_gathers_every_layout(rt: dpdpu.Runtime) -> None:
    t = _every_layout()
    for tree, expression in [
        (Compare(">", Column("k"), Literal(1, pa.int64())), pc.field("k") > 1),
        (IsNull(Column("d")), pc.field("d").is_null()),
        (Compare("==", Column("d"), Literal("a", pa.string())), pc.field("d") == "a"),
        (IsIn(Column("d"), (Literal(None, pa.null()), Literal("c", pa.string()))), pc.field("d").isin(["c", None])),
        (Not(Compare("==", Column("bools"), Literal(True, pa.bool_()))), ~(pc.field("bools") == True)),  # noqa: E712
    ]:
        got = filter(t, tree, runtime=rt)
        assert canonical(got).equals(canonical(t.filter(expression))), tree
    parts = partition(t, ["dec", "fsb", "bools"], 3, runtime=rt)
    assert sum(p.num_rows for p in parts) == t.num_rows


def test_aggregate_unusual_columns(rt: dpdpu.Runtime) -> None:
    t = _every_layout()
    aggs = [("none", "count"), ("struct", "count"), ("bools", "sum"), ("bools", "min"), ("tm", "max"), ("*", "count")]
    for keys in (["bools"], ["none"], ["k", "fsb"]):
        _assert_same_groups(aggregate(t, keys, aggs, runtime=rt), _reference_aggregate(t, keys, aggs), keys)
    # A null index and an index of a null value are both null keys: one group (Arrow groups the
    # indices, so there it takes decoding the dictionary first).
    got = aggregate(t, ["d", "k"], aggs, runtime=rt)
    decoded_t = t.set_column(t.schema.get_field_index("d"), "d", t["d"].cast(pa.string()))
    expected = _reference_aggregate(decoded_t, ["d", "k"], aggs)
    _assert_same_groups(got.set_column(0, "d", got["d"].cast(pa.string())), expected, ["d", "k"])
    floats = pa.table({"f": [0.0, -0.0, float("nan"), 1.5, None, 0.0], "v": [1, 2, 3, 4, 5, 6]})
    got = aggregate(floats, ["f"], [("v", "sum")], runtime=rt)
    assert canonical(got).equals(canonical(_reference_aggregate(floats, ["f"], [("v", "sum")])))


# --------------------------------------------------------------------------- project

_numeric_columns = st.sampled_from(NUMERIC).map(Column)
_arith_literals = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: Literal(v, pa.int64())),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: Literal(v, pa.float64())),
)
arithmetic = st.recursive(
    _numeric_columns | _arith_literals,
    lambda inner: st.one_of(
        st.builds(Arith, st.sampled_from(["+", "-", "*", "/"]), inner, inner),
        st.builds(Negate, inner),
    ),
    max_leaves=4,
).filter(lambda e: not isinstance(e, (Literal, Column)))


@SETTINGS
@given(table=tables(), trees=st.lists(arithmetic, min_size=1, max_size=3))
def test_project_matches_arrow(rt: dpdpu.Runtime, table: pa.Table, trees: list[Expr]) -> None:
    spec: dict[str, Any] = {f"e{i}": tree for i, tree in enumerate(trees)}
    spec["pass"] = "s"
    got = project(table, spec, runtime=rt)
    with np.errstate(all="ignore"):
        expected = pa.table({name: arith_eval(tree, table) for name, tree in spec.items() if name != "pass"})
    expected = expected.append_column("pass", table["s"])
    assert got.schema == expected.schema
    assert canonical(got, nan=True).equals(canonical(expected, nan=True)), trees


def test_project_select_rename_and_passthrough(rt: dpdpu.Runtime) -> None:
    t = pa.table({"a": pa.array([1, None, 3], pa.int8()), "s": ["x", "y", "z"], "f": [0.5, 1.0, None]})
    got = project(t, ["s", "a"], runtime=rt)
    assert (
        got.column_names == ["s", "a"]
        and got["a"].chunk(0).buffers()[1].address == t["a"].chunk(0).buffers()[1].address
    )
    got = project(t, {"name": "s", "twice": "a * 2", "neg": "-f", "ratio": "a / 0", "one": "1"}, runtime=rt)
    assert got.to_pydict() == {
        "name": ["x", "y", "z"],
        "twice": [2, None, 6],
        "neg": [-0.5, -1.0, None],
        "ratio": [float("inf"), None, float("inf")],
        "one": [1, 1, 1],
    }
    assert got.schema.field("twice").type == pa.int64() and got.schema.field("ratio").type == pa.float64()
    batch = project(t.to_batches()[0], {"x": "a + f"}, runtime=rt)
    assert isinstance(batch, pa.RecordBatch) and batch["x"].to_pylist() == [1.5, None, None]
    wrap = project(pa.table({"a": [2**63 - 1]}), {"x": "a + 1"}, runtime=rt)
    assert wrap["x"].to_pylist() == [-(2**63)]


# --------------------------------------------------------------------------- aggregate

_agg_choices = (
    [(c, "count") for c in [*TYPES, "rid"]]
    + [(c, f) for c in [*NUMERIC, "b"] for f in ("sum", "mean")]
    + [(c, f) for c in [*NUMERIC, "b", "s", "ls", "ts", "dt"] for f in ("min", "max")]
    + [("*", "count")]
)
_key_choices = ["i8", "i64", "u64", "b", "s", "ls", "d", "ts", "dt"]


def _reference_aggregate(table: pa.Table, keys: list[str], aggs: list[tuple[str, str]]) -> pa.Table:
    specs = [([], "count_all") if c == "*" else (c, f) for c, f in aggs]
    # Arrow cannot group chunks whose dictionaries differ (the kernels can)
    out = table.unify_dictionaries().group_by(keys, use_threads=False).aggregate(specs)
    return out.rename_columns(["count" if n == "count_all" else n for n in out.column_names])


def _assert_same_groups(got: pa.Table, expected: pa.Table, keys: list[str]) -> None:
    assert got.schema == expected.schema, (got.schema, expected.schema)
    a, b = sort_by(got, keys), sort_by(expected, keys)
    assert a.num_rows == b.num_rows
    for i, name in enumerate(a.column_names):
        x, y = a.column(i).combine_chunks(), b.column(i).combine_chunks()
        if pa.types.is_floating(x.type):
            assert close(x, y), (name, x, y)
        else:
            assert x.equals(y), (name, x, y)


@SETTINGS
@given(
    table=tables(),
    keys=st.lists(st.sampled_from(_key_choices), max_size=2, unique=True),
    aggs=st.lists(st.sampled_from(_agg_choices), min_size=1, max_size=4),
)
def test_aggregate_matches_group_by(
    rt: dpdpu.Runtime, table: pa.Table, keys: list[str], aggs: list[tuple[str, str]]
) -> None:
    got = aggregate(table, keys, aggs, runtime=rt)
    _assert_same_groups(got, _reference_aggregate(table, keys, aggs), keys)


def test_aggregate_first_appearance_order_and_nulls(rt: dpdpu.Runtime) -> None:
    t = pa.table(
        {
            "k": ["b", None, "a", "b", None, "c", "a"] * 3,
            "v": [1.0, 2.0, None, 4.0, 5.0, None, 7.0] * 3,
            "i": pa.array([1, 2, 3, 4, 5, 6, 7] * 3, pa.int16()),
        }
    )
    got = aggregate(t, "k", [("v", "sum"), ("v", "count"), ("i", "max"), ("*", "count")], runtime=rt)
    assert got.column_names == ["k", "v_sum", "v_count", "i_max", "count"]
    assert got["k"].to_pylist() == ["b", None, "a", "c"]
    assert got["v_sum"].to_pylist() == [15.0, 21.0, 21.0, None]
    assert got["v_count"].to_pylist() == [6, 6, 3, 0]
    assert got["i_max"].type == pa.int16() and got["i_max"].to_pylist() == [4, 5, 7, 6]
    assert got["count"].to_pylist() == [6, 6, 6, 3]


def test_aggregate_dictionary_keys_and_no_keys(rt: dpdpu.Runtime) -> None:
    chunks = [pa.array(["x", "y", "x"]).dictionary_encode(), pa.array(["y", "z", None]).dictionary_encode()]
    t = pa.table({"d": pa.chunked_array(chunks), "v": [1, 2, 3, 4, 5, 6]})
    got = aggregate(t, ["d"], [("v", "sum")], runtime=rt)
    assert got["d"].type == t["d"].type
    assert got.to_pydict() == {"d": ["x", "y", "z", None], "v_sum": [4, 6, 5, 6]}
    whole = aggregate(t, [], [("v", "mean"), (None, "count")], runtime=rt)
    assert whole.to_pydict() == {"v_mean": [3.5], "count": [6]}


def test_aggregate_empty_inputs(rt: dpdpu.Runtime) -> None:
    t = pa.table({"k": pa.array([], pa.string()), "v": pa.array([], pa.int32()), "f": pa.array([], pa.float32())})
    aggs = [("v", "sum"), ("v", "min"), ("f", "mean"), ("*", "count")]
    got = aggregate(t, ["k"], aggs, runtime=rt)
    assert got.num_rows == 0 and got.schema == _reference_aggregate(t, ["k"], aggs).schema
    one = aggregate(t, [], aggs, runtime=rt)
    assert one.to_pydict() == {"v_sum": [None], "v_min": [None], "f_mean": [None], "count": [0]}
    assert one.schema == _reference_aggregate(t, [], aggs).schema
    batch = aggregate(t.to_batches()[0] if t.to_batches() else pa.RecordBatch.from_pylist([], schema=t.schema),
                      "k", aggs, runtime=rt)  # fmt: skip
    assert isinstance(batch, pa.Table) and batch.num_rows == 0


def test_aggregate_float_min_max_follow_arrow(rt: dpdpu.Runtime) -> None:
    nan = float("nan")
    t = pa.table({"k": [1, 1, 1, 2, 3, 3], "f": [nan, 1.0, None, nan, -0.0, 0.0]})
    got = aggregate(t, "k", [("f", "min"), ("f", "max")], runtime=rt)
    expected = _reference_aggregate(t, ["k"], [("f", "min"), ("f", "max")])
    assert canonical(got).equals(canonical(expected))


# --------------------------------------------------------------------------- partition


def _check_partition(table: pa.Table, parts: list[Any], keys: list[str], n: int) -> None:
    assert len(parts) == n
    seen: dict[Any, int] = {}
    rids: list[int] = []
    for p, part in enumerate(parts):
        assert part.schema == table.schema
        ids = part["rid"].to_pylist()
        assert ids == sorted(ids), "rows keep their order within a part"
        rids += ids
        expected = table.take(pa.array(ids, pa.int64())) if ids else table.slice(0, 0)
        assert canonical(part).equals(canonical(expected))
        for row in decoded(part.select(keys)).to_pylist():
            # -0.0 == 0.0 already; every NaN is one key
            key = tuple("nan" if isinstance(v, float) and v != v else v for v in row.values())
            assert seen.setdefault(key, p) == p, "equal keys land in one part"
    assert sorted(rids) == list(range(table.num_rows))


@SETTINGS
@given(
    table=tables(),
    keys=st.lists(st.sampled_from([*_key_choices, "f64"]), min_size=1, max_size=3, unique=True),
    n=st.integers(1, 5),
)
def test_partition_properties(rt: dpdpu.Runtime, table: pa.Table, keys: list[str], n: int) -> None:
    parts = partition(table, keys, n, runtime=rt)
    _check_partition(table, parts, keys, n)
    again = partition(table, keys, n, runtime=rt)
    assert [canonical(a).equals(canonical(b)) for a, b in zip(again, parts, strict=True)] == [True] * n


def test_partition_record_batch_and_zero_equal(rt: dpdpu.Runtime) -> None:
    t = pa.table({"f": [0.0, -0.0, 1.0, float("nan")], "rid": [0, 1, 2, 3]})
    parts = partition(t.to_batches()[0], ["f"], 4, runtime=rt)
    assert all(isinstance(p, pa.RecordBatch) for p in parts)
    owner = [i for i, p in enumerate(parts) if 0 in p["rid"].to_pylist()]
    assert owner and 1 in parts[owner[0]]["rid"].to_pylist()
    empty = partition(t.slice(0, 0), "f", 3, runtime=rt)
    assert [p.num_rows for p in empty] == [0, 0, 0] and all(p.schema == t.schema for p in empty)


_SUBPROCESS = """
import json, pyarrow as pa, dpdpu
from dpdpu.compute import partition
t = pa.table({"k": [str(i % 37) for i in range(500)], "n": list(range(500)), "rid": list(range(500))})
with dpdpu.Runtime("host", workers=2) as rt:
    parts = partition(t, ["k", "n"], 7, runtime=rt)
print(json.dumps([p["rid"].to_pylist() for p in parts]))
"""


def test_partition_is_the_same_in_another_process(rt: dpdpu.Runtime) -> None:
    t = pa.table({"k": [str(i % 37) for i in range(500)], "n": list(range(500)), "rid": list(range(500))})
    here = [p["rid"].to_pylist() for p in partition(t, ["k", "n"], 7, runtime=rt)]
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == here
    assert sum(1 for p in here if p) >= 5, "the hash spreads keys over the parts"


# --------------------------------------------------------------------------- bad inputs


def test_unknown_columns_name_the_column(rt: dpdpu.Runtime) -> None:
    t = pa.table({"a": [1, 2], "s": ["x", "y"]})
    cases = [
        lambda: filter(t, Compare(">", Column("nope"), Literal(1, pa.int64())), runtime=rt),
        lambda: project(t, ["a", "nope"], runtime=rt),
        lambda: project(t, {"x": Arith("+", Column("nope"), Literal(1, pa.int64()))}, runtime=rt),
        lambda: aggregate(t, ["nope"], [("a", "sum")], runtime=rt),
        lambda: aggregate(t, ["s"], [("nope", "sum")], runtime=rt),
        lambda: partition(t, ["nope"], 2, runtime=rt),
    ]
    for case in cases:
        with pytest.raises(errors.UnknownColumnError) as info:
            case()
        assert info.value.column == "nope"


def test_unsupported_types_and_functions(rt: dpdpu.Runtime) -> None:
    t = pa.table({"a": [1, 2], "s": ["x", "y"], "l": [[1], [2]], "ts": pa.array([1, 2], pa.timestamp("s"))})
    with pytest.raises(errors.ExpressionTypeError) as info:
        aggregate(t, ["a"], [("s", "sum")], runtime=rt)
    assert info.value.column == "s"
    with pytest.raises(errors.ExpressionTypeError):
        aggregate(t, ["a"], [("ts", "mean")], runtime=rt)
    with pytest.raises(errors.ExpressionTypeError):
        aggregate(t, ["l"], [("a", "sum")], runtime=rt)
    with pytest.raises(errors.InvalidArgumentError, match="median"):
        aggregate(t, ["a"], [("a", "median")], runtime=rt)
    with pytest.raises(errors.ExpressionTypeError):
        filter(t, Column("a"), runtime=rt)
    with pytest.raises(errors.ExpressionTypeError):
        project(t, {"x": Arith("+", Column("s"), Literal(1, pa.int64()))}, runtime=rt)
    for n in (0, -1, True, 1.5):
        with pytest.raises(errors.InvalidArgumentError):
            partition(t, ["a"], n, runtime=rt)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgumentError):
        partition(t, [], 2, runtime=rt)
    with pytest.raises(errors.InvalidArgumentError):
        filter({"a": [1]}, "a > 1", runtime=rt)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgumentError):
        project(t, 5, runtime=rt)  # type: ignore[arg-type]


def test_kernels_reject_invalid_jobs(rt: dpdpu.Runtime) -> None:
    # A job built by hand that names a column it does not have fails in C, with the reason.
    views = arrow.Views([pa.array([1, 2, 3])])
    job = ffi.new("struct dpdpu_kernel_job *")
    job.op = lib.DPDPU_OP_FILTER
    job.n_columns = 1
    job.columns = views.c
    job.n_rows = 3
    insn = ffi.new("struct dpdpu_kinsn[]", 1)
    insn[0].code = lib.DPDPU_K_CMP_LIT
    insn[0].a = 5
    job.insns, job.n_insns, job.n_regs = insn, 1, 1
    task = Task(op="filter", param=int(ffi.cast("intptr_t", job)), keep=[views, insn])
    with pytest.raises(errors.InvalidArgumentError):
        rt.run(task).result()
    assert b"column 5" in ffi.string(job.message)
    job.op = lib.DPDPU_OP_PROJECT  # a job for another op
    task = Task(op="filter", param=int(ffi.cast("intptr_t", job)), keep=[views, insn])
    with pytest.raises(errors.InvalidArgumentError):
        rt.run(task).result()
