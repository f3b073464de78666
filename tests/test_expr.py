"""The expression language: parsing, rendering, pyarrow translation and binding."""

from __future__ import annotations

import datetime as dt
import math
import operator
from fractions import Fraction

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hostile_inputs import serialized, string_offsets_past_their_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpdpu.compute import expr as expr_module
from dpdpu.compute.ast import And, Arith, Between, Column, Compare, Expr, IsIn, IsNull, Literal, Negate, Not, Or
from dpdpu.compute.expr import (
    MAX_DEPTH,
    MAX_IN_VALUES,
    MAX_NESTING,
    bind_arithmetic,
    bind_predicate,
    columns,
    depth,
    from_arrow,
    from_serialized,
    parse,
    render,
    result_type,
    to_arrow,
)
from dpdpu.errors import (
    ExpressionError,
    ExpressionSyntaxError,
    ExpressionTypeError,
    InvalidArgumentError,
    UnknownColumnError,
)

I64 = pa.int64()
U64 = pa.uint64()
F64 = pa.float64()
STR = pa.string()
BOOL = pa.bool_()
NULL = pa.null()
UTC = dt.timezone.utc


def col(name: str) -> Column:
    return Column(name)


def lit(value: object, type_: pa.DataType | None = None) -> Literal:
    if type_ is None:
        if value is None:
            type_ = NULL
        elif isinstance(value, bool):
            type_ = BOOL
        elif isinstance(value, int):
            type_ = I64
        elif isinstance(value, float):
            type_ = F64
        else:
            type_ = STR
    return Literal(value, type_)


# --------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", col("a")),
        ("_x9", col("_x9")),
        ('"unit price"', col("unit price")),
        ('"say ""hi"""', col('say "hi"')),
        ('"and"', col("and")),
        ("42", lit(42)),
        ("-5", lit(-5)),
        ("1_000", lit(1000)),
        ("1.5", lit(1.5)),
        ("1e6", lit(1e6)),
        (".5", lit(0.5)),
        ("2.5E-3", lit(0.0025)),
        ("9223372036854775807", lit(2**63 - 1)),
        ("9223372036854775808", Literal(2**63, U64)),
        ("-9223372036854775808", lit(-(2**63))),
        ("18446744073709551615", Literal(2**64 - 1, U64)),
        ("'it''s'", lit("it's")),
        ("'Zürich'", lit("Zürich")),
        ("''", lit("")),
        ("TRUE", lit(True)),
        ("false", lit(False)),
        ("Null", lit(None)),
        ("a == 1", Compare("==", col("a"), lit(1))),
        ("a = 1", Compare("==", col("a"), lit(1))),
        ("a != 1", Compare("!=", col("a"), lit(1))),
        ("a <> 1", Compare("!=", col("a"), lit(1))),
        ("a < 1", Compare("<", col("a"), lit(1))),
        ("a <= 1", Compare("<=", col("a"), lit(1))),
        ("a > 1", Compare(">", col("a"), lit(1))),
        ("a >= 1", Compare(">=", col("a"), lit(1))),
        ("1 < a", Compare("<", lit(1), col("a"))),
        ("a between 1 and 2", Between(col("a"), lit(1), lit(2))),
        ("a BETWEEN -1 AND b + 1", Between(col("a"), lit(-1), Arith("+", col("b"), lit(1)))),
        ("a not between 1 and 2", Not(Between(col("a"), lit(1), lit(2)))),
        ("a in (1, 'x', null, true, -2.5)", IsIn(col("a"), (lit(1), lit("x"), lit(None), lit(True), lit(-2.5)))),
        ("a in ()", IsIn(col("a"), ())),
        ("a not in (1)", Not(IsIn(col("a"), (lit(1),)))),
        ("a is null", IsNull(col("a"))),
        ("a IS NOT NULL", IsNull(col("a"), negated=True)),
        ("not a", Not(col("a"))),
        ("not not a", Not(Not(col("a")))),
        ("a and b", And(col("a"), col("b"))),
        ("a or b", Or(col("a"), col("b"))),
        ("a + b", Arith("+", col("a"), col("b"))),
        ("a - b", Arith("-", col("a"), col("b"))),
        ("a * b", Arith("*", col("a"), col("b"))),
        ("a / b", Arith("/", col("a"), col("b"))),
        ("a-1", Arith("-", col("a"), lit(1))),
        ("a - -1", Arith("-", col("a"), lit(-1))),
        ("-a", Negate(col("a"))),
        ("--a", Negate(Negate(col("a")))),
        ("-(5)", Negate(lit(5))),
        ("- 5", lit(-5)),
    ],
)
def test_parse_constructs(text: str, expected: Expr) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # or < and < not < comparison < + - < * / < unary minus
        ("a or b and c", Or(col("a"), And(col("b"), col("c")))),
        ("a and b or c", Or(And(col("a"), col("b")), col("c"))),
        ("not a and b", And(Not(col("a")), col("b"))),
        ("not a == 1", Not(Compare("==", col("a"), lit(1)))),
        ("a == 1 and b", And(Compare("==", col("a"), lit(1)), col("b"))),
        ("a + b * c", Arith("+", col("a"), Arith("*", col("b"), col("c")))),
        ("(a + b) * c", Arith("*", Arith("+", col("a"), col("b")), col("c"))),
        ("a - b - c", Arith("-", Arith("-", col("a"), col("b")), col("c"))),
        ("a / b / c", Arith("/", Arith("/", col("a"), col("b")), col("c"))),
        ("a - (b - c)", Arith("-", col("a"), Arith("-", col("b"), col("c")))),
        ("-a * b", Arith("*", Negate(col("a")), col("b"))),
        ("-5 * b", Arith("*", lit(-5), col("b"))),
        ("a + 1 > b * 2", Compare(">", Arith("+", col("a"), lit(1)), Arith("*", col("b"), lit(2)))),
        ("x between 1 and 2 and y", And(Between(col("x"), lit(1), lit(2)), col("y"))),
        ("x between 1 and 2 or y", Or(Between(col("x"), lit(1), lit(2)), col("y"))),
        ("a is null or b in (1)", Or(IsNull(col("a")), IsIn(col("b"), (lit(1),)))),
        ("(a < b) == c", Compare("==", Compare("<", col("a"), col("b")), col("c"))),
        ("not (a or b)", Not(Or(col("a"), col("b")))),
        ("a and (b or c)", And(col("a"), Or(col("b"), col("c")))),
        ("a and b and c", And(And(col("a"), col("b")), col("c"))),
    ],
)
def test_parse_precedence(text: str, expected: Expr) -> None:
    assert parse(text) == expected


