"""Offloads in worker processes: the agent's pool of workers and the stand-ins of their offloads.

An offload that calls ``os._exit``, crashes in a C extension or runs out of memory
would take a process down with it; in a worker process it takes only its own call.
The worker is then replaced, and a call past its timeout can really be stopped (a
thread cannot).  Workers are forked by the template process
(:mod:`dpdpu.agent.zygote`) and run :mod:`dpdpu.agent.worker`.

The agent's runtime still places and times every invocation: a deployment's offloads
are :class:`WorkerOffload` stand-ins carrying the offload's placement options, and
the task the runtime runs is the round trip to a worker.  So ``engine``, wall and
modeled times and ``dpdpu stats`` mean what they meant in-process.  The stand-ins are
inline tasks (``__dpdpu_inline__``): they run on the invoking thread when their engine
has nothing queued, since handing a task that only waits to an engine thread adds
wake-ups, and the polling of the engine's and the caller's threads competes with the
worker for the cores (it doubled the latency on a two-core machine).

A worker serves one deployment version: a module that patches dpdpu or the
interpreter at import, or exits there, affects its own workers only.  The pool keeps
a spare worker started (serving nothing yet) for the next deployment that needs
one, grows on demand up to ``size`` workers (one call per worker at a time), makes
room by stopping the least recently used idle worker of another deployment, and
starts a spare in the background for each worker that dies, is stopped at a call's
deadline, or ran out of memory.  Workers of a replaced or undeployed version are
stopped (:meth:`WorkerPool.unload`).
"""

from __future__ import annotations

import json
import pickle
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DpdpuError, InvalidArgumentError, RuntimeClosedError
from ..runtime.placement import FALLBACK_CHAIN
from .deployments import DeploymentError, ImportTimeoutError, Loader, module_name
from .frames import FrameSocket, FrameTooLargeError
from .payloads import JsonText, clip, exception_text
from .zygote import Child, Zygote, ZygoteError, describe_status, shared_zygote

__all__ = [
    "DEADLINE",
    "ArgumentsError",
    "RemoteError",
    "WorkerDiedError",
    "WorkerOffload",
    "WorkerPool",
    "WorkerStartError",
]

#: the monotonic deadline of the invocation being submitted (copied into its task's context)
DEADLINE: ContextVar[float | None] = ContextVar("dpdpu_agent_deadline", default=None)

#: time a new worker may take to report ready
_READY_TIMEOUT_S = 60.0
#: time a worker whose link broke gets to end by itself before it is killed
_DEATH_GRACE_S = 1.0
# Reply frames beyond the result itself: a tag byte and a little JSON.
_REPLY_OVERHEAD = 1 << 16


class WorkerDiedError(DpdpuError, RuntimeError):
    """The worker process running a call ended before answering (exit, crash, signal)."""

    wire_status = "ABORTED"

    def __init__(self, message: str, status_text: str) -> None:
        super().__init__(message)
        self.status_text = status_text


class WorkerStartError(DpdpuError, RuntimeError):
    """No worker process could be started."""

    wire_status = "UNAVAILABLE"


class ArgumentsError(InvalidArgumentError):
    """An invocation's arguments cannot be passed to a worker process (refused, never run)."""


class RemoteError(DpdpuError, RuntimeError):
    """What a worker reported as a failure: the offload raised, its module failed to load, or
    its result could not be encoded (``stage``: ``"call"``, ``"load"`` or ``"result"``)."""

    wire_status = "UNKNOWN"

    def __init__(self, type_name: str, message: str, stage: str, recycled: bool) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.stage = stage
        self.recycled = recycled


@dataclass(frozen=True)
class ModuleRef:
    """A deployed module as workers load it."""

    name: str
    version: str
    path: Path


#: what a worker serves: (deployment name, version)
_Key = tuple[str, str]


class _Worker:
    """One worker process and the agent's end of its link."""

    def __init__(self, child: Child, link: FrameSocket) -> None:
        self.child = child
        self.link = link
        self.key: _Key | None = None  # the deployment it serves, once it serves one
        self.used = 0.0  # when its last call returned (monotonic)
        self.retire = False  # stop it when its call returns (its deployment is gone)
        self._lock = threading.Lock()
        self._ended = False
        self._status: int | None = None

    def end(self, zygote: Zygote, grace_s: float) -> int | None:
        """Stop the process (once) and return its wait status."""
        with self._lock:
            if not self._ended:
                self._status = zygote.reap(self.child, grace_s)
                self._ended = True
            return self._status


