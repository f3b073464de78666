"""Fuzzing the expression language and the reader of serialized pyarrow expressions, in process.

Both parsers are pure Python (the serialized form is read by
``dpdpu.compute.ipc_reader``, never by pyarrow's native deserializer), so a
malformed input can only raise: these tests run thousands of them in the
test process itself.  Whatever the input, the outcome is a tree or an
``ExpressionError`` with a message under 1 KiB.
"""

from __future__ import annotations

import random

from hostile_inputs import EXPRESSIONS, SERIALIZED, TABLE, WORDS, mutate
from hypothesis import given
from hypothesis import strategies as st

from dpdpu.compute.expr import bind_arithmetic, bind_predicate, from_arrow, from_serialized, parse, render
from dpdpu.errors import ExpressionError

SCHEMA = TABLE.schema

_WORDS = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=3)), max_size=30)
_TEXTS = st.one_of(
    _WORDS.map(" ".join),
    _WORDS.map("".join),
    st.text(max_size=60),
    # deep nesting around a valid core, just below and above the limits
    st.tuples(st.sampled_from(["(", "not ", "-", "((", "not ("]), st.integers(0, 400)).map(
        lambda p: p[0] * p[1] + "i > 1" + ")" * (p[1] * p[0].count("("))
    ),
)


def _checked(error: ExpressionError) -> None:
    message = str(error)
    assert len(message.encode()) < 1024, message[:2000]


@given(_TEXTS)
def test_predicate_text(text: str) -> None:
    try:
        tree = parse(text)
    except ExpressionError as exc:
        _checked(exc)
        return
    assert parse(render(tree)) == tree
    for bind in (bind_predicate, bind_arithmetic):
        try:
            bind(tree, SCHEMA)
        except ExpressionError as exc:
            _checked(exc)


@given(st.randoms(use_true_random=False))
def test_serialized_expression_mutations(rng: random.Random) -> None:
    data = mutate(rng.choice(SERIALIZED), rng)
    try:
        tree = from_serialized(data)
    except ExpressionError as exc:
        _checked(exc)
        return
    assert render(tree)
    try:
        bind_predicate(tree, SCHEMA)
    except ExpressionError as exc:
        _checked(exc)


@given(st.binary(max_size=300), st.booleans())
def test_serialized_expression_from_arbitrary_bytes(data: bytes, framed: bool) -> None:
    try:
        from_serialized(b"ARROW1\x00\x00" + data + b"ARROW1" if framed else data)
    except ExpressionError as exc:
        _checked(exc)


def test_valid_serialized_expressions_translate_as_from_arrow() -> None:
    for expression, data in zip(EXPRESSIONS, SERIALIZED, strict=True):
        assert from_serialized(data) == from_arrow(expression)
        bind_predicate(from_serialized(data), SCHEMA)