def test_parse_positions() -> None:
    e = parse("(a + b) * c > 1 and not d in (5, -6)")
    assert isinstance(e, And) and e.pos == 0
    cmp = e.left
    assert isinstance(cmp, Compare) and cmp.pos == 0
    mul = cmp.left
    assert isinstance(mul, Arith) and mul.pos == 0
    add = mul.left
    assert isinstance(add, Arith) and add.pos == 1
    assert isinstance(add.right, Column) and add.right.pos == 5
    assert isinstance(mul.right, Column) and mul.right.pos == 10
    assert isinstance(cmp.right, Literal) and cmp.right.pos == 14
    neg = e.right
    assert isinstance(neg, Not) and neg.pos == 20
    isin = neg.operand
    assert isinstance(isin, IsIn) and isin.pos == 24
    assert [v.pos for v in isin.values] == [30, 33]
    quoted = parse('  "a b" is null')
    assert isinstance(quoted, IsNull) and quoted.pos == 2 and quoted.operand.pos == 2


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("a < b < c", 6, "do not chain"),
        ("a == b between 1 and 2", 7, "do not chain"),
        ("a < b is null", 6, "do not chain"),
        ("a in (1) not in (2)", 9, "do not chain"),
        ("price +", 7, "expected an expression, found end of input"),
        ("", 0, "expected an expression"),
        ("(a", 2, "expected ')'"),
        ("a)", 1, "unexpected ')'"),
        ("x = 1 y", 6, "unexpected 'y'"),
        ("'abc", 0, "unterminated string"),
        ('a = "abc', 4, "unterminated quoted column name"),
        ("1__0 > a", 0, "invalid number '1__0'"),
        ("a > 1e", 4, "invalid number"),
        ("a > 1.2.3", 4, "invalid number"),
        ("a > 5abc", 4, "invalid number"),
        ("a ! b", 2, "unexpected character '!'"),
        ("a > b ; c", 6, "unexpected character ';'"),
        ("prix = Zürich", 8, "unexpected character 'ü'"),
        ("a in 1", 5, "expected '(' after 'in'"),
        ("a in (1, b)", 9, "literal values"),
        ("a in (1,)", 8, "literal values"),
        ("a in (1 2)", 8, "expected ','"),
        ("a between 1 or 2", 12, "expected 'and'"),
        ("a is 5", 5, "expected 'null' after 'is'"),
        ("a is not 5", 9, "expected 'null' after 'is not'"),
        ("a not b", 6, "expected 'in' or 'between' after 'not'"),
        ("a == == b", 5, "expected an expression, found '=='"),
        ("not", 3, "end of input"),
        ("and", 0, "found 'and'"),
        ("99999999999999999999", 0, "out of the 64-bit range"),
        ("a > -9223372036854775809", 4, "out of the 64-bit range"),
    ],
)
def test_syntax_errors(text: str, position: int, fragment: str) -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        parse(text)
    err = info.value
    assert err.position == position
    assert err.expression == text
    assert err.column is None
    assert fragment in str(err)
    assert f"(at {position})" in str(err)
    assert isinstance(err, ExpressionError) and isinstance(err, InvalidArgumentError) and isinstance(err, ValueError)


def test_syntax_error_caret() -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        parse("a < b < c")
    assert str(info.value).endswith("\n    a < b < c\n          ^")
    with pytest.raises(ExpressionSyntaxError) as info:
        parse("a > 1\nand ! b")
    assert info.value.position == 10
    assert str(info.value).endswith("\n    and ! b\n        ^")


def test_parse_rejects_non_strings_and_deep_nesting() -> None:
    with pytest.raises(InvalidArgumentError):
        parse(b"a > 1")  # type: ignore[arg-type]
    with pytest.raises(ExpressionSyntaxError, match="nested too deeply"):
        parse("(" * 3000 + "a" + ")" * 3000)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 5000 + "a > 1" + ")" * 5000,
        "(" * 5000,
        "not " * 5000 + "flag",
        "-" * 5000 + "a > 1",
        "(" * (MAX_NESTING + 1) + "a > 1" + ")" * (MAX_NESTING + 1),
        " or ".join(["a > 1"] * (MAX_DEPTH + 1)),
        " + ".join(["a"] * (MAX_DEPTH + 1)) + " > 1",
    ],
)
def test_nesting_beyond_the_limits_is_a_clean_syntax_error(text: str) -> None:
    with pytest.raises(ExpressionSyntaxError, match="nested too deeply") as info:
        bind_predicate(text, SCHEMA)
    assert len(str(info.value)) < 1024


def test_nesting_up_to_the_limits_binds() -> None:
    nested = "(" * MAX_NESTING + "price > 1" + ")" * MAX_NESTING
    assert bind_predicate(nested, SCHEMA) == bind_predicate("price > 1", SCHEMA)
    chain = parse(" or ".join(["price > 1"] * (MAX_DEPTH - 1)))  # or, or, ..., >, price: MAX_DEPTH nodes deep
    assert depth(chain) == MAX_DEPTH
    assert depth(bind_predicate(chain, SCHEMA)) == MAX_DEPTH
    too_deep = Or(chain, Compare(">", col("price"), lit(2)))  # a tree built by hand is checked too
    with pytest.raises(ExpressionError, match="nested too deeply"):
        bind_predicate(too_deep, SCHEMA)


