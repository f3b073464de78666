"""Fuzzing the Flight endpoint as a hostile client would: the stock ``pyarrow.flight`` client on loopback.

The endpoint runs in a child process started once for the module
(``hostile_inputs.ChildEndpoint``), so a crash fails the example that caused
it instead of killing pytest, and a new server serves the next example.
Every call either succeeds or is refused with a documented status
(INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED) and a message under 1 KiB, and
the server is still running afterwards.  Tickets, descriptors (commands and
paths, on every verb that takes one), action bodies and serialized
expressions are fuzzed.

``test_long_run`` sends mutated serialized expressions and malformed tickets
(with a few of 8 MiB among them) in turn and reports the server's memory
before and after: twice the profile's example count of each, at most 10,000,
so ``pytest tests/fuzz/test_fuzz_flight.py --hypothesis-profile=fuzz -k
long_run -s`` sends 10,000 of each.
"""

from __future__ import annotations

import collections
import json
import random
from collections.abc import Iterator
from typing import Any

import pyarrow.flight as fl
import pytest
from hostile_inputs import (
    AUTH,
    SERIALIZED,
    TABLE,
    WORDS,
    ChildEndpoint,
    big_ticket,
    call,
    expression_ticket,
    malformed_ticket,
    mutate,
    status_of,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

NO_TOKEN = fl.FlightCallOptions(timeout=60)
WRONG_TOKEN = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer nope")], timeout=60)


@pytest.fixture(scope="module")
def server() -> Iterator[ChildEndpoint]:
    endpoint = ChildEndpoint()
    yield endpoint
    endpoint.close()
    assert not endpoint.crashes, f"the server died {len(endpoint.crashes)} times (exit codes {endpoint.crashes})"


def run(server: ChildEndpoint, options: fl.FlightCallOptions, fn: Any) -> None:
    """Call ``fn(client)``; check the outcome against the documented statuses and that the server survived."""
    client = server.ensure_alive()
    refused = call(lambda: fn(client))
    assert server.alive(), f"the server died (exit code {server.proc.returncode if server.proc else None})"
    if options is not AUTH:
        assert refused is not None and status_of(refused) == "UNAUTHENTICATED", refused


# --- strategies ----------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
TEXTS = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=3)), max_size=20).map(" ".join)
EXPRESSIONS = st.randoms(use_true_random=False).map(
    lambda rng: {"expression": json.loads(expression_ticket(mutate(rng.choice(SERIALIZED), rng)))["predicate"]}
)
NAMES = st.one_of(st.sampled_from(["t", "nosuch", "", "-x", "../t", "x" * 129]), st.text(max_size=140), JSON)
TICKET_OBJECTS = st.fixed_dictionaries(
    {},
    optional={
        "dataset": NAMES,
        "predicate": st.one_of(TEXTS, EXPRESSIONS, JSON),
        "columns": st.one_of(st.lists(st.sampled_from([*TABLE.column_names, "nope"]), max_size=4), JSON),
        "compression": st.one_of(st.sampled_from(["lz4", "zstd", "deflate", None]), JSON),
        "kind": st.one_of(st.sampled_from(["dataset", "nokind", ""]), JSON),
        "mode": st.one_of(st.sampled_from(["create", "replace", "append"]), JSON),
        "colums": JSON,
    },
)
PIPELINES = st.fixed_dictionaries(
    {
        "pipeline": st.lists(
            st.dictionaries(
                st.sampled_from(["filter", "project", "aggregate", "compress", "sort"]),
                st.one_of(TEXTS, EXPRESSIONS, st.lists(st.sampled_from(TABLE.column_names)), JSON),
                min_size=1,
                max_size=2,
            ),
            max_size=3,
        )
    }
)
RAW = st.one_of(st.binary(max_size=200), st.randoms(use_true_random=False).map(malformed_ticket))
TICKETS = st.one_of(TICKET_OBJECTS.map(lambda t: json.dumps(t).encode()), RAW)
COMMANDS = st.one_of(TICKETS, PIPELINES.map(lambda p: json.dumps(p).encode()))
PATHS = st.lists(st.one_of(st.sampled_from(["t", "nosuch", ""]), st.text(max_size=140)), max_size=3)
OPTIONS = st.integers(0, 9).map(lambda i: NO_TOKEN if i == 0 else WRONG_TOKEN if i == 1 else AUTH)