class WorkerPool:
    """Worker processes running deployed offloads for one agent.

    A worker serves one deployment (a version of it), so what one module does to
    its process (patching dpdpu, exiting at import) cannot reach another's calls.
    The pool keeps a spare worker started, serving nothing yet, for the next
    deployment that needs one; when ``size`` workers run, the least recently used
    idle worker of another deployment makes room.

    Args:
        device, policy: the runtime each worker opens for what its offloads call.
        size: most workers at once (each runs one call at a time).
        memory_bytes: each worker's memory limit (0: none).
        max_message_bytes: largest argument or result (the agent's gRPC message limit).
        import_timeout_s: time a module may take to import in a worker.
        invoke_timeout_s: deadline of calls submitted without one.
    """

    def __init__(
        self,
        *,
        device: str,
        policy: str,
        size: int,
        memory_bytes: int,
        max_message_bytes: int,
        import_timeout_s: float,
        invoke_timeout_s: float,
        zygote: Zygote | None = None,
    ) -> None:
        self.size = max(1, size)
        self.memory_bytes = memory_bytes
        self.import_timeout_s = import_timeout_s
        self.invoke_timeout_s = invoke_timeout_s
        self._options = {"device": device, "policy": policy, "memory_bytes": memory_bytes}
        self._max_frame = max_message_bytes + _REPLY_OVERHEAD
        self._zygote = zygote or shared_zygote()
        self._cond = threading.Condition()
        self._spares: list[_Worker] = []
        self._idle: dict[_Key, list[_Worker]] = {}  # oldest first
        self._workers: set[_Worker] = set()
        self._live = 0  # workers running or being started
        self._starting = 0
        self._restarts = 0
        self._start_error: str | None = None
        self._closed = False

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> WorkerPool:
        """Start the spare worker (raises WorkerStartError if workers cannot start at all)."""
        worker = self._spawn()
        with self._cond:
            self._live += 1
            self._workers.add(worker)
            self._spares.append(worker)
        return self

    def close(self) -> None:
        """Stop every worker; calls still running fail with RuntimeClosedError."""
        with self._cond:
            self._closed = True
            workers = list(self._workers)
            free = self._spares + [w for ws in self._idle.values() for w in ws]
            self._spares.clear()
            self._idle.clear()
            self._cond.notify_all()
        for worker in workers:
            worker.end(self._zygote, 0.0)
        for worker in free:  # busy ones are closed by the thread waiting on them
            worker.link.close()

    def unload(self, name: str, version: str) -> None:
        """Stop the workers of a deployment version that was replaced or undeployed."""
        key = (name, version)
        with self._cond:
            gone = self._idle.pop(key, [])
            for worker in self._workers:
                if worker.key == key:
                    worker.retire = True  # busy: stopped when its call returns
            for worker in gone:
                self._workers.discard(worker)
            self._live -= len(gone)
            self._keep_spare()
        for worker in gone:
            self._stop_quietly(worker)

    @property
    def processes(self) -> int:
        """Worker processes running or starting now."""
        return self._live

    @property
    def restarts(self) -> int:
        """Workers replaced because they died, were stopped at a deadline or ran out of memory."""
        return self._restarts

    # --- work ----------------------------------------------------------------------

    def loader(self) -> Loader:
        """:meth:`offloads` as a DeploymentStore loader."""
        return self.offloads  # type: ignore[return-value]

    def offloads(self, name: str, version: str, path: Path) -> tuple[None, dict[str, WorkerOffload]]:
        """Import a deployed module in a worker; its offloads as stand-ins (DeploymentStore's loader)."""
        ref = ModuleRef(name, version, Path(path))
        deadline = time.monotonic() + self.import_timeout_s
        request = _pickle(("load", ref.name, ref.version, str(ref.path)))
        try:
            reply = self._exchange((name, version), request, deadline)
        except TimeoutError:
            raise ImportTimeoutError(
                f"module did not finish importing in a worker process within {self.import_timeout_s:g} s "
                "(the worker was stopped)"
            ) from None
        except WorkerDiedError as exc:
            raise DeploymentError(
                f"module ended its worker process while importing ({exc.status_text}); the worker was replaced"
            ) from None
        except RemoteError as exc:
            # A DeploymentError from the worker already says what failed.
            text = exc.message if exc.type_name == "DeploymentError" else f"module failed to import: {exc}"
            raise DeploymentError(f"{text} (in a worker process)") from None
        try:
            described = json.loads(bytes(reply[1:]))
        except ValueError:
            raise DeploymentError("a worker process answered the import with an unreadable reply") from None
        stand_ins: dict[str, WorkerOffload] = {}
        for offload, meta in described.items():
            engine = meta.get("engine")
            if engine is not None and engine not in FALLBACK_CHAIN:
                raise DeploymentError(
                    f"offload {clip(offload, 80)!r} asks for an unknown engine {clip(str(engine), 40)!r}"
                )
            stand_ins[offload] = WorkerOffload(self, ref, offload, engine, bool(meta.get("fallback", True)))
        return None, stand_ins

    def call(
        self, ref: ModuleRef, offload: str, args: tuple[Any, ...], kwargs: dict[str, Any], deadline: float
    ) -> bytes | JsonText:
        """Run an offload in a worker: its bytes, or its value as JSON text.

        Raises TimeoutError (the worker was stopped), WorkerDiedError, RemoteError,
        RuntimeClosedError (the pool is closing) or ArgumentsError (arguments that
        cannot be passed to another process).
        """
        request = _pickle(("call", ref.name, ref.version, str(ref.path), offload, args, kwargs))
        reply = self._exchange((ref.name, ref.version), request, deadline)
        if reply[:1] == b"B":
            return bytes(memoryview(reply)[1:])
        return JsonText(bytes(memoryview(reply)[1:]).decode())

    def _exchange(self, key: _Key, request: bytes, deadline: float) -> bytearray:
        worker = self._acquire(key, deadline)
        try:
            worker.link.send(request, deadline=deadline)
            reply = worker.link.recv(deadline)
        except TimeoutError:
            self._discard(worker, 0.0)
            raise TimeoutError("its worker process was stopped") from None
        except FrameTooLargeError:
            self._discard(worker, 0.0)
            too_large = "the result is larger than the agent's message limit"
            raise RemoteError("ValueError", too_large, "result", True) from None
        except (EOFError, OSError) as exc:
            status = describe_status(self._discard(worker, _DEATH_GRACE_S))
            if self._closed:
                raise RuntimeClosedError("the agent is shutting down; the call was stopped") from None
            if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
                status = f"{status}; {exception_text(exc, 120)}"
            raise WorkerDiedError(f"its worker process ended ({status})", status) from None
        except BaseException:
            self._discard(worker, 0.0)
            raise
        tag = reply[:1]
        if tag == b"E":
            try:
                info = json.loads(bytes(reply[1:]))
            except ValueError:
                info = {}
            recycled = bool(info.get("recycle"))
            if recycled:
                self._discard(worker, _DEATH_GRACE_S)  # it exits by itself after this answer
            else:
                self._release(worker)
            raise RemoteError(
                clip(str(info.get("type", "Error")), 80), clip(str(info.get("message", "")), 400),
                str(info.get("stage", "call")), recycled,
            )  # fmt: skip
        if bytes(tag) not in (b"J", b"B", b"L"):
            self._discard(worker, 0.0)
            raise WorkerDiedError("its worker process sent an unreadable reply and was replaced", "unreadable reply")
        self._release(worker)
        return reply

    # --- workers -------------------------------------------------------------------

    def _acquire(self, key: _Key, deadline: float) -> _Worker:
        stopping: list[_Worker] = []
        try:
            with self._cond:
                while True:
                    if self._closed:
                        raise RuntimeClosedError("the agent is shutting down")
                    own = self._idle.get(key)
                    if own:
                        worker = own.pop()  # the most recently used: warm caches
                        if not own:
                            del self._idle[key]
                        return worker
                    if self._spares:
                        worker = self._spares.pop()
                        worker.key = key
                        self._keep_spare()
                        return worker
                    if self._live < self.size:
                        if not self._starting:
                            self._live += 1
                            self._start_in_background()
                    elif self._idle:
                        # Make room: the least recently used idle worker of another deployment.
                        victim_key = min(self._idle, key=lambda k: self._idle[k][0].used)
                        victim = self._idle[victim_key].pop(0)
                        if not self._idle[victim_key]:
                            del self._idle[victim_key]
                        self._workers.discard(victim)
                        self._live -= 1
                        stopping.append(victim)
                        continue
                    elif self._live == 0 and self._start_error is not None:
                        raise WorkerStartError(self._start_error)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("no worker process became free in time")
                    self._cond.wait(remaining)
        finally:
            for worker in stopping:
                self._stop_quietly(worker)

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if not self._closed and not worker.retire and worker.key is not None:
                worker.used = time.monotonic()
                self._idle.setdefault(worker.key, []).append(worker)
                self._cond.notify_all()
                return
            if worker in self._workers:
                self._workers.discard(worker)
                self._live -= 1
                self._keep_spare()
            self._cond.notify_all()
        self._stop_quietly(worker)

    def _discard(self, worker: _Worker, grace_s: float) -> int | None:
        """Stop a worker that failed, and start a spare in its place."""
        status = worker.end(self._zygote, grace_s)
        worker.link.close()
        with self._cond:
            if worker in self._workers:
                self._workers.discard(worker)
                self._live -= 1
                if not self._closed:
                    self._restarts += 1
                self._keep_spare()
            self._cond.notify_all()
        return status

    def _stop_quietly(self, worker: _Worker) -> None:
        """Stop a healthy worker that is no longer needed (its link closes first: it exits by itself)."""
        worker.link.close()
        worker.end(self._zygote, _DEATH_GRACE_S)

    def _keep_spare(self) -> None:
        # Called with the lock held: one spare started ahead of need, while there is room.
        if not self._closed and not self._spares and not self._starting and self._live < self.size:
            self._live += 1
            self._start_in_background()

    def _start_in_background(self) -> None:
        # The caller holds the lock and has counted the worker in _live already.
        self._starting += 1
        threading.Thread(target=self._start_one, name="dpdpu-worker-start", daemon=True).start()

    def _start_one(self) -> None:
        try:
            worker = self._spawn()
        except WorkerStartError as exc:
            with self._cond:
                self._starting -= 1
                self._live -= 1
                self._start_error = str(exc)
                self._cond.notify_all()
            return
        with self._cond:
            self._starting -= 1
            if not self._closed:
                self._start_error = None
                self._workers.add(worker)
                self._spares.append(worker)
                self._cond.notify_all()
                return
            self._live -= 1
        self._stop_quietly(worker)

    def _spawn(self) -> _Worker:
        try:
            child, ours = self._zygote.spawn("worker", self._options)
        except ZygoteError as exc:
            raise WorkerStartError(f"cannot start a worker process: {exc}") from None
        worker = _Worker(child, FrameSocket(ours, max_frame=self._max_frame))
        try:
            ready = worker.link.recv(time.monotonic() + _READY_TIMEOUT_S)
        except (OSError, EOFError) as exc:
            status = worker.end(self._zygote, _DEATH_GRACE_S)
            worker.link.close()
            hint = " (is the worker memory limit too small?)" if self.memory_bytes else ""
            raise WorkerStartError(
                f"a worker process did not start ({describe_status(status)}; {type(exc).__name__}){hint}; "
                "see the agent's log"
            ) from None
        if ready != b"R":
            worker.end(self._zygote, _DEATH_GRACE_S)
            worker.link.close()
            try:
                reason = str(json.loads(bytes(ready[1:]))["message"]) if ready[:1] == b"E" else "unreadable greeting"
            except (ValueError, KeyError, TypeError):
                reason = "unreadable greeting"
            raise WorkerStartError(f"a worker process cannot start: {clip(reason, 300)}")
        return worker


