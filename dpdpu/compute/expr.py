"""Predicate and projection expressions: parsing, pyarrow translation and binding.

An expression is a tree of :mod:`dpdpu.compute.ast` nodes.  It comes from the
string language below (:func:`parse`) or from a ``pyarrow.compute.Expression``
(:func:`from_arrow`), is checked against a schema (:func:`bind_predicate`,
:func:`bind_arithmetic`) and is then run by the Arrow kernels, or converted
back to pyarrow (:func:`to_arrow`) as a fallback.

The string language
-------------------

Lowest to highest precedence::

    a or b                     Kleene or
    a and b                    Kleene and
    not a                      negation
    x == y   x = y             comparisons: == (or =), != (or <>), <, <=, >, >=;
    x != y   x <> y              they do not chain: ``a < b < c`` is an error
    x between lo and hi        inclusive on both ends
    x [not] in (v1, v2, ...)   literal values only; () is allowed
    x is [not] null
    x + y   x - y
    x * y   x / y              ``/`` always divides as float64
    -x                         unary minus
    ( ... )

* Column names are ``[A-Za-z_][A-Za-z0-9_]*`` or double-quoted for anything
  else, with ``""`` for a quote inside: ``"unit price"``, ``"a ""quoted"" name"``.
* Keywords are case-insensitive: ``and or not in between is null true false``.
  A column named like a keyword must be quoted: ``"in"``.
* Literals: integers ``42``, ``-5``, ``1_000`` (int64, or uint64 above the
  int64 range); floats ``1.5``, ``1e6``, ``.5`` (float64); strings in single
  quotes with ``''`` for a quote inside: ``'O''Brien'``, ``'Zürich'``;
  ``true``, ``false``, ``null``.  A minus sign directly before a number is
  part of the literal (``-5`` is one literal, ``-(5)`` negates a literal).
* Timestamps and dates are written as ISO-8601 strings and compared with a
  timestamp or date column: ``ts >= '2024-01-01'``,
  ``ts < '2024-01-01T10:00:00.250+02:00'``.  A string without an offset is a
  wall-clock time in the column's time zone (UTC when it has none).
* ``x not in (...)`` is ``not (x in (...))`` and ``x not between a and b`` is
  ``not (x between a and b)``.

Every node's ``pos`` is the 0-based offset of the first character of its text:
for ``a + b`` that of ``a``, for ``(a + b) * c`` that of ``(``, for ``-5``
that of the minus sign.

Examples:

>>> parse("price * qty > 100 and name in ('a', 'b')")  # doctest: +ELLIPSIS
And(left=Compare(op='>', left=Arith(op='*', ...
>>> render(parse("NOT (a=1 OR b<>2)"))
'not (a == 1 or b != 2)'
>>> import pyarrow as pa
>>> bind_predicate("5 < price", pa.schema([("price", pa.int64())]))  # doctest: +ELLIPSIS
Compare(op='>', left=Column(name='price', pos=4), right=Literal(value=5, type=DataType(int64), pos=0), pos=0)

Binding
-------

:func:`bind_predicate` and :func:`bind_arithmetic` resolve columns, check types
and normalize the tree into the forms the kernels take: comparisons have a
column on the left and a column or a literal on the right (or fold to a
boolean literal); integer literals are int64 (uint64 above its range);
literals compared with float columns are float64; timestamp and date literals
are integers in the column's unit with the column's type; a boolean column used
as a condition becomes ``flag == true``.  Comparisons whose answer is known for
every non-null value (an integer literal outside the column type's range, a
timestamp finer than the column's unit) become ``x == x`` (true unless null)
or ``x != x`` (false unless null), so literals always fit the column.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import math
import operator
import re
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from ..errors import (
    CorruptDataError,
    ExpressionError,
    ExpressionSyntaxError,
    ExpressionTypeError,
    InvalidArgumentError,
    UnknownColumnError,
    clip,
    shown,
)
from .ast import And, Arith, Between, Column, Compare, Expr, IsIn, IsNull, Literal, Negate, Not, Or
from .ipc_reader import IpcColumn, IpcFile, read_ipc_file

__all__ = [
    "MAX_DEPTH",
    "MAX_IN_VALUES",
    "MAX_NESTING",
    "bind_arithmetic",
    "bind_predicate",
    "columns",
    "depth",
    "from_arrow",
    "from_serialized",
    "parse",
    "render",
    "result_type",
    "to_arrow",
]

#: The deepest an expression tree may be; in a chain such as ``a or b or c`` every operator is a
#: level.  Binding, rendering and compiling walk trees recursively: this keeps them well inside
#: Python's recursion limit, whoever calls them.
MAX_DEPTH = 256
#: The most parentheses, ``not``\ s and minus signs the string language nests inside each other.
MAX_NESTING = 64
#: The most values an ``in`` list may hold (each costs a few microseconds to check and bind).
MAX_IN_VALUES = 100_000

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

_KEYWORDS = frozenset({"and", "or", "not", "in", "between", "is", "null", "true", "false"})
_COMPARE_OPS = ("==", "!=", "<", "<=", ">", ">=")
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_COMPARE_FN: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_PREDICATE_NODES = (Compare, Between, IsIn, IsNull, And, Or, Not)
_NUMERIC = frozenset({"int", "float"})
_TEMPORAL = frozenset({"timestamp", "date"})
_KIND_NAMES = {
    "int": "an integer",
    "float": "a float",
    "bool": "a boolean",
    "string": "a string",
    "timestamp": "a timestamp",
    "date": "a date",
    "null": "null",
}


# --------------------------------------------------------------------------- errors


_QUOTE_LIMIT = 80  # characters of the expression an error message quotes
_DETAIL_LIMIT = 240  # characters of a detail or a hint
_CARET_WINDOW = 40  # characters either side of the caret


def _error(
    cls: type[ExpressionError],
    detail: str,
    expression: str | None,
    position: int | None = None,
    column: str | None = None,
    *,
    hint: str | None = None,
    caret: bool = False,
) -> ExpressionError:
    pos = position if position is not None and position >= 0 else None
    # Messages quote the expression and the names in it, which can be arbitrarily long: every
    # part is cut to a bounded length, so a message stays short whatever the input.
    message = clip(detail, _DETAIL_LIMIT)
    if expression is not None:
        quoted = f'"{expression}"' if len(expression) <= _QUOTE_LIMIT else f'"{expression[:_QUOTE_LIMIT]}"...'
        message = f"{quoted}: {message}"
    if pos is not None:
        message += f" (at {pos})"
    if hint:
        message += f"; {clip(hint, _DETAIL_LIMIT)}"
    if caret and pos is not None and expression is not None:
        message += "\n" + _caret(expression, pos)
    err = cls(message)
    err.expression = expression
    err.position = pos
    err.column = column
    return err


def _caret(text: str, pos: int) -> str:
    """The line of ``text`` around ``pos`` (at most ``_CARET_WINDOW`` characters either side), a caret under ``pos``."""
    start = max(text.rfind("\n", 0, pos) + 1, pos - _CARET_WINDOW)
    end = text.find("\n", pos, pos + _CARET_WINDOW)
    end = min(len(text), pos + _CARET_WINDOW) if end < 0 else end
    before = "..." if start > 0 and text[start - 1] != "\n" else ""
    after = "..." if end < len(text) and text[end] != "\n" else ""
    return f"    {before}{text[start:end]}{after}\n    {' ' * (len(before) + pos - start)}^"


def _name(name: str) -> str:
    """A column name as the string language spells it."""
    if _IDENT_RE.fullmatch(name) and name.lower() not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- lexer

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_SPACE_RE = re.compile(r"\s*")
_WORD_RE = re.compile(r"[\w.]*")
# Digit runs are matched as plain character runs (a repeated group would cost the regex engine
# memory per character of a long number); an underscore must then stand between two digits.
_DIGITS = r"[0-9][0-9_]*"
_MISPLACED_UNDERSCORE = re.compile(r"_(?![0-9])")
_NUMBER_RE = re.compile(rf"(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?", re.ASCII)
_ASCII_DIGITS = "0123456789"
_TWO_CHAR_OPS = {"==": "==", "!=": "!=", "<>": "!=", "<=": "<=", ">=": ">="}
_ONE_CHAR_OPS = {"=": "==", "<": "<", ">": ">", "+": "+", "-": "-", "*": "*", "/": "/", "(": "(", ")": ")", ",": ","}


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "str", "ident", "kw", "op" or "eof"
    value: Any
    pos: int
    text: str

    def describe(self) -> str:
        return "end of input" if self.kind == "eof" else shown(self.text, 40)


def _tokens(text: str) -> Iterator[_Token]:
    """The tokens of ``text``, made as the parser asks for them, then end-of-input tokens forever.

    Made on demand, so that a malformed text fails at its first error without
    the rest of it having been turned into tokens.
    """
    i, n = 0, len(text)
    while True:
        i = _SPACE_RE.match(text, i).end()  # type: ignore[union-attr]
        if i >= n:
            break
        c = text[i]
        if c == "'" or c == '"':
            content, end = _quoted(text, i)
            yield _Token("str" if c == "'" else "ident", content, i, text[i:end])
            i = end
        elif c in _ASCII_DIGITS or (c == "." and i + 1 < n and text[i + 1] in _ASCII_DIGITS):
            m = _NUMBER_RE.match(text, i)
            assert m is not None  # the first character always matches
            end = m.end()
            if (end < n and (text[end].isalnum() or text[end] in "_.")) or _MISPLACED_UNDERSCORE.search(m.group()):
                bad = _WORD_RE.match(text, i).group()  # type: ignore[union-attr]
                raise _error(ExpressionSyntaxError, f"invalid number {shown(bad, 40)}", text, i, caret=True)
            raw = m.group()
            digits = raw.replace("_", "")
            value: int | float
            if any(ch in digits for ch in ".eE"):
                value = float(digits)
            elif len(digits.lstrip("0")) > 20:  # longer than 2**64: out of range (and int() refuses huge texts)
                raise _error(ExpressionSyntaxError, "integer literal out of the 64-bit range", text, i, caret=True)
            else:
                value = int(digits)
            yield _Token("num", value, i, raw)
            i = end
        elif c.isalpha() or c == "_":
            m = _IDENT_RE.match(text, i)
            if m is None:
                raise _error(ExpressionSyntaxError, f"unexpected character {c!r}", text, i, caret=True)
            word = m.group()
            if word.lower() in _KEYWORDS:
                yield _Token("kw", word.lower(), i, word)
            else:
                yield _Token("ident", word, i, word)
            i = m.end()
        elif text[i : i + 2] in _TWO_CHAR_OPS:
            yield _Token("op", _TWO_CHAR_OPS[text[i : i + 2]], i, text[i : i + 2])
            i += 2
        elif c in _ONE_CHAR_OPS:
            yield _Token("op", _ONE_CHAR_OPS[c], i, c)
            i += 1
        else:
            raise _error(ExpressionSyntaxError, f"unexpected character {c!r}", text, i, caret=True)
    eof = _Token("eof", None, n, "")
    while True:
        yield eof


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The content of the quoted string or name at ``start`` and the offset after it."""
    quote = text[start]
    parts: list[str] = []
    i = start + 1
    while True:
        j = text.find(quote, i)
        if j < 0:
            what = "string literal" if quote == "'" else "quoted column name"
            raise _error(ExpressionSyntaxError, f"unterminated {what}", text, start, caret=True)
        parts.append(text[i:j])
        if text.startswith(quote, j + 1):
            parts.append(quote)
            i = j + 2
        else:
            return "".join(parts), j + 1