BIG = 8 << 20


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("price > " + "1" * BIG, "integer literal out of the 64-bit range"),
        ("price > 1" + "_1" * (BIG // 2) + "__", "invalid number"),
        ("x" * BIG + " > 1", "unknown column"),
        ('"' + "y" * BIG + '" > 1', "unknown column"),
        ("name == '" + "z" * BIG + "' )", "unexpected ')'"),
        ("name == '" + "z" * BIG, "unterminated string literal"),
        ("price > 1 " + "a " * (BIG // 2), "unexpected 'a'"),
        (" " * BIG + "price >", "expected an expression"),
        ("price in (" + "1, " * 30_000, "'in' takes a list of literal values, found end of input"),
    ],
)
def test_errors_about_huge_input_stay_short(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        bind_predicate(text, SCHEMA)
    message = str(info.value)
    assert fragment in message and len(message) < 1024, message[:2000]
    assert info.value.expression == text  # the attribute keeps the whole text


def test_in_lists_hold_at_most_max_in_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_IN_VALUES == 100_000
    monkeypatch.setattr(expr_module, "MAX_IN_VALUES", 10)
    values = ", ".join(["1"] * 10)
    assert len(parse(f"price in ({values})").values) == 10  # type: ignore[union-attr]
    with pytest.raises(ExpressionSyntaxError, match="more than 10 values"):
        parse(f"price in ({values}, 2)")
    assert len(from_serialized(serialized(x.isin(pa.array(range(10), pa.int8())))).values) == 10  # type: ignore[union-attr]
    with pytest.raises(ExpressionError, match="more than 10 values"):
        from_serialized(serialized(x.isin(pa.array(range(11), pa.int8()))))


def test_syntax_error_caret_in_a_long_line_shows_a_window() -> None:
    text = "price > 1 and " * 100 + "price >> 2" + " and price > 1" * 100
    with pytest.raises(ExpressionSyntaxError) as info:
        parse(text)
    *_, line, caret = str(info.value).split("\n")
    assert line.startswith("    ...") and line.endswith("...") and len(line) < 100
    assert line[caret.index("^")] == ">" and info.value.position == text.index(">>") + 1


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("NOT (a=1 OR b<>2)", "not (a == 1 or b != 2)"),
        ("a and (b or c)", "a and (b or c)"),
        ("(a and b) or c", "a and b or c"),
        ("a - (b - c)", "a - (b - c)"),
        ("(a - b) - c", "a - b - c"),
        ("-(5) * -x", "-(5) * -x"),
        ("a not in (1, 'it''s', null)", "a not in (1, 'it''s', null)"),
        ("a NOT BETWEEN 1 AND 2", "a not between 1 and 2"),
        ('"unit price" is not null', '"unit price" is not null'),
        ('"Or" = 1e999', '"Or" == 1e999'),
        ("x = 1_000.0", "x == 1000.0"),
    ],
)
def test_render(text: str, rendered: str) -> None:
    assert render(parse(text)) == rendered


def test_render_temporal_literals() -> None:
    assert render(Literal(19723, pa.date32())) == "'2024-01-01'"
    assert render(Literal(1704103200500, pa.timestamp("ms", "UTC"))) == "'2024-01-01T10:00:00.5Z'"
    assert render(Literal(1500, pa.timestamp("ns"))) == "'1970-01-01T00:00:00.0000015'"
    assert render(Literal(dt.date(2024, 2, 29), pa.date32())) == "'2024-02-29'"
    assert render(Literal(float("nan"), F64)) == "nan"


_NAMES = st.one_of(st.sampled_from(["a", "b", "price", "x_1", "_", "AND", "In"]), st.text(max_size=5))
_INT64_LITS = st.integers(-(2**63), 2**63 - 1).map(lambda v: Literal(v, I64))
_INT_LITS = st.integers(-(2**63), 2**64 - 1).map(lambda v: Literal(v, I64 if v < 2**63 else U64))
_FLOAT_LITS = st.floats(allow_nan=False).map(lambda f: Literal(f, F64))
_STR_LITS = st.text(max_size=6).map(lambda s: Literal(s, STR))
_BOOL_LITS = st.booleans().map(lambda b: Literal(b, BOOL))
_NULL_LIT = st.just(Literal(None, NULL))
_LITERALS = st.one_of(_INT_LITS, _FLOAT_LITS, _STR_LITS, _BOOL_LITS, _NULL_LIT)
_COMPARE_OPS = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
_ARITH_OPS = st.sampled_from(["+", "-", "*", "/"])


def _trees(literals: st.SearchStrategy[Literal], in_lists: st.SearchStrategy[tuple[Literal, ...]], *, between: bool):
    def extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        options = [
            st.builds(Compare, _COMPARE_OPS, children, children),
            st.builds(IsIn, children, in_lists),
            st.builds(IsNull, children, st.booleans()),
            st.builds(And, children, children),
            st.builds(Or, children, children),
            st.builds(Not, children),
            st.builds(Arith, _ARITH_OPS, children, children),
            st.builds(Negate, children),
        ]
        if between:
            options.append(st.builds(Between, children, children, children))
        return st.one_of(options)

    leaves = st.one_of(_NAMES.map(Column), literals)
    return st.recursive(leaves, extend, max_leaves=10)


_TEXT_TREES = _trees(_LITERALS, st.lists(_LITERALS, max_size=3).map(tuple), between=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT_TREES)
def test_render_parse_round_trip(tree: Expr) -> None:
    text = render(tree)
    assert parse(text) == tree, text


# --------------------------------------------------------------------------- columns, result_type

SCHEMA = pa.schema(
    [
        ("price", pa.int64()),
        ("qty", pa.float64()),
        ("name", pa.string()),
        ("flag", pa.bool_()),
        ("ts", pa.timestamp("ms", "UTC")),
        ("d", pa.date32()),
        ("cat", pa.dictionary(pa.int32(), pa.string())),
        ("unit price", pa.float64()),
        ("i8", pa.int8()),
        ("u", pa.uint64()),
        ("f32", pa.float32()),
        ("tn", pa.timestamp("s")),
        ("paris", pa.timestamp("s", "Europe/Paris")),
        ("d64", pa.date64()),
        ("lst", pa.list_(pa.int64())),
        ("half", pa.float16()),
        ("view", pa.string_view()),
        ("big", pa.large_string()),
        ("icat", pa.dictionary(pa.int8(), pa.int16())),
    ]
)


def test_columns_in_first_appearance_order() -> None:
    assert columns(parse("b > 1 and (a < b or c in (1)) and not a is null")) == ["b", "a", "c"]
    assert columns(parse("1 = 1")) == []
    assert columns(parse('-"x y" * x between z and 2')) == ["x y", "x", "z"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("price > 1", BOOL),
        ("price", I64),
        ("cat", pa.dictionary(pa.int32(), pa.string())),
        ("lst", pa.list_(pa.int64())),
        ("price + i8", I64),
        ("price * 2", I64),
        ("price / 2", F64),
        ("price + qty", F64),
        ("f32 * 2", F64),
        ("-i8", I64),
        ("-f32", F64),
        ("-(icat + u)", I64),
        ("1.5", F64),
        ("'x'", STR),
    ],
)
def test_result_type(text: str, expected: pa.DataType) -> None:
    assert result_type(parse(text), SCHEMA) == expected


def test_result_type_errors() -> None:
    with pytest.raises(UnknownColumnError):
        result_type(parse("nope + 1"), SCHEMA)
    with pytest.raises(ExpressionTypeError, match="arithmetic"):
        result_type(parse("name + 1"), SCHEMA)


# --------------------------------------------------------------------------- binding


