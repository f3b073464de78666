"""What the Arrow kernels must compute, written with pyarrow.compute.

Expression trees (dpdpu.compute.ast, as the tests generate them: not yet
bound) become ``pc.Expression`` objects with Arrow's own semantics, and
results are brought to a canonical form so tables compare exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpdpu.compute.ast import And, Arith, Between, Column, Compare, Expr, IsIn, IsNull, Literal, Negate, Not, Or

_PC_COMPARE = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
_PC_ARITH = {"+": pc.add, "-": pc.subtract, "*": pc.multiply, "/": pc.divide}


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _int_range(t: pa.DataType) -> tuple[int, int]:
    bits = t.bit_width
    if pa.types.is_signed_integer(t):
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _scalar(lit: Literal, column_type: pa.DataType | None) -> pa.Scalar:
    """A literal as Arrow compares it with a column of ``column_type``."""
    t = lit.type
    vt = _value_type(column_type) if column_type is not None else None
    if lit.value is None:
        return pa.scalar(None, vt if vt is not None else lit.type)
    if vt is not None and pa.types.is_unsigned_integer(vt) and isinstance(lit.value, int):
        low, high = _int_range(vt)
        if low <= lit.value <= high:
            t = vt  # Arrow would cast a wide unsigned column to the literal's int64 and fail
    return pa.scalar(lit.value, t)


def to_pc(tree: Expr, schema: pa.Schema) -> pc.Expression:
    """The pyarrow expression for ``tree``."""

    def col_type(node: Expr) -> pa.DataType | None:
        return schema.field(node.name).type if isinstance(node, Column) else None

    def side(node: Expr, other: Expr) -> Any:
        if isinstance(node, Literal):
            return pc.scalar(_scalar(node, col_type(other)))
        return conv(node)

    def conv(node: Expr) -> pc.Expression:
        if isinstance(node, Column):
            return pc.field(node.name)
        if isinstance(node, Literal):
            return pc.scalar(_scalar(node, None))
        if isinstance(node, Compare):
            return _PC_COMPARE[node.op](side(node.left, node.right), side(node.right, node.left))
        if isinstance(node, Between):
            x = conv(node.operand)
            return (x >= side(node.low, node.operand)) & (x <= side(node.high, node.operand))
        if isinstance(node, IsIn):
            return conv(node.operand).isin(value_set(node))
        if isinstance(node, IsNull):
            x = conv(node.operand)
            return x.is_valid() if node.negated else x.is_null()
        if isinstance(node, And):
            return conv(node.left) & conv(node.right)
        if isinstance(node, Or):
            return conv(node.left) | conv(node.right)
        if isinstance(node, Not):
            return ~conv(node.operand)
        raise TypeError(node)

    def value_set(node: IsIn) -> pa.Array:
        t = _value_type(schema.field(node.operand.name).type)
        values = [v.value for v in node.values]
        if pa.types.is_integer(t):
            low, high = _int_range(t)
            kept = []
            for v in values:
                if isinstance(v, float):
                    if not v.is_integer():
                        continue
                    v = int(v)
                if v is None or low <= v <= high:
                    kept.append(v)
            return pa.array(kept, t)
        if pa.types.is_floating(t):
            return pa.array([None if v is None else float(v) for v in values], pa.float64())
        return pa.array(values, t)

    return conv(tree)


def arith_eval(tree: Expr, table: pa.Table) -> pa.ChunkedArray:
    """Arithmetic ``tree`` computed eagerly over ``table`` with the kernels' types:
    integer arithmetic in int64 (wrapping), anything with a float or ``/`` in
    float64, each operand cast straight to the type of the operation.

    Eager pyarrow.compute calls keep the order of the operations (an
    expression evaluated by Acero may fold and reorder constants).
    """
    schema = table.schema

    def kind(node: Expr) -> pa.DataType:
        if isinstance(node, Column):
            return pa.float64() if pa.types.is_floating(schema.field(node.name).type) else pa.int64()
        if isinstance(node, Literal):
            return pa.float64() if isinstance(node.value, float) else pa.int64()
        if isinstance(node, Negate):
            return kind(node.operand)
        assert isinstance(node, Arith)
        if node.op == "/" or pa.float64() in (kind(node.left), kind(node.right)):
            return pa.float64()
        return pa.int64()

    def conv(node: Expr, target: pa.DataType) -> Any:
        if isinstance(node, Column):
            return table[node.name].cast(target, safe=False)
        if isinstance(node, Literal):
            if target == pa.float64():
                return pa.scalar(float(node.value), pa.float64())
            return pa.scalar((node.value + 2**63) % 2**64 - 2**63, pa.int64())
        own = kind(node)
        if isinstance(node, Negate):
            result = pc.negate(conv(node.operand, own))
        else:
            assert isinstance(node, Arith)
            result = _PC_ARITH[node.op](conv(node.left, own), conv(node.right, own))
        return result if own == target else result.cast(target, safe=False)

    t = kind(tree)
    out = conv(tree, t)
    if isinstance(out, pa.Scalar):
        return pa.chunked_array([pa.array([out.as_py()] * table.num_rows, t)])
    return out


def canonical(table: pa.Table | pa.RecordBatch, *, nan: bool = False) -> pa.Table:
    """One chunk per column, dictionaries decoded, floats as their bit patterns.

    Bit patterns make NaN equal to itself and tell -0.0 from 0.0; with
    ``nan`` every NaN becomes the same NaN first (for computed values).
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    table = table.combine_chunks()
    columns = []
    for col in table.columns:
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        if pa.types.is_floating(arr.type):
            if nan:
                arr = pc.if_else(pc.is_nan(arr), pa.scalar(float("nan"), arr.type), arr)
            arr = arr.view(pa.int32() if arr.type.bit_width == 32 else pa.int64())
        columns.append(arr)
    return pa.Table.from_arrays(columns, names=table.column_names)


def decoded(table: pa.Table) -> pa.Table:
    """One chunk per column, dictionaries decoded."""
    table = table.combine_chunks()
    columns = []
    for col in table.columns:
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        columns.append(arr)
    return pa.Table.from_arrays(columns, names=table.column_names)


def sort_by(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows sorted by ``keys`` (dictionaries decoded; nulls last)."""
    table = decoded(table)
    if not keys or table.num_rows == 0:
        return table
    return table.sort_by([(k, "ascending") for k in keys])


def close(a: pa.Array, b: pa.Array) -> bool:
    """Float columns equal up to rounding (NaN equal to NaN, nulls in the same places)."""
    x = a.to_numpy(zero_copy_only=False).astype(np.float64)
    y = b.to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.array_equal(pc.is_null(a).to_numpy(zero_copy_only=False), pc.is_null(b).to_numpy(zero_copy_only=False)):
        return False
    return bool(np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True))