def descriptor(command: bytes | None, path: list[str]) -> fl.FlightDescriptor:
    return fl.FlightDescriptor.for_command(command) if command is not None else fl.FlightDescriptor.for_path(*path)


def put(client: fl.FlightClient, target: fl.FlightDescriptor, options: fl.FlightCallOptions) -> None:
    writer, meta = client.do_put(target, TABLE.schema, options)
    try:
        writer.write_table(TABLE)
        writer.done_writing()
        meta.read()
    finally:
        writer.close()


def exchange(client: fl.FlightClient, target: fl.FlightDescriptor, options: fl.FlightCallOptions) -> None:
    writer, reader = client.do_exchange(target, options)
    try:
        writer.begin(TABLE.schema)
        writer.write_table(TABLE)
        writer.done_writing()
        reader.read_all()
    finally:
        writer.close()


# --- the verbs -------------------------------------------------------------------------------------------


@given(TICKETS, OPTIONS)
def test_tickets(server: ChildEndpoint, ticket: bytes, options: fl.FlightCallOptions) -> None:
    run(server, options, lambda c: c.do_get(fl.Ticket(ticket), options).read_all())


@given(st.randoms(use_true_random=False))
def test_serialized_expressions(server: ChildEndpoint, rng: random.Random) -> None:
    ticket = expression_ticket(mutate(rng.choice(SERIALIZED), rng))
    run(server, AUTH, lambda c: c.do_get(fl.Ticket(ticket), AUTH).read_all())


@given(
    st.sampled_from(["get_flight_info", "get_schema", "do_put", "do_exchange"]),
    st.one_of(st.none(), COMMANDS),
    PATHS,
    OPTIONS,
)
def test_descriptors(
    server: ChildEndpoint, verb: str, command: bytes | None, path: list[str], options: fl.FlightCallOptions
) -> None:
    target = descriptor(command, path)
    if verb == "get_flight_info":
        run(server, options, lambda c: c.get_flight_info(target, options))
    elif verb == "get_schema":
        run(server, options, lambda c: c.get_schema(target, options))
    elif verb == "do_put":
        run(server, options, lambda c: put(c, target, options))
    else:
        run(server, options, lambda c: exchange(c, target, options))


@given(
    st.one_of(st.sampled_from(["stats", "devices", "drop", "offloads", "nope"]), st.text(max_size=40)),
    st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=100), st.just(b"")),
    OPTIONS,
)
def test_actions(server: ChildEndpoint, kind: str, body: bytes, options: fl.FlightCallOptions) -> None:
    assume(not (kind == "drop" and b'"t"' in body))  # the dataset the other examples query stays
    run(server, options, lambda c: list(c.do_action(fl.Action(kind, body), options)))


# --- the long run -----------------------------------------------------------------------------------------


def test_long_run(server: ChildEndpoint) -> None:
    """Mutated serialized expressions and malformed tickets in turn: no crash, documented statuses, bounded memory."""
    count = min(2 * settings().max_examples, 10_000)
    rng = random.Random(20261204)
    statuses: dict[str, collections.Counter[str]] = {"expressions": collections.Counter()}
    statuses["tickets"] = collections.Counter()
    client = server.ensure_alive()
    rss_before = server.rss_mib()
    for i in range(count):
        sent = {
            "expressions": expression_ticket(mutate(rng.choice(SERIALIZED), rng)),
            "tickets": malformed_ticket(rng) if i % 100 else big_ticket(rng),
        }
        for what, ticket in sent.items():
            refused = call(lambda t=ticket: client.do_get(fl.Ticket(t), AUTH).read_all())
            statuses[what][status_of(refused) if refused is not None else "OK"] += 1
        assert server.alive(), f"the server died after {i + 1} rounds"
    rss_after = server.rss_mib()
    print(f"\n{count} of each; statuses {dict(statuses)}")
    print(f"server RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB after")
    assert rss_after < rss_before + 1024
