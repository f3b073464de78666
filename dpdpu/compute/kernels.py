"""Columnar kernels over Arrow data: filter, project, aggregate, partition.

Each function reads the Arrow buffers in place, runs C kernels as tasks on a
runtime (the current one unless ``runtime`` is given), split into morsels of
about a million rows that the engine's workers process in parallel, and
returns Arrow data whose buffers the kernels wrote (no copy back).  A
``pa.Table`` gives a table (possibly of several chunks), a ``pa.RecordBatch``
a record batch.

>>> import pyarrow as pa
>>> from dpdpu.compute import filter
>>> t = pa.table({"a": [1, 5, None, 7], "s": ["x", "y", "z", "w"]})
>>> filter(t, "a > 2").to_pydict()
{'a': [5, 7], 's': ['y', 'w']}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from .. import errors
from ..runtime.runtime import Runtime, current_runtime
from . import arrow
from .ast import Column, Expr

__all__ = ["aggregate", "filter", "partition", "project"]

#: Column names that mean "count the rows" in an aggregation.
_ROWS = (None, "*")


def _data(data: Any, op: str) -> pa.Table | pa.RecordBatch:
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return data
    raise errors.InvalidArgumentError(
        f"expected a pyarrow.Table or pyarrow.RecordBatch, got {type(data).__name__}", op=op
    )


def _names(value: Any, what: str, op: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise errors.InvalidArgumentError(f"{what} must be a column name or a list of column names, not {value!r}", op=op)


def _groupable(schema: pa.Schema, name: str, op: str) -> int:
    index = arrow.field_index(schema, name, op)
    t = schema.field(index).type
    if arrow.col_type(t).kind == "other":
        raise arrow.type_error(f"cannot group or hash by column {name!r} of type {t}", op, name)
    return index


def filter(
    data: pa.Table | pa.RecordBatch, predicate: Any, *, runtime: Runtime | None = None
) -> pa.Table | pa.RecordBatch:
    """The rows of ``data`` for which ``predicate`` is true.

    ``predicate`` is expression text (``"a > 5 and s in ('x', 'y')"``), a
    ``pyarrow.compute.Expression`` or a :mod:`dpdpu.compute.ast` tree.  The
    semantics are Arrow's: comparisons with null give null, ``and``/``or``
    are Kleene, rows where the predicate is null or false are dropped.

    Raises:
        UnknownColumnError: the predicate names a column ``data`` lacks.
        ExpressionTypeError: a column's type does not fit its use.
        ExpressionSyntaxError: the text does not parse.
    """
    data = _data(data, "filter")
    tree = arrow.bind(predicate, data.schema, predicate=True, op="filter")
    result: pa.Table | pa.RecordBatch = arrow.filter_data(data, tree, runtime or current_runtime())
    return result


def project(
    data: pa.Table | pa.RecordBatch,
    columns: Sequence[str] | Mapping[str, Any],
    *,
    runtime: Runtime | None = None,
) -> pa.Table | pa.RecordBatch:
    """Select, rename and compute columns.

    ``columns`` is a list of names (select, in that order) or a mapping
    ``{output name: column name or expression}``.  A bare column passes
    through without a copy; arithmetic (``+ - * /``, unary ``-``, literals)
    runs in the kernels: integers compute as int64 and wrap on overflow, any
    float or a ``/`` gives float64 (``x / 0`` is inf or NaN); nulls propagate.

    Raises:
        UnknownColumnError: a name or expression names a missing column.
        ExpressionTypeError: arithmetic over a non-numeric column.
    """
    data = _data(data, "project")
    schema = data.schema
    outputs: list[tuple[str, Expr]] = []
    if isinstance(columns, Mapping):
        for name, spec in columns.items():
            if not isinstance(name, str):
                raise errors.InvalidArgumentError(f"output names are strings, not {name!r}", op="project")
            if isinstance(spec, str) and spec in schema.names:
                arrow.field_index(schema, spec, "project")
                outputs.append((name, Column(spec)))
            else:
                outputs.append((name, arrow.bind(spec, schema, predicate=False, op="project")))
    elif isinstance(columns, Sequence) and not isinstance(columns, str):
        for name in _names(list(columns), "columns", "project"):
            arrow.field_index(schema, name, "project")
            outputs.append((name, Column(name)))
    else:
        raise errors.InvalidArgumentError(
            f"columns must be a list of names or a mapping of output names to expressions, not {columns!r}",
            op="project",
        )
    return arrow.project_data(data, outputs, runtime or current_runtime())


def aggregate(
    data: pa.Table | pa.RecordBatch,
    keys: str | Sequence[str],
    aggregations: Sequence[tuple[Any, str]],
    *,
    runtime: Runtime | None = None,
) -> pa.Table:
    """Hash group-by: one row per distinct key (nulls form their own group).

    ``aggregations`` lists ``(column, function)`` pairs with functions
    ``count`` (non-null values), ``sum``, ``min``, ``max`` and ``mean``;
    ``("*", "count")`` or ``(None, "count")`` counts rows into a column
    ``count``.  The result has the key columns, then one column per
    aggregation named ``{column}_{function}``, typed as
    ``pa.Table.group_by(keys).aggregate(...)`` types them; a group without
    values gives null (count: 0).  Groups come in order of first appearance;
    without keys there is exactly one row.

    Raises:
        UnknownColumnError: a key or aggregated column is missing.
        ExpressionTypeError: a function does not take the column's type.
        InvalidArgumentError: an unknown function.
    """
    data = _data(data, "aggregate")
    schema = data.schema
    key_names = _names(keys, "keys", "aggregate")
    key_index = [_groupable(schema, name, "aggregate") for name in key_names]
    if isinstance(aggregations, (str, bytes)) or not isinstance(aggregations, Sequence):
        raise errors.InvalidArgumentError(
            f"aggregations must be a list of (column, function) pairs, not {aggregations!r}", op="aggregate"
        )
    specs: list[arrow.AggSpec] = []
    for item in aggregations:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise errors.InvalidArgumentError(
                f"each aggregation is a (column, function) pair, not {item!r}", op="aggregate"
            )
        column, func = item
        if not isinstance(func, str) or func not in arrow.AGG_FUNCS:
            raise errors.InvalidArgumentError(
                f"unknown aggregate function {func!r}; choose from count, sum, min, max, mean", op="aggregate"
            )
        rows = column in _ROWS or (isinstance(column, (list, tuple)) and not column)
        if func == "count_all" or (rows and func == "count"):
            if not rows:
                raise errors.InvalidArgumentError("count_all counts rows: give it no column", op="aggregate")
            specs.append(arrow.AggSpec(-1, "count_all", func, pa.int64()))
            continue
        if rows:
            raise errors.InvalidArgumentError(f"{func} needs a column", op="aggregate")
        index = arrow.field_index(schema, column, "aggregate")
        out_type = arrow.agg_output_type(func, schema.field(index).type, column)
        specs.append(arrow.AggSpec(index, func, f"{column}_{func}", out_type))
    return arrow.aggregate_data(data, key_index, specs, runtime or current_runtime())


def partition(
    data: pa.Table | pa.RecordBatch,
    keys: str | Sequence[str],
    n: int,
    *,
    runtime: Runtime | None = None,
) -> list[pa.Table] | list[pa.RecordBatch]:
    """Split ``data`` into ``n`` parts by a hash of the key columns.

    Rows with equal keys land in the same part; within a part rows keep
    their order.  The hash is fixed (no per-run seed), so the same keys map to
    the same parts in every process and run.  Returns ``n`` tables (or record
    batches for a record batch).

    Raises:
        InvalidArgumentError: ``n`` < 1, or no keys.
        UnknownColumnError: a key column is missing.
    """
    data = _data(data, "partition")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise errors.InvalidArgumentError(f"n must be a positive integer, not {n!r}", op="partition")
    if n >= 2**31:
        raise errors.InvalidArgumentError(f"n must be below 2**31, not {n}", op="partition")
    key_names = _names(keys, "keys", "partition")
    if not key_names:
        raise errors.InvalidArgumentError("partition needs at least one key column", op="partition")
    key_index = [_groupable(data.schema, name, "partition") for name in key_names]
    return arrow.partition_data(data, key_index, n, runtime or current_runtime())
