"""Offloads in worker processes: what an offload does to its process never reaches the agent.

A real ``dpdpu agent`` (one for the module) with a small worker memory limit; offloads
that exit, segfault, allocate without end, hang, print, or whose module exits when
imported anywhere but in the deploy check.  After each, the caller got an error and
``dpdpu health`` still says ``serving``.  One agent runs with ``--isolation none`` in
this process, for what only that mode does (hung threads).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_agent import AgentProc, cli, start_agent

from dpdpu.agent.client import AgentClient, AgentRejectedError, OffloadFailedError, OffloadTimeoutError

HOSTILE = textwrap.dedent(
    """
    import ctypes, os, sys, time
    import dpdpu

    @dpdpu.offload
    def add(a, b=0):
        return a + b

    @dpdpu.offload
    def pid():
        return os.getpid()

    @dpdpu.offload
    def exit_now(code=1):
        os._exit(code)

    @dpdpu.offload
    def segfault():
        return ctypes.string_at(0)

    @dpdpu.offload
    def bomb():
        hold = []
        while True:
            hold.append(bytearray(64 << 20))

    @dpdpu.offload
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    @dpdpu.offload
    def shout(n):
        for _ in range(n):
            print("noise " * 100)
        sys.stdout.flush()
        return "done"

    @dpdpu.offload
    def huge_error():
        raise ValueError("x" * (5 << 20))

    @dpdpu.offload
    def checksum(data):
        return dpdpu.compute.crc32c(data)

    @dpdpu.offload
    def same(data):
        return data

    @dpdpu.offload
    def kill_template():
        import signal
        os.kill(os.getppid(), signal.SIGKILL)  # the process that forked this worker
        return "done"

    @dpdpu.offload
    def close_link():
        for fd in range(3, 64):
            try:
                os.close(fd)
            except OSError:
                pass
        time.sleep(30)
    """
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    data_dir = tmp_path_factory.mktemp("isolated") / "data"
    proc = start_agent(
        data_dir, "--no-flight", "--workers", "2", "--worker-memory", "512M", "--invoke-timeout", "20",
        "--import-timeout", "10",
    )  # fmt: skip
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def client(agent: AgentProc) -> Iterator[AgentClient]:
    with agent.client() as c:
        c.deploy("hostile.py", name="hostile", text=HOSTILE)
        yield c


def _healthy(agent: AgentProc, client: AgentClient) -> None:
    assert agent.proc.poll() is None
    assert client.health()["status"] == "serving"
    assert client.invoke("hostile.add", 2, 3) == 5  # a new worker took over


def _restarts(client: AgentClient) -> int:
    return int(client.stats()["worker_restarts"])


def test_offloads_run_in_a_worker_process(agent: AgentProc, client: AgentClient) -> None:
    assert client.invoke("hostile.pid") != agent.proc.pid
    result = client.invoke_ex("hostile.add", 1, 2)
    assert result.value == 3 and result.engine == "bluefield3/arm" and result.modeled_s > 0
    assert client.invoke("hostile.checksum", payload=b"hello") == 0x9A71BB4C  # the worker's own runtime
    stats = client.stats()
    assert stats["isolation"] == "process" and 1 <= stats["worker_processes"] <= 2
    arm = next(e for e in stats["engines"] if e["engine"] == "bluefield3/arm")
    assert arm["tasks"] >= 3  # the agent's runtime placed and counted them


def test_large_arguments_and_results_cross_intact(client: AgentClient) -> None:
    for size in (0, 1, (64 << 10) - 9, 64 << 10, 3 << 20):
        data = os.urandom(size)
        assert client.invoke("hostile.same", payload=data) == data
    assert client.invoke("hostile.add", "x" * 200_000, "y") == "x" * 200_000 + "y"


def test_os_exit_fails_the_call_not_the_agent(agent: AgentProc, client: AgentClient) -> None:
    before = _restarts(client)
    with pytest.raises(OffloadFailedError) as info:
        client.invoke("hostile.exit_now", 1)
    assert info.value.code == "ABORTED"
    assert "ended its worker process (exit status 1)" in str(info.value)
    _healthy(agent, client)
    assert _restarts(client) == before + 1
    health = cli(agent, "health")
    assert health.returncode == 0 and health.stdout.startswith(b"serving")


def test_segfault_fails_the_call_not_the_agent(agent: AgentProc, client: AgentClient) -> None:
    with pytest.raises(OffloadFailedError) as info:
        client.invoke("hostile.segfault")
    assert info.value.code == "ABORTED" and "killed by SIGSEGV" in str(info.value)
    _healthy(agent, client)


def test_allocation_bomb_hits_the_worker_limit(agent: AgentProc, client: AgentClient) -> None:
    before = _restarts(client)
    with pytest.raises(OffloadFailedError) as info:
        client.invoke("hostile.bomb", timeout=15)
    assert info.value.code == "UNKNOWN"
    assert "raised MemoryError" in str(info.value) and "512 MiB" in str(info.value)
    _healthy(agent, client)
    assert _restarts(client) == before + 1  # its state is not trusted after it: replaced


def test_timeout_stops_the_worker(agent: AgentProc, client: AgentClient) -> None:
    before = _restarts(client)
    t0 = time.monotonic()
    with pytest.raises(OffloadTimeoutError) as info:
        client.invoke("hostile.nap", 60, timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert info.value.code == "DEADLINE_EXCEEDED" and "within 0.5 s; its worker process was stopped" in str(info.value)
    assert client.stats()["hung"] == 0  # nothing keeps running: no hung invocations to count
    assert _restarts(client) == before + 1
    _healthy(agent, client)


def test_calls_on_other_workers_are_unaffected(agent: AgentProc, client: AgentClient) -> None:
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(client.invoke, "hostile.nap", 1.0)
        time.sleep(0.2)
        with pytest.raises(OffloadFailedError, match="exit status 7"):
            client.invoke("hostile.exit_now", 7)
        assert slow.result(20) == 1.0


def test_worker_that_closes_its_link_is_stopped(agent: AgentProc, client: AgentClient) -> None:
    before = _restarts(client)
    with pytest.raises((OffloadFailedError, OffloadTimeoutError)):
        client.invoke("hostile.close_link", timeout=1)
    assert _restarts(client) == before + 1
    _healthy(agent, client)


def test_killed_template_is_replaced(agent: AgentProc, client: AgentClient) -> None:
    assert client.invoke("hostile.kill_template") == "done"
    # New processes come from a new template: a deploy (its check) and its worker.
    client.deploy("after.py", name="after", text="import dpdpu\n\n@dpdpu.offload\ndef one():\n    return 1\n")
    assert client.invoke("after.one") == 1
    with pytest.raises(OffloadFailedError, match="ended its worker process"):  # the orphaned worker
        client.invoke("hostile.exit_now", 5)
    client.undeploy("after")
    _healthy(agent, client)


def test_huge_error_message_is_cut_short(client: AgentClient) -> None:
    with pytest.raises(OffloadFailedError) as info:
        client.invoke("hostile.huge_error")
    assert info.value.code == "UNKNOWN"  # not RESOURCE_EXHAUSTED from an oversized status
    message = str(info.value)
    assert message.startswith("offload hostile.huge_error raised ValueError: xxx") and len(message.encode()) < 1024


def test_printing_offload_does_not_disturb_the_protocol(agent: AgentProc, client: AgentClient) -> None:
    assert client.invoke("hostile.shout", 2000) == "done"
    _healthy(agent, client)


def test_a_module_cannot_break_another(agent: AgentProc, client: AgentClient) -> None:
    poison = textwrap.dedent(
        """
        import json
        import dpdpu

        @dpdpu.offload
        def fine():
            return "still fine"

        dpdpu.offload = None  # breaks @offload for whatever imports after it in this process
        json.dumps = None
        """
    )
    clean = "import json\nimport dpdpu\n\n@dpdpu.offload\ndef ok():\n    return json.loads(json.dumps([1]))\n"
    client.deploy("poison.py", name="poison", text=poison)
    assert client.invoke("poison.fine") == "still fine"  # its results are encoded by the worker, not its json
    client.deploy("clean.py", name="clean", text=clean)  # loaded in a worker of its own
    assert client.invoke("clean.ok") == [1]
    client.undeploy("poison")
    client.undeploy("clean")
    _healthy(agent, client)


def test_module_that_exits_when_imported_outside_the_check_is_refused(agent: AgentProc, client: AgentClient) -> None:
    source = textwrap.dedent(
        """
        import os
        import dpdpu

        if __name__ != "_dpdpu_deploy_check":  # passes the isolated check, exits wherever it is loaded for use
            os._exit(3)

        @dpdpu.offload
        def one():
            return 1
        """
    )
    with pytest.raises(AgentRejectedError) as info:
        client.deploy("sly.py", name="sly", text=source)
    assert info.value.code == "INVALID_ARGUMENT"
    assert "ended its worker process while importing (exit status 3)" in str(info.value)
    assert "sly" not in {d.name for d in client.offloads()}
    assert not (agent.data_dir / "deployments" / "sly").exists()
    _healthy(agent, client)


def test_module_that_later_exits_at_import_fails_calls_only(
    agent: AgentProc, client: AgentClient, tmp_path: Path
) -> None:
    marker = tmp_path / "exit-on-import"
    source = textwrap.dedent(
        f"""
        import os
        import dpdpu

        if os.path.exists({str(marker)!r}):
            os._exit(4)

        @dpdpu.offload
        def one():
            return 1

        @dpdpu.offload
        def die():
            os._exit(1)
        """
    )
    client.deploy("moody.py", name="moody", text=source)
    marker.touch()
    for _ in range(2):  # a replacement worker loads the module on first use, and dies of it
        with pytest.raises(OffloadFailedError, match="ended its worker process"):
            client.invoke("moody.die")
    with pytest.raises(OffloadFailedError) as info:
        client.invoke("moody.one")
    assert info.value.code == "ABORTED" and "exit status 4" in str(info.value)
    marker.unlink()
    client.undeploy("moody")
    _healthy(agent, client)


def test_killed_agent_leaves_no_worker_behind(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "data", "--no-flight", "--workers", "2")
    try:
        with agent.client() as c:
            c.deploy("hostile.py", name="hostile", text=HOSTILE)
            with ThreadPoolExecutor(2) as pool:
                pids = set(pool.map(lambda _: c.invoke("hostile.pid"), range(8)))
                busy = pool.submit(c.invoke, "hostile.nap", 30)  # one worker busy when the agent dies
                time.sleep(0.5)
                agent.proc.send_signal(signal.SIGKILL)
                agent.proc.wait(10)
                with pytest.raises(Exception):  # noqa: B017 - the connection is gone, whatever grpc calls it
                    busy.result(20)
    finally:
        agent.stop()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_isolation_none_runs_in_the_agent_and_counts_hung_threads(tmp_path: Path) -> None:
    from dpdpu.agent.server import Agent, AgentConfig

    config = AgentConfig(
        data_dir=tmp_path / "d", listen="127.0.0.1:0", flight_port=None, workers=2, isolation="none",
        invoke_timeout_s=5,
    )  # fmt: skip
    agent = Agent(config).start()
    try:
        with AgentClient(agent.address, agent.token) as c:
            c.deploy("hostile.py", name="hostile", text=HOSTILE)
            assert c.invoke("hostile.pid") == os.getpid()
            assert c.stats()["isolation"] == "none" and c.stats()["worker_processes"] == 0
            # Two workers per engine: one hung invocation is tolerated, then new ones are refused.
            with pytest.raises(OffloadTimeoutError, match=r"within 0\.3 s"):
                c.invoke("hostile.nap", 1.5, timeout=0.3)
            assert c.stats()["hung"] == 1
            with pytest.raises(AgentRejectedError) as refused:
                c.invoke("hostile.add", 1, 2)
            assert refused.value.code == "RESOURCE_EXHAUSTED" and "restart the agent" in str(refused.value)
            deadline = time.monotonic() + 10
            while c.stats()["hung"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.invoke("hostile.add", 1, 2) == 3
    finally:
        agent.stop(1)


def test_agent_refuses_to_start_when_workers_cannot(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dpdpu", "agent", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
         "--no-flight", "--worker-memory", "1M"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and b"worker process cannot start: the memory limit of 1 MiB" in proc.stderr
    assert b"Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