def test_bind_normalizes_column_to_the_left() -> None:
    assert bind_predicate("5 < price", SCHEMA) == Compare(">", col("price"), lit(5))
    assert bind_predicate("5 = price", SCHEMA) == Compare("==", col("price"), lit(5))
    assert bind_predicate("price >= qty", SCHEMA) == Compare(">=", col("price"), col("qty"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("price > 2.5", Compare(">", col("price"), Literal(2.5, F64))),
        ("qty > 2", Compare(">", col("qty"), Literal(2.0, F64))),
        ("f32 <= -1", Compare("<=", col("f32"), Literal(-1.0, F64))),
        ("u == 18446744073709551615", Compare("==", col("u"), Literal(2**64 - 1, U64))),
        ("u >= 9223372036854775808", Compare(">=", col("u"), Literal(2**63, U64))),
        ("icat == 3", Compare("==", col("icat"), lit(3))),
        ("flag == false", Compare("==", col("flag"), lit(False))),
        ("name == 'x'", Compare("==", col("name"), lit("x"))),
        ("big < 'x'", Compare("<", col("big"), lit("x"))),
        ("cat != 'a'", Compare("!=", col("cat"), lit("a"))),
        ("price > null", Compare(">", col("price"), lit(None))),
        ("null <= name", Compare(">=", col("name"), lit(None))),
        ("price > -(2 * 3) + 1", Compare(">", col("price"), lit(-5))),
        ("qty < 1 / 4", Compare("<", col("qty"), lit(0.25))),
        # out of the column type's range: the same answer for every non-null value
        ("i8 > 1000", Compare("!=", col("i8"), col("i8"))),
        ("i8 < 1000", Compare("==", col("i8"), col("i8"))),
        ("i8 == -129", Compare("!=", col("i8"), col("i8"))),
        ("i8 != -129", Compare("==", col("i8"), col("i8"))),
        ("u < -1", Compare("!=", col("u"), col("u"))),
        ("u < 0", Compare("<", col("u"), lit(0))),
        ("u >= -1", Compare("==", col("u"), col("u"))),
        ("price < 18446744073709551615", Compare("==", col("price"), col("price"))),
        ("i8 == 127", Compare("==", col("i8"), lit(127))),
        # literal against literal folds
        ("1 < 2", lit(True)),
        ("'b' < 'a'", lit(False)),
        ("1 = 1.0", lit(True)),
        ("1 = null", Literal(None, BOOL)),
        ("true", lit(True)),
        ("null", Literal(None, BOOL)),
        ("2 between 1 and 3", lit(True)),
        ("0 between 1 and null", lit(False)),
        ("5 between 1 and null", Literal(None, BOOL)),
        ("2 between 1 and null", Literal(None, BOOL)),
        # boolean columns are conditions on their own
        ("flag", Compare("==", col("flag"), lit(True))),
        ("not flag or price > 1", Or(Not(Compare("==", col("flag"), lit(True))), Compare(">", col("price"), lit(1)))),
    ],
)
def test_bind_predicate_normalization(text: str, expected: Expr) -> None:
    assert bind_predicate(text, SCHEMA) == expected


def test_bind_between() -> None:
    assert bind_predicate("price between 1 and 2.5", SCHEMA) == Between(col("price"), lit(1), Literal(2.5, F64))
    assert bind_predicate("i8 between -1000 and 5", SCHEMA) == Compare("<=", col("i8"), lit(5))
    assert bind_predicate("i8 between 5 and 1000", SCHEMA) == Compare(">=", col("i8"), lit(5))
    assert bind_predicate("i8 between -1000 and 1000", SCHEMA) == Compare("==", col("i8"), col("i8"))
    assert bind_predicate("i8 between 200 and 300", SCHEMA) == Compare("!=", col("i8"), col("i8"))
    assert bind_predicate("price between null and 3", SCHEMA) == Between(col("price"), lit(None), lit(3))
    assert bind_predicate("price not between 1 and 2", SCHEMA) == Not(Between(col("price"), lit(1), lit(2)))
    with pytest.raises(ExpressionTypeError, match="bounds of 'between' must be literals") as info:
        bind_predicate("price between qty and 3", SCHEMA)
    assert info.value.position == 14 and info.value.column == "qty"


def test_bind_isin() -> None:
    assert bind_predicate("price in (1, 2.0, 2.5, null, 1, 1e30)", SCHEMA) == IsIn(
        col("price"), (lit(1), lit(2), lit(None))
    )
    assert bind_predicate("i8 in (1, 1000, -1)", SCHEMA) == IsIn(col("i8"), (lit(1), lit(-1)))
    assert bind_predicate("u in (-1, 18446744073709551615)", SCHEMA) == IsIn(col("u"), (Literal(2**64 - 1, U64),))
    assert bind_predicate("qty in (1, 2.5)", SCHEMA) == IsIn(col("qty"), (lit(1.0), lit(2.5)))
    assert bind_predicate("cat not in ('a')", SCHEMA) == Not(IsIn(col("cat"), (lit("a"),)))
    assert bind_predicate("name in ()", SCHEMA) == IsIn(col("name"), ())
    assert bind_predicate("d in ('2024-01-01', '2024-01-01T12:00')", SCHEMA) == IsIn(
        col("d"), (Literal(19723, pa.date32()),)
    )
    with pytest.raises(ExpressionTypeError, match=r"column name \(string\) cannot be compared with an integer") as info:
        bind_predicate("name in ('a', 5)", SCHEMA)
    assert info.value.position == 14
    with pytest.raises(ExpressionTypeError, match="left side of 'in' must be a column"):
        bind_predicate("price + 1 in (1)", SCHEMA)


def test_bind_is_null() -> None:
    assert bind_predicate("name is not null", SCHEMA) == IsNull(col("name"), negated=True)
    with pytest.raises(ExpressionTypeError, match="must be a column"):
        bind_predicate("1 is null", SCHEMA)