# --------------------------------------------------------------------------- parser


def _int_literal(value: int, pos: int, text: str) -> Literal:
    if _INT64_MIN <= value <= _INT64_MAX:
        return Literal(value, pa.int64(), pos)
    if 0 <= value <= _UINT64_MAX:
        return Literal(value, pa.uint64(), pos)
    raise _error(ExpressionSyntaxError, "integer literal out of the 64-bit range", text, pos, caret=True)


def _number_literal(value: int | float, pos: int, text: str) -> Literal:
    if isinstance(value, float):
        return Literal(value, pa.float64(), pos)
    return _int_literal(value, pos, text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.stream = _tokens(text)
        self.ahead: list[_Token] = []  # tokens made but not consumed yet (at most two)
        self.nesting = 0

    def nest(self, pos: int) -> None:
        """Enter one more level of parentheses, ``not`` or minus (each costs the parser stack frames)."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            self.fail(
                f"expression is nested too deeply: more than {MAX_NESTING} parentheses, 'not's or minus signs "
                "inside each other",
                pos,
            )

    def peek(self, ahead: int = 0) -> _Token:
        while len(self.ahead) <= ahead:
            self.ahead.append(next(self.stream))
        return self.ahead[ahead]

    def advance(self) -> _Token:
        tok = self.peek()
        if tok.kind != "eof":
            del self.ahead[0]
        return tok

    def is_kw(self, word: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "kw" and tok.value == word

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.value in ops

    def fail(self, detail: str, pos: int) -> NoReturn:
        raise _error(ExpressionSyntaxError, detail, self.text, pos, caret=True)

    def expect_op(self, op: str, context: str) -> _Token:
        if not self.is_op(op):
            tok = self.peek()
            self.fail(f"expected {op!r} {context}, found {tok.describe()}", tok.pos)
        return self.advance()

    def parse(self) -> Expr:
        expr = self.or_expr()
        tok = self.peek()
        if tok.kind != "eof":
            self.fail(f"unexpected {tok.describe()} after the expression", tok.pos)
        return expr

    def or_expr(self) -> Expr:
        start = self.peek().pos
        left = self.and_expr()
        while self.is_kw("or"):
            self.advance()
            left = Or(left, self.and_expr(), start)
        return left

    def and_expr(self) -> Expr:
        start = self.peek().pos
        left = self.not_expr()
        while self.is_kw("and"):
            self.advance()
            left = And(left, self.not_expr(), start)
        return left

    def not_expr(self) -> Expr:
        if self.is_kw("not"):
            tok = self.advance()
            self.nest(tok.pos)
            node = Not(self.not_expr(), tok.pos)
            self.nesting -= 1
            return node
        return self.predicate()

    def starts_predicate(self) -> bool:
        return (
            self.is_op(*_COMPARE_OPS)
            or self.is_kw("between")
            or self.is_kw("in")
            or self.is_kw("is")
            or (self.is_kw("not") and (self.is_kw("in", 1) or self.is_kw("between", 1)))
        )

    def predicate(self) -> Expr:
        start = self.peek().pos
        left = self.sum_expr()
        if not self.starts_predicate():
            if self.is_kw("not"):
                tok = self.peek(1)
                self.fail(f"expected 'in' or 'between' after 'not', found {tok.describe()}", tok.pos)
            return left
        node: Expr
        if self.is_op(*_COMPARE_OPS):
            op = self.advance().value
            node = Compare(op, left, self.sum_expr(), start)
        else:
            negated = self.is_kw("not")
            if negated:
                self.advance()
            if self.is_kw("between"):
                self.advance()
                low = self.sum_expr()
                if not self.is_kw("and"):
                    tok = self.peek()
                    self.fail(f"expected 'and' in 'between ... and ...', found {tok.describe()}", tok.pos)
                self.advance()
                node = Between(left, low, self.sum_expr(), start)
            elif self.is_kw("in"):
                self.advance()
                node = IsIn(left, self.in_list(), start)
            else:
                self.advance()  # "is"
                is_not = self.is_kw("not")
                if is_not:
                    self.advance()
                if not self.is_kw("null"):
                    tok = self.peek()
                    after = "'is not'" if is_not else "'is'"
                    self.fail(f"expected 'null' after {after}, found {tok.describe()}", tok.pos)
                self.advance()
                node = IsNull(left, is_not, start)
            if negated:
                node = Not(node, start)
        if self.starts_predicate():
            self.fail("comparisons do not chain; use parentheses and 'and'", self.peek().pos)
        return node

    def in_list(self) -> tuple[Literal, ...]:
        self.expect_op("(", "after 'in'")
        values: list[Literal] = []
        if self.is_op(")"):
            self.advance()
            return ()
        while True:
            if len(values) == MAX_IN_VALUES:
                self.fail(f"an 'in' list holds more than {MAX_IN_VALUES:,} values", self.peek().pos)
            values.append(self.in_value())
            if self.is_op(")"):
                self.advance()
                return tuple(values)
            self.expect_op(",", "or ')' in the 'in' list")

    def in_value(self) -> Literal:
        tok = self.peek()
        if tok.kind == "op" and tok.value == "-" and self.peek(1).kind == "num":
            self.advance()
            return _number_literal(-self.advance().value, tok.pos, self.text)
        if tok.kind in ("num", "str") or (tok.kind == "kw" and tok.value in ("true", "false", "null")):
            literal = self.primary()
            assert isinstance(literal, Literal)
            return literal
        self.fail(f"'in' takes a list of literal values, found {tok.describe()}", tok.pos)

    def sum_expr(self) -> Expr:
        start = self.peek().pos
        left = self.term()
        while self.is_op("+", "-"):
            op = self.advance().value
            left = Arith(op, left, self.term(), start)
        return left

    def term(self) -> Expr:
        start = self.peek().pos
        left = self.unary()
        while self.is_op("*", "/"):
            op = self.advance().value
            left = Arith(op, left, self.unary(), start)
        return left

    def unary(self) -> Expr:
        if self.is_op("-"):
            tok = self.advance()
            if self.peek().kind == "num":
                return _number_literal(-self.advance().value, tok.pos, self.text)
            self.nest(tok.pos)
            node = Negate(self.unary(), tok.pos)
            self.nesting -= 1
            return node
        return self.primary()

    def primary(self) -> Expr:
        tok = self.advance()
        if tok.kind == "num":
            return _number_literal(tok.value, tok.pos, self.text)
        if tok.kind == "str":
            return Literal(tok.value, pa.string(), tok.pos)
        if tok.kind == "ident":
            return Column(tok.value, tok.pos)
        if tok.kind == "kw" and tok.value in ("true", "false"):
            return Literal(tok.value == "true", pa.bool_(), tok.pos)
        if tok.kind == "kw" and tok.value == "null":
            return Literal(None, pa.null(), tok.pos)
        if tok.kind == "op" and tok.value == "(":
            self.nest(tok.pos)
            inner = self.or_expr()
            if not self.is_op(")"):
                found = self.peek()
                self.fail(f"expected ')' to close the '(' at {tok.pos}, found {found.describe()}", found.pos)
            self.advance()
            self.nesting -= 1
            return inner
        self.fail(f"expected an expression, found {tok.describe()}", tok.pos)


def parse(text: str) -> Expr:
    """Parse the string language into an expression tree (see the module docs).

    Raises:
        ExpressionSyntaxError: the text does not parse; ``position`` is the
            0-based offset of the offending character.
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(f"expected an expression string, got {type(text).__name__}")
    try:
        tree = _Parser(text).parse()
    except RecursionError:  # only when the caller's own stack is nearly exhausted
        raise _error(ExpressionSyntaxError, "expression is nested too deeply", text) from None
    _check_depth(tree, text, ExpressionSyntaxError)
    return tree


def depth(expr: Expr) -> int:
    """The number of nodes on the longest path from the root of ``expr`` to a leaf."""
    deepest = 0
    stack = [(expr, 1)]
    while stack:
        e, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in _children(e))
    return deepest