class WorkerOffload:
    """Stands for an offload of a deployed module; calling it runs the offload in a worker.

    It carries the offload's placement options (``__dpdpu_offload__``), so the agent's
    runtime places it as it would the function itself, and a module and name of its
    own, so the runtime keeps a run-time history per offload.
    """

    def __init__(self, pool: WorkerPool, ref: ModuleRef, offload: str, engine: str | None, fallback: bool) -> None:
        self._pool = pool
        self._ref = ref
        self._offload = offload
        self.__dpdpu_offload__ = {"engine": engine, "fallback": fallback, "name": offload}
        self.__wrapped__ = self
        self.__module__ = module_name(ref.name, ref.version)
        self.__qualname__ = self.__name__ = offload

    __dpdpu_inline__ = True  # the task only waits for the worker (see the module's docstring)

    def __call__(self, *args: Any, **kwargs: Any) -> bytes | JsonText:
        deadline = DEADLINE.get()
        if deadline is None:
            deadline = time.monotonic() + self._pool.invoke_timeout_s
        return self._pool.call(self._ref, self._offload, args, kwargs, deadline)

    def __repr__(self) -> str:
        return f"<offload {self._ref.name}.{self._offload} in a worker process>"


def _pickle(request: tuple[Any, ...]) -> bytes:
    try:
        return pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
    except RecursionError:
        raise ArgumentsError("arguments are nested too deeply to pass to a worker process") from None
    except (pickle.PicklingError, TypeError, AttributeError, ValueError) as exc:
        raise ArgumentsError(f"arguments cannot be passed to a worker process: {exception_text(exc)}") from None
