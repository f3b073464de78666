"""The agent's parts in this process: the deployment store, token and bind rules, argument encoding."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from dpdpu.agent._proto import control_pb2 as pb
from dpdpu.agent.deployments import (
    DeploymentError,
    DeploymentStore,
    ImportTimeoutError,
    ModuleTooLargeError,
    UnknownDeploymentError,
    UnknownOffloadError,
    source_version,
)
from dpdpu.agent.payloads import JsonText, clip, shown
from dpdpu.agent.security import TlsFiles, check_bind, ensure_token, is_loopback, read_token, split_address
from dpdpu.agent.server import decode_args, encode_result
from dpdpu.errors import InvalidArgumentError

MODULE = textwrap.dedent(
    """
    import dpdpu

    @dpdpu.offload
    def double(x):
        return 2 * x

    @dpdpu.offload(name="shared")
    def shared_a():
        return "{tag}"
    """
)


def test_deploy_lookup_and_ambiguous_names(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path)
    one, unchanged = store.deploy("one", MODULE.format(tag="one"))
    assert not unchanged and one.version == source_version(MODULE.format(tag="one"))
    assert sorted(one.offloads) == ["double", "shared"]
    assert store.lookup("one.double")(21) == 42  # the plain function behind the offload
    assert store.lookup("shared")() == "one"  # unique bare name
    store.deploy("two", MODULE.format(tag="two"))
    assert store.lookup("two.shared")() == "two"
    with pytest.raises(UnknownOffloadError, match="ambiguous"):
        store.lookup("shared")
    with pytest.raises(UnknownOffloadError):
        store.lookup("one.nothing")
    assert store.offload_names() == ["one.double", "one.shared", "two.double", "two.shared"]
    assert store.deploy("one", MODULE.format(tag="one"))[1] is True
    store.undeploy("two")
    assert store.lookup("shared")() == "one"
    with pytest.raises(UnknownDeploymentError):
        store.undeploy("two")


def test_restore_from_disk_and_tampered_files(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path)
    store.deploy("keep", MODULE.format(tag="k"))
    store.deploy("spoil", MODULE.format(tag="s"))
    version = store.lookup("spoil.shared").__module__  # loaded as a private module
    assert version.startswith("_dpdpu_deployed.")
    spoiled = next((tmp_path / "deployments" / "spoil").glob("*.py"))
    spoiled.write_text(spoiled.read_text() + "\n# edited behind the agent's back\n")
    again = DeploymentStore(tmp_path)
    problems = again.restore()
    assert len(problems) == 1 and "spoil" in problems[0] and "does not match" in problems[0]
    assert [d.name for d in again.deployments()] == ["keep"]
    assert again.lookup("keep.shared")() == "k"
    manifest = json.loads((tmp_path / "deployments" / "manifest.json").read_text())
    assert list(manifest) == ["keep", "spoil"]  # a failed restore forgets nothing


def test_restore_checks_modules_in_isolation_again(tmp_path: Path) -> None:
    marker = tmp_path / "hang-now"
    source = textwrap.dedent(
        f"""
        import os
        import dpdpu

        while os.path.exists({str(marker)!r}):  # imports fine at deploy time, hangs once the marker exists
            pass

        @dpdpu.offload
        def one():
            return 1
        """
    )
    store = DeploymentStore(tmp_path / "agent", import_timeout_s=5)
    store.deploy("moody", source)
    store.deploy("fine", MODULE.format(tag="f"))
    marker.touch()
    again = DeploymentStore(tmp_path / "agent", import_timeout_s=5)
    problems = again.restore()  # returns: the hanging import ran in a child, not here
    assert len(problems) == 1 and "moody" in problems[0] and "within 5 s" in problems[0]
    assert [d.name for d in again.deployments()] == ["fine"]


def test_refusals(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, max_module_bytes=100, import_timeout_s=5)
    with pytest.raises(ModuleTooLargeError):
        store.deploy("big", "x = 1\n" * 50)
    for name in ("", "a.b", "../x", "-x", "x" * 65, "evil\n", "ok\n", ".hidden", "a b", "é", "a/b", "x" * 100_000):
        with pytest.raises(DeploymentError, match="invalid deployment name") as info:
            store.deploy(name, "x = 1\n")
        assert len(str(info.value)) < 300  # the name is not echoed whole
    with pytest.raises(DeploymentError, match="empty"):
        store.deploy("blank", "  \n")
    with pytest.raises(DeploymentError, match="ZeroDivisionError"):
        store.deploy("div", "1 / 0\n")
    with pytest.raises(DeploymentError, match="UTF-8"):
        store.deploy("surrogate", "x = '\udc80'\n")
    with pytest.raises(DeploymentError, match="exit status 3"):
        store.deploy("quits", "import os\nos._exit(3)\n")
    with pytest.raises(DeploymentError, match="SIGSEGV"):
        store.deploy("crashes", "import ctypes\nctypes.string_at(0)\n")
    assert store.deployments() == []
    # Refused deploys leave nothing behind: no files, no directories.
    assert list((tmp_path / "deployments").iterdir()) == []


def test_token_is_private_and_stable(tmp_path: Path) -> None:
    token = ensure_token(tmp_path / "d")
    path = tmp_path / "d" / "token"
    assert path.stat().st_mode & 0o777 == 0o600 and len(token) >= 32
    path.chmod(0o644)
    assert ensure_token(tmp_path / "d") == token and path.stat().st_mode & 0o777 == 0o600
    assert read_token(path) == token and read_token(tmp_path / "missing") is None


def test_bind_rules(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    check_bind("127.0.0.1", "t", None)
    with pytest.raises(InvalidArgumentError, match="without TLS"):
        check_bind("0.0.0.0", "t", None)
    check_bind("0.0.0.0", "t", TlsFiles(tmp_path / "c", tmp_path / "k"))
    assert split_address("[::1]:50051") == ("::1", 50051)
    for bad in ("nohost", ":1", "h:x", "h:70000"):
        with pytest.raises(InvalidArgumentError):
            split_address(bad)


def test_argument_and_result_encoding() -> None:
    assert decode_args("", None) == ((), {})
    assert decode_args("[1, 2]", b"x") == ((b"x", 1, 2), {})
    assert decode_args('{"a": 1}', None) == ((), {"a": 1})
    assert decode_args('"s"', None) == (("s",), {})
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        decode_args("[1,", None)
    with pytest.raises(InvalidArgumentError, match="nested too deeply"):
        decode_args("[" * 20_000 + "]" * 20_000, None)
    reply = pb.InvokeReply()
    encode_result(memoryview(b"abc"), reply)
    assert reply.is_bytes and reply.result_bytes == b"abc"
    reply = pb.InvokeReply()
    encode_result({"s": {3, 1}}, reply)
    assert json.loads(reply.result_json) == {"s": [1, 3]}
    reply = pb.InvokeReply()
    encode_result(JsonText('{"done": true}'), reply)  # a worker's answer goes on as it is
    assert reply.result_json == '{"done": true}'
    with pytest.raises(ValueError, match="not JSON serializable"):
        encode_result(object(), pb.InvokeReply())
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deeply"):
        encode_result(deep, pb.InvokeReply())


def test_messages_are_clipped() -> None:
    assert clip("x" * 10) == "x" * 10
    long = clip("y" * 5_000_000)
    assert len(long) <= 600 and long.endswith("[5000000 characters]")
    assert len(shown("z" * 100_000)) < 120


def test_one_agent_per_data_dir_and_taken_ports(tmp_path: Path) -> None:
    from dpdpu.agent.server import Agent, AgentConfig

    first = Agent(AgentConfig(data_dir=tmp_path / "a", listen="127.0.0.1:0", flight_port=None, workers=2)).start()
    try:
        with pytest.raises(InvalidArgumentError, match="another agent"):
            Agent(AgentConfig(data_dir=tmp_path / "a", listen="127.0.0.1:0", flight_port=None, workers=2)).start()
        with pytest.raises(InvalidArgumentError, match="cannot listen"):
            Agent(AgentConfig(data_dir=tmp_path / "b", listen=first.address, flight_port=None, workers=2)).start()
        assert json.loads((tmp_path / "a" / "agent.json").read_text())["listen"] == first.address
    finally:
        first.stop(1)
    assert not (tmp_path / "a" / "agent.json").exists()
    again = Agent(AgentConfig(data_dir=tmp_path / "a", listen="127.0.0.1:0", flight_port=None, workers=2)).start()
    again.stop(1)


def test_failed_restore_keeps_the_manifest_until_undeployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the isolated check finds in MODULE, without an interpreter start per import.
    monkeypatch.setattr(DeploymentStore, "_isolated_import", lambda self, path: ["double", "shared"])
    store = DeploymentStore(tmp_path)
    store.deploy("keep", MODULE.format(tag="k"))
    store.deploy("gone", MODULE.format(tag="g"))
    manifest = tmp_path / "deployments" / "manifest.json"
    recorded = json.loads(manifest.read_text())
    next((tmp_path / "deployments" / "gone").glob("*.py")).unlink()
    for _ in range(2):  # restarting again does not forget it either
        again = DeploymentStore(tmp_path)
        problems = again.restore()
        assert len(problems) == 1 and "'gone'" in problems[0] and "kept in the manifest" in problems[0]
        assert [d.name for d in again.deployments()] == ["keep"] and again.unrestored() == ["gone"]
        assert json.loads(manifest.read_text()) == recorded
    again.deploy("other", MODULE.format(tag="o"))  # other changes keep the entry too
    assert set(json.loads(manifest.read_text())) == {"keep", "gone", "other"}
    assert again.undeploy("gone").version == recorded["gone"]["version"]
    assert set(json.loads(manifest.read_text())) == {"keep", "other"} and again.unrestored() == []


def test_unreadable_manifest_is_set_aside_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "manifest.json").write_text("{not json")
    store = DeploymentStore(tmp_path)
    assert "cannot read" in store.restore()[0]
    store.deploy("one", MODULE.format(tag="1"))
    kept = list((tmp_path / "deployments").glob("manifest.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"


def test_relative_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = DeploymentStore(Path("rel"))
    store.deploy("one", MODULE.format(tag="1"))  # the isolated import runs in the module's folder
    assert store.lookup("one.double")(2) == 4 and store.root.is_absolute()


def test_agent_import_that_hangs_times_out_and_frees_the_name(tmp_path: Path) -> None:
    gate = tmp_path / "hold"
    gate.touch()
    source = textwrap.dedent(
        f"""
        import os, time
        import dpdpu

        if __name__.startswith("_dpdpu_deployed"):  # passes the isolated check, hangs in the agent
            while os.path.exists({str(gate)!r}):
                time.sleep(0.02)

        @dpdpu.offload
        def one():
            return 1
        """
    )
    store = DeploymentStore(tmp_path / "agent", import_timeout_s=1)
    # What the isolated check would find (it is not what is tested here, and a whole
    # interpreter start may take longer than the short timeout on a busy machine).
    store._isolated_import = lambda path: ["one"]  # type: ignore[method-assign]
    try:
        with pytest.raises(ImportTimeoutError, match="within 1 s"):
            store.deploy("stuck", source)
        del store._isolated_import
        assert store.hung_imports == 1 and store.deployments() == []
        store.deploy("stuck", MODULE.format(tag="s"))  # the name's lock was released
        assert store.lookup("stuck.double")(1) == 2
    finally:
        gate.unlink()
    deadline = time.monotonic() + 5
    while store.hung_imports and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.hung_imports == 0 and store.lookup("stuck.double")(2) == 4  # the late import changed nothing
    import grpc  # type: ignore[import-untyped]

    from dpdpu.agent.server import grpc_status

    assert grpc_status(ImportTimeoutError("late")) == grpc.StatusCode.DEADLINE_EXCEEDED  # Deploy's status


def test_crlf_module_restores(tmp_path: Path) -> None:
    source = MODULE.format(tag="crlf").replace("\n", "\r\n")
    DeploymentStore(tmp_path).deploy("crlf", source)
    again = DeploymentStore(tmp_path)
    assert again.restore() == []  # the file holds the very bytes whose hash is the version
    assert again.lookup("crlf.shared")() == "crlf"


def test_stale_pending_files_are_removed_at_restore(tmp_path: Path) -> None:
    (tmp_path / "deployments" / "one").mkdir(parents=True)  # as a deploy killed half-way leaves it
    stale = tmp_path / "deployments" / "one" / f".{'0' * 64}.1234.pending.py"
    stale.write_text("x = 1\n")
    DeploymentStore(tmp_path).restore()
    assert not stale.exists()


def test_client_invoke_without_timeout_sets_no_deadline() -> None:
    from dpdpu.agent.client import AgentClient

    seen: list[float | None] = []

    def fake(request: object, *, timeout: float | None, metadata: object) -> object:
        seen.append(timeout)
        return pb.InvokeReply(result_json="1")

    with AgentClient("127.0.0.1:1", "t", timeout=2.0) as client:
        client._calls["Invoke"] = fake
        client.invoke("m.f")
        client.invoke("m.f", timeout=3.0)
    assert seen == [None, 8.0]  # no deadline: the agent's own default timeout ends the call


def test_flight_failures_match_the_grpc_statuses() -> None:
    pa = pytest.importorskip("pyarrow")
    flight = pytest.importorskip("pyarrow.flight")
    from dpdpu.agent.isolation import RemoteError, WorkerDiedError
    from dpdpu.agent.server import TooManyHungError, _flight_failure
    from dpdpu.errors import RuntimeClosedError

    assert isinstance(_flight_failure("d.f", UnknownOffloadError("no deployed offload")), pa.ArrowKeyError)
    assert isinstance(_flight_failure("d.f", TooManyHungError("hung")), flight.FlightUnavailableError)
    assert isinstance(_flight_failure("d.f", RuntimeClosedError("closing")), flight.FlightUnavailableError)
    assert isinstance(_flight_failure("d.f", TimeoutError("late")), flight.FlightTimedOutError)
    died = _flight_failure("d.f", WorkerDiedError("its worker process ended", "killed by SIGSEGV"))
    assert type(died) is flight.FlightServerError and "ended its worker process (killed by SIGSEGV)" in str(died)
    oom = _flight_failure("d.f", RemoteError("MemoryError", "", "call", True), memory_bytes=1 << 30)
    assert "raised MemoryError" in str(oom) and "1 GiB" in str(oom)
    huge = _flight_failure("d.f", ValueError("v" * 5_000_000))
    assert len(str(huge)) < 1024
    for exc in (KeyError("k"), ValueError("v"), TypeError("t")):
        out = _flight_failure("d.f", exc)
        assert type(out) is flight.FlightServerError and f"offload d.f raised {type(exc).__name__}" in str(out)