@pytest.mark.parametrize(
    ("text", "value", "type_"),
    [
        ("ts >= '2024-01-01'", 1704067200000, pa.timestamp("ms", "UTC")),
        ("ts >= '2024-01-01T10:00:00'", 1704103200000, pa.timestamp("ms", "UTC")),
        ("ts >= '2024-01-01 10:00:00.25'", 1704103200250, pa.timestamp("ms", "UTC")),
        ("ts >= '2024-01-01T12:00:00+02:00'", 1704103200000, pa.timestamp("ms", "UTC")),
        ("ts >= '2024-01-01T05:00-0500'", 1704103200000, pa.timestamp("ms", "UTC")),
        ("ts >= '2024-01-01T10:00:00Z'", 1704103200000, pa.timestamp("ms", "UTC")),
        # finer than the unit: rounded the way that keeps the comparison exact
        ("ts >= '2024-01-01T00:00:00.0001'", 1704067200001, pa.timestamp("ms", "UTC")),
        ("ts > '2024-01-01T00:00:00.0001'", 1704067200000, pa.timestamp("ms", "UTC")),
        ("ts < '2024-01-01T00:00:00.0001'", 1704067200001, pa.timestamp("ms", "UTC")),
        ("ts <= '2024-01-01T00:00:00.0001'", 1704067200000, pa.timestamp("ms", "UTC")),
        ("tn < '2024-01-01T10:00:00'", 1704103200, pa.timestamp("s")),
        ("tn < '2024-01-01T12:00:00+02:00'", 1704103200, pa.timestamp("s")),
        # naive strings are wall-clock times in the column's zone (CEST in July)
        ("paris >= '2024-07-01'", 1719784800, pa.timestamp("s", "Europe/Paris")),
        ("paris >= '2024-07-01T00:00:00Z'", 1719792000, pa.timestamp("s", "Europe/Paris")),
        ("d >= '2024-01-01'", 19723, pa.date32()),
        ("d >= '2024-01-01T12:00'", 19724, pa.date32()),
        ("d > '2024-01-01T12:00'", 19723, pa.date32()),
        ("d64 == '2024-01-01'", 1704067200000, pa.date64()),
        ("'2024-01-01' <= d", 19723, pa.date32()),
    ],
)
def test_bind_temporal_strings(text: str, value: int, type_: pa.DataType) -> None:
    bound = bind_predicate(text, SCHEMA)
    assert isinstance(bound, Compare) and isinstance(bound.right, Literal)
    assert bound.right == Literal(value, type_)
    assert type(bound.right.value) is int


def test_bind_temporal_inexact_equality_folds() -> None:
    assert bind_predicate("ts == '2024-01-01T00:00:00.0001'", SCHEMA) == Compare("!=", col("ts"), col("ts"))
    assert bind_predicate("ts != '2024-01-01T00:00:00.0001'", SCHEMA) == Compare("==", col("ts"), col("ts"))
    assert bind_predicate("ts < '3000-01-01'", SCHEMA) == Compare(
        "<", col("ts"), Literal(32503680000000, SCHEMA.field("ts").type)
    )


def test_bind_temporal_typed_literals() -> None:
    ts_type = pa.timestamp("ms", "UTC")
    aware = pc.field("ts") >= pa.scalar(dt.datetime(2024, 1, 1, tzinfo=UTC), pa.timestamp("us", "UTC"))
    assert bind_predicate(aware, SCHEMA) == Compare(">=", col("ts"), Literal(1704067200000, ts_type))
    nanos = pc.field("ts") >= pc.scalar(pa.scalar(1_500_000, pa.timestamp("ns")))
    assert bind_predicate(nanos, SCHEMA) == Compare(">=", col("ts"), Literal(2, ts_type))
    day = pc.field("ts") < pa.scalar(dt.date(2024, 1, 2), pa.date32())
    assert bind_predicate(day, SCHEMA) == Compare("<", col("ts"), Literal(1704153600000, ts_type))
    tree = Compare("==", col("d"), Literal(dt.datetime(2024, 1, 1), pa.timestamp("us")))
    assert bind_predicate(tree, SCHEMA) == Compare("==", col("d"), Literal(19723, pa.date32()))


@pytest.mark.parametrize(
    ("text", "position", "column", "fragment"),
    [
        ("price > 'x'", 8, "price", "column price (int64) cannot be compared with a string"),
        ("name > 5", 7, "name", "column name (string) cannot be compared with an integer"),
        ("5 < name", 0, "name", "column name (string) cannot be compared with an integer"),
        ("flag == 1", 8, "flag", "column flag (bool) cannot be compared with an integer"),
        ("price == true", 9, "price", "cannot be compared with a boolean"),
        ("ts > 5", 5, "ts", "column ts (timestamp[ms, tz=UTC]) cannot be compared with an integer"),
        ("ts >= '2024-13-01'", 6, "ts", "'2024-13-01' is not a valid ISO-8601 date or timestamp"),
        ("ts >= 'yesterday'", 6, "ts", "not a valid ISO-8601"),
        ("d = '2024-02-30'", 4, "d", "not a valid ISO-8601"),
        ("price == name", 9, "name", "column price (int64) cannot be compared with column name (string)"),
        ("ts == tn", 6, "tn", "cannot be compared with column tn"),
        ("ts == d", 6, "d", "cannot be compared with column d"),
        ("lst is null", 0, "lst", "column lst has type list<item: int64>, which expressions do not support"),
        ("half > 1", 0, "half", "halffloat"),
        ("view == 'a'", 0, "view", "string_view"),
        ("price + 1", 0, "price", "the expression gives int64, not a boolean"),
        ("qty", 0, "qty", "column qty (double) is not boolean"),
        ("flag and price", 9, "price", "column price (int64) is not boolean"),
        ("name + 1 > 2", 0, "name", "column name (string) cannot be used in arithmetic"),
        ("price * 2 > 15", 0, "price", "arithmetic on columns is not supported in predicates"),
        ("(price > 1) == flag", 1, None, "not a condition"),
        ("'a' < 1", 6, None, "a string cannot be compared with an integer"),
        ("'x'", 0, None, "a string literal is not a condition"),
    ],
)
def test_bind_type_errors(text: str, position: int, column: str | None, fragment: str) -> None:
    with pytest.raises(ExpressionTypeError) as info:
        bind_predicate(text, SCHEMA)
    err = info.value
    assert fragment in str(err)
    assert err.position == position
    assert err.column == column
    assert err.expression == text
    assert isinstance(err, TypeError)


def test_type_error_message_format() -> None:
    with pytest.raises(ExpressionTypeError) as info:
        bind_predicate("price > 'x'", SCHEMA)
    assert str(info.value) == "\"price > 'x'\": column price (int64) cannot be compared with a string (at 8)"


def test_unknown_column() -> None:
    with pytest.raises(UnknownColumnError) as info:
        bind_predicate("qty > 1 and pricee > 1", SCHEMA)
    err = info.value
    assert err.column == "pricee" and err.position == 12
    assert "unknown column pricee (at 12)" in str(err)
    assert "did you mean price?" in str(err)
    assert 'available columns: price, qty, name, flag, ts, d, cat, "unit price"' in str(err)
    assert isinstance(err, LookupError)
    with pytest.raises(UnknownColumnError) as info:
        bind_arithmetic('"no such" * 2', SCHEMA)
    assert info.value.column == "no such" and info.value.position == 0


def test_timezone_that_cannot_be_resolved() -> None:
    schema = pa.schema([("t", pa.timestamp("s", "Mars/Olympus_Mons"))])
    with pytest.raises(ExpressionTypeError, match="explicit offset") as info:
        bind_predicate("t > '2024-01-01'", schema)
    assert info.value.column == "t"
    assert bind_predicate("t > '2024-01-01T00:00Z'", schema) == Compare(
        ">", col("t"), Literal(1704067200, schema[0].type)
    )
    fixed = pa.schema([("t", pa.timestamp("s", "+05:30"))])
    assert bind_predicate("t > '2024-01-01T05:30'", fixed) == Compare(">", col("t"), Literal(1704067200, fixed[0].type))


