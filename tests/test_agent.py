"""The agent as a real process: deploy -> invoke -> stats -> undeploy through the CLI and the
Python client, bad input of every kind, concurrency, restart, SIGTERM draining, TLS, Flight,
and a soak of 10,000 invocations watching the agent's memory.

One agent serves most of the module (started once); restart, SIGTERM and TLS start their own.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dpdpu.agent.client import (
    AgentAuthError,
    AgentClient,
    AgentNotFoundError,
    AgentRejectedError,
    AgentUnavailableError,
    OffloadFailedError,
    OffloadTimeoutError,
)
from dpdpu.agent.deployments import source_version

GOOD = textwrap.dedent(
    """
    import time
    import dpdpu

    @dpdpu.offload
    def add(a, b=0):
        return a + b

    @dpdpu.offload
    def echo(x=None):
        return x

    @dpdpu.offload
    def fail(message):
        raise ValueError(message)

    @dpdpu.offload
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    @dpdpu.offload
    def quit():
        raise SystemExit(3)

    @dpdpu.offload
    def opaque():
        return object()

    @dpdpu.offload(name="length")
    def size_of(data):
        return len(data)
    """
)
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "offloads_example.py"


@dataclass
class AgentProc:
    """A running ``dpdpu agent`` subprocess and what it printed on start."""

    proc: subprocess.Popen[str]
    data_dir: Path
    state: dict[str, Any]

    @property
    def address(self) -> str:
        return str(self.state["listen"])

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def client(self, **kwargs: Any) -> AgentClient:
        return AgentClient(self.address, kwargs.pop("token", self.token), **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def start_agent(data_dir: Path, *extra: str, timeout: float = 30.0, cwd: Path | None = None) -> AgentProc:
    """Start an agent on loopback port 0 and read the addresses from its first line.

    With ``cwd`` the agent runs there and gets ``data_dir`` relative to it.
    """
    arg = str(data_dir.relative_to(cwd)) if cwd is not None else str(data_dir)
    cmd = [sys.executable, "-m", "dpdpu", "agent", "--listen", "127.0.0.1:0", "--data-dir", arg, *extra]
    err = open(data_dir.parent / f"{data_dir.name}.stderr", "a")  # noqa: SIM115 - the child owns it
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=_env(data_dir), cwd=cwd)
    finally:
        err.close()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise AssertionError(f"agent did not start: {(data_dir.parent / f'{data_dir.name}.stderr').read_text()}")
    return AgentProc(proc, data_dir, json.loads(line))


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DPDPU_AGENT", "DPDPU_TOKEN", "DPDPU_TLS_CA")}
    env["DPDPU_AGENT_DIR"] = str(data_dir)
    return env


def cli(agent: AgentProc, *args: str, input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m dpdpu ARGS`` as a client of ``agent`` (found through its data dir)."""
    return subprocess.run(
        [sys.executable, "-m", "dpdpu", *args], env=_env(agent.data_dir), capture_output=True, timeout=60,
        input=input_bytes,
    )  # fmt: skip


