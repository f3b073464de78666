"""The expression tree shared by predicates, projections and the C kernels.

Trees come from the string language or from a ``pyarrow.compute.Expression``
(:mod:`dpdpu.compute.expr`) and are executed by the Arrow kernels
(:mod:`dpdpu.compute.arrow`).  Nodes are immutable; ``pos`` is the 0-based
offset of the node in the source text (-1 when the tree did not come from
text), which errors report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from typing import Literal as TypingLiteral

import pyarrow as pa

__all__ = [
    "And",
    "Arith",
    "Between",
    "Column",
    "Compare",
    "Expr",
    "IsIn",
    "IsNull",
    "Literal",
    "Negate",
    "Not",
    "Or",
]

CompareOp = TypingLiteral["==", "!=", "<", "<=", ">", ">="]
ArithOp = TypingLiteral["+", "-", "*", "/"]


@dataclass(frozen=True)
class Column:
    """A reference to a column by name."""

    name: str
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Literal:
    """A constant.  ``type`` is its Arrow type (``pa.null()`` for a null)."""

    value: Any
    type: pa.DataType
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Compare:
    """``left op right``; null if either side is null (as Arrow compares)."""

    op: CompareOp
    left: Expr
    right: Expr
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Between:
    """``low <= operand <= high`` (both ends inclusive)."""

    operand: Expr
    low: Expr
    high: Expr
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class IsIn:
    """``operand in (values...)``; never null: a null operand matches a null value."""

    operand: Expr
    values: tuple[Literal, ...]
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class IsNull:
    """``operand is null`` (``negated``: ``is not null``, i.e. is_valid); never null."""

    operand: Expr
    negated: bool = False
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class And:
    """Kleene ``and``: false wins over null."""

    left: Expr
    right: Expr
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Or:
    """Kleene ``or``: true wins over null."""

    left: Expr
    right: Expr
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Not:
    """Logical negation; null stays null."""

    operand: Expr
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Arith:
    """``left op right`` on numbers: integers give int64 (wrapping), any float
    gives float64, ``/`` always gives float64; null if either side is null."""

    op: ArithOp
    left: Expr
    right: Expr
    pos: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Negate:
    """Unary minus."""

    operand: Expr
    pos: int = field(default=-1, compare=False)


Expr = Column | Literal | Compare | Between | IsIn | IsNull | And | Or | Not | Arith | Negate
