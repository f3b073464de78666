"""Fuzz: kv-sim trace files (JSON and CSV), from random text and from valid traces changed.

A trace either loads (and then replays) or fails with a TraceError whose message is
short; nothing else escapes, however long or deep the input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpdpu.kv.sim import TraceError, load_trace, simulate, trace_tokens

MESSAGE_LIMIT = 1024
#: Replay only traces this small (the parser allows far more tokens per request).
REPLAY_TOKENS = 20_000

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
spans = st.one_of(
    st.fixed_dictionaries({"stream": st.text(max_size=10), "tokens": st.integers(-5, 3000) | json_values}),
    st.fixed_dictionaries({"ids": st.lists(st.integers(-(2**64), 2**64), max_size=20) | json_values}),
    json_values,
)
requests = st.one_of(
    st.fixed_dictionaries(
        {"prompt": st.lists(spans, max_size=4) | json_values},
        optional={
            "t": st.floats() | st.integers(-(2**70), 2**70) | json_values,
            "session": json_values,
            "output_tokens": json_values,
        },
    ),
    json_values,
)
traces = st.one_of(
    st.fixed_dictionaries({"requests": st.lists(requests, max_size=5)}, optional={"format": json_values}),
    json_values,
)


def load(path: Path) -> list[dict[str, Any]] | None:
    try:
        return load_trace(path)
    except TraceError as exc:
        assert len(str(exc)) < MESSAGE_LIMIT + len(str(path)), str(exc)[:2000]
        return None


def replay(trace: list[dict[str, Any]]) -> None:
    if sum(len(trace_tokens(r)) for r in trace) <= REPLAY_TOKENS:
        report = simulate(trace, model="tiny:2:2:8", chunk_tokens=16)
        assert report.requests == len(trace)


@pytest.fixture
def where(tmp_path: Path) -> Path:
    return tmp_path


@given(doc=traces)
def test_json_traces(where: Path, doc: Any) -> None:
    path = where / "trace.json"
    path.write_text(json.dumps(doc))
    trace = load(path)
    if trace is not None:
        replay(trace)


@given(
    text=st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")),
    suffix=st.sampled_from([".json", ".csv"]),
)
def test_random_text(where: Path, text: str, suffix: str) -> None:
    path = where / f"trace{suffix}"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if suffix == ".json" else text.encode("latin-1", "replace"))
    trace = load(path)
    if trace is not None:
        replay(trace)


csv_fields = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30)


@given(rows=st.lists(st.tuples(csv_fields, csv_fields, csv_fields), max_size=6), header=st.booleans())
def test_csv_traces(where: Path, rows: list[tuple[str, str, str]], header: bool) -> None:
    lines = (["t,session,prompt"] if header else []) + [",".join(row) for row in rows]
    path = where / "trace.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    trace = load(path)
    if trace is not None:
        replay(trace)


@given(depth=st.integers(1, 100_000), long=st.integers(0, 2_000_000))
def test_deep_and_long_inputs(where: Path, depth: int, long: int) -> None:
    path = where / "trace.json"
    path.write_text(
        '{"requests": [{"prompt": [{"stream": "' + "x" * long + '", "tokens": ' + "[" * depth + "]" * depth + "}]}]}"
    )
    assert load(path) is None