def test_ambiguous_column_and_bad_arguments() -> None:
    schema = pa.schema([("a", pa.int64()), ("a", pa.int64())])
    with pytest.raises(ExpressionError, match="ambiguous"):
        bind_predicate("a > 1", schema)
    with pytest.raises(InvalidArgumentError):
        bind_predicate(42, SCHEMA)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        bind_predicate("a > 1", {"a": "int64"})  # type: ignore[arg-type]


def test_bind_tree_and_arrow_inputs() -> None:
    tree = Compare(">", Column("nope"), Literal(1, I64))
    with pytest.raises(UnknownColumnError) as info:
        bind_predicate(tree, SCHEMA)
    assert info.value.expression == "nope > 1" and info.value.position is None
    with pytest.raises(ExpressionTypeError) as info2:
        bind_predicate(pc.field("name") > 5, SCHEMA)
    assert info2.value.expression == "(name > 5)" and info2.value.column == "name"
    bad_literal = Compare("==", Column("price"), Literal("5", I64))
    with pytest.raises(ExpressionTypeError, match="does not match its type"):
        bind_predicate(bad_literal, SCHEMA)
    decimal = pc.field("price") == pa.scalar(3, pa.decimal128(5, 2))
    with pytest.raises(ExpressionTypeError, match="decimal128"):
        bind_predicate(decimal, SCHEMA)


@pytest.mark.parametrize(
    ("text", "expected", "type_"),
    [
        ("price", col("price"), I64),
        ("lst", col("lst"), pa.list_(pa.int64())),
        ("price * 2 + qty", Arith("+", Arith("*", col("price"), lit(2)), col("qty")), F64),
        ("qty * 2", Arith("*", col("qty"), lit(2.0)), F64),
        ("price / 2", Arith("/", col("price"), lit(2.0)), F64),
        ("price - i8", Arith("-", col("price"), col("i8")), I64),
        ("-price", Negate(col("price")), I64),
        ("-(1 + 2) * price", Arith("*", lit(-3), col("price")), I64),
        ("1 / 0", lit(math.inf), F64),
        ("9223372036854775807 + 1", lit(-(2**63)), I64),
        ("18446744073709551615 * 1", lit(-1), I64),
        ("1.5", lit(1.5), F64),
        ("icat * 2", Arith("*", col("icat"), lit(2)), I64),
    ],
)
def test_bind_arithmetic(text: str, expected: Expr, type_: pa.DataType) -> None:
    bound = bind_arithmetic(text, SCHEMA)
    assert bound == expected
    assert result_type(bound, SCHEMA) == type_


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("name + 1", 0, "column name (string) cannot be used in arithmetic"),
        ("price + 'a'", 8, "a string cannot be used in arithmetic"),
        ("flag * 2", 0, "column flag (bool) cannot be used in arithmetic"),
        ("ts - 1", 0, "cannot be used in arithmetic"),
        ("price + null", 8, "null cannot be used in arithmetic"),
        ("price > 1", 0, "a projection must be a column or arithmetic"),
        ("price + (qty > 1)", 9, "a condition cannot be used in arithmetic"),
        ("'x'", 0, "a string cannot be used in arithmetic"),
    ],
)
def test_bind_arithmetic_errors(text: str, position: int, fragment: str) -> None:
    with pytest.raises(ExpressionTypeError) as info:
        bind_arithmetic(text, SCHEMA)
    assert fragment in str(info.value)
    assert info.value.position == position


# --------------------------------------------------------------------------- pyarrow