def _check_depth(tree: Expr, text: str | None, cls: type[ExpressionError] = ExpressionError) -> None:
    if depth(tree) > MAX_DEPTH:
        raise _error(
            cls,
            f"expression is nested too deeply: more than {MAX_DEPTH} levels (each operator of a chain such as "
            "'a or b or c' is one; 'x in (...)' lists alternatives without nesting)",
            text,
        )


# --------------------------------------------------------------------------- render

_PREC_OR, _PREC_AND, _PREC_NOT, _PREC_PRED, _PREC_SUM, _PREC_TERM, _PREC_UNARY, _PREC_ATOM = range(1, 9)


def _precedence(e: Expr) -> int:
    if isinstance(e, Or):
        return _PREC_OR
    if isinstance(e, And):
        return _PREC_AND
    if isinstance(e, Not):
        return _PREC_NOT
    if isinstance(e, (Compare, Between, IsIn, IsNull)):
        return _PREC_PRED
    if isinstance(e, Arith):
        return _PREC_SUM if e.op in "+-" else _PREC_TERM
    if isinstance(e, Negate):
        return _PREC_UNARY
    return _PREC_ATOM


def render(expr: Expr) -> str:
    """The string-language text of ``expr``; ``parse(render(e)) == e`` for trees
    whose literals have the types :func:`parse` gives them (int64, uint64,
    float64 other than NaN, string, bool, null).  Timestamp and date literals
    render as ISO-8601 strings, which bind back to the same value."""
    return _render(expr, 0)


def _render(e: Expr, min_prec: int) -> str:
    text = _render_bare(e)
    return f"({text})" if _precedence(e) < min_prec else text


def _render_bare(e: Expr) -> str:
    if isinstance(e, Column):
        return _name(e.name)
    if isinstance(e, Literal):
        return _render_literal(e)
    if isinstance(e, Or):
        return f"{_render(e.left, _PREC_OR)} or {_render(e.right, _PREC_AND)}"
    if isinstance(e, And):
        return f"{_render(e.left, _PREC_AND)} and {_render(e.right, _PREC_NOT)}"
    if isinstance(e, Not):
        inner = e.operand
        if isinstance(inner, IsIn):
            return f"{_render(inner.operand, _PREC_SUM)} not in ({_render_values(inner.values)})"
        if isinstance(inner, Between):
            return (
                f"{_render(inner.operand, _PREC_SUM)} not between "
                f"{_render(inner.low, _PREC_SUM)} and {_render(inner.high, _PREC_SUM)}"
            )
        return f"not {_render(inner, _PREC_NOT)}"
    if isinstance(e, Compare):
        return f"{_render(e.left, _PREC_SUM)} {e.op} {_render(e.right, _PREC_SUM)}"
    if isinstance(e, Between):
        return f"{_render(e.operand, _PREC_SUM)} between {_render(e.low, _PREC_SUM)} and {_render(e.high, _PREC_SUM)}"
    if isinstance(e, IsIn):
        return f"{_render(e.operand, _PREC_SUM)} in ({_render_values(e.values)})"
    if isinstance(e, IsNull):
        return f"{_render(e.operand, _PREC_SUM)} is {'not null' if e.negated else 'null'}"
    if isinstance(e, Arith):
        prec = _precedence(e)
        return f"{_render(e.left, prec)} {e.op} {_render(e.right, prec + 1)}"
    if isinstance(e, Negate):
        # "-5" would read back as the literal -5, not as a negation
        if isinstance(e.operand, Literal):
            return f"-({_render_literal(e.operand)})"
        return f"-{_render(e.operand, _PREC_UNARY)}"
    raise InvalidArgumentError(f"not an expression node: {e!r}")


def _render_values(values: tuple[Literal, ...]) -> str:
    return ", ".join(_render_literal(v) for v in values)


