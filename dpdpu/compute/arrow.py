"""The binding between Arrow data and the C kernels.

Arrow arrays become ``struct dpdpu_column`` views over their own buffers (no
copy), expression trees become kernel programs (``struct dpdpu_kinsn``), and
each morsel of rows becomes one ``struct dpdpu_kernel_job`` run as a task on
the runtime, so the engine's worker threads process morsels in parallel.  The
buffers the kernels allocate for their results are wrapped, again without a
copy, into Arrow arrays that free them when the last reference goes.

The public functions live in :mod:`dpdpu.compute.kernels`; this module is the
machinery underneath.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from .. import errors
from ..runtime.device import Task
from ..runtime.future import TaskFuture
from ..runtime.native import ffi, lib
from ..runtime.runtime import Runtime
from .ast import And, Arith, Between, Column, Compare, Expr, IsIn, IsNull, Literal, Negate, Not, Or

__all__ = [
    "AGG_FUNCS",
    "MORSEL_ROWS",
    "aggregate_data",
    "compile_predicate",
    "compile_projection",
    "filter_data",
    "partition_data",
    "project_data",
]

#: Rows per task: large enough that a task's fixed cost is noise, small
#: enough that a big table spreads over every worker of an engine.
MORSEL_ROWS = 1 << 20

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# enum dpdpu_col_type
_COL_NULL, _COL_BOOL = 0, 1
_COL_INTS = {
    (8, True): 2,
    (16, True): 3,
    (32, True): 4,
    (64, True): 5,
    (8, False): 6,
    (16, False): 7,
    (32, False): 8,
    (64, False): 9,
}
_COL_FLOAT32, _COL_FLOAT64, _COL_STRING, _COL_LARGE_STRING, _COL_FIXED, _COL_OTHER = 10, 11, 12, 13, 14, 15

# enum dpdpu_kcode, dpdpu_kkind, dpdpu_kflags
_K_COLUMN, _K_LITERAL, _K_CMP_LIT, _K_CMP, _K_CMP_STR, _K_IS_IN, _K_IS_NULL = 1, 2, 3, 4, 5, 6, 7
_K_AND, _K_OR, _K_NOT, _K_ADD, _K_SUB, _K_MUL, _K_DIV, _K_NEG, _K_TO_F64, _K_VALID_CONST = range(8, 18)
_BOOL, _I64, _F64 = 0, 1, 2
_KF_NULL, _KF_NEGATE, _KF_COLUMN, _KF_FLOAT, _KF_HAS_NULL, _KF_HAS_NAN = 1, 2, 4, 8, 16, 32
_CMP = {"==": 0, "!=": 1, "<": 2, "<=": 3, ">": 4, ">=": 5}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ARITH = {"+": _K_ADD, "-": _K_SUB, "*": _K_MUL, "/": _K_DIV}
_KIND_TYPES = {_BOOL: pa.bool_(), _I64: pa.int64(), _F64: pa.float64()}

# enum dpdpu_kjob_flags, dpdpu_agg_func
_JOB_PASSTHROUGH, _JOB_KEEP_SELECTION, _JOB_FINAL = 1, 2, 4
#: Aggregate functions by name, as codes of enum dpdpu_agg_func.
AGG_FUNCS = {"count": 0, "sum": 1, "min": 2, "max": 3, "mean": 4, "count_all": 5}

_OP_FILTER = int(lib.DPDPU_OP_FILTER)
_OP_PROJECT = int(lib.DPDPU_OP_PROJECT)
_OP_AGGREGATE = int(lib.DPDPU_OP_AGGREGATE)
_OP_PARTITION = int(lib.DPDPU_OP_PARTITION)

# Units of a temporal type per day: comparing two temporal columns scales the
# coarser one to the finer unit, as Arrow casts before comparing.
_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


# --------------------------------------------------------------------------- column types


@dataclass(frozen=True)
class ColType:
    """How the kernels see an Arrow type: layout code, kind of values, integer range."""

    code: int
    width: int = 0
    #: "bool", "int", "float", "string", "null", "fixed" or "other"
    kind: str = "other"
    low: int = 0
    high: int = 0
    #: units per day of a temporal type (0 otherwise)
    per_day: int = 0


def col_type(t: pa.DataType) -> ColType:
    """The layout of values of type ``t`` (of the dictionary's values for a dictionary)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return ColType(_COL_NULL, kind="null")
    if pa.types.is_boolean(t):
        return ColType(_COL_BOOL, kind="bool", low=0, high=1)
    if pa.types.is_integer(t):
        signed = pa.types.is_signed_integer(t)
        bits = t.bit_width
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        return ColType(_COL_INTS[bits, signed], bits // 8, "int", low, high)
    if pa.types.is_float32(t):
        return ColType(_COL_FLOAT32, 4, "float")
    if pa.types.is_float64(t):
        return ColType(_COL_FLOAT64, 8, "float")
    if pa.types.is_date32(t):
        return ColType(_COL_INTS[32, True], 4, "int", -(2**31), 2**31 - 1, per_day=1)
    if pa.types.is_date64(t):
        return ColType(_COL_INTS[64, True], 8, "int", _INT64_MIN, _INT64_MAX, per_day=86_400_000)
    if pa.types.is_timestamp(t):
        return ColType(_COL_INTS[64, True], 8, "int", _INT64_MIN, _INT64_MAX, per_day=_PER_DAY[t.unit])
    if pa.types.is_time32(t):
        return ColType(_COL_INTS[32, True], 4, "int", -(2**31), 2**31 - 1)
    if pa.types.is_time64(t) or pa.types.is_duration(t):
        return ColType(_COL_INTS[64, True], 8, "int", _INT64_MIN, _INT64_MAX)
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return ColType(_COL_STRING, kind="string")
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return ColType(_COL_LARGE_STRING, kind="string")
    if pa.types.is_fixed_size_binary(t) or pa.types.is_decimal(t) or pa.types.is_float16(t):
        return ColType(_COL_FIXED, t.byte_width if not pa.types.is_float16(t) else 2, "fixed")
    return ColType(_COL_OTHER)


def _is_temporal(t: pa.DataType) -> bool:
    t = t.value_type if pa.types.is_dictionary(t) else t
    return bool(pa.types.is_temporal(t))


_EMPTY = np.zeros(8, dtype=np.uint8)  # a valid address for buffers Arrow leaves out
_EMPTY_ADDR = _EMPTY.ctypes.data


def _addr(buf: pa.Buffer | None) -> int:
    return 0 if buf is None else int(buf.address)


def _fill_view(view: Any, arr: pa.Array, keep: list[Any]) -> None:
    t = arr.type
    ct = col_type(t)
    view.length = len(arr)
    view.offset = arr.offset
    if pa.types.is_dictionary(t):
        indices = arr.indices
        bufs = indices.buffers()
        ict = col_type(indices.type)
        view.type = ict.code
        view.null_count = indices.null_count
        view.validity = ffi.cast("const uint8_t *", _addr(bufs[0]) if view.null_count else 0)
        view.values = ffi.cast("const void *", _addr(bufs[1]) or _EMPTY_ADDR)
        dview = ffi.new("struct dpdpu_column *")
        _fill_view(dview, arr.dictionary, keep)
        keep.append(dview)
        view.dictionary = dview
        return
    view.type = ct.code
    view.width = ct.width if ct.code == _COL_FIXED else 0
    view.null_count = arr.null_count
    if ct.code == _COL_NULL:
        return
    bufs = arr.buffers()
    view.validity = ffi.cast("const uint8_t *", _addr(bufs[0]) if view.null_count else 0)
    if ct.code == _COL_OTHER:
        return
    if ct.kind == "string":
        view.offsets = ffi.cast("const void *", _addr(bufs[1]) or _EMPTY_ADDR)
        view.values = ffi.cast("const void *", _addr(bufs[2]) or _EMPTY_ADDR)
    else:
        view.values = ffi.cast("const void *", _addr(bufs[1]) or _EMPTY_ADDR)


class Views:
    """C views of some arrays (a batch's columns), alive as long as this object."""

    def __init__(self, arrays: Sequence[pa.Array]) -> None:
        self.arrays = list(arrays)
        self.c = ffi.new("struct dpdpu_column[]", max(1, len(self.arrays)))
        self.keep: list[Any] = [self.arrays]
        for i, arr in enumerate(self.arrays):
            _fill_view(self.c[i], arr, self.keep)

    def __len__(self) -> int:
        return len(self.arrays)


# --------------------------------------------------------------------------- errors


def unknown_column(name: str, schema: pa.Schema, op: str) -> errors.UnknownColumnError:
    """The error for a column name ``schema`` lacks (``.column`` names it)."""
    shown = ", ".join(repr(n) for n in schema.names[:30]) or "none"
    err = errors.UnknownColumnError(f"unknown column {name!r}; columns: {shown}", op=op)
    err.column = name
    return err


def type_error(message: str, op: str, column: str | None = None) -> errors.ExpressionTypeError:
    """An ExpressionTypeError naming ``column``."""
    err = errors.ExpressionTypeError(message, op=op)
    err.column = column
    return err


def field_index(schema: pa.Schema, name: Any, op: str) -> int:
    """Index of column ``name`` (UnknownColumnError if absent, ExpressionError if ambiguous)."""
    if not isinstance(name, str):
        raise errors.InvalidArgumentError(f"column names are strings, not {type(name).__name__}", op=op)
    found = schema.get_all_field_indices(name)
    if not found:
        raise unknown_column(name, schema, op)
    if len(found) > 1:
        err = errors.ExpressionError(f"column name {name!r} is ambiguous: the schema has it {len(found)} times", op=op)
        err.column = name
        raise err
    return int(found[0])


# --------------------------------------------------------------------------- programs


@dataclass
class Program:
    """A compiled kernel program and what its instructions point into."""

    insns: list[dict[str, Any]]
    n_regs: int
    #: registers of interest: the predicate (filter) or one per output (project)
    results: list[int]
    kinds: list[int]
    keep: list[Any] = field(default_factory=list)
    _c: Any = None

    @property
    def c(self) -> Any:
        """The ``struct dpdpu_kinsn[]`` (built once, shared by every job)."""
        if self._c is None:
            arr = ffi.new("struct dpdpu_kinsn[]", max(1, len(self.insns)))
            for i, insn in enumerate(self.insns):
                for key, value in insn.items():
                    setattr(arr[i], key, value)
            self._c = arr
        return self._c


def _ptr(address: int) -> Any:
    return ffi.cast("const void *", address)


class _Compiler:
    """Expression trees -> instructions over registers, for one schema."""

    def __init__(self, schema: pa.Schema, op: str) -> None:
        self.schema = schema
        self.op = op
        self.insns: list[dict[str, Any]] = []
        self.kinds: list[int] = []
        self.keep: list[Any] = []

    def emit(self, code: int, kind: int, **fields: Any) -> int:
        reg = len(self.kinds)
        self.kinds.append(kind)
        insn = {"code": code, "kind": kind, "dst": reg, "a": -1, "b": -1}
        insn.update(fields)
        self.insns.append(insn)
        return reg

    def program(self, results: list[int]) -> Program:
        return Program(self.insns, len(self.kinds), results, self.kinds, self.keep)

    # ----- columns and literals

    def column(self, node: Column) -> tuple[int, pa.DataType, ColType]:
        index = field_index(self.schema, node.name, self.op)
        t = self.schema.field(index).type
        return index, t, col_type(t)

    def fail(self, message: str, column: str | None = None) -> errors.ExpressionTypeError:
        return type_error(message, self.op, column)

    def literal_value(self, lit: Literal, like: pa.DataType | None = None) -> Any:
        """The literal as a Python value; temporal values as the storage integer of ``like``."""
        value = lit.value
        if isinstance(value, pa.Scalar):
            value = value.as_py()
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return value
        target = like if like is not None and _is_temporal(like) else lit.type
        if pa.types.is_dictionary(target):
            target = target.value_type
        try:
            scalar = pa.scalar(value, type=target)
            storage = pa.int32() if target.bit_width == 32 else pa.int64()
            return scalar.cast(storage).as_py()
        except (pa.ArrowException, TypeError, ValueError, AttributeError) as exc:
            raise self.fail(f"literal {value!r} of type {lit.type} is not supported here") from exc

    # ----- conditions

    def condition(self, node: Expr) -> int:
        """A BOOL register holding ``node``."""
        if isinstance(node, Compare):
            return self.compare(node.op, node.left, node.right)
        if isinstance(node, Between):
            low = self.compare(">=", node.operand, node.low)
            high = self.compare("<=", node.operand, node.high)
            return self.emit(_K_AND, _BOOL, a=low, b=high)
        if isinstance(node, IsIn):
            return self.isin(node)
        if isinstance(node, IsNull):
            flags = _KF_NEGATE if node.negated else 0
            if isinstance(node.operand, Column):
                index, _, _ = self.column(node.operand)
                return self.emit(_K_IS_NULL, _BOOL, a=index, flags=flags | _KF_COLUMN)
            reg, _ = self.value(node.operand)
            return self.emit(_K_IS_NULL, _BOOL, a=reg, flags=flags)
        if isinstance(node, (And, Or)):
            left, right = self.condition(node.left), self.condition(node.right)
            return self.emit(_K_AND if isinstance(node, And) else _K_OR, _BOOL, a=left, b=right)
        if isinstance(node, Not):
            return self.emit(_K_NOT, _BOOL, a=self.condition(node.operand))
        if isinstance(node, Column):
            index, t, ct = self.column(node)
            if ct.kind not in ("bool", "null"):
                raise self.fail(f"column {node.name!r} ({t}) is not boolean, so it is not a condition", node.name)
            return self.emit(_K_COLUMN, _BOOL, a=index)
        if isinstance(node, Literal):
            value = self.literal_value(node)
            if value is None:
                return self.emit(_K_LITERAL, _BOOL, flags=_KF_NULL)
            if not isinstance(value, bool):
                raise self.fail(f"literal {value!r} is not a condition")
            return self.emit(_K_LITERAL, _BOOL, i64=int(value))
        if isinstance(node, (Arith, Negate)):
            raise self.fail("arithmetic gives a number, not a condition")
        raise errors.InvalidArgumentError(f"not an expression node: {node!r}", op=self.op)

    def const(self, index: int, truth: bool) -> int:
        """``truth`` where column ``index`` is valid, null where it is null."""
        return self.emit(_K_VALID_CONST, _BOOL, a=index, i64=int(truth))

    def compare(self, op: str, left: Expr, right: Expr) -> int:
        if isinstance(left, Literal) and not isinstance(right, Literal):
            left, right, op = right, left, _FLIP[op]
        if isinstance(left, Column) and isinstance(right, Literal):
            return self.compare_literal(op, left, right)
        if isinstance(left, Column) and isinstance(right, Column):
            a, ta, ca = self.column(left)
            b, tb, cb = self.column(right)
            if ca.kind == "string" or cb.kind == "string":
                if ca.kind != cb.kind:
                    raise self.fail(f"column {left.name!r} ({ta}) cannot be compared with {right.name!r} ({tb})")
                return self.emit(_K_CMP_STR, _BOOL, a=a, b=b, cmp=_CMP[op])
            if a == b and ca.kind in ("int", "bool", "null"):
                # x op x: known for every non-null value (a float could be NaN)
                return self.const(a, op in ("==", "<=", ">="))
            if ca.per_day and cb.per_day and ca.per_day != cb.per_day:
                return self.compare_temporal(op, left, right, ca, cb)
        if isinstance(left, Literal) and isinstance(right, Literal):
            return self.fold(op, left, right)
        ra, ka = self.value(left)
        rb, kb = self.value(right)
        ra, rb, _ = self.unify(ra, ka, rb, kb)
        return self.emit(_K_CMP, _BOOL, a=ra, b=rb, cmp=_CMP[op])

    def compare_temporal(self, op: str, left: Column, right: Column, ca: ColType, cb: ColType) -> int:
        finest = max(ca.per_day, cb.per_day)
        regs = []
        for node, ct in ((left, ca), (right, cb)):
            reg = self.emit(_K_COLUMN, _I64, a=self.column(node)[0])
            if ct.per_day != finest:
                factor = self.emit(_K_LITERAL, _I64, i64=finest // ct.per_day)
                reg = self.emit(_K_MUL, _I64, a=reg, b=factor)
            regs.append(reg)
        return self.emit(_K_CMP, _BOOL, a=regs[0], b=regs[1], cmp=_CMP[op])

    def fold(self, op: str, left: Literal, right: Literal) -> int:
        a, b = self.literal_value(left), self.literal_value(right)
        if a is None or b is None:
            return self.emit(_K_LITERAL, _BOOL, flags=_KF_NULL)
        try:
            truth = {
                "==": a == b,
                "!=": a != b,
                "<": a < b,
                "<=": a <= b,
                ">": a > b,
                ">=": a >= b,
            }[op]
        except TypeError as exc:
            raise self.fail(f"{a!r} cannot be compared with {b!r}") from exc
        return self.emit(_K_LITERAL, _BOOL, i64=int(bool(truth)))

    def compare_literal(self, op: str, col: Column, lit: Literal) -> int:
        index, t, ct = self.column(col)
        value = self.literal_value(lit, t)
        if value is None or ct.kind == "null":
            return self.emit(_K_LITERAL, _BOOL, flags=_KF_NULL)
        cmp = _CMP[op]
        if ct.kind == "string":
            if isinstance(value, str):
                value = value.encode()
            if not isinstance(value, bytes):
                raise self.fail(f"column {col.name!r} ({t}) cannot be compared with {value!r}", col.name)
            data = ffi.from_buffer(value) if value else ffi.NULL
            self.keep.append((value, data))
            return self.emit(_K_CMP_LIT, _BOOL, a=index, cmp=cmp, ptr=data, len=len(value))
        if ct.kind not in ("int", "bool", "float") or isinstance(value, (str, bytes)):
            raise self.fail(f"column {col.name!r} ({t}) cannot be compared with {value!r}", col.name)
        if isinstance(value, bool):
            value = int(value)
        if ct.kind == "float" or isinstance(value, float):
            flags = _KF_FLOAT if ct.kind != "float" else 0
            return self.emit(_K_CMP_LIT, _BOOL, a=index, cmp=cmp, f64=float(value), flags=flags)
        if value > ct.high:
            return self.const(index, op in ("<", "<=", "!="))
        if value < ct.low:
            return self.const(index, op in (">", ">=", "!="))
        # the literal in the column's own domain (uint64 as its bits)
        return self.emit(_K_CMP_LIT, _BOOL, a=index, cmp=cmp, i64=value - 2**64 if value > _INT64_MAX else value)

    def isin(self, node: IsIn) -> int:
        if not isinstance(node.operand, Column):
            raise self.fail("the left side of 'in' must be a column")
        index, t, ct = self.column(node.operand)
        flags = 0
        values = []
        for lit in node.values:
            if not isinstance(lit, Literal):
                raise self.fail("'in' takes a list of literal values")
            value = self.literal_value(lit, t)
            if value is None:
                flags |= _KF_HAS_NULL
            else:
                values.append(value)
        fields: dict[str, Any] = {"a": index}
        if ct.kind == "string":
            raw = sorted({v.encode() if isinstance(v, str) else v for v in values if isinstance(v, (str, bytes))})
            if len(raw) != len(values) and any(not isinstance(v, (str, bytes)) for v in values):
                raise self.fail(f"column {node.operand.name!r} ({t}) holds strings", node.operand.name)
            offsets = np.zeros(len(raw) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(v) for v in raw])
            data = np.frombuffer(b"".join(raw) or b"\0", dtype=np.uint8)
            self.keep += [offsets, data]
            fields.update(ptr=_ptr(offsets.ctypes.data), aux=_ptr(data.ctypes.data), len=len(raw))
        elif ct.kind == "float":
            floats = []
            for v in values:
                if isinstance(v, (str, bytes)):
                    raise self.fail(f"column {node.operand.name!r} ({t}) holds numbers", node.operand.name)
                f = float(v)
                if ct.code == _COL_FLOAT32:
                    with np.errstate(over="ignore"):
                        f = float(np.float32(f))  # the set is cast to the column's type, as Arrow does
                if f != f:
                    flags |= _KF_HAS_NAN
                else:
                    floats.append(f)
            bits = np.unique(np.array(floats, dtype=np.float64).view(np.uint64))
            self.keep.append(bits)
            fields.update(ptr=_ptr(bits.ctypes.data), len=len(bits))
        elif ct.kind in ("int", "bool"):
            ints = set()
            for v in values:
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if isinstance(v, bool):
                    v = int(v)
                if not isinstance(v, int):
                    if isinstance(v, float):
                        continue  # a fraction never equals an integer
                    raise self.fail(f"column {node.operand.name!r} ({t}) holds numbers", node.operand.name)
                if ct.low <= v <= ct.high:
                    ints.add(v)
            dtype = np.uint64 if ct.high > _INT64_MAX else np.int64
            arr = np.array(sorted(ints), dtype=dtype)
            self.keep.append(arr)
            fields.update(ptr=_ptr(arr.ctypes.data), len=len(arr))
        elif ct.kind != "null":
            raise self.fail(f"column {node.operand.name!r} ({t}) cannot be tested with 'in'", node.operand.name)
        return self.emit(_K_IS_IN, _BOOL, flags=flags, **fields)

    # ----- values

    def static_kind(self, node: Expr) -> int:
        """The kind ``node`` computes in: I64 for integers, F64 for floats or ``/``, BOOL for conditions."""
        if isinstance(node, Column):
            return _F64 if self.column(node)[2].kind == "float" else _I64
        if isinstance(node, Literal):
            return _F64 if isinstance(self.literal_value(node), float) else _I64
        if isinstance(node, Arith):
            if node.op == "/" or _F64 in (self.static_kind(node.left), self.static_kind(node.right)):
                return _F64
            return _I64
        if isinstance(node, Negate):
            return self.static_kind(node.operand)
        return _BOOL

    def value(self, node: Expr, want: int | None = None) -> tuple[int, int]:
        """A register holding ``node`` and its kind (I64, F64, or BOOL for conditions).

        With ``want`` F64, integer columns and literals are read as doubles
        directly (a uint64 above the int64 range keeps its value); integer
        arithmetic still computes in int64 and converts its result.
        """
        if isinstance(node, Column):
            index, t, ct = self.column(node)
            if ct.kind == "float" or (want == _F64 and ct.kind in ("int", "bool", "null")):
                return self.emit(_K_COLUMN, _F64, a=index), _F64
            if ct.kind in ("int", "bool", "null"):
                return self.emit(_K_COLUMN, _I64, a=index), _I64
            raise self.fail(f"column {node.name!r} ({t}) is not numeric", node.name)
        if isinstance(node, Literal):
            value = self.literal_value(node)
            if value is None:
                kind = _F64 if want == _F64 else _I64
                return self.emit(_K_LITERAL, kind, flags=_KF_NULL), kind
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, float) or (want == _F64 and isinstance(value, int)):
                return self.emit(_K_LITERAL, _F64, f64=float(value)), _F64
            if isinstance(value, int):
                wrapped = (value - _INT64_MIN) % 2**64 + _INT64_MIN
                return self.emit(_K_LITERAL, _I64, i64=wrapped), _I64
            raise self.fail(f"literal {value!r} is not a number")
        if isinstance(node, Arith):
            kind = self.static_kind(node)
            ra, ka = self.value(node.left, kind)
            rb, kb = self.value(node.right, kind)
            if _BOOL in (ka, kb):
                raise self.fail("a condition cannot be used in arithmetic")
            ra, rb = (self.to_f64(ra, ka), self.to_f64(rb, kb)) if kind == _F64 else (ra, rb)
            return self.emit(_ARITH[node.op], kind, a=ra, b=rb), kind
        if isinstance(node, Negate):
            reg, kind = self.value(node.operand)
            if kind == _BOOL:
                raise self.fail("a condition cannot be used in arithmetic")
            return self.emit(_K_NEG, kind, a=reg), kind
        return self.condition(node), _BOOL

    def to_f64(self, reg: int, kind: int) -> int:
        return reg if kind == _F64 else self.emit(_K_TO_F64, _F64, a=reg)

    def unify(self, ra: int, ka: int, rb: int, kb: int) -> tuple[int, int, int]:
        if ka == kb:
            return ra, rb, ka
        return self.to_f64(ra, ka), self.to_f64(rb, kb), _F64


def _expr_module() -> Any:
    import importlib
    import importlib.util

    if importlib.util.find_spec("dpdpu.compute.expr") is None:
        return None
    return importlib.import_module("dpdpu.compute.expr")


_NODES = (Column, Literal, Compare, Between, IsIn, IsNull, And, Or, Not, Arith, Negate)


def bind(obj: Any, schema: pa.Schema, *, predicate: bool, op: str) -> Expr:
    """``obj`` (text, a ``pyarrow.compute.Expression`` or a tree) checked and normalized
    against ``schema`` by :mod:`dpdpu.compute.expr` when that module is present."""
    module = _expr_module()
    if module is not None:
        fn = module.bind_predicate if predicate else module.bind_arithmetic
        try:
            tree: Expr = fn(obj, schema)
        except errors.DpdpuError as exc:
            if exc.op is None:
                exc.op = op
            raise
        return tree
    if isinstance(obj, _NODES):
        return obj
    raise errors.InvalidArgumentError(
        f"expected an expression tree (dpdpu.compute.ast), got {type(obj).__name__}: "
        "text and pyarrow expressions need dpdpu.compute.expr",
        op=op,
    )


def compile_predicate(tree: Expr, schema: pa.Schema, op: str = "filter") -> Program:
    """The kernel program computing predicate ``tree``; ``results[0]`` holds it."""
    comp = _Compiler(schema, op)
    reg = comp.condition(tree)
    return comp.program([reg])


def compile_projection(trees: Sequence[Expr], schema: pa.Schema, op: str = "project") -> Program:
    """One program computing every tree; ``results[i]`` holds tree i (kinds in ``kinds``)."""
    comp = _Compiler(schema, op)
    results = [comp.value(tree)[0] for tree in trees]
    return comp.program(results)


# --------------------------------------------------------------------------- running jobs


def _morsels(rows: int) -> list[tuple[int, int]]:
    if rows <= 0:
        return []
    parts = -(-rows // MORSEL_ROWS)
    size = -(-rows // parts)
    return [(start, min(size, rows - start)) for start in range(0, rows, size)]


def _batches(data: pa.Table | pa.RecordBatch) -> list[pa.RecordBatch]:
    if isinstance(data, pa.RecordBatch):
        return [data]
    return [b for b in data.to_batches() if b.num_rows > 0]


def _nbytes(arrays: Sequence[pa.Array], share: float) -> int:
    total = 0
    for arr in arrays:
        try:
            total += arr.nbytes
        except (pa.ArrowException, NotImplementedError):  # pragma: no cover - exotic layouts
            total += arr.get_total_buffer_size()
    return int(total * share)


def _int32s(values: Sequence[int]) -> Any:
    return ffi.new("int32_t[]", list(values) or [0])


def _new_job(op: int, views: Views, start: int, rows: int) -> Any:
    job = ffi.new("struct dpdpu_kernel_job *")
    job.op = op
    job.n_columns = len(views)
    job.columns = views.c
    job.row_begin = start
    job.n_rows = rows
    return job


def _set_program(job: Any, prog: Program) -> None:
    job.n_insns = len(prog.insns)
    job.insns = prog.c
    job.n_regs = prog.n_regs


def _owned(address: Any, size: int) -> pa.Buffer | None:
    """An Arrow buffer over kernel-allocated memory, freed with its last reference."""
    if address == ffi.NULL:
        return None
    owner = ffi.gc(ffi.cast("void *", address), lib.dpdpu_kernel_free)
    return pa.foreign_buffer(int(ffi.cast("uintptr_t", address)), size, base=owner)


def _take_outputs(out: Any, n: int) -> list[tuple[Any, pa.Buffer | None, pa.Buffer | None, pa.Buffer | None]]:
    """Take ownership of every buffer of out[0..n) before anything else can fail."""
    taken = []
    for i in range(n):
        o = out[i]
        taken.append(
            (
                o,
                _owned(o.validity, o.validity_bytes),
                _owned(o.values, o.values_bytes),
                _owned(o.offsets, o.offsets_bytes),
            )
        )
    return taken


def _to_array(
    taken: tuple[Any, pa.Buffer | None, pa.Buffer | None, pa.Buffer | None],
    t: pa.DataType,
    dictionary: pa.Array | None = None,
) -> pa.Array:
    o, validity, values, offsets = taken
    n, nulls = int(o.length), int(o.null_count)
    if o.type == _COL_NULL:
        return pa.nulls(n, t)
    if pa.types.is_dictionary(t):
        return pa.DictionaryArray.from_buffers(t, n, [validity, values], dictionary, null_count=nulls)
    if o.type in (_COL_STRING, _COL_LARGE_STRING):
        return pa.Array.from_buffers(t, n, [validity, offsets, values], null_count=nulls)
    return pa.Array.from_buffers(t, n, [validity, values], null_count=nulls)


def _selection(job: Any, count: int) -> pa.Array:
    buf = _owned(job.selection, count * 4)
    return pa.Array.from_buffers(pa.uint32(), count, [None, buf], null_count=0)


def _run(
    rt: Runtime,
    op: str,
    job: Any,
    keep: list[Any],
    convert: Callable[[int, memoryview | None], Any],
    *,
    nbytes: int,
    out_hint: int,
) -> TaskFuture:
    task = Task(
        op=op, param=int(ffi.cast("intptr_t", job)), name=op, nbytes=nbytes, out_hint=out_hint,
        convert=convert, keep=[job, *keep],
    )  # fmt: skip
    return rt.run(task)


def _results(futures: Sequence[tuple[TaskFuture, Any]]) -> list[Any]:
    """Every future's value; a failed job's error carries the kernel's reason."""
    values = []
    failure: BaseException | None = None
    for future, job in futures:
        try:
            values.append(future.result())
        except errors.DpdpuError as exc:
            message = ffi.string(job.message).decode(errors="replace")
            if message and failure is None:
                err = type(exc)(
                    f"{exc.detail}: {message}", device=exc.device, engine=exc.engine, op=exc.op, code=exc.code
                )
                failure = err
            elif failure is None:
                failure = exc
    if failure is not None:
        raise failure
    return values


def _table_of(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(batches, schema=schema)


def _one_batch(batches: list[pa.RecordBatch], schema: pa.Schema, like: pa.RecordBatch | None = None) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    if not batches:
        if like is not None:
            return like.slice(0, 0)
        return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
    columns = [pa.concat_arrays([b.column(i) for b in batches]) for i in range(len(schema))]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


# --------------------------------------------------------------------------- filter


def _gather_plan(schema: pa.Schema) -> tuple[list[int], list[int]]:
    """Columns the kernels gather, and the rest (taken by Arrow with the selection)."""
    gather: list[int] = []
    other: list[int] = []
    for i, f in enumerate(schema):
        t = f.type
        ct = col_type(t.index_type if pa.types.is_dictionary(t) else t)
        if pa.types.is_dictionary(t) and col_type(t.value_type).code == _COL_OTHER:
            ct = ColType(_COL_OTHER)
        (other if ct.code == _COL_OTHER else gather).append(i)
    return gather, other


def _gathered_batch(
    batch: pa.RecordBatch,
    start: int,
    rows: int,
    taken: list[Any],
    gather: list[int],
    other: list[int],
    selection: pa.Array | None,
) -> pa.RecordBatch:
    schema = batch.schema
    columns: list[Any] = [None] * batch.num_columns
    for k, i in enumerate(gather):
        t = schema.field(i).type
        col = batch.column(i)
        columns[i] = _to_array(taken[k], t, col.dictionary if pa.types.is_dictionary(t) else None)
    for i in other:
        assert selection is not None
        columns[i] = batch.column(i).slice(start, rows).take(selection)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


@dataclass
class _Morsel:
    """One job over rows [start, start + rows) of a batch, and its outputs."""

    batch: pa.RecordBatch
    start: int
    rows: int
    job: Any
    out: Any
    offsets: Any = None


def _morsel(op: int, views: Views, batch: pa.RecordBatch, start: int, rows: int, n_out: int) -> _Morsel:
    job = _new_job(op, views, start, rows)
    out = ffi.new("struct dpdpu_kernel_out[]", max(1, n_out))
    job.out = out
    job.n_out = n_out
    return _Morsel(batch, start, rows, job, out)


def _filtered(m: _Morsel, gather: list[int], other: list[int], result: int, _: memoryview | None) -> pa.RecordBatch:
    if m.job.passthrough:
        return m.batch.slice(m.start, m.rows)
    taken = _take_outputs(m.out, len(gather))
    selection = _selection(m.job, result) if other else None
    return _gathered_batch(m.batch, m.start, m.rows, taken, gather, other, selection)


def filter_data(data: pa.Table | pa.RecordBatch, tree: Expr, rt: Runtime) -> pa.Table | pa.RecordBatch:
    """Rows of ``data`` where bound predicate ``tree`` is true, run on ``rt``."""
    schema = data.schema
    prog = compile_predicate(tree, schema)
    gather, other = _gather_plan(schema)
    gather_c = _int32s(gather)
    futures: list[tuple[TaskFuture, Any]] = []
    for batch in _batches(data):
        views = Views(batch.columns)
        for start, rows in _morsels(batch.num_rows):
            m = _morsel(_OP_FILTER, views, batch, start, rows, len(gather))
            _set_program(m.job, prog)
            m.job.flags = _JOB_PASSTHROUGH | (_JOB_KEEP_SELECTION if other else 0)
            m.job.result = prog.results[0]
            m.job.n_gather = len(gather)
            m.job.gather = gather_c
            nbytes = _nbytes(batch.columns, rows / batch.num_rows)
            convert = functools.partial(_filtered, m, gather, other)
            keep = [views, prog, gather_c, m.out]
            futures.append((_run(rt, "filter", m.job, keep, convert, nbytes=nbytes, out_hint=nbytes // 2), m.job))
    parts = [b for b in _results(futures) if b.num_rows > 0]
    if isinstance(data, pa.RecordBatch):
        return _one_batch(parts, schema, like=data)
    return _table_of(parts, schema) if parts else data.slice(0, 0)


# --------------------------------------------------------------------------- project


def _projected(
    m: _Morsel,
    passthrough: dict[int, int],
    computed: list[int],
    types: list[pa.DataType],
    schema: pa.Schema,
    result: int,
    _: memoryview | None,
) -> pa.RecordBatch:
    taken = _take_outputs(m.out, len(computed))
    columns: list[Any] = [None] * len(schema)
    for k, i in passthrough.items():
        columns[k] = m.batch.column(i).slice(m.start, m.rows)
    for j, k in enumerate(computed):
        columns[k] = _to_array(taken[j], types[j])
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def project_data(
    data: pa.Table | pa.RecordBatch, outputs: list[tuple[str, Expr]], rt: Runtime
) -> pa.Table | pa.RecordBatch:
    """Columns ``outputs`` (name, bound tree) of ``data``; bare columns pass through."""
    schema = data.schema
    passthrough: dict[int, int] = {}
    computed: list[int] = []
    for k, (_, tree) in enumerate(outputs):
        if isinstance(tree, Column):
            passthrough[k] = field_index(schema, tree.name, "project")
        else:
            computed.append(k)
    prog = compile_projection([outputs[k][1] for k in computed], schema)
    types = [_KIND_TYPES[prog.kinds[r]] for r in prog.results]
    fields: list[Any] = [None] * len(outputs)
    for k, i in passthrough.items():
        fields[k] = schema.field(i).with_name(outputs[k][0])
    for j, k in enumerate(computed):
        fields[k] = pa.field(outputs[k][0], types[j])
    out_schema = pa.schema(fields)

    if not computed:
        columns = [data.column(passthrough[k]) for k in range(len(outputs))]
        if isinstance(data, pa.RecordBatch):
            return pa.RecordBatch.from_arrays(columns, schema=out_schema)
        return pa.Table.from_arrays(columns, schema=out_schema)

    results_c = _int32s(prog.results)
    futures: list[tuple[TaskFuture, Any]] = []
    for batch in _batches(data):
        views = Views(batch.columns)
        for start, rows in _morsels(batch.num_rows):
            m = _morsel(_OP_PROJECT, views, batch, start, rows, len(computed))
            _set_program(m.job, prog)
            m.job.n_project = len(computed)
            m.job.project = results_c
            nbytes = _nbytes(batch.columns, rows / batch.num_rows)
            convert = functools.partial(_projected, m, passthrough, computed, types, out_schema)
            keep = [views, prog, results_c, m.out]
            hint = rows * 8 * len(computed)
            futures.append((_run(rt, "project", m.job, keep, convert, nbytes=nbytes, out_hint=hint), m.job))
    parts = _results(futures)
    if isinstance(data, pa.RecordBatch):
        return _one_batch(parts, out_schema)
    if not parts:
        return out_schema.empty_table()
    return _table_of(parts, out_schema)


# --------------------------------------------------------------------------- aggregate


@dataclass(frozen=True)
class AggSpec:
    """One aggregate: input column index (-1: rows), function name, output name and type."""

    column: int
    func: str
    name: str
    type: pa.DataType


def agg_output_type(func: str, t: pa.DataType | None, column: str, op: str = "aggregate") -> pa.DataType:
    """Result type of ``func`` over a column of type ``t`` (as pyarrow's group_by gives it)."""
    if func in ("count", "count_all"):
        return pa.int64()
    assert t is not None
    ct = col_type(t)
    temporal = _is_temporal(t)
    if pa.types.is_dictionary(t) or ct.kind in ("null", "fixed", "other"):
        raise type_error(f"{func} does not take column {column!r} ({t})", op, column)
    if func in ("sum", "mean"):
        if ct.kind == "string" or temporal:
            raise type_error(f"{func} does not take column {column!r} ({t})", op, column)
        if func == "mean" or ct.kind == "float":
            return pa.float64()
        if ct.kind == "bool" or not pa.types.is_signed_integer(t):
            return pa.uint64()
        return pa.int64()
    return t


def _partial_state(job: Any, result: int, _: memoryview | None) -> Any:
    """The partial state a job handed back, freed with its last reference."""
    return ffi.gc(job.state, lib.dpdpu_kernel_state_free)


def _grouped(
    out: Any, key_types: list[pa.DataType], names: list[str], aggs: list[AggSpec], result: int, _: memoryview | None
) -> pa.Table:
    taken = _take_outputs(out, len(names))
    columns = []
    for i, t in enumerate(key_types):
        if pa.types.is_dictionary(t):
            # The kernel wrote the key values; encode them as the key column was.
            columns.append(_to_array(taken[i], t.value_type).dictionary_encode().cast(t))
        else:
            columns.append(_to_array(taken[i], t))
    for j, a in enumerate(aggs):
        columns.append(_to_array(taken[len(key_types) + j], a.type))
    return pa.Table.from_arrays(columns, names=names)


def aggregate_data(data: pa.Table | pa.RecordBatch, keys: list[int], aggs: list[AggSpec], rt: Runtime) -> pa.Table:
    """Hash group-by of ``data`` on columns ``keys`` computing ``aggs``; groups in order of first appearance.

    Every morsel but a lone one is aggregated into a partial state in
    parallel; a final job merges the states in row order and writes the result.
    """
    schema = data.schema
    used = list(dict.fromkeys([*keys, *(a.column for a in aggs if a.column >= 0)]))
    slot = {c: i for i, c in enumerate(used)}
    keys_c = _int32s([slot[k] for k in keys])
    aggs_c = ffi.new("struct dpdpu_kernel_agg[]", max(1, len(aggs)))
    for i, a in enumerate(aggs):
        aggs_c[i].func = AGG_FUNCS[a.func]
        aggs_c[i].column = slot[a.column] if a.column >= 0 else -1

    def new_job(views: Views, start: int, rows: int) -> Any:
        job = _new_job(_OP_AGGREGATE, views, start, rows)
        job.n_keys, job.keys = len(keys), keys_c
        job.n_aggs, job.aggs = len(aggs), aggs_c
        return job

    batches = _batches(data)
    inputs = [Views([b.column(c) for c in used]) for b in batches]
    morsels = [
        (v, b, start, rows) for v, b in zip(inputs, batches, strict=True) for start, rows in _morsels(b.num_rows)
    ]
    partials: list[tuple[TaskFuture, Any]] = []
    if len(morsels) > 1:
        for views, batch, start, rows in morsels:
            job = new_job(views, start, rows)
            nbytes = _nbytes(views.arrays, rows / batch.num_rows)
            convert = functools.partial(_partial_state, job)
            partials.append(
                (_run(rt, "aggregate", job, [views, keys_c, aggs_c], convert, nbytes=nbytes, out_hint=0), job)
            )
    states = _results(partials)

    if len(morsels) == 1:
        views, batch, start, rows = morsels[0]
        job = new_job(views, start, rows)
        nbytes = _nbytes(views.arrays, rows / batch.num_rows)
    else:
        # Column views only give the final job the types (there may be no rows at all).
        views = inputs[0] if inputs else Views([pa.array([], schema.field(c).type) for c in used])
        job = new_job(views, 0, 0)
        nbytes = 0
    job.flags = _JOB_FINAL
    states_c = ffi.new("void *[]", states or [ffi.NULL])
    job.partials, job.n_partials = states_c, len(states)
    n_out = len(keys) + len(aggs)
    out = ffi.new("struct dpdpu_kernel_out[]", max(1, n_out))
    job.out, job.n_out = out, n_out
    names = [schema.field(k).name for k in keys] + [a.name for a in aggs]
    convert = functools.partial(_grouped, out, [schema.field(k).type for k in keys], names, aggs)
    keep = [views, inputs, states, states_c, keys_c, aggs_c, out]
    final = _run(rt, "aggregate", job, keep, convert, nbytes=nbytes, out_hint=n_out * 8)
    table: pa.Table = _results([(final, job)])[0]
    return table


# --------------------------------------------------------------------------- partition


def _partitioned(
    m: _Morsel, gather: list[int], other: list[int], n: int, result: int, _: memoryview | None
) -> list[pa.RecordBatch]:
    taken = _take_outputs(m.out, len(gather))
    selection = _selection(m.job, m.rows) if other else None
    whole = _gathered_batch(m.batch, m.start, m.rows, taken, gather, other, selection)
    bounds = [int(m.offsets[p]) for p in range(n + 1)]
    return [whole.slice(bounds[p], bounds[p + 1] - bounds[p]) for p in range(n)]


def partition_data(
    data: pa.Table | pa.RecordBatch, keys: list[int], n: int, rt: Runtime
) -> list[pa.Table] | list[pa.RecordBatch]:
    """``data`` split into ``n`` parts by a hash of columns ``keys``; order kept within a part."""
    schema = data.schema
    gather, other = _gather_plan(schema)
    gather_c = _int32s(gather)
    keys_c = _int32s(keys)
    futures: list[tuple[TaskFuture, Any]] = []
    for batch in _batches(data):
        views = Views(batch.columns)
        for start, rows in _morsels(batch.num_rows):
            m = _morsel(_OP_PARTITION, views, batch, start, rows, len(gather))
            m.job.flags = _JOB_KEEP_SELECTION if other else 0
            m.job.n_gather = len(gather)
            m.job.gather = gather_c
            m.job.n_keys = len(keys)
            m.job.keys = keys_c
            m.job.n_parts = n
            m.offsets = ffi.new("int64_t[]", n + 1)
            m.job.part_offsets = m.offsets
            nbytes = _nbytes(batch.columns, rows / batch.num_rows)
            convert = functools.partial(_partitioned, m, gather, other, n)
            keep = [views, gather_c, keys_c, m.offsets, m.out]
            futures.append((_run(rt, "partition", m.job, keep, convert, nbytes=nbytes, out_hint=nbytes), m.job))
    pieces = _results(futures)
    per_part = [[p[i] for p in pieces if p[i].num_rows > 0] for i in range(n)]
    if isinstance(data, pa.RecordBatch):
        return [_one_batch(b, schema, like=data) for b in per_part]
    return [_table_of(b, schema) if b else data.slice(0, 0) for b in per_part]