x, y = pc.field("x"), pc.field("y")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (x > 1, Compare(">", col("x"), lit(1))),
        (pc.scalar(1) <= x, Compare("<=", lit(1), col("x"))),
        (x == y, Compare("==", col("x"), col("y"))),
        (x != "a", Compare("!=", col("x"), lit("a"))),
        (x < 2.5, Compare("<", col("x"), lit(2.5))),
        (x >= pc.scalar(pa.scalar(3, pa.int8())), Compare(">=", col("x"), Literal(3, pa.int8()))),
        (x == pc.scalar(pa.scalar(None, pa.int64())), Compare("==", col("x"), Literal(None, I64))),
        ((x > 1) & (y < 2), And(Compare(">", col("x"), lit(1)), Compare("<", col("y"), lit(2)))),
        ((x > 1) | ~(y < 2), Or(Compare(">", col("x"), lit(1)), Not(Compare("<", col("y"), lit(2))))),
        (pc.and_(x, y), And(col("x"), col("y"))),
        (pc.or_(x, y), Or(col("x"), col("y"))),
        (pc.and_not_kleene(x, y), And(col("x"), Not(col("y")))),
        (x.isin([1, 2]), IsIn(col("x"), (lit(1), lit(2)))),
        (x.isin(["a", None]), IsIn(col("x"), (lit("a"), lit(None)))),
        (x.isin(pa.array([], pa.int64())), IsIn(col("x"), ())),
        (x.isin(pa.array([1], pa.int16())), IsIn(col("x"), (Literal(1, pa.int16()),))),
        (x.is_null(), IsNull(col("x"))),
        (x.is_valid(), IsNull(col("x"), negated=True)),
        (x.is_null(nan_is_null=True), Or(IsNull(col("x")), Compare("!=", col("x"), col("x")))),
        (x + 1, Arith("+", col("x"), lit(1))),
        (pc.add(x, y), Arith("+", col("x"), col("y"))),
        (x - y, Arith("-", col("x"), col("y"))),
        (pc.subtract(x, 1), Arith("-", col("x"), lit(1))),
        (x * 2, Arith("*", col("x"), lit(2))),
        (pc.multiply(x, 2), Arith("*", col("x"), lit(2))),
        (x / 2, Arith("/", col("x"), lit(2))),
        (pc.divide(x, 2), Arith("/", col("x"), lit(2))),
        (pc.divide(x.cast(pa.float64()), 2), Arith("/", col("x"), lit(2))),
        (pc.negate(x), Negate(col("x"))),
        (pc.negate_checked(x), Negate(col("x"))),
        (
            pc.field("unit price") * pc.field("qty") > 100,
            Compare(">", Arith("*", col("unit price"), col("qty")), lit(100)),
        ),
        (pc.scalar(True), lit(True)),
        (x == pa.scalar(dt.date(2024, 1, 1)), Compare("==", col("x"), Literal(dt.date(2024, 1, 1), pa.date32()))),
        (
            x == pc.scalar(pa.scalar(1500, pa.timestamp("ns"))),
            Compare("==", col("x"), Literal(1500, pa.timestamp("ns"))),
        ),
        (x > pc.scalar(pa.scalar(None, pa.null())), Compare(">", col("x"), lit(None))),
    ],
)
def test_from_arrow(expression: pc.Expression, expected: Expr) -> None:
    assert from_arrow(expression) == expected


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        (x.cast(pa.int32()) > 1, "unsupported function 'cast'"),
        (pc.divide(x.cast(pa.int32()), 2), "unsupported function 'cast'"),
        (pc.field("a", "b") == 1, "nested field references are not supported"),
        (pc.if_else(x, y, 1), "unsupported function 'if_else'"),
        (pc.abs(x), "unsupported function 'abs'"),
        (pc.is_in(x, value_set=pa.array([1]), skip_nulls=True), "null_matching_behavior MATCH"),
        (pc.field(0) == 1, "cannot read the pyarrow expression"),
    ],
)
def test_from_arrow_unsupported(expression: pc.Expression, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        from_arrow(expression)
    assert fragment in str(info.value)
    assert info.value.expression == str(expression)


def test_from_arrow_rejects_non_expressions() -> None:
    with pytest.raises(InvalidArgumentError):
        from_arrow("x > 1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "expression",
    [
        (x > 1) & y.isin(["a", None]),
        x.is_null(nan_is_null=True) | (pc.divide(x.cast(pa.float64()), 2) < 1),
        x == pa.scalar(dt.date(2024, 1, 1)),
        x >= pa.scalar(dt.datetime(2024, 1, 1), pa.timestamp("us", "UTC")),
        ~x.isin(pa.array([1.5, None])),
        x == pa.scalar(7, pa.uint16()),
        x == pa.scalar(None, pa.null()),
    ],
)
def test_from_serialized_matches_from_arrow(expression: pc.Expression) -> None:
    assert from_serialized(serialized(expression)) == from_arrow(expression)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "no ARROW1 magic"),
        (serialized(x > 1)[:-20], "not a valid Arrow IPC file"),
        (string_offsets_past_their_data(), "offsets out of range"),
        (serialized(x > 1).replace(b"literal", b"litEral"), "unsupported expression element 'litEral'"),
        (serialized(pc.abs(x)), "unsupported function 'abs'"),
        (serialized(x == pa.scalar(1, pa.decimal128(5, 2))), "literals of type decimal128(5, 2) are not supported"),
        (serialized(x == pc.scalar(pa.scalar("a", pa.dictionary(pa.int8(), pa.string())))), "dictionary"),
    ],
)
def test_from_serialized_refuses_bad_bytes(data: bytes, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        from_serialized(data)
    assert fragment in str(info.value) and len(str(info.value)) < 1024


def test_from_serialized_refuses_nesting_beyond_the_limit() -> None:
    deep = x > 0
    for _ in range(MAX_DEPTH):
        deep = pc.invert(deep)
    with pytest.raises(ExpressionError, match=f"more than {MAX_DEPTH} levels"):
        from_serialized(serialized(deep))
    with pytest.raises(InvalidArgumentError, match="expected the bytes"):
        from_serialized("x > 1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tree", "text"),
    [
        (parse("a > 1 and b <= 'x'"), '((a > 1) and (b <= "x"))'),
        (parse("not a is null or b is not null"), "(invert(is_null(a, {nan_is_null=false})) or is_valid(b))"),
        (parse("a between 1 and 2"), "((a >= 1) and (a <= 2))"),
        (parse("a + b * 2"), "add(a, multiply(b, 2))"),
        (parse("-a"), "negate(a)"),
        (parse("a > null"), "(a > null[null])"),
    ],
)
def test_to_arrow_shapes(tree: Expr, text: str) -> None:
    assert str(to_arrow(tree)) == text


def test_to_arrow_division_casts() -> None:
    out = to_arrow(parse("a / 2"))
    assert str(out).startswith("divide(cast(a, {to_type=double") and "cast(2, {to_type=double" in str(out)


def test_to_arrow_rejects_bad_literals() -> None:
    with pytest.raises(ExpressionError, match="not a valid int64"):
        to_arrow(Compare("==", col("a"), Literal("x", I64)))
    with pytest.raises(ExpressionError, match="do not form one Arrow array"):
        to_arrow(IsIn(col("a"), (lit(-1), Literal(2**64 - 1, U64))))


_ARROW_IN_LISTS = st.one_of(
    *(
        st.lists(st.one_of(strategy, _NULL_LIT), max_size=3).map(tuple)
        for strategy in (_INT64_LITS, _FLOAT_LITS, _STR_LITS, _BOOL_LITS)
    )
)
_ARROW_TREES = _trees(_LITERALS, _ARROW_IN_LISTS, between=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ARROW_TREES)
def test_arrow_round_trip(tree: Expr) -> None:
    assert from_arrow(to_arrow(tree)) == tree


# --------------------------------------------------------------------------- evaluation through pyarrow

