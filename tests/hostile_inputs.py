"""Hostile input for the Flight endpoint and the expression language, and an endpoint in a child process.

Shared by the Flight and expression tests and the fuzz tests under ``fuzz/``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as fl

TOKEN = "fuzz-token"
AUTH = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())], timeout=60)

#: the statuses the endpoint documents for bad input
DOCUMENTED = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED"})


def serialized(expression: pc.Expression) -> bytes:
    """The bytes pyarrow serializes ``expression`` to (what a ticket's ``{"expression": ...}`` holds)."""
    _, (buffer,) = expression.__reduce__()
    return bytes(buffer.to_pybytes())


def string_offsets_past_their_data() -> bytes:
    """``x == "abc"`` serialized, with the string literal's end offset moved 1 GiB past its data.

    pyarrow's ``Expression._deserialize`` dies of a segmentation fault on it.
    """
    good = serialized(pc.field("x") == "abc")
    offsets = b"\x00\x00\x00\x00\x03\x00\x00\x00abc"  # [0, 3] then the characters
    assert good.count(offsets) == 1
    return good.replace(offsets, b"\x00\x00\x00\x00\x00\x00\x00\x40abc")


def expression_ticket(data: bytes, dataset: str = "t") -> bytes:
    """A ticket whose predicate is the serialized expression ``data``."""
    return json.dumps({"dataset": dataset, "predicate": {"expression": base64.b64encode(data).decode()}}).encode()


#: the columns of the child endpoint's dataset ``t``
TABLE = pa.table(
    {
        "i": pa.array([1, -2, None, 4, 2**40], pa.int64()),
        "u": pa.array([1, 2, 3, None, 2**63], pa.uint64()),
        "f": pa.array([0.5, float("nan"), None, -1.0, 1e300], pa.float64()),
        "s": pa.array(["a", "Zürich", None, "", "O'Brien"], pa.string()),
        "b": pa.array([True, False, None, True, False], pa.bool_()),
        "ts": pa.array([0, 1, None, 10**12, -(10**12)], pa.timestamp("ms", "UTC")),
        "d": pa.array([0, 1, None, 19000, -1], pa.date32()),
    }
)

#: valid predicates over TABLE, each using a different part of the serialized form
EXPRESSIONS = [
    (pc.field("i") > 1) & pc.field("s").isin(["a", None]),
    pc.field("f").is_null(nan_is_null=True) | (pc.field("f") < pc.divide(pc.scalar(3).cast(pa.float64()), 2)),
    pc.field("d") == pa.scalar(dt.date(2024, 1, 1)),
    pc.field("ts") >= pa.scalar(dt.datetime(2024, 1, 1), pa.timestamp("us", "UTC")),
    ~pc.field("f").isin(pa.array([1.5, None])),
    (pc.field("u") == pa.scalar(7, pa.uint16())) | pc.field("b"),
    pc.field("i") > pc.scalar(pa.scalar(3, pa.int8())) * 2 - pc.negate(pc.scalar(1)),
    pc.field("s").is_valid(),
]

_SERVER = textwrap.dedent(
    """
    import sys
    import pyarrow.flight as fl
    from dpdpu import Runtime
    from dpdpu.network.flight import FlightEndpoint
    sys.path.insert(0, sys.argv[1])
    from hostile_inputs import TABLE, TOKEN, AUTH

    with Runtime("bluefield3", workers=2) as rt, FlightEndpoint(runtime=rt, token=TOKEN) as ep:
        ep.serve_background()
        with fl.FlightClient(ep.location) as c:
            writer, meta = c.do_put(fl.FlightDescriptor.for_path("t"), TABLE.schema, AUTH)
            writer.write_table(TABLE)
            writer.done_writing()
            meta.read()
            writer.close()
        print(ep.location, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin
    """
)


class ChildEndpoint:
    """A FlightEndpoint (token :data:`TOKEN`, dataset ``t`` = :data:`TABLE`) served by a child process.

    A crash of the server then fails the test that caused it instead of
    killing pytest; :meth:`ensure_alive` starts a new one after a crash.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.client: fl.FlightClient | None = None
        self.crashes: list[int] = []
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(Path(__file__).parent)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        location = self.proc.stdout.readline().strip()
        if not location.startswith("grpc://127.0.0.1:"):
            raise RuntimeError(f"the child endpoint did not start (exit code {self.proc.poll()})")
        self.client = fl.FlightClient(location)

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def ensure_alive(self) -> fl.FlightClient:
        """The client, after starting a new server if the last one died (its exit code is kept in ``crashes``)."""
        if not self.alive():
            assert self.proc is not None
            self.crashes.append(self.proc.returncode)
            self.close()
            self.start()
        assert self.client is not None
        return self.client

    def rss_mib(self) -> float:
        """The server's resident memory."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def close(self) -> None:
        """Stop the server (it exits when its stdin closes)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


_DEBUG_STATUS = re.compile(r"gRPC client debug context: ([A-Z_]+):")


def status_of(exc: BaseException) -> str:
    """The gRPC status a pyarrow Flight client exception stands for."""
    text = str(exc)
    found = _DEBUG_STATUS.search(text)
    if found:
        return found.group(1)
    if "resource exhausted" in text:
        return "RESOURCE_EXHAUSTED"
    # some client calls (get_schema) raise a Flight status as a plain OSError naming it at the end
    if isinstance(exc, fl.FlightUnauthenticatedError) or text.endswith("Detail: Unauthenticated"):
        return "UNAUTHENTICATED"
    if isinstance(exc, fl.FlightError):
        return type(exc).__name__
    if isinstance(exc, KeyError):
        return "NOT_FOUND"
    if isinstance(exc, pa.ArrowInvalid):
        return "INVALID_ARGUMENT"
    return type(exc).__name__


def check_refusal(exc: BaseException) -> None:
    """Assert that ``exc`` is a documented refusal with a message under 1 KiB."""
    text = str(exc)
    assert status_of(exc) in DOCUMENTED, f"{status_of(exc)}: {text[:2000]}"
    assert len(text.encode()) < 1024, f"{len(text.encode())} bytes: {text[:2000]}"


def call(fn: Any) -> BaseException | None:
    """Run ``fn``; the Flight error it raised (checked by :func:`check_refusal`), or None."""
    try:
        fn()
    except (fl.FlightError, pa.ArrowException, KeyError, NotImplementedError, OSError) as exc:
        check_refusal(exc)
        return exc
    return None


# --- generators shared by the fuzz tests (through hypothesis.strategies.randoms) and the long run ---------

SERIALIZED = [serialized(e) for e in EXPRESSIONS]
_INTERESTING = [0, 1, 2, 7, 8, 255, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 20, 1 << 30]

#: pieces of the predicate language, its near misses and its limits
WORDS = (
    *TABLE.column_names,
    "nope",
    "(",
    ")",
    "and",
    "or",
    "not",
    "in",
    "between",
    "is",
    "null",
    "true",
    "false",
    "==",
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    ",",
    "0",
    "1",
    "-5",
    "1.5",
    ".5",
    "1e308",
    "1e999",
    "1_000",
    "1__0",
    "18446744073709551616",
    "'a'",
    "'Zürich'",
    "'2024-01-01'",
    "'2024-01-01T10:00:00+02:00'",
    "''''",
    '"s"',
    '"a ""b"""',
    "'",
    '"',
    "!",
    ";",
    "\n",
)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a few bits flipped, bytes or integers overwritten, or truncated, or spliced with another."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(5)
        if not out:
            break
        at = rng.randrange(len(out))
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.randrange(256)
        elif kind == 2:
            value = rng.choice(_INTERESTING) + rng.choice((-1, 0, 0, 1))
            out[at : at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        elif kind == 3:
            del out[rng.randrange(len(out)) :]
        else:
            other = rng.choice(SERIALIZED)
            start = rng.randrange(len(other))
            out[at : at + rng.randint(0, 64)] = other[start : start + rng.randint(1, 64)]
    return bytes(out)


def token_soup(rng: random.Random, size: int = 12) -> str:
    """Words of the predicate language in a random order."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, size)))


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, at most a few levels deep."""
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 2**31, 2**63, -(2**64), rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, float("inf"), float("nan")])
    if kind in (4, 5):
        words = ["", "t", "nope", "lz4", "zstd", "dataset", "kv", "x" * 200, "Zürich", "\x00", token_soup(rng)]
        return rng.choice(words)
    if kind == 6:
        return token_soup(rng)
    if kind == 7:
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["dataset", "predicate", "columns", "compression", "kind", "mode", "format", "pipeline", "expression", "x"]
    return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def malformed_ticket(rng: random.Random) -> bytes:
    """A ticket a hostile client might send: broken JSON, wrong shapes, bad fields, extreme sizes."""
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 200))
    if kind == 1:
        good = json.dumps({"dataset": "t", "predicate": token_soup(rng), "columns": ["i"]}).encode()
        return good[: rng.randrange(len(good))]
    if kind == 2:
        levels = rng.choice([33, 100, 1000, 5000, 100_000])
        return (b'{"a": ' * levels + b"1" + b"}" * levels) if rng.random() < 0.5 else b"[" * levels
    if kind == 3:
        return json.dumps(json_value(rng)).encode()
    if kind == 4:
        return json.dumps({"dataset": json_value(rng), "predicate": json_value(rng)}).encode()
    if kind == 5:
        return json.dumps({"dataset": "t", "predicate": token_soup(rng, 30)}).encode()
    if kind == 6:
        levels = rng.choice([65, 300, 5000])
        texts = ["(" * levels + "i > 1" + ")" * levels, "not " * levels + "b", " or ".join(["i > 1"] * levels)]
        text = rng.choice(texts)
        return json.dumps({"dataset": "t", "predicate": text}).encode()
    if kind == 7:
        return json.dumps({"dataset": "t", "columns": json_value(rng), "compression": json_value(rng)}).encode()
    if kind == 8:
        name = rng.choice(["../etc", "-x", "x" * 129, "x" * 100_000, "t\n", "t/..", "", "nosuch"])
        return json.dumps({"dataset": name}).encode()
    if kind == 9:
        return json.dumps({"dataset": "t", rng.choice(["colums", "Dataset", "", "k" * 1000]): 1}).encode()
    if kind == 10:
        return json.dumps({"kind": json_value(rng), "dataset": "t"}).encode()
    return expression_ticket(mutate(rng.choice(SERIALIZED), rng))


def big_ticket(rng: random.Random, size: int = 8 << 20) -> bytes:
    """A ticket of ``size`` bytes: a huge predicate, dataset name or nesting."""
    kind = rng.randrange(3)
    if kind == 0:
        return json.dumps({"dataset": "t", "predicate": "i > " + "1" * (size - 40)}).encode()
    if kind == 1:
        return json.dumps({"dataset": "x" * (size - 20)}).encode()
    return b"[" * size