def _render_literal(lit: Literal) -> str:
    value, type_ = lit.value, _value_type(lit.type)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if pa.types.is_floating(type_) or isinstance(value, float):
        f = float(value)
        if math.isnan(f):
            return "nan"  # no literal syntax for NaN; rendered for messages only
        if math.isinf(f):
            return "1e999" if f > 0 else "-1e999"
        return repr(f)
    if isinstance(value, int) and not _is_temporal_type(type_):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    if _is_temporal_type(type_):
        try:
            return _quote(_format_instant(_instant_of_typed(value, type_), type_))
        except (OverflowError, ValueError, TypeError):
            pass
    return _quote(str(value))


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# --------------------------------------------------------------------------- temporal values

_EPOCH = _dt.datetime(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_UNITS_PER_SECOND = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}
_ISO_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?)?",
    re.ASCII,
)
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})", re.ASCII)


def _is_temporal_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(t) or pa.types.is_date32(t) or pa.types.is_date64(t))


def _units_per_second(t: pa.DataType) -> Fraction:
    if pa.types.is_timestamp(t):
        return Fraction(_UNITS_PER_SECOND[t.unit])
    if pa.types.is_date32(t):
        return Fraction(1, 86400)
    return Fraction(1000)  # date64: milliseconds


def _instant_of_typed(value: Any, t: pa.DataType) -> Fraction:
    """Seconds since the epoch of an Arrow timestamp/date value (its stored instant)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Fraction(value) / _units_per_second(t)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        delta = value.replace(tzinfo=None) - _EPOCH
        # pandas.Timestamp (returned by as_py() when pandas is installed) carries nanoseconds
        nanos = int(getattr(value, "nanosecond", 0))
        return Fraction(delta.days * 86400 + delta.seconds) + Fraction(delta.microseconds * 1000 + nanos, 10**9)
    if isinstance(value, _dt.date):
        return Fraction((value.toordinal() - _EPOCH_ORDINAL) * 86400)
    raise TypeError(f"not a {t} value: {value!r}")


def _zone_offset(tz: str, wall: _dt.datetime) -> int:
    """Seconds east of UTC of time zone ``tz`` at wall-clock time ``wall``."""
    if tz.upper() in ("UTC", "Z", "ETC/UTC", "GMT"):
        return 0
    m = _OFFSET_RE.fullmatch(tz)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60)
    offset = wall.replace(tzinfo=zoneinfo.ZoneInfo(tz)).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


def _instant_of_string(s: str, zone: str | None) -> Fraction | None:
    """Seconds since the epoch of an ISO-8601 string; naive times are wall-clock in
    ``zone`` (UTC when None).  None when the string is not a valid date/time."""
    m = _ISO_RE.fullmatch(s.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, offset = m.groups()
    try:
        wall = _dt.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        return None
    seconds = Fraction((wall - _EPOCH).days * 86400 + (wall - _EPOCH).seconds)
    if frac:
        seconds += Fraction(int(frac), 10 ** len(frac))
    if offset:
        if offset in "Zz":
            shift = 0
        else:
            om = _OFFSET_RE.fullmatch(offset if len(offset) > 3 else offset + "00")
            if om is None or int(om.group(2)) > 23 or int(om.group(3)) > 59:
                return None
            shift = (-1 if om.group(1) == "-" else 1) * (int(om.group(2)) * 3600 + int(om.group(3)) * 60)
    elif zone is not None:
        try:
            shift = _zone_offset(zone, wall)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise LookupError(zone) from None
    else:
        shift = 0
    return seconds - shift


def _format_instant(seconds: Fraction, t: pa.DataType) -> str:
    whole = math.floor(seconds)
    frac = seconds - whole
    moment = _EPOCH + _dt.timedelta(seconds=whole)
    date_text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    if not pa.types.is_timestamp(t) and frac == 0 and moment.time() == _dt.time():
        return date_text
    text = f"{date_text}T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    if frac:
        text += "." + f"{round(frac * 10**9):09d}".rstrip("0")
    if pa.types.is_timestamp(t) and t.tz is not None:
        text += "Z"
    return text


# --------------------------------------------------------------------------- types


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _kind(t: pa.DataType) -> str | None:
    """The kind of values of a column type, or None when expressions do not support it."""
    t = _value_type(t)
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_float32(t) or pa.types.is_float64(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_date32(t) or pa.types.is_date64(t):
        return "date"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return None


def _int_range(t: pa.DataType) -> tuple[int, int]:
    bits = t.bit_width
    if pa.types.is_signed_integer(t):
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _int_type_for(value: int) -> pa.DataType:
    return pa.int64() if value <= _INT64_MAX else pa.uint64()


def _wrap64(value: int) -> int:
    return (value - _INT64_MIN) % 2**64 + _INT64_MIN


# Outcome of comparing a column with a literal that no value of the column can equal:
# the comparison is then the same for every non-null value.
_NEVER = "never"
_ALWAYS = "always"


def _out_of_range(op: str, above: bool) -> str:
    if op == "==":
        return _NEVER
    if op == "!=":
        return _ALWAYS
    if above:
        return _ALWAYS if op in ("<", "<=") else _NEVER
    return _ALWAYS if op in (">", ">=") else _NEVER


# --------------------------------------------------------------------------- binding


def _coerce(obj: object) -> tuple[Expr, str]:
    if isinstance(obj, str):
        return parse(obj), obj
    if isinstance(obj, pc.Expression):
        return from_arrow(obj), str(obj)
    if isinstance(obj, (Column, Literal, Arith, Negate, *_PREDICATE_NODES)):
        _check_depth(obj, None)
        return obj, render(obj)
    raise InvalidArgumentError(
        f"expected an expression string, a pyarrow.compute.Expression or an expression tree, got {type(obj).__name__}"
    )


class _Binder:
    def __init__(self, schema: pa.Schema, text: str) -> None:
        if not isinstance(schema, pa.Schema):
            raise InvalidArgumentError(f"expected a pyarrow.Schema, got {type(schema).__name__}")
        self.schema = schema
        self.text = text

    def fail(
        self,
        detail: str,
        pos: int,
        column: str | None = None,
        cls: type[ExpressionError] = ExpressionTypeError,
        hint: str | None = None,
    ) -> NoReturn:
        raise _error(cls, detail, self.text, pos, column, hint=hint)

    # ----- columns and literals

    def column_type(self, col: Column) -> pa.DataType:
        found = self.schema.get_all_field_indices(col.name)
        if not found:
            names = self.schema.names
            # matching a long name costs time quadratic in its length: only short ones get suggestions
            close = difflib.get_close_matches(col.name, names, n=1) if len(col.name) <= 100 else []
            shown = ", ".join(_name(n) for n in names[:30]) + (", ..." if len(names) > 30 else "")
            hint = f"did you mean {_name(close[0])}? " if close else ""
            hint += f"available columns: {shown}" if names else "the schema has no columns"
            self.fail(f"unknown column {_name(col.name)}", col.pos, col.name, UnknownColumnError, hint)
        if len(found) > 1:
            self.fail(
                f"column name {_name(col.name)} is ambiguous: the schema has it {len(found)} times",
                col.pos,
                col.name,
                ExpressionError,
            )
        return self.schema.field(found[0]).type

    def typed_column(self, col: Column) -> tuple[pa.DataType, str]:
        t = self.column_type(col)
        kind = _kind(t)
        if kind is None:
            self.fail(f"column {_name(col.name)} has type {t}, which expressions do not support", col.pos, col.name)
        return t, kind

    def literal_kind(self, lit: Literal) -> str:
        """The kind of a literal, checking that its value fits its type."""
        value, t = lit.value, lit.type
        if not isinstance(t, pa.DataType):
            self.fail(f"literal {value!r} has no Arrow type", lit.pos)
        if value is None:
            return "null"
        t = _value_type(t)
        kind = _kind(t)
        if pa.types.is_float16(t):
            kind = "float"
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "string": isinstance(value, str),
            "timestamp": isinstance(value, (int, _dt.datetime)) and not isinstance(value, bool),
            "date": isinstance(value, (int, _dt.date)) and not isinstance(value, bool),
        }
        if kind is None:
            self.fail(f"literal {_render_literal(lit)} has type {lit.type}, which expressions do not support", lit.pos)
        if not ok[kind]:
            self.fail(f"literal value {value!r} does not match its type {lit.type}", lit.pos)
        if kind == "int" and not _INT64_MIN <= value <= _UINT64_MAX:
            self.fail(f"integer literal {value} is out of the 64-bit range", lit.pos)
        return kind

    def instant(self, lit: Literal, kind: str, zone: str | None, what: str, column: str | None) -> Fraction:
        if kind != "string":
            return _instant_of_typed(lit.value, _value_type(lit.type))
        try:
            seconds = _instant_of_string(lit.value, zone)
        except LookupError:
            self.fail(
                f"cannot resolve time zone {zone!r} of {what}; give the time with an explicit offset",
                lit.pos,
                column,
            )
        if seconds is None:
            self.fail(f"{_quote(lit.value)} is not a valid ISO-8601 date or timestamp for {what}", lit.pos, column)
        return seconds

    # ----- comparisons

    def operand(self, e: Expr) -> Column | Literal:
        if isinstance(e, Column):
            self.typed_column(e)
            return Column(e.name, e.pos)
        if isinstance(e, Literal):
            self.literal_kind(e)
            return e
        if isinstance(e, (Arith, Negate)):
            bound = self.arith(e)
            if isinstance(bound, Literal):
                return bound
            self.fail(
                "comparisons take a column or a literal on each side; "
                "arithmetic on columns is not supported in predicates",
                e.pos,
                next(iter(columns(e)), None),
            )
        self.fail("a comparison operand must be a column or a literal, not a condition", e.pos)

    def normalize(self, col: Column, lit: Literal, op: str) -> Literal | str:
        """``lit`` made comparable with column ``col`` under ``op``, or _NEVER/_ALWAYS."""
        t, kind = self.typed_column(col)
        lkind = self.literal_kind(lit)
        vt = _value_type(t)
        if lkind == "null":
            return Literal(None, pa.null(), lit.pos)
        if kind == "int" and lkind == "int":
            low, high = _int_range(vt)
            if lit.value < low or lit.value > high:
                return _out_of_range(op, lit.value > high)
            return Literal(lit.value, _int_type_for(lit.value), lit.pos)
        if kind in _NUMERIC and lkind in _NUMERIC:
            return Literal(float(lit.value), pa.float64(), lit.pos)
        if kind == lkind and kind in ("bool", "string"):
            return Literal(lit.value, pa.string() if kind == "string" else pa.bool_(), lit.pos)
        if kind in _TEMPORAL and lkind in (*_TEMPORAL, "string"):
            zone = vt.tz if pa.types.is_timestamp(vt) else None
            what = f"column {_name(col.name)} ({t})"
            units = self.instant(lit, lkind, zone, what, col.name) * _units_per_second(vt)
            if units.denominator != 1:
                if op in ("==", "!="):
                    return _out_of_range(op, True)
                units = Fraction(math.ceil(units) if op in ("<", ">=") else math.floor(units))
            low, high = (-(2**31), 2**31 - 1) if pa.types.is_date32(vt) else (_INT64_MIN, _INT64_MAX)
            if units < low or units > high:
                return _out_of_range(op, units > high)
            return Literal(int(units), vt, lit.pos)
        self.fail(
            f"column {_name(col.name)} ({t}) cannot be compared with {_KIND_NAMES[lkind]}",
            lit.pos,
            col.name,
        )

    def fold_compare(self, op: str, left: Literal, right: Literal, pos: int) -> Literal:
        lk, rk = self.literal_kind(left), self.literal_kind(right)
        if "null" in (lk, rk):
            return Literal(None, pa.bool_(), pos)
        a: Any
        b: Any
        if (lk in _NUMERIC and rk in _NUMERIC) or (lk == rk and lk in ("bool", "string")):
            a, b = left.value, right.value
        elif {lk, rk} <= {*_TEMPORAL, "string"} and {lk, rk} & _TEMPORAL:
            a = self.instant(left, lk, None, "a comparison with a timestamp", None)
            b = self.instant(right, rk, None, "a comparison with a timestamp", None)
        else:
            self.fail(f"{_KIND_NAMES[lk]} cannot be compared with {_KIND_NAMES[rk]}", right.pos)
        return Literal(_COMPARE_FN[op](a, b), pa.bool_(), pos)

    def column_result(self, op: str, col: Column, result: Literal | str, pos: int) -> Expr:
        if result == _NEVER:
            return Compare("!=", col, col, pos)
        if result == _ALWAYS:
            return Compare("==", col, col, pos)
        assert isinstance(result, Literal)
        return Compare(op, col, result, pos)  # type: ignore[arg-type]

    def compare(self, e: Compare) -> Expr:
        left, right, op = self.operand(e.left), self.operand(e.right), e.op
        if isinstance(left, Literal) and isinstance(right, Literal):
            return self.fold_compare(op, left, right, e.pos)
        if isinstance(left, Literal):
            left, right, op = right, left, _FLIP[op]  # type: ignore[assignment]
        assert isinstance(left, Column)
        if isinstance(right, Column):
            self.check_comparable(left, right)
            return Compare(op, left, right, e.pos)
        return self.column_result(op, left, self.normalize(left, right, op), e.pos)

    def check_comparable(self, left: Column, right: Column) -> None:
        lt, lk = self.typed_column(left)
        rt, rk = self.typed_column(right)
        ok = (lk in _NUMERIC and rk in _NUMERIC) or lk == rk
        if ok and lk == "timestamp" and (_value_type(lt).tz is None) != (_value_type(rt).tz is None):
            ok = False  # Arrow refuses to compare zoned with naive timestamps
        if not ok:
            self.fail(
                f"column {_name(left.name)} ({lt}) cannot be compared with column {_name(right.name)} ({rt})",
                right.pos,
                right.name,
            )

    def between(self, e: Between) -> Expr:
        x = self.operand(e.operand)
        low, high = self.operand(e.low), self.operand(e.high)
        for bound in (low, high):
            if not isinstance(bound, Literal):
                self.fail("the bounds of 'between' must be literals", bound.pos, bound.name)
        assert isinstance(low, Literal) and isinstance(high, Literal)
        if isinstance(x, Literal):
            a = self.fold_compare(">=", x, low, e.pos).value
            b = self.fold_compare("<=", x, high, e.pos).value
            both = False if False in (a, b) else (None if None in (a, b) else True)
            return Literal(both, pa.bool_(), e.pos)
        lo = self.normalize(x, low, ">=")
        hi = self.normalize(x, high, "<=")
        if _NEVER in (lo, hi):
            return Compare("!=", x, x, e.pos)
        if lo == _ALWAYS:
            return self.column_result("<=", x, hi, e.pos)
        if hi == _ALWAYS:
            return self.column_result(">=", x, lo, e.pos)
        assert isinstance(lo, Literal) and isinstance(hi, Literal)
        return Between(x, lo, hi, e.pos)

    def isin(self, e: IsIn) -> Expr:
        if not isinstance(e.operand, Column):
            self.fail("the left side of 'in' must be a column", e.operand.pos)
        col = Column(e.operand.name, e.operand.pos)
        _, kind = self.typed_column(col)
        values: list[Literal] = []
        # repr() keeps 0.0 and -0.0 apart (Arrow's value sets do) and NaN with NaN
        keys: set[tuple[str, str]] = set()
        for value in e.values:
            if not isinstance(value, Literal):
                self.fail("'in' takes a list of literal values", getattr(value, "pos", -1))
            lkind = self.literal_kind(value)
            if kind == "int" and lkind == "float":
                # keep the set integral: a fractional value can never match
                f = float(value.value)
                if not f.is_integer() or not _INT64_MIN <= f <= _UINT64_MAX:
                    continue
                value = Literal(int(f), pa.int64(), value.pos)
            result = self.normalize(col, value, "==")
            if isinstance(result, Literal) and (str(result.type), repr(result.value)) not in keys:
                keys.add((str(result.type), repr(result.value)))
                values.append(result)
        return IsIn(col, tuple(values), e.pos)

    # ----- conditions

    def predicate(self, e: Expr) -> Expr:
        if isinstance(e, Column):
            t, kind = self.typed_column(e)
            if kind != "bool":
                self.fail(f"column {_name(e.name)} ({t}) is not boolean, so it is not a condition", e.pos, e.name)
            col = Column(e.name, e.pos)
            return Compare("==", col, Literal(True, pa.bool_(), e.pos), e.pos)
        if isinstance(e, Literal):
            kind = self.literal_kind(e)
            if kind not in ("bool", "null"):
                self.fail(f"{_KIND_NAMES[kind]} literal is not a condition", e.pos)
            return Literal(e.value, pa.bool_(), e.pos)
        if isinstance(e, Compare):
            return self.compare(e)
        if isinstance(e, Between):
            return self.between(e)
        if isinstance(e, IsIn):
            return self.isin(e)
        if isinstance(e, IsNull):
            if not isinstance(e.operand, Column):
                self.fail("the left side of 'is null' must be a column", e.operand.pos)
            self.typed_column(e.operand)
            return IsNull(Column(e.operand.name, e.operand.pos), e.negated, e.pos)
        if isinstance(e, And):
            return And(self.predicate(e.left), self.predicate(e.right), e.pos)
        if isinstance(e, Or):
            return Or(self.predicate(e.left), self.predicate(e.right), e.pos)
        if isinstance(e, Not):
            return Not(self.predicate(e.operand), e.pos)
        if isinstance(e, (Arith, Negate)):
            bound = self.arith(e)
            result = "float64" if self.num_kind(bound) == "float" else "int64"
            self.fail(f"the expression gives {result}, not a boolean", e.pos, next(iter(columns(e)), None))
        raise InvalidArgumentError(f"not an expression node: {e!r}")

    # ----- arithmetic

    def num_kind(self, e: Expr) -> str:
        if isinstance(e, Column):
            return self.typed_column(e)[1]
        if isinstance(e, Literal):
            return "int" if pa.types.is_integer(e.type) else "float"
        if isinstance(e, Arith):
            if e.op == "/" or "float" in (self.num_kind(e.left), self.num_kind(e.right)):
                return "float"
            return "int"
        assert isinstance(e, Negate)
        return self.num_kind(e.operand)

    def arith(self, e: Expr, top: bool = False) -> Expr:
        if isinstance(e, Column):
            t = self.column_type(e)
            if top:
                return Column(e.name, e.pos)
            if _kind(t) not in _NUMERIC:
                self.fail(f"column {_name(e.name)} ({t}) cannot be used in arithmetic", e.pos, e.name)
            return Column(e.name, e.pos)
        if isinstance(e, Literal):
            kind = self.literal_kind(e)
            if kind == "int":
                return Literal(_wrap64(e.value), pa.int64(), e.pos)
            if kind == "float":
                return Literal(float(e.value), pa.float64(), e.pos)
            self.fail(f"{_KIND_NAMES[kind]} cannot be used in arithmetic", e.pos)
        if isinstance(e, Negate):
            operand = self.arith(e.operand)
            if isinstance(operand, Literal):
                value = operand.value
                return Literal(_wrap64(-value) if isinstance(value, int) else -value, operand.type, e.pos)
            return Negate(operand, e.pos)
        if isinstance(e, Arith):
            left, right = self.arith(e.left), self.arith(e.right)
            if isinstance(left, Literal) and isinstance(right, Literal):
                return _fold_arith(e.op, left, right, e.pos)
            if e.op == "/" or "float" in (self.num_kind(left), self.num_kind(right)):
                left, right = _as_float(left), _as_float(right)
            return Arith(e.op, left, right, e.pos)
        if isinstance(e, _PREDICATE_NODES):
            if top:
                self.fail("a projection must be a column or arithmetic, not a condition", e.pos)
            self.fail("a condition cannot be used in arithmetic", e.pos)
        raise InvalidArgumentError(f"not an expression node: {e!r}")

    # ----- result types

    def type_of(self, e: Expr) -> pa.DataType:
        if isinstance(e, Column):
            return self.column_type(e)
        if isinstance(e, Literal):
            return e.type
        if isinstance(e, _PREDICATE_NODES):
            return pa.bool_()
        if isinstance(e, (Arith, Negate)):
            operands = (e.left, e.right) if isinstance(e, Arith) else (e.operand,)
            kinds = []
            for operand in operands:
                t = _value_type(self.type_of(operand))
                kind = _kind(t)
                if pa.types.is_float16(t):
                    kind = "float"
                if kind not in _NUMERIC:
                    self.fail(f"{_render(operand, _PREC_ATOM)} ({t}) cannot be used in arithmetic", operand.pos)
                kinds.append(kind)
            if (isinstance(e, Arith) and e.op == "/") or "float" in kinds:
                return pa.float64()
            return pa.int64()
        raise InvalidArgumentError(f"not an expression node: {e!r}")


def _as_float(e: Expr) -> Expr:
    if isinstance(e, Literal) and pa.types.is_integer(e.type):
        return Literal(float(e.value), pa.float64(), e.pos)
    return e


def _fold_arith(op: str, left: Literal, right: Literal, pos: int) -> Literal:
    a, b = left.value, right.value
    if op != "/" and pa.types.is_integer(left.type) and pa.types.is_integer(right.type):
        exact = a + b if op == "+" else a - b if op == "-" else a * b
        return Literal(_wrap64(exact), pa.int64(), pos)
    x, y = np.float64(a), np.float64(b)
    with np.errstate(all="ignore"):  # IEEE results (inf, nan) as the kernels give them
        result = x + y if op == "+" else x - y if op == "-" else x * y if op == "*" else x / y
    return Literal(float(result), pa.float64(), pos)


def bind_predicate(obj: str | pc.Expression | Expr, schema: pa.Schema) -> Expr:
    """Parse or translate ``obj`` if needed, check it against ``schema`` and
    normalize it into a boolean expression the kernels run.

    ``obj`` is expression text, a ``pyarrow.compute.Expression`` or a tree.  A
    boolean column alone is a valid predicate (it becomes ``flag == true``).
    Positions in errors refer to ``obj``'s text (for a tree: to the text it was
    parsed from).

    Raises:
        ExpressionSyntaxError: the text does not parse.
        UnknownColumnError: a column is not in ``schema``.
        ExpressionTypeError: a type does not fit, or the result is not boolean.
        ExpressionError: the pyarrow expression uses something unsupported.
    """
    tree, text = _coerce(obj)
    return _Binder(schema, text).predicate(tree)


def bind_arithmetic(obj: str | pc.Expression | Expr, schema: pa.Schema) -> Expr:
    """Parse or translate ``obj`` if needed and check it as a projection against ``schema``.

    A projection is a column (of any type, passed through) or arithmetic over
    numeric columns and literals; integer arithmetic gives int64, anything with
    a float or a ``/`` gives float64 (see :func:`result_type`).  Constant
    sub-expressions are folded, and integer literals next to a float operand
    become float64.

    Raises:
        ExpressionSyntaxError, UnknownColumnError, ExpressionTypeError,
        ExpressionError: as :func:`bind_predicate`.
    """
    tree, text = _coerce(obj)
    return _Binder(schema, text).arith(tree, top=True)


def result_type(expr: Expr, schema: pa.Schema) -> pa.DataType:
    """The Arrow type ``expr`` evaluates to over data of ``schema``: bool for a
    condition, the column's type for a bare column, the literal's type for a
    literal, int64 or float64 for arithmetic (see :class:`~dpdpu.compute.ast.Arith`)."""
    return _Binder(schema, render(expr)).type_of(expr)


def _children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, (Compare, Arith, And, Or)):
        return (e.left, e.right)
    if isinstance(e, Between):
        return (e.operand, e.low, e.high)
    if isinstance(e, IsIn):
        return (e.operand, *e.values)
    if isinstance(e, (IsNull, Not, Negate)):
        return (e.operand,)
    return ()


def columns(expr: Expr) -> list[str]:
    """Names of the columns ``expr`` references, in order of first appearance."""
    seen: dict[str, None] = {}
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, Column):
            seen.setdefault(e.name)
        stack.extend(reversed(_children(e)))
    return list(seen)


# --------------------------------------------------------------------------- pyarrow -> tree

_ARROW_COMPARE = {
    "equal": "==",
    "not_equal": "!=",
    "less": "<",
    "less_equal": "<=",
    "greater": ">",
    "greater_equal": ">=",
}
_ARROW_ARITH = {
    "add": "+",
    "add_checked": "+",
    "subtract": "-",
    "subtract_checked": "-",
    "multiply": "*",
    "multiply_checked": "*",
    "divide": "/",
    "divide_checked": "/",
}
# pyarrow's and_/or_ wrappers serialize under their Python names
_ARROW_AND = frozenset({"and_kleene", "and", "and_"})
_ARROW_OR = frozenset({"or_kleene", "or", "or_"})
_ARROW_AND_NOT = frozenset({"and_not_kleene", "and_not", "and_not_"})


_DIGITS_RE = re.compile(r"[0-9]{1,9}\Z", re.ASCII)
_EPOCH_DATE_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class _Cast:
    """A cast call, only meaningful as an operand of a division."""

    operand: Expr
    to_type: pa.DataType


def _calendar_date(value: int, t: pa.DataType) -> Any:
    """A date column's stored value as a ``datetime.date`` when it is a whole day in range, else unchanged."""
    days, rest = (value, 0) if pa.types.is_date32(t) else divmod(value, _MS_PER_DAY)
    if rest or not 1 <= _EPOCH_DATE_ORDINAL + days <= _dt.date.max.toordinal():
        return value
    return _dt.date.fromordinal(_EPOCH_DATE_ORDINAL + days)


