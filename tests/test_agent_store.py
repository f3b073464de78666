"""The agent's parts in this process: the deployment store, token and bind rules, argument encoding."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dpdpu.agent._proto import control_pb2 as pb
from dpdpu.agent.deployments import (
    DeploymentError,
    DeploymentStore,
    ModuleTooLargeError,
    UnknownDeploymentError,
    UnknownOffloadError,
    source_version,
)
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
    assert list(manifest) == ["keep"]


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
    store = DeploymentStore(tmp_path / "agent", import_timeout_s=2)
    store.deploy("moody", source)
    store.deploy("fine", MODULE.format(tag="f"))
    marker.touch()
    again = DeploymentStore(tmp_path / "agent", import_timeout_s=2)
    problems = again.restore()  # returns: the hanging import ran in a child, not here
    assert len(problems) == 1 and "moody" in problems[0] and "within 2 s" in problems[0]
    assert [d.name for d in again.deployments()] == ["fine"]


def test_refusals(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, max_module_bytes=100, import_timeout_s=5)
    with pytest.raises(ModuleTooLargeError):
        store.deploy("big", "x = 1\n" * 50)
    for name in ("", "a.b", "../x", "-x", "x" * 65):
        with pytest.raises(DeploymentError, match="invalid deployment name"):
            store.deploy(name, "x = 1\n")
    with pytest.raises(DeploymentError, match="empty"):
        store.deploy("blank", "  \n")
    with pytest.raises(DeploymentError, match="ZeroDivisionError"):
        store.deploy("div", "1 / 0\n")
    assert store.deployments() == []
    assert list((tmp_path / "deployments").rglob("*.py")) == []


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
    reply = pb.InvokeReply()
    encode_result(memoryview(b"abc"), reply)
    assert reply.is_bytes and reply.result_bytes == b"abc"
    reply = pb.InvokeReply()
    encode_result({"s": {3, 1}}, reply)
    assert json.loads(reply.result_json) == {"s": [1, 3]}
    with pytest.raises(TypeError):
        encode_result(object(), pb.InvokeReply())


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