TABLE = pa.table(
    {
        "id": pa.array(range(5), pa.int64()),
        "price": pa.array([10, 20, None, -5, 0], pa.int64()),
        "qty": pa.array([1.5, float("nan"), 3.0, None, 0.0], pa.float64()),
        "name": pa.array(["apple", "Zürich", None, "O'Brien", ""], pa.string()),
        "flag": pa.array([True, False, None, True, False], pa.bool_()),
        "ts": pa.array(
            [
                dt.datetime(2024, 1, 1, tzinfo=UTC),
                dt.datetime(2024, 1, 1, 10, 0, 0, 500_000, tzinfo=UTC),
                None,
                dt.datetime(2023, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
                dt.datetime(2024, 6, 30, 22, 0, tzinfo=UTC),
            ],
            pa.timestamp("ms", "UTC"),
        ),
        "d": pa.array(
            [dt.date(2024, 1, 1), dt.date(2024, 1, 2), None, dt.date(2023, 12, 31), dt.date(2024, 7, 1)], pa.date32()
        ),
        "cat": pa.array(["a", "b", None, "a", "c"]).dictionary_encode(),
        "unit price": pa.array([2.0, 0.5, None, 1.0, 5.0], pa.float64()),
        "i8": pa.array([100, -100, None, 127, -128], pa.int8()),
        "u": pa.array([1, 2**64 - 1, None, 0, 2**63], pa.uint64()),
    }
)


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("price > 5", [0, 1]),
        ("5 < price", [0, 1]),
        ("price >= 2.5", [0, 1]),
        ("price between 0 and 10", [0, 4]),
        ("price not between 0 and 10", [1, 3]),
        ("price in (10, -5, null)", [0, 2, 3]),
        ("price in (10, -5)", [0, 3]),
        # "in" is never null, so a null price is "not in" any list without null
        ("price not in (10, -5)", [1, 2, 4]),
        ("price in ()", []),
        ("price is null", [2]),
        ("price is not null", [0, 1, 3, 4]),
        ("price > null", []),
        ("price < 18446744073709551615", [0, 1, 3, 4]),
        ("name == 'Zürich'", [1]),
        ("name = 'O''Brien'", [3]),
        ("name >= 'Z'", [0, 1]),
        ("name == ''", [4]),
        ("name in ('apple', 'Zürich')", [0, 1]),
        ("flag", [0, 3]),
        ("not flag", [1, 4]),
        ("flag or price < 0", [0, 3]),
        ("flag and price >= 10", [0]),
        ("flag is null or qty > 2", [2]),
        ("qty > 1", [0, 2]),
        ("qty != qty", [1]),
        ("price > 5 and qty > 1", [0]),
        ("not (price > 5 or name is null)", [3, 4]),
        ("ts >= '2024-01-01'", [0, 1, 4]),
        ("ts < '2024-01-01T10:00:00.5'", [0, 3]),
        ("ts == '2024-01-01T10:00:00.500'", [1]),
        ("ts == '2024-01-01T10:00:00.5001'", []),
        ("ts != '2024-01-01T10:00:00.5001'", [0, 1, 3, 4]),
        ("ts > '2024-01-01T12:00:00+02:00'", [1, 4]),
        ("ts between '2023-12-31T23:59:59.9991' and '2024-01-01T10:00:00.4999'", [0]),
        ("ts in ('2024-01-01', '2024-01-01T10:00:00.5001')", [0]),
        ("d between '2024-01-01' and '2024-01-02'", [0, 1]),
        ("d < '2024-01-01T12:00'", [0, 3]),
        ("cat in ('a', 'c')", [0, 3, 4]),
        ("cat != 'a'", [1, 4]),
        ('"unit price" > 1', [0, 4]),
        ("i8 > 100", [3]),
        ("i8 < 1000", [0, 1, 3, 4]),
        ("i8 in (127, 1000, -128.0, 1.5)", [3, 4]),
        ("u > 9223372036854775807", [1, 4]),
        ("u == 18446744073709551615", [1]),
        ("u in (0, 18446744073709551615, -1)", [1, 3]),
        ("u > -1", [0, 1, 3, 4]),
        ("1 = 1", [0, 1, 2, 3, 4]),
        ("1 = 2", []),
        ("price > -(2 * 3) + 1", [0, 1, 4]),
    ],
)
def test_filter_through_pyarrow(text: str, ids: list[int]) -> None:
    bound = bind_predicate(text, TABLE.schema)
    assert TABLE.filter(to_arrow(bound, TABLE.schema))["id"].to_pylist() == ids
    if not {"u", "i8"} & set(columns(bound)):
        # without a schema Arrow's own promotion applies; same rows for these columns
        assert TABLE.filter(to_arrow(bound))["id"].to_pylist() == ids


def test_nan_is_null_matches_pyarrow() -> None:
    expression = pc.field("qty").is_null(nan_is_null=True)
    bound = bind_predicate(expression, TABLE.schema)
    assert TABLE.filter(to_arrow(bound))["id"].to_pylist() == TABLE.filter(expression)["id"].to_pylist() == [1, 3]


@pytest.mark.parametrize(
    ("expression", "ids"),
    [
        ((pc.field("price") > 5) & pc.field("flag"), [0]),
        (pc.field("name").isin(["Zürich", None]), [1, 2]),
        (~pc.field("price").is_valid(), [2]),
        (pc.field("ts") >= pa.scalar(dt.datetime(2024, 1, 1, 10, tzinfo=UTC), pa.timestamp("s", "UTC")), [1, 4]),
        (pc.field("i8") == 1000, []),
    ],
)
def test_filter_from_arrow(expression: pc.Expression, ids: list[int]) -> None:
    bound = bind_predicate(expression, TABLE.schema)
    assert TABLE.filter(to_arrow(bound, TABLE.schema))["id"].to_pylist() == ids


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("i8 * 100", [10000, -10000, None, 12700, -12800]),
        ("price / 4", [2.5, 5.0, None, -1.25, 0.0]),
        ("-price + 1", [-9, -19, None, 6, 1]),
        ("u + 1", [2, 0, None, 1, -(2**63) + 1]),
        ("price * qty", [15.0, math.nan, None, None, 0.0]),
        ("price", [10, 20, None, -5, 0]),
    ],
)
def test_projection_through_pyarrow(text: str, values: list[object]) -> None:
    import pyarrow.dataset as ds

    bound = bind_arithmetic(text, TABLE.schema)
    out = ds.dataset(TABLE).to_table(columns={"v": to_arrow(bound, TABLE.schema)})["v"]
    assert out.type == result_type(bound, TABLE.schema)
    nan = object()  # NaN != NaN; compare it as a marker
    assert [nan if v != v else v for v in out.to_pylist()] == [nan if v != v else v for v in values]


# --------------------------------------------------------------------------- properties of binding

_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_I8_U64 = pa.table(
    {
        "i8": pa.array([-128, -1, 0, 5, 127, None], pa.int8()),
        "u": pa.array([0, 1, 2**63, 2**64 - 1, 7, None], pa.uint64()),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["i8", "u"]),
    st.sampled_from(sorted(_OPS)),
    st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from([-129, -128, 127, 128, 0, 2**63, -1])),
)
def test_integer_literals_outside_the_column_range(name: str, op: str, value: int) -> None:
    bound = bind_predicate(f"{name} {op} {value}", _I8_U64.schema)
    got = _I8_U64.filter(to_arrow(bound, _I8_U64.schema))[name].to_pylist()
    expected = [v for v in _I8_U64[name].to_pylist() if v is not None and _OPS[op](v, value)]
    assert got == expected


_STAMPS = pa.table({"t": pa.array([-2, -1, 0, 1, 2, 3, None], pa.timestamp("s"))})


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(_OPS)),
    st.integers(-3_000_000_000, 4_000_000_000),
)
def test_timestamp_literals_finer_than_the_column(op: str, nanos: int) -> None:
    seconds = Fraction(nanos, 10**9)
    whole, frac = divmod(nanos, 10**9)
    moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=whole)
    text = f"t {op} '{moment:%Y-%m-%dT%H:%M:%S}.{frac:09d}'"
    bound = bind_predicate(text, _STAMPS.schema)
    got = _STAMPS.filter(to_arrow(bound))["t"].cast(pa.int64()).to_pylist()
    expected = [v for v in range(-2, 4) if _OPS[op](v, seconds)]
    assert got == expected, text