def cli_many(agent: AgentProc, *commands: list[str]) -> list[subprocess.CompletedProcess[bytes]]:
    """Run several independent CLI commands at once (each is a whole interpreter start)."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda args: cli(agent, *args), commands))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    data_dir = tmp_path_factory.mktemp("agent") / "data"
    proc = start_agent(data_dir, "--import-timeout", "3", "--invoke-timeout", "5", "--workers", "4")
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def client(agent: AgentProc) -> Iterator[AgentClient]:
    with agent.client() as c:
        yield c


@pytest.fixture(scope="module")
def good(agent: AgentProc, client: AgentClient) -> str:
    client.deploy("good.py", name="good", text=GOOD)
    return "good"


# --- the whole flow ------------------------------------------------------------------


def test_start_writes_state_and_private_token(agent: AgentProc) -> None:
    state = json.loads((agent.data_dir / "agent.json").read_text())
    assert state["listen"] == agent.address and state["pid"] == agent.proc.pid
    assert (agent.data_dir / "token").stat().st_mode & 0o777 == 0o600
    assert len(agent.token) >= 32


def test_flow_through_python_client(client: AgentClient, good: str) -> None:
    info = client.deploy("good.py", name="good2", text=GOOD)
    assert info.version == source_version(GOOD) and not info.unchanged
    assert info.offloads == ["add", "echo", "fail", "length", "nap", "opaque", "quit"]
    assert client.deploy("good.py", name="good2", text=GOOD).unchanged
    assert {d.name for d in client.offloads()} >= {"good", "good2"}
    result = client.invoke_ex("good2.add", 2, 3)
    assert result.value == 5 and result.engine == "bluefield3/arm" and result.modeled_s > 0
    assert client.invoke("good2.add", a=1, b=41) == 42
    assert client.invoke("good2.echo", {"k": [1, 2.5, None]}) == {"k": [1, 2.5, None]}
    assert client.invoke("good2.length", payload=b"\0" * 1000) == 1000
    stats = client.stats()
    arm = next(e for e in stats["engines"] if e["engine"] == "bluefield3/arm")
    assert arm["tasks"] >= 4 and arm["queue_capacity"] > 0 and 0 <= arm["utilization"] <= 1
    assert stats["invocations"] >= 4 and stats["deployments"] >= 2 and stats["host_cores_saved"] > 0
    assert client.devices()["device"] == "bluefield3"
    assert client.undeploy("good2").name == "good2"
    assert "good2" not in {d.name for d in client.offloads()}
    with pytest.raises(AgentNotFoundError):
        client.invoke("good2.add", 1, 2)
    assert client.health()["status"] == "serving"


def test_flow_through_cli(agent: AgentProc, tmp_path: Path) -> None:
    deployed = cli(agent, "deploy", str(EXAMPLE), "--json")
    assert deployed.returncode == 0, deployed.stderr
    info = json.loads(deployed.stdout)
    assert info["name"] == "offloads_example" and "word_count" in info["offloads"]
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"hello agent")
    listed, counted, upper, checked = cli_many(
        agent,
        ["offloads"],
        ["invoke", "offloads_example.word_count", '["b a b c b a"]'],
        ["invoke", "offloads_example.upper", "--input", str(blob)],
        ["invoke", "offloads_example.checksum", "--input", str(blob), "--json"],
    )
    assert listed.returncode == 0 and b"offloads_example" in listed.stdout and b"word_count" in listed.stdout
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == [["b", 3], ["a", 2], ["c", 1]]
    assert upper.returncode == 0 and upper.stdout == b"HELLO AGENT"
    assert checked.returncode == 0
    from dpdpu.compute import crc32c

    assert json.loads(checked.stdout)["result"] == crc32c(b"hello agent")
    table, watch = cli_many(agent, ["stats"], ["stats", "--watch", "--json", "--count", "2", "--interval", "0.1"])
    assert table.returncode == 0 and b"bluefield3/arm" in table.stdout and b"host cores saved" in table.stdout
    assert watch.returncode == 0 and len(watch.stdout.splitlines()) == 2
    assert json.loads(watch.stdout.splitlines()[0])["invocations"] >= 3
    gone = cli(agent, "undeploy", "offloads_example")
    assert gone.returncode == 0 and b"undeployed offloads_example" in gone.stdout


def test_cli_exit_codes(agent: AgentProc, good: str, tmp_path: Path) -> None:
    token_file = tmp_path / "tok"
    token_file.write_text(agent.token)
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    failed, unknown, usage, wrong, by_file, unreachable, rejected, no_file, json_failed = cli_many(
        agent,
        ["invoke", "good.fail", '["kaput"]'],
        ["invoke", "good.nothing"],
        ["invoke", "good.add", "[1,"],
        ["health", "--token", "wrong"],
        ["health", "--token-file", str(token_file)],
        ["health", "--agent", "127.0.0.1:1"],
        ["deploy", str(bad)],
        ["health", "--token-file", str(tmp_path / "missing"), "--json"],
        ["invoke", "good.nothing", "--json"],
    )
    assert failed.returncode == 1 and b"ValueError: kaput" in failed.stderr and b"Traceback" not in failed.stderr
    assert unknown.returncode == 1 and b"no deployed offload" in unknown.stderr
    assert usage.returncode == 2 and b"not valid JSON" in usage.stderr
    assert wrong.returncode == 4 and b"token" in wrong.stderr
    assert by_file.returncode == 0 and by_file.stdout.startswith(b"serving")
    assert unreachable.returncode == 3 and b"no agent reachable" in unreachable.stderr
    assert rejected.returncode == 1 and b"SyntaxError" in rejected.stderr and b"Traceback" not in rejected.stderr
    assert no_file.returncode == 4  # a missing token, as documented; with --json the error is JSON too
    assert json.loads(no_file.stdout)["code"] == "AUTH" and "no token in" in json.loads(no_file.stdout)["error"]
    assert json_failed.returncode == 1
    assert json.loads(json_failed.stdout) == {"error": "no deployed offload 'good.nothing'", "code": "NOT_FOUND"}


# --- bad input ---------------------------------------------------------------------------


def test_wrong_and_missing_token(agent: AgentProc) -> None:
    for token in ("wrong", ""):
        with agent.client(token=token) as c, pytest.raises(AgentAuthError) as info:
            c.health()
        assert info.value.code == "UNAUTHENTICATED"
    with agent.client(token="x" * 10) as c, pytest.raises(AgentAuthError):
        c.deploy("m.py", name="sneaky", text=GOOD)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def broken(:\n    pass\n", "SyntaxError"),
        ("raise RuntimeError('no import for you')\n", "RuntimeError: no import for you"),
        ("import dpdpu\nX = 1\n", "no @offload functions"),
        ("import sys\nsys.exit(3)\n", "SystemExit"),
        ("while True:\n    pass\n", "did not finish importing within 3 s"),
    ],
    ids=["syntax-error", "raises", "no-offloads", "exits", "loops"],
)
def test_bad_modules_are_refused(client: AgentClient, source: str, message: str) -> None:
    with pytest.raises(AgentRejectedError) as info:
        client.deploy("bad.py", name="bad", text=source)
    assert info.value.code == "INVALID_ARGUMENT" and message in str(info.value)
    assert "bad" not in {d.name for d in client.offloads()}
    assert client.health()["status"] == "serving"


def test_bad_names_and_huge_upload(client: AgentClient) -> None:
    with pytest.raises(AgentRejectedError) as info:
        client.deploy("x.py", name="../escape", text=GOOD)
    assert info.value.code == "INVALID_ARGUMENT"
    huge = GOOD + "#" * (1 << 20)
    with pytest.raises(AgentRejectedError) as info:
        client.deploy("huge.py", name="huge", text=huge)
    assert info.value.code == "RESOURCE_EXHAUSTED" and "at most" in str(info.value)
    with pytest.raises(AgentNotFoundError):
        client.undeploy("never-deployed")


def test_failed_version_keeps_the_previous_one(client: AgentClient) -> None:
    client.deploy("keep.py", name="keep", text=GOOD)
    with pytest.raises(AgentRejectedError):
        client.deploy("keep.py", name="keep", text="raise ImportError('oops')\n")
    assert client.invoke("keep.add", 1, 1) == 2
    client.undeploy("keep")


def test_offload_errors_fail_only_the_invocation(client: AgentClient, good: str) -> None:
    with pytest.raises(OffloadFailedError) as info:
        client.invoke("good.fail", "boom")
    assert info.value.code == "UNKNOWN" and "ValueError: boom" in str(info.value)
    with pytest.raises(AgentNotFoundError) as missing:
        client.invoke("good.missing")
    assert missing.value.code == "NOT_FOUND"
    with pytest.raises(OffloadFailedError, match="TypeError"):
        client.invoke("good.add", "a", 1)
    with pytest.raises(OffloadFailedError, match="not JSON serializable"):
        client.invoke("good.opaque")
    with pytest.raises(OffloadFailedError, match="SystemExit: 3"):
        client.invoke("good.quit", timeout=10)
    assert client.invoke("good.add", 20, 22) == 42


def test_timed_out_offloads_stop_their_workers_and_others_keep_running(client: AgentClient, good: str) -> None:
    with ThreadPoolExecutor(3) as pool:  # three workers running, so none is being started below
        assert list(pool.map(lambda s: client.invoke("good.nap", s), [0.3] * 3)) == [0.3] * 3
    before = client.stats()["worker_restarts"]
    with ThreadPoolExecutor(2) as pool:
        late = [pool.submit(client.invoke, "good.nap", 2.0, timeout=0.5) for _ in range(2)]
        time.sleep(0.1)
        assert client.invoke("good.add", 1, 2) == 3  # served while the others sleep
        for future in late:
            with pytest.raises(OffloadTimeoutError) as info:
                future.result()
            assert info.value.code == "DEADLINE_EXCEEDED"
            assert "within 0.5 s; its worker process was stopped" in str(info.value)
    stats = client.stats()
    # Their workers were stopped: nothing is left running to count as hung, new calls are served.
    assert stats["hung"] == 0 and stats["worker_restarts"] == before + 2
    assert client.invoke("good.add", 2, 3) == 5


def test_concurrent_deploys_of_one_name_serialize(client: AgentClient, agent: AgentProc) -> None:
    texts = [GOOD + f"\nVERSION = {i}\n" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(lambda t: client.deploy("same.py", name="same", text=t), texts))
    assert all(not i.unchanged for i in infos)
    final = next(d for d in client.offloads() if d.name == "same")
    assert final.version in {source_version(t) for t in texts}
    manifest = json.loads((agent.data_dir / "deployments" / "manifest.json").read_text())
    assert manifest["same"]["version"] == final.version
    files = sorted(p.name for p in (agent.data_dir / "deployments" / "same").iterdir())
    assert files == [f"{final.version}.py"]  # older versions and pending files are gone
    client.undeploy("same")


def test_concurrent_clients(agent: AgentProc, good: str) -> None:
    def work(i: int) -> list[int]:
        with agent.client() as c:
            return [c.invoke("good.add", i, j) for j in range(50)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [[i + j for j in range(50)] for i in range(8)]


def test_flight_lists_and_invokes_offloads(agent: AgentProc, good: str) -> None:
    if not agent.state.get("flight"):
        pytest.skip("the agent started without a Flight endpoint")
    import pyarrow.flight as flight

    conn = flight.FlightClient(agent.state["flight"])
    try:
        opts = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {agent.token}".encode())])
        body = json.dumps({"offload": "good.add", "args": [40, 2]}).encode()
        results = list(conn.do_action(flight.Action("invoke", body), opts))
        assert json.loads(results[0].body.to_pybytes()) == 42
        listed = json.loads(next(iter(conn.do_action(flight.Action("offloads", b""), opts))).body.to_pybytes())
        assert "good" in json.dumps(listed)
        bad = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer nope")])
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(conn.do_action(flight.Action("invoke", body), bad))
    finally:
        conn.close()


def test_flight_invoke_fails_with_the_statuses_of_grpc(agent: AgentProc, client: AgentClient, good: str) -> None:
    if not agent.state.get("flight"):
        pytest.skip("the agent started without a Flight endpoint")
    import pyarrow as pa
    import pyarrow.flight as flight

    client.deploy("errs.py", name="errs", text="import dpdpu\n\n@dpdpu.offload\ndef ke():\n    return {}['k']\n")
    conn = flight.FlightClient(agent.state["flight"])
    opts = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {agent.token}".encode())])

    def invoke(request: dict[str, Any]) -> Any:
        return list(conn.do_action(flight.Action("invoke", json.dumps(request).encode()), opts))

    try:
        # Whatever the offload raised is a failed invocation, not a status picked by its type.
        with pytest.raises(flight.FlightServerError, match=r"offload errs\.ke raised KeyError"):
            invoke({"offload": "errs.ke"})
        with pytest.raises(flight.FlightServerError, match=r"offload good\.add raised TypeError"):
            invoke({"offload": "good.add", "args": ["a", 1]})
        with pytest.raises(flight.FlightServerError, match=r"offload good\.fail raised ValueError: no"):
            invoke({"offload": "good.fail", "args": ["no"]})
        with pytest.raises(pa.ArrowKeyError, match="no deployed offload"):  # NOT_FOUND
            invoke({"offload": "good.nothing"})
        with pytest.raises(pa.ArrowInvalid, match="timeout_s must be a number"):  # INVALID_ARGUMENT
            invoke({"offload": "good.add", "args": [1, 2], "timeout_s": "abc"})
        for _ in range(2):
            with pytest.raises(flight.FlightTimedOutError, match=r"within 0\.05 s"):
                invoke({"offload": "good.nap", "args": [1.0], "timeout_s": 0.05})
        with pytest.raises(pa.ArrowInvalid, match="timeout_s must be between"):  # INVALID_ARGUMENT
            invoke({"offload": "good.add", "args": [1, 2], "timeout_s": 1e300})
        assert json.loads(invoke({"offload": "good.add", "args": [1, 2]})[0].body.to_pybytes()) == 3
    finally:
        conn.close()
        client.undeploy("errs")
    deadline = time.monotonic() + 10
    while client.stats()["hung"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.stats()["hung"] == 0


def test_cli_refuses_hostile_input_in_one_line(agent: AgentProc, good: str, tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text(GOOD)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"bytes back")
    cases = {
        ("invoke", "good.echo", "[" * 20_000 + "]" * 20_000): 2,
        ("health", "--token", "abc\ndef"): 4,
        ("health", "--token", "x" * 5000): 4,
        ("invoke", "good.add", "[1, 2]", "--timeout", "nan"): 2,
        ("invoke", "good.add", "[1, 2]", "--timeout", "inf"): 2,
        ("invoke", "good.add", "--timeout", "x" * 100_000): 2,
        ("deploy", str(module), "--name", "evil\n"): 2,
        ("invoke", "good.echo", "--input", str(blob), "--output", str(tmp_path / "no" / "such" / "dir")): 2,
        ("invoke", "g" * 100_000): 1,
        ("stats", "--watch", "--interval", "1e308"): 2,
        ("health", "--agent", "127.0.0.1:99999"): 2,
        ("health", "--agent", "h" * 100_000): 2,
        ("health", "--tls-ca", str(module)): 2,  # not a PEM certificate
        ("undeploy", "u" * 100_000): 1,
    }
    results = cli_many(agent, *(list(args) for args in cases))
    for (args, code), done in zip(cases.items(), results, strict=True):
        what = (args[0], args[-1][:20])
        assert done.returncode == code, (what, done.stderr[:300])
        assert b"Traceback" not in done.stderr, what
        # One error line (click adds its usage lines to errors it finds itself), never the input whole.
        errors = [line for line in done.stderr.splitlines() if line.startswith(b"Error:")]
        assert len(errors) == 1 and len(done.stderr) < 1024, (what, done.stderr[:300])
    assert not (agent.data_dir / "deployments" / "evil\n").exists()


def test_raw_requests_are_refused_with_invalid_argument(agent: AgentProc, client: AgentClient, good: str) -> None:
    import grpc  # type: ignore[import-untyped]

    from dpdpu.agent._proto import control_pb2 as pb

    md = (("authorization", f"Bearer {agent.token}"),)
    with grpc.insecure_channel(agent.address) as channel:

        def call(method: str, body: bytes) -> Any:
            return channel.unary_unary(f"/dpdpu.agent.v1.Control/{method}")(body, metadata=md, timeout=30)

        bad = [
            ("Invoke", b"\xff\xff\xff\xff"),
            ("Deploy", b"\x0a\x03\xff\xfe\xfd"),  # a name that is not UTF-8
            (
                "Invoke",
                pb.InvokeRequest(offload="good.add", args_json="[1, 2]", timeout_s=float("nan")).SerializeToString(),
            ),
            ("Invoke", pb.InvokeRequest(offload="good.add", args_json="[1, 2]", timeout_s=-1).SerializeToString()),
            ("Invoke", pb.InvokeRequest(offload="good.add", args_json="[" * 50_000).SerializeToString()),
            ("Shutdown", pb.ShutdownRequest(grace_s=float("inf")).SerializeToString()),
            ("Deploy", pb.DeployRequest(name="evil\n", source=GOOD).SerializeToString()),
        ]
        for method, body in bad:
            with pytest.raises(grpc.RpcError) as info:
                call(method, body)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.details())
            assert len(info.value.details().encode()) < 1024
    assert client.health()["status"] == "serving"
    assert not (agent.data_dir / "deployments" / "evil\n").exists()


def test_agent_survived_everything(client: AgentClient, agent: AgentProc, good: str) -> None:
    assert agent.proc.poll() is None
    assert client.health()["status"] == "serving"
    assert client.invoke("good.add", 1, 2) == 3


def test_soak_10000_invokes_keeps_memory_flat(agent: AgentProc, good: str) -> None:
    def run(n: int) -> None:
        with agent.client() as c:
            for i in range(n):
                assert c.invoke("good.add", i, 1) == i + 1

    def burst(total: int) -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(run, [total // 4] * 4))

    burst(1000)  # warm-up: caches, arenas, gRPC buffers
    before = rss_kib(agent.proc.pid)
    burst(10_000)
    after = rss_kib(agent.proc.pid)
    print(f"\nsoak: agent RSS {before} KiB -> {after} KiB after 10,000 invokes ({after / before - 1:+.1%})")
    assert after <= before * 1.10, f"RSS grew from {before} KiB to {after} KiB"


# --- processes of their own --------------------------------------------------------------


def test_restart_restores_deployments_and_sigterm_drains(tmp_path: Path) -> None:
    import pyarrow.flight as flight

    data_dir = tmp_path / "data"
    first = start_agent(data_dir, "--no-flight", cwd=tmp_path)  # a relative --data-dir
    try:
        assert first.state["data_dir"] == str(data_dir)  # resolved once, at start
        with first.client() as c:
            c.deploy("good.py", name="good", text=GOOD)
            c.deploy(EXAMPLE)
            c.deploy("gone.py", name="gone", text=GOOD)
            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(c.invoke, "good.nap", 1.0)
                time.sleep(0.3)  # in flight when the shutdown is asked for
                c.shutdown()
                assert slow.result() == 1.0  # drained, not cut off
        assert first.proc.wait(30) == 0
    finally:
        first.stop()
    assert not (data_dir / "agent.json").exists()
    manifest = data_dir / "deployments" / "manifest.json"
    recorded = json.loads(manifest.read_text())
    (data_dir / "deployments" / "gone" / f"{source_version(GOOD)}.py").unlink()
    stale = data_dir / "deployments" / "good" / f".{source_version(GOOD)}.1.pending.py"
    stale.write_text(GOOD)  # as a deploy cut off by SIGKILL leaves it
    second = start_agent(data_dir, "--grace", "1", "--invoke-timeout", "120", cwd=tmp_path)
    try:
        assert not stale.exists()
        with second.client() as c:
            assert {d.name for d in c.offloads()} == {"good", "offloads_example"}
            assert json.loads(manifest.read_text()) == recorded  # the entry that failed to restore is kept
            assert c.undeploy("gone").version == source_version(GOOD)
            assert set(json.loads(manifest.read_text())) == {"good", "offloads_example"}
            assert c.invoke("good.add", 2, 2) == 4
            assert c.invoke("offloads_example.word_count", "x y x") == [["x", 2], ["y", 1]]
            # SIGTERM with offloads running past the grace: exits 0 when the grace is over.
            conn = flight.FlightClient(second.state["flight"])
            opts = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {second.token}".encode())])
            body = json.dumps({"offload": "good.nap", "args": [60]}).encode()
            with ThreadPoolExecutor(2) as pool:
                by_grpc = pool.submit(c.invoke, "good.nap", 60)
                by_flight = pool.submit(lambda: list(conn.do_action(flight.Action("invoke", body), opts)))
                time.sleep(0.5)  # both in flight when the signal arrives
                t0 = time.monotonic()
                second.proc.send_signal(signal.SIGTERM)
                assert second.proc.wait(20) == 0
                assert time.monotonic() - t0 < 8  # the grace (1 s) and the closing, not the offloads' 60 s
                with pytest.raises(AgentUnavailableError):
                    by_grpc.result(10)
                with pytest.raises(flight.FlightError):
                    by_flight.result(10)
            conn.close()
    finally:
        second.stop()
    assert "deployment 'gone' not restored" in (tmp_path / "data.stderr").read_text()
    assert not (data_dir / "agent.json").exists()
    with open(data_dir / "agent.lock") as lock:  # released: another agent may start
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with AgentClient(second.address, "t") as c, pytest.raises(AgentUnavailableError) as info:
        c.health()
    assert info.value.code == "UNAVAILABLE"


def test_refuses_non_loopback_without_tls(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dpdpu", "agent", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "d")],
        capture_output=True, timeout=60, env=_env(tmp_path / "d"),
    )  # fmt: skip
    assert proc.returncode == 2 and b"refusing to listen" in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    agent = start_agent(tmp_path / "data", "--no-flight", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert agent.state["tls"] is True
        with agent.client(tls_ca=cert) as c:
            assert c.health()["status"] == "serving"
        with agent.client() as plain, pytest.raises(AgentUnavailableError):
            plain.health()
    finally:
        assert agent.stop() == 0
