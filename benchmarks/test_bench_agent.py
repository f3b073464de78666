"""Invoke of a trivial deployed offload vs a plain gRPC unary echo, both over loopback.

- baseline ``echo``: a separate Python process serving one unary method through a
  generic handler (bytes in, the same bytes out, no interceptor, a thread pool like
  the agent's); the client sends a request of the size of the agent's and waits
  for the answer.
- ``invoke``: ``AgentClient.invoke("bench.add", 1, 2)`` against ``dpdpu agent``:
  token check, JSON arguments, the runtime placing the task on the DPU's Arm
  cores, the round trip to the worker process that runs the offload, the JSON
  result.
- ``invoke_in_process``: the same against ``dpdpu agent --isolation none``, which
  runs the offload on the agent's own engine thread: the difference from
  ``invoke`` is what isolating offloads in worker processes costs.

The goal is at most 2x the echo's latency (ratio >= 0.5).  Run:
``pytest benchmarks/test_bench_agent.py``.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from dpdpu.agent._proto import control_pb2 as pb
from dpdpu.agent.client import AgentClient

OFFLOADS = textwrap.dedent(
    """
    import dpdpu

    @dpdpu.offload
    def add(a, b):
        return a + b
    """
)

ECHO_SERVER = textwrap.dedent(
    """
    import concurrent.futures, sys, grpc

    def echo(request, context):
        return request

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(None)
    """
)


def _first_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise RuntimeError("server did not start")
    return line


def _agent(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> Iterator[AgentClient]:
    data_dir: Path = tmp_path_factory.mktemp("bench-agent")
    cmd = [sys.executable, "-m", "dpdpu", "agent", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    cmd.append("--no-flight")
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, text=True)
    try:
        state = json.loads(_first_line(proc))
        token = (data_dir / "token").read_text().strip()
        with AgentClient(state["listen"], token) as client:
            client.deploy("bench.py", name="bench", text=OFFLOADS)
            yield client
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentClient]:
    yield from _agent(tmp_path_factory)


@pytest.fixture(scope="module")
def agent_in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentClient]:
    yield from _agent(tmp_path_factory, "--isolation", "none")


@pytest.fixture(scope="module")
def echo() -> Iterator[Any]:
    proc = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(_first_line(proc))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel.unary_unary("/bench.Echo/Echo")
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


@pytest.mark.benchmark(group="agent-invoke-trivial")
def test_grpc_echo(benchmark: Any, echo: Any) -> None:
    benchmark.extra_info["role"] = "baseline"
    request = pb.InvokeRequest(offload="bench.add", args_json="[1, 2]").SerializeToString()
    metadata = (("authorization", "Bearer " + "x" * 43),)  # the same headers on the wire
    for _ in range(200):
        echo(request, metadata=metadata)
    assert benchmark(lambda: echo(request, metadata=metadata)) == request


@pytest.mark.benchmark(group="agent-invoke-trivial")
def test_agent_invoke(benchmark: Any, agent: AgentClient) -> None:
    benchmark.extra_info["goal"] = 0.5  # at most 2x the echo's latency
    for _ in range(200):
        agent.invoke("bench.add", 1, 2)
    assert benchmark(lambda: agent.invoke("bench.add", 1, 2)) == 3


@pytest.mark.benchmark(group="agent-invoke-trivial")
def test_agent_invoke_in_process(benchmark: Any, agent_in_process: AgentClient) -> None:
    for _ in range(200):
        agent_in_process.invoke("bench.add", 1, 2)
    assert benchmark(lambda: agent_in_process.invoke("bench.add", 1, 2)) == 3
