"""The template process that forks the agent's worker and check processes.

Starting an interpreter and importing dpdpu (numpy, pyarrow) takes a good part of a
second; forking a process that has done it once takes milliseconds.  So the agent
starts one template process (``python -m dpdpu.agent.zygote FD``) and asks it, over a
Unix socket, to fork children with a socket of their own.  The template never runs
deployed code and starts no threads of its own (the libraries it imports register
fork handlers for theirs), so forking it is safe.

Each child starts a session of its own (so stopping it also stops whatever it
started), offers itself first to the kernel's OOM killer, and runs a role of
:mod:`dpdpu.agent.worker`, which caps its memory (:func:`limit_memory`,
``RLIMIT_DATA``: heap and private mappings, where an allocation bomb goes) once it
is set up.  The template is the children's parent: it reaps
them and reports their exit status, and since a child's pid cannot be reused before
it is reaped, killing it through the template never hits another process.  When the
agent goes away the template's socket closes; it then kills its children and exits.

Protocol (one JSON object per SOCK_SEQPACKET message, each request answered once):
``{"op": "fork", "role": R, "options": {...}}`` with one file descriptor ->
``{"pid": N}``; ``{"op": "reap", "pid": N, "grace_s": S}`` -> ``{"status": W}``, a
wait status (``null`` if unknown), after at most ``S`` seconds' wait for the child to
end on its own and then SIGKILL to its whole session.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import DpdpuError

__all__ = ["Child", "Zygote", "ZygoteError", "describe_status", "shared_zygote"]

_MAX_MESSAGE = 1 << 16
#: time the template may take to start (an interpreter plus dpdpu's imports)
_START_TIMEOUT_S = 120.0
#: time a fork request may take
_REPLY_TIMEOUT_S = 30.0


class ZygoteError(DpdpuError, RuntimeError):
    """The template process could not start or answer; no worker can be made."""

    wire_status = "UNAVAILABLE"


@dataclass(frozen=True)
class Child:
    """A process forked by the template (``generation`` tells templates apart across restarts)."""

    pid: int
    generation: int


def describe_status(status: int | None) -> str:
    """A wait status in words: ``exit status 1``, ``killed by SIGSEGV``."""
    if status is None:
        return "exit status unknown"
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}"


class Zygote:
    """The agent's handle on its template process: started on first use, restarted if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._generation = 0
        self._closed = False

    def fork(self, role: str, options: dict[str, Any], fd: int) -> Child:
        """Fork a child running ``role`` with ``fd`` (the caller keeps and closes its copy)."""
        request = json.dumps({"op": "fork", "role": role, "options": options}).encode()
        with self._lock:
            for attempt in range(2):  # a template that died since the last call is replaced once
                sock = self._ensure_started()
                try:
                    socket.send_fds(sock, [request], [fd])
                    break
                except OSError as exc:
                    self._drop()
                    if attempt:
                        raise ZygoteError(f"the worker template failed: {exc}") from None
            try:
                # Not retried past here: the template may have forked a child holding ``fd``.
                reply = self._reply(sock, _REPLY_TIMEOUT_S)
            except (OSError, ValueError) as exc:
                self._drop()
                raise ZygoteError(f"the worker template failed: {exc}") from None
            if not isinstance(reply.get("pid"), int):
                raise ZygoteError(f"the worker template refused: {reply.get('error', reply)}")
            return Child(reply["pid"], self._generation)

    def spawn(self, role: str, options: dict[str, Any]) -> tuple[Child, socket.socket]:
        """Fork a child running ``role``; returns it and this side of its link (a stream socket).

        Tried twice, each time with a new link: a template that dies while forking
        may leave a child holding the first one (it sees the link close and exits).
        """
        for attempt in range(2):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                child = self.fork(role, options, theirs.fileno())
            except ZygoteError:
                ours.close()
                if attempt:
                    raise
                continue
            finally:
                theirs.close()
            return child, ours
        raise AssertionError("unreachable")

    def reap(self, child: Child, grace_s: float = 0.0) -> int | None:
        """End ``child`` (after up to ``grace_s`` for it to end by itself) and return its wait status."""
        with self._lock:
            sock = self._sock
            if sock is None or child.generation != self._generation:
                # Its template is gone, so nobody can reap it: stop it directly (best effort).
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, signal.SIGKILL)
                return None
            try:
                sock.send(json.dumps({"op": "reap", "pid": child.pid, "grace_s": grace_s}).encode())
                reply = self._reply(sock, grace_s + _REPLY_TIMEOUT_S)
            except (OSError, ValueError):
                self._drop()
                return None
            status = reply.get("status")
            return status if isinstance(status, int) else None

    def close(self) -> None:
        """Stop the template (it kills the children it still has)."""
        with self._lock:
            self._closed = True
            self._drop()

    def _ensure_started(self) -> socket.socket:
        if self._closed:
            raise ZygoteError("the worker template is closed")
        if self._sock is not None:
            return self._sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Its stdout becomes its stderr (see main): never the agent's stdout, which may be a pipe
            # nobody reads after the first line.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "dpdpu.agent.zygote", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            raise ZygoteError(f"cannot start the worker template: {exc}") from None
        finally:
            theirs.close()
        self._sock = ours
        self._generation += 1
        try:
            ready = self._reply(ours, _START_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            self._drop()
            raise ZygoteError(f"the worker template did not start: {exc}") from None
        if ready.get("ready") is not True:
            self._drop()
            raise ZygoteError("the worker template did not start")
        return ours

    @staticmethod
    def _reply(sock: socket.socket, timeout: float) -> dict[str, Any]:
        sock.settimeout(timeout)
        data = sock.recv(_MAX_MESSAGE)
        if not data:
            raise OSError("the worker template is gone")
        reply = json.loads(data)
        if not isinstance(reply, dict):
            raise ValueError("unreadable reply")
        return reply

    def _drop(self) -> None:
        sock, proc = self._sock, self._proc
        self._sock = self._proc = None
        if sock is not None:
            sock.close()  # the template kills its children and exits
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def shared_zygote() -> Zygote:
    """This process's template (one per agent process; stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Zygote()
            atexit.register(_shared.close)
        return _shared


# --- the template process --------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Serve fork and reap requests on the socket numbered ``argv[0]`` until it closes."""
    sock = socket.socket(fileno=int(argv[0]))
    os.dup2(2, 1)  # what children print goes to the agent's log, never into a protocol socket
    import dpdpu  # noqa: F401  - imported once here, so that children start with it

    from . import worker  # noqa: F401

    children: set[int] = set()
    sock.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())
    try:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 1)
            except OSError:
                return 0
            if not msg:
                return 0  # the agent is gone
            try:
                request = json.loads(msg)
                if request.get("op") == "fork" and len(fds) == 1:
                    reply: dict[str, Any] = {"pid": _fork(sock, request, fds.pop(), children)}
                elif request.get("op") == "reap":
                    reply = {"status": _reap(int(request["pid"]), float(request.get("grace_s", 0)), children)}
                else:
                    reply = {"error": "unknown request"}
            except Exception as exc:  # a bad request is answered, never the end of the template
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps(reply).encode())
    finally:
        for pid in children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _fork(sock: socket.socket, request: dict[str, Any], fd: int, children: set[int]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # libraries' idle threads; see the module doc
        pid = os.fork()
    if pid == 0:
        code = 70
        try:
            sock.close()
            code = _child(str(request["role"]), dict(request.get("options") or {}), fd)
        except BaseException as exc:  # one line in the agent's log; the agent reports the exit status
            with contextlib.suppress(BaseException):
                print(
                    f"dpdpu agent: {request.get('role')} process {os.getpid()} failed: {exc!r}"[:500], file=sys.stderr
                )
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(fd)
    children.add(pid)
    return pid


def _child(role: str, options: dict[str, Any], fd: int) -> int:
    os.setsid()
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")  # if memory runs out anyway, the kernel takes a child, not the agent
    from . import worker

    return worker.run(role, fd, options)


def limit_memory(limit: int) -> None:
    """Cap this process's data (heap and private mappings) at ``limit`` bytes (0: no cap).

    Raises MemoryError naming both figures if the process already uses more than
    half the limit, as then the limit leaves it no room to work.
    """
    if limit <= 0:
        return
    used = _data_bytes()
    if used * 2 > limit:
        raise MemoryError(
            f"the memory limit of {limit >> 20} MiB leaves no room: a worker uses {used >> 20} MiB before any offload"
        )
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _data_bytes() -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmData:"):
                return int(line.split()[1]) << 10
    return 0


def _reap(pid: int, grace_s: float, children: set[int]) -> int | None:
    if pid not in children:
        return None
    deadline = time.monotonic() + max(0.0, grace_s)
    killed = False
    while True:
        # WNOWAIT: look without reaping, so the pid (and its session id) stays ours while we kill.
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        if not killed and time.monotonic() >= deadline:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.002)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # whatever the child started in its session
    _, status = os.waitpid(pid, 0)
    children.discard(pid)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
