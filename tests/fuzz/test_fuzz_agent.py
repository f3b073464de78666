"""Fuzzing the agent's inputs against a real ``dpdpu agent``: deployed modules, deployment
names, and invocation arguments (JSON, payloads, timeouts).

One agent serves the module.  Whatever a request holds, it is answered with a
documented status and a short message, and the agent keeps serving.  Example counts
come from the active hypothesis profile (see tests/conftest.py):
``pytest tests/fuzz/test_fuzz_agent.py --hypothesis-profile=fuzz`` runs them long.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Iterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_agent import AgentProc, start_agent

from dpdpu.agent._proto import control_pb2 as pb
from dpdpu.agent.client import AgentClient, AgentError
from dpdpu.agent.deployments import NAME_PATTERN

SEED = textwrap.dedent(
    """
    import os
    import dpdpu

    LIMIT = 3

    @dpdpu.offload
    def add(a, b=0):
        return a + b

    @dpdpu.offload(name="twice")
    def double(x):
        return [x, x]

    def helper(n):
        return sum(range(n))
    """
)

ECHO = textwrap.dedent(
    """
    import dpdpu

    @dpdpu.offload
    def echo(*args, **kwargs):
        # bytes (a payload) as their length: they do not travel back as JSON
        return {"args": [len(a) if isinstance(a, bytes) else a for a in args], "kwargs": kwargs}
    """
)

# Lines a hostile module might hold: each ends its import in a different way.
HOSTILE_LINES = [
    "import os; os._exit(3)",
    "import ctypes; ctypes.string_at(0)",
    "raise SystemExit(2)",
    "raise KeyboardInterrupt",
    "raise MemoryError('no')",
    "x = bytearray(1 << 40)",
    "import sys; sys.setrecursionlimit(50)",
    "print('out' * 1000)",
    "import sys; sys.stdout.write('@@dpdpu ' * 10)",
    "import threading; threading.Thread(target=lambda: None).start()",
    "raise ValueError('v' * 100000)",
    "(" * 300 + ")" * 300,
    "-" * 5000 + "1",
    "x = '\\x00'",
    "@dpdpu.offload(engine='quantum')\ndef odd():\n    return 0",
    "@dpdpu.offload(name='add')\ndef clash():\n    return 0",
    "dpdpu.offload = None",
    "__dpdpu_offload__ = {'name': 'fake'}",
]

#: statuses a refused deploy may get (documented in the README)
DEPLOY_REFUSALS = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    data_dir = tmp_path_factory.mktemp("fuzz-agent") / "data"
    proc = start_agent(
        data_dir, "--no-flight", "--workers", "2", "--worker-memory", "512M", "--import-timeout", "2",
        "--invoke-timeout", "5", "--max-module-bytes", "65536",
    )  # fmt: skip
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def client(agent: AgentProc) -> Iterator[AgentClient]:
    with agent.client() as c:
        c.deploy("echo.py", name="echo", text=ECHO)
        yield c


def _still_serving(agent: AgentProc, client: AgentClient) -> None:
    assert agent.proc.poll() is None, "the agent died"
    assert client.health()["status"] == "serving"


def _short(exc: AgentError) -> None:
    assert len(str(exc).encode()) < 1024, f"message of {len(str(exc))} characters"


# --- modules ---------------------------------------------------------------------------


@st.composite
def mutated_modules(draw: st.DrawFn) -> str:
    lines = SEED.splitlines()
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["hostile", "delete", "duplicate", "garble", "indent"]))
        at = draw(st.integers(0, len(lines)))
        if kind == "hostile":
            lines.insert(at, draw(st.sampled_from(HOSTILE_LINES)))
        elif kind == "delete" and lines:
            del lines[min(at, len(lines) - 1)]
        elif kind == "duplicate" and lines:
            lines.insert(at, lines[min(at, len(lines) - 1)])
        elif kind == "garble" and lines:
            i = min(at, len(lines) - 1)
            noise = draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=8))
            cut = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + noise + lines[i][cut:]
        elif kind == "indent" and lines:
            i = min(at, len(lines) - 1)
            lines[i] = "  " + lines[i]
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n#"]))


modules = st.one_of(
    mutated_modules(),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=200),
    st.builds(lambda n: "x = " + "[" * n + "]" * n + "\n", st.integers(1, 3000)),
)


@given(source=modules)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_deployed_modules(agent: AgentProc, client: AgentClient, source: str) -> None:
    try:
        info = client.deploy("fuzz.py", name="fuzz", text=source)
    except AgentError as exc:
        event(f"refused: {exc.code}")
        assert exc.code in DEPLOY_REFUSALS, (exc.code, str(exc)[:200])
        _short(exc)
    else:
        event("deployed")
        assert info.offloads, "a deployment without offloads was accepted"
        for offload in info.offloads:
            try:
                client.invoke(f"fuzz.{offload}", timeout=5)
            except AgentError as exc:  # wrong arguments, a crash: the call fails, not the agent
                assert exc.code in {"UNKNOWN", "ABORTED", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT"}, exc.code
                _short(exc)
    _still_serving(agent, client)


# --- names -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw(agent: AgentProc) -> Iterator[Any]:
    """Send a request message as it is (the Python client fills in defaults of its own)."""
    md = (("authorization", f"Bearer {agent.token}"),)
    with grpc.insecure_channel(agent.address) as channel:

        def call(method: str, request: Any, reply: Any) -> Any:
            stub = channel.unary_unary(
                f"/dpdpu.agent.v1.Control/{method}", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=reply.FromString,
            )  # fmt: skip
            return stub(request, metadata=md, timeout=30)

        yield call


VALID = re.compile(NAME_PATTERN)
names = st.one_of(
    st.from_regex(VALID, fullmatch=True),
    st.from_regex(VALID, fullmatch=True).map(lambda n: n + "\n"),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=80),
    st.sampled_from([".", "..", "../up", "a/b", ".hidden", "a.b", "-x", "x" * 65, " x", "x\x00", "\n"]),
)


@given(name=names)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_deployment_names(agent: AgentProc, client: AgentClient, raw: Any, name: str) -> None:
    root = agent.data_dir / "deployments"
    before = {p.name for p in root.iterdir()}
    try:
        reply = raw("Deploy", pb.DeployRequest(name=name, source=SEED, filename="n.py"), pb.DeployReply)
    except grpc.RpcError as exc:
        event("refused")
        assert VALID.fullmatch(name) is None, f"valid name {name!r} refused: {exc.details()}"
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and len((exc.details() or "").encode()) < 1024
        assert {p.name for p in root.iterdir()} == before, "a refused deploy left something behind"
    else:
        event("deployed")
        assert VALID.fullmatch(name) is not None, f"invalid name {name!r} accepted"
        assert reply.deployment.name == name and (root / name).is_dir()
        client.undeploy(name)
        assert not (root / name).exists()
    _still_serving(agent, client)


# --- invocation arguments --------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
args_texts = st.one_of(
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(["NaN", "[Infinity, -Infinity]", "9" * 5000, '{"a": 1, "a": 2}', '"\\ud800"', "1e999"]),
)
timeouts = st.one_of(st.just(0.0), st.floats(allow_nan=True, allow_infinity=True), st.floats(0.001, 10))


@given(args_json=args_texts, payload=st.none() | st.binary(max_size=64), timeout=timeouts)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_invoke_arguments(
    agent: AgentProc, client: AgentClient, raw: Any, args_json: str, payload: bytes | None, timeout: float
) -> None:
    request = pb.InvokeRequest(
        offload="echo.echo", args_json=args_json, payload=payload or b"", has_payload=payload is not None,
        timeout_s=timeout,
    )  # fmt: skip
    expected = _decoded(args_json)
    try:
        reply = raw("Invoke", request, pb.InvokeReply)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        event(f"failed: {code.name}")
        assert len(details.encode()) < 1024
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            bad_timeout = not (math.isfinite(timeout) and 0 <= timeout <= 86400)
            assert bad_timeout or expected is _UNDECODABLE or "nested too deeply" in details, details
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            assert 0 < timeout < 1, (timeout, details)  # too short a timeout to start the call
        else:
            # A value nested so deeply that the offload or the encoding of its result runs out of
            # stack: a failed call, said so.
            assert code == grpc.StatusCode.UNKNOWN, (code, details)
            assert "cannot be sent" in details or "RecursionError" in details, details
    else:
        event("answered")
        assert expected is not _UNDECODABLE, "invalid JSON was accepted"
        if expected is not _TOO_DEEP:  # deeper than this (deeper) stack decodes
            got = json.loads(reply.result_json)
            args, kwargs = _split(expected, args_json)
            if payload is not None:
                args = [len(payload), *args]
            assert _same(got, {"args": args, "kwargs": kwargs})
    _still_serving(agent, client)


_UNDECODABLE = object()
_TOO_DEEP = object()


def _decoded(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return _UNDECODABLE
    except RecursionError:
        return _TOO_DEEP


def _split(value: Any, text: str) -> tuple[list[Any], dict[str, Any]]:
    if not text:
        return [], {}
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    return [value], {}


def _same(a: Any, b: Any) -> bool:
    # NaN never equals itself; JSON turns tuples into lists.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