def _ipc_literal(
    column: IpcColumn, index: int, value_type: pa.DataType, null_type: pa.DataType | None = None
) -> Literal:
    value = column.value(index)
    if value is None:
        return Literal(None, null_type if null_type is not None else value_type)
    if pa.types.is_date32(value_type) or pa.types.is_date64(value_type):
        value = _calendar_date(value, value_type)
    return Literal(value, value_type)


class _ArrowReader:
    """Walks the serialized tree: metadata pairs in pre-order, literals and options in the batch's columns.

    The pairs are ``("call", name) ... ("end", name)`` around a call's
    arguments and its ``("options", column)``, ``("literal", column)`` and
    ``("field_ref", name)`` leaves.  Every index is checked against the
    batch and the nesting against :data:`MAX_DEPTH`.
    """

    def __init__(self, ipc: IpcFile, text: str | None) -> None:
        self.pairs = ipc.metadata
        self.columns = ipc.columns
        self.text = text
        self.i = 0

    def fail(self, detail: str) -> NoReturn:
        raise _error(ExpressionError, detail, self.text)

    def column(self, index: str, what: str) -> IpcColumn:
        if not _DIGITS_RE.match(index) or int(index) >= len(self.columns):
            self.fail(f"the serialized {what} {shown(index)} is not one of the {len(self.columns)} columns")
        column = self.columns[int(index)]
        if column.length < 1:
            self.fail(f"the serialized expression's {what} column is empty")
        return column

    def tree(self) -> Expr:
        tree = self.node(1)
        if isinstance(tree, _Cast):
            self.fail("unsupported function 'cast'")
        if self.i != len(self.pairs):
            self.fail("unexpected data after the serialized expression")
        return tree

    def node(self, depth: int) -> Expr | _Cast:
        if depth > MAX_DEPTH:
            self.fail(f"the expression nests more than {MAX_DEPTH} levels deep")
        if self.i >= len(self.pairs):
            self.fail("the serialized expression ends early")
        key, value = self.pairs[self.i]
        self.i += 1
        if key == "literal":
            column = self.column(value, "literal")
            t = column.type
            if _kind(t) is None and not pa.types.is_float16(t) and not pa.types.is_null(t):
                raise _error(ExpressionTypeError, f"literals of type {t} are not supported", self.text)
            return _ipc_literal(column, 0, t)
        if key == "field_ref":
            return Column(value)
        if key == "nested_field_ref":
            self.fail("nested field references are not supported")
        if key != "call":
            self.fail(f"unsupported expression element {shown(key)}")
        args: list[Expr | _Cast] = []
        options: IpcColumn | None = None
        while True:
            if self.i >= len(self.pairs):
                self.fail(f"the serialized call to {shown(value)} has no end")
            k, v = self.pairs[self.i]
            if k == "end":
                self.i += 1
                break
            if k == "options":
                options = self.column(v, "options")
                if options.layout.kind != "struct":
                    self.fail(f"the options of {shown(value)} are not a struct")
                self.i += 1
            else:
                args.append(self.node(depth + 1))
        return self.call(value, args, options)

    def call(self, name: str, raw_args: list[Expr | _Cast], options: IpcColumn | None) -> Expr | _Cast:
        def option(field: str) -> IpcColumn:
            child = options.child(field) if options is not None else None
            if child is None:
                self.fail(f"function {shown(name)} has no {field} option")
            return child

        if name == "cast":
            if len(raw_args) != 1 or isinstance(raw_args[0], _Cast) or options is None:
                self.fail("unsupported function 'cast'")
            return _Cast(raw_args[0], option("to_type").type)
        args: list[Expr] = []
        for arg in raw_args:
            if isinstance(arg, _Cast):
                # dpdpu's "/" converts both sides to float64 itself, so that cast changes nothing
                if name in ("divide", "divide_checked") and arg.to_type == pa.float64():
                    args.append(arg.operand)
                    continue
                self.fail(f"unsupported function 'cast' (to {arg.to_type})")
            args.append(arg)

        def arity(n: int) -> None:
            if len(args) != n:
                self.fail(f"function {shown(name)} takes {n} arguments, got {len(args)}")

        if name in _ARROW_COMPARE:
            arity(2)
            return Compare(_ARROW_COMPARE[name], args[0], args[1])  # type: ignore[arg-type]
        if name in _ARROW_ARITH:
            arity(2)
            return Arith(_ARROW_ARITH[name], args[0], args[1])  # type: ignore[arg-type]
        if name in ("negate", "negate_checked"):
            arity(1)
            return Negate(args[0])
        if name in _ARROW_AND:
            arity(2)
            return And(args[0], args[1])
        if name in _ARROW_OR:
            arity(2)
            return Or(args[0], args[1])
        if name in _ARROW_AND_NOT:
            arity(2)
            return And(args[0], Not(args[1]))
        if name == "invert":
            arity(1)
            return Not(args[0])
        if name == "is_valid":
            arity(1)
            return IsNull(args[0], negated=True)
        if name == "is_null":
            arity(1)
            if options is not None and option("nan_is_null").value(0) is True:
                # NaN is the only value not equal to itself
                return Or(IsNull(args[0]), Compare("!=", args[0], args[0]))
            return IsNull(args[0])
        if name == "is_in":
            arity(1)
            behavior = option("null_matching_behavior")
            if not pa.types.is_integer(behavior.type) or behavior.value(0) != 0:
                self.fail("function 'is_in' is supported only with null_matching_behavior MATCH (skip_nulls=False)")
            value_set = option("value_set")
            if value_set.layout.kind != "list" or value_set.is_null(0):
                self.fail("function 'is_in' needs a list of values")
            (items,) = value_set.children
            start, end = value_set.offsets(0)
            if end - start > MAX_IN_VALUES:
                self.fail(f"an 'in' list holds more than {MAX_IN_VALUES:,} values")
            return IsIn(args[0], tuple(_ipc_literal(items, i, items.type, pa.null()) for i in range(start, end)))
        self.fail(f"unsupported function {shown(name)}")


def _translate(data: bytes | bytearray | memoryview, text: str | None) -> Expr:
    try:
        return _ArrowReader(read_ipc_file(data), text).tree()
    except CorruptDataError as exc:
        raise _error(ExpressionError, f"not a serialized pyarrow expression ({exc.detail})", text) from None


def from_serialized(data: bytes | bytearray | memoryview) -> Expr:
    """Translate a serialized ``pyarrow.compute.Expression`` (the buffer ``Expression.__reduce__`` holds) into a tree.

    The bytes may come from anywhere: they are read by
    :mod:`~dpdpu.compute.ipc_reader`, in Python, and checked before any value
    is used, so a malformed or crafted input raises :class:`ExpressionError`
    and nothing else.  pyarrow's ``Expression._deserialize`` trusts its input
    and must not see such bytes.  What translates is what :func:`from_arrow`
    takes; nodes carry ``pos == -1``.

    Raises:
        ExpressionError: the bytes are not a serialized expression, or it uses
            something unsupported (named in the message).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"expected the bytes of a serialized expression, got {type(data).__name__}")
    return _translate(data, None)


def from_arrow(expression: pc.Expression) -> Expr:
    """Translate a ``pyarrow.compute.Expression`` into an expression tree.

    Supported: field references by name, literals (their Arrow type and value:
    dates as ``datetime.date``, timestamps as their stored integer),
    comparisons, ``and``/``or`` (Kleene or not; the non-Kleene forms become
    Kleene, which differs only under a negation), ``and_not``, ``invert``,
    ``is_in`` (null matching MATCH), ``is_null`` (with ``nan_is_null`` as
    ``is null or x != x``), ``is_valid``, ``add``/``subtract``/``multiply``/
    ``divide``/``negate`` and their ``_checked`` forms (dpdpu wraps instead of
    raising, and ``/`` always divides as float64), and casts to float64 directly
    under a division.  Literals of dictionary, decimal, time or nested types are
    not.  Nodes carry ``pos == -1``.

    Raises:
        ExpressionError: anything else, naming the function.
    """
    if not isinstance(expression, pc.Expression):
        raise InvalidArgumentError(f"expected a pyarrow.compute.Expression, got {type(expression).__name__}")
    text = str(expression)
    try:
        _, (buffer,) = expression.__reduce__()
    except pa.ArrowException as exc:
        raise _error(ExpressionError, f"cannot read the pyarrow expression: {exc}", text) from exc
    return _translate(memoryview(buffer), text)


# --------------------------------------------------------------------------- tree -> pyarrow

_PC_COMPARE = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
_PC_ARITH = {"+": pc.add, "-": pc.subtract, "*": pc.multiply, "/": pc.divide}


class _ToArrow:
    def __init__(self, schema: pa.Schema | None, text: str) -> None:
        self.schema = schema
        self.binder = _Binder(schema, text) if schema is not None else None
        self.text = text

    def scalar(self, lit: Literal, like: Expr | None = None) -> pa.Scalar:
        type_ = lit.type
        # a uint64 column holding values above the int64 range cannot meet an int64 literal in Arrow
        if (
            self.binder is not None
            and isinstance(like, Column)
            and lit.value is not None
            and pa.types.is_integer(type_)
            and pa.types.is_integer(_value_type(self.binder.column_type(like)))
        ):
            column_type = _value_type(self.binder.column_type(like))
            low, high = _int_range(column_type)
            if low <= lit.value <= high:
                type_ = column_type
        try:
            return pa.scalar(lit.value, type_)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise _error(
                ExpressionError, f"literal {_render_literal(lit)} is not a valid {type_}: {exc}", self.text, lit.pos
            ) from exc

    def side(self, e: Expr, other: Expr) -> pc.Expression:
        if isinstance(e, Literal):
            return pc.scalar(self.scalar(e, other))
        return self.conv(e)

    def value_set(self, e: IsIn) -> pa.Array:
        values = [v.value for v in e.values]
        types = [v.type for v in e.values if v.value is not None]
        type_ = pa.null()
        if types:
            type_ = types[0]
            if all(pa.types.is_integer(t) for t in types):
                type_ = pa.uint64() if any(v is not None and v > _INT64_MAX for v in values) else pa.int64()
                if self.binder is not None and isinstance(e.operand, Column):
                    column_type = _value_type(self.binder.column_type(e.operand))
                    low, high = _int_range(column_type) if pa.types.is_integer(column_type) else (1, 0)
                    if all(v is None or low <= v <= high for v in values):
                        type_ = column_type
            elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
                type_ = pa.float64()
        try:
            return pa.array(values, type_)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise _error(
                ExpressionError, f"the 'in' values do not form one Arrow array: {exc}", self.text, e.pos
            ) from exc

    def numeric(self, e: Expr, target: pa.DataType | None) -> pc.Expression:
        """``e`` converted to ``target`` (unless it already is, or target is None)."""
        converted = self.conv(e)
        if target is None or (self.binder is not None and self.binder.type_of(e) == target):
            return converted
        # safe=False: uint64 values above the int64 range wrap, as in the kernels
        return converted.cast(target, safe=False)

    def conv(self, e: Expr) -> pc.Expression:
        if isinstance(e, Column):
            return pc.field(e.name)
        if isinstance(e, Literal):
            return pc.scalar(self.scalar(e))
        if isinstance(e, Compare):
            return _PC_COMPARE[e.op](self.side(e.left, e.right), self.side(e.right, e.left))
        if isinstance(e, Between):
            x = self.conv(e.operand)
            return pc.greater_equal(x, self.side(e.low, e.operand)) & pc.less_equal(x, self.side(e.high, e.operand))
        if isinstance(e, IsIn):
            return self.conv(e.operand).isin(self.value_set(e))
        if isinstance(e, IsNull):
            operand = self.conv(e.operand)
            return operand.is_valid() if e.negated else operand.is_null()
        if isinstance(e, And):
            return self.conv(e.left) & self.conv(e.right)
        if isinstance(e, Or):
            return self.conv(e.left) | self.conv(e.right)
        if isinstance(e, Not):
            return ~self.conv(e.operand)
        if isinstance(e, Arith):
            target: pa.DataType | None = None
            if e.op == "/":
                target = pa.float64()
            elif self.binder is not None:
                target = self.binder.type_of(e)
            return _PC_ARITH[e.op](self.numeric(e.left, target), self.numeric(e.right, target))
        if isinstance(e, Negate):
            target = self.binder.type_of(e) if self.binder is not None else None
            return pc.negate(self.numeric(e.operand, target))
        raise InvalidArgumentError(f"not an expression node: {e!r}")


def to_arrow(expr: Expr, schema: pa.Schema | None = None) -> pc.Expression:
    """The ``pyarrow.compute.Expression`` computing ``expr``.

    Comparisons, ``&``/``|``/``~`` (Kleene), ``isin`` (nulls match),
    ``is_null``/``is_valid``; ``x between a and b`` becomes
    ``(x >= a) & (x <= b)``; ``/`` casts both sides to float64 and divides.
    Other arithmetic uses Arrow's wrapping kernels; with ``schema`` the operands
    are also cast to int64 or float64 first, as the dpdpu kernels compute
    (without it, Arrow's own type promotion applies, which is the same for
    int64 and float64 columns).  ``from_arrow(to_arrow(e)) == e`` for trees
    without ``between`` whose ``in`` lists have one literal type.
    """
    return _ToArrow(schema, render(expr)).conv(expr)
