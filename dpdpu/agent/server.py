"""The agent: a runtime on a device, the gRPC control service and the Flight endpoint.

``dpdpu agent`` runs :func:`run_agent`.  The control service (``control.proto``) is
registered with grpc's generic handlers; a server interceptor checks the bearer
token on every call.  Invocations are tasks of the agent's runtime (``dpu-only``
placement by default: the agent's point is running on the device) and the handler
waits on the task's future with the invocation's timeout.

With ``isolation="process"`` (the default) the task is a round trip to a worker
process (:mod:`dpdpu.agent.isolation`) that runs the offload: a crash, an exit or
running out of memory there fails that call only (ABORTED, or the offload's
MemoryError), and a call past its timeout stops its worker.  With ``"none"`` the
offload runs on the engine thread itself; a Python thread that never returns cannot
be killed, so an invocation past its timeout fails with DEADLINE_EXCEEDED and its
task keeps its engine thread; the agent counts such "hung" tasks and refuses new
invocations (RESOURCE_EXHAUSTED) while there are ``max_hung`` of them.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import fcntl
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc  # type: ignore[import-untyped]

from .. import __version__
from ..errors import DpdpuError, InvalidArgumentError, RuntimeClosedError, to_wire, wire_status
from ..runtime.runtime import Runtime
from ._proto import control_pb2 as pb
from .client import SERVICE
from .deployments import (
    DEFAULT_IMPORT_TIMEOUT_S,
    DEFAULT_MAX_MODULE_BYTES,
    DEFAULT_MEMORY_BYTES,
    Deployment,
    DeploymentStore,
    UnknownOffloadError,
)
from .isolation import (
    DEADLINE,
    ArgumentsError,
    RemoteError,
    WorkerDiedError,
    WorkerPool,
    WorkerStartError,
)
from .payloads import (
    MAX_MESSAGE_CHARS,
    check_seconds,
    clip,
    decode_args,
    exception_text,
    result_json,
    shown,
    split_args,
)
from .security import TlsFiles, check_bind, ensure_token, split_address
from .zygote import ZygoteError

__all__ = [
    "ISOLATION_MODES",
    "SERVICE",
    "Agent",
    "AgentConfig",
    "OffloadAbortedError",
    "TooManyHungError",
    "decode_args",
    "encode_result",
    "run_agent",
]

#: file in the data directory naming the running agent's addresses and pid
STATE_FILE = "agent.json"
#: file in the data directory the running agent holds a lock on
LOCK_FILE = "agent.lock"
#: where offloads run: "process" (worker processes) or "none" (the agent's own engine threads)
ISOLATION_MODES = ("process", "none")
#: time past an invocation's deadline allowed for stopping its worker and answering
_STOP_MARGIN_S = 5.0


class OffloadAbortedError(DpdpuError, RuntimeError):
    """An offload raised SystemExit or KeyboardInterrupt (reported as a failed invocation)."""

    wire_status = "UNKNOWN"


class TooManyHungError(DpdpuError, RuntimeError):
    """Too many invocations are past their timeout and still running; restart the agent."""

    wire_status = "RESOURCE_EXHAUSTED"


@dataclass
class AgentConfig:
    """How to run an agent (the options of ``dpdpu agent``)."""

    data_dir: Path
    device: str = "bluefield3"
    listen: str = "127.0.0.1:50051"
    #: Flight port (0: any free port; None: no Flight endpoint)
    flight_port: int | None = 0
    tls: TlsFiles | None = None
    policy: str = "dpu-only"
    #: worker threads per engine (None: at least 8, so a few hung tasks leave room)
    workers: int | None = None
    #: threads serving gRPC calls
    rpc_threads: int = 16
    invoke_timeout_s: float = 30.0
    import_timeout_s: float = DEFAULT_IMPORT_TIMEOUT_S
    max_module_bytes: int = DEFAULT_MAX_MODULE_BYTES
    #: invocations past their timeout tolerated before new ones are refused (None: workers // 2)
    max_hung: int | None = None
    #: largest gRPC message either way (invoke payloads and results)
    max_message_bytes: int = 256 << 20
    #: how long a shutdown lets in-flight calls finish
    grace_s: float = 10.0
    #: "process": offloads run in worker processes; "none": on the agent's engine threads
    isolation: str = "process"
    #: memory limit of each worker (and import check) process, in bytes (0: none)
    worker_memory_bytes: int = DEFAULT_MEMORY_BYTES


# --- result encoding -------------------------------------------------------------------


def encode_result(value: Any, reply: Any) -> None:
    """Put an offload's result into an ``InvokeReply``: bytes-like as bytes, the rest as JSON.

    Raises ValueError when the value cannot be encoded.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        reply.result_bytes = bytes(value)
        reply.is_bytes = True
    else:
        reply.result_json = result_json(value)


# --- authentication --------------------------------------------------------------------


class _TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with ``authorization: Bearer <token>`` metadata."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                if isinstance(value, str) and hmac.compare_digest(value, self._expected):
                    return continuation(details)
                break
        return self._deny


# --- the service -----------------------------------------------------------------------

#: what refuses an invocation before the offload runs: these keep their own status (the rest, see _failure)
_REFUSALS: tuple[type[Exception], ...] = (
    UnknownOffloadError,
    TooManyHungError,
    RuntimeClosedError,
    WorkerStartError,
    ZygoteError,
    ArgumentsError,
)


def grpc_status(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status a refused request gets: the error's wire status (:func:`dpdpu.errors.to_wire`)."""
    return grpc.StatusCode[wire_status(exc)]


def _deployment_pb(d: Deployment) -> Any:
    return pb.Deployment(
        name=d.name, version=d.version, offloads=sorted(d.offloads), deployed_at=d.deployed_at, size=d.size,
        filename=d.filename,
    )  # fmt: skip


class Agent:
    """A runtime, its deployments, the control service and (if available) the Flight endpoint.

    ``start()`` binds and serves in background threads; ``wait()`` blocks until a
    Shutdown call or :meth:`request_stop` (e.g. from a signal handler), then
    :meth:`stop` drains in-flight calls for ``grace_s`` and closes everything.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        # Absolute from the start: state, token and module paths must not depend on a cwd.
        self.data_dir = Path(config.data_dir).expanduser().absolute()
        host, _ = split_address(config.listen)
        self.token = ensure_token(self.data_dir)
        check_bind(host, self.token, config.tls)
        self.host = host
        self.workers = config.workers or max(8, os.cpu_count() or 1)
        self.max_hung = config.max_hung if config.max_hung is not None else max(1, self.workers // 2)
        if config.isolation not in ISOLATION_MODES:
            modes = ", ".join(ISOLATION_MODES)
            raise InvalidArgumentError(f"isolation must be one of {modes}, not {shown(config.isolation)}")
        # One worker process per engine thread at most: a call holds both while it runs.
        self.pool: WorkerPool | None = None
        if config.isolation == "process":
            self.pool = WorkerPool(
                device=config.device, policy=config.policy, size=self.workers, memory_bytes=config.worker_memory_bytes,
                max_message_bytes=config.max_message_bytes, import_timeout_s=config.import_timeout_s,
                invoke_timeout_s=config.invoke_timeout_s,
            )  # fmt: skip
        self.store = DeploymentStore(
            self.data_dir, max_module_bytes=config.max_module_bytes, import_timeout_s=config.import_timeout_s,
            memory_bytes=config.worker_memory_bytes, load=self.pool.loader() if self.pool is not None else None,
            unload=self.pool.unload if self.pool is not None else None,
        )  # fmt: skip
        self.runtime: Runtime | None = None
        self.port = 0
        self.flight: Any = None
        self.flight_error: str | None = None
        self.restore_problems: list[str] = []
        self._server: grpc.Server | None = None
        self._stop = threading.Event()
        self.stop_grace_s: float | None = None
        self._draining = False
        self._t0 = time.monotonic()
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._in_flight = 0
        self._invocations = 0
        self._failures = 0
        self._hung = 0

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> Agent:
        """Open the runtime, restore deployments, bind the gRPC server and the Flight endpoint."""
        self._lock_data_dir()
        try:
            self.runtime = Runtime(self.config.device, workers=self.workers, policy=self.config.policy)
        except BaseException:
            self._unlock_data_dir()
            raise
        try:
            if self.pool is not None:
                self.pool.start()
            self.restore_problems = self.store.restore()
            self._start_grpc()
            self._start_flight()
        except BaseException:
            if self.pool is not None:
                self.pool.close()
            self.runtime.shutdown(wait=False)
            if self._server is not None:
                self._server.stop(None)
            self._unlock_data_dir()
            raise
        self._t0 = time.monotonic()
        self._write_state()
        return self

    def _lock_data_dir(self) -> None:
        # One agent per data directory: two would overwrite each other's manifest.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InvalidArgumentError(f"another agent is running on data dir {self.data_dir}") from None
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    def _start_grpc(self) -> None:
        limit = self.config.max_message_bytes
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self.config.rpc_threads, thread_name_prefix="dpdpu-rpc"),
            interceptors=[_TokenInterceptor(self.token)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=self.config.rpc_threads * 16,
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        try:
            if self.config.tls is not None:
                cert, key = self.config.tls.load()
                creds = grpc.ssl_server_credentials([(key, cert)])
                self.port = server.add_secure_port(self.config.listen, creds)
            else:
                self.port = server.add_insecure_port(self.config.listen)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise InvalidArgumentError(f"cannot listen on {self.config.listen} (address in use or not local?)")
        server.start()
        self._server = server

    def _start_flight(self) -> None:
        if self.config.flight_port is None:
            return
        try:
            from ..network.flight import FlightEndpoint
        except ImportError as exc:
            self.flight_error = f"no Flight endpoint: {exc}"
            return
        tls = self.config.tls.load() if self.config.tls is not None else None
        scheme = "grpc+tls" if tls is not None else "grpc"
        # The endpoint serves from its construction.  Not through pyarrow's serve(): that
        # takes over SIGTERM and SIGINT whenever Python handles them, and on a signal waits
        # for the Flight calls in progress (an offload's whole run) before the agent hears of it.
        self.flight = FlightEndpoint(
            f"{scheme}://{self._url_host()}:{self.config.flight_port}",
            runtime=self.runtime, data_dir=self.data_dir / "flight", token=self.token, tls=tls,
            actions={"offloads": self._flight_offloads, "invoke": self._flight_invoke},
        )  # fmt: skip

    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def address(self) -> str:
        """The bound gRPC address, ``host:port``."""
        return f"{self._url_host()}:{self.port}"

    @property
    def flight_port(self) -> int:
        """The Flight endpoint's port (0: none)."""
        return int(self.flight.port) if self.flight is not None else 0

    def state(self) -> dict[str, Any]:
        """Where the agent listens (printed on start and kept in ``agent.json``)."""
        return {
            "listen": self.address,
            "flight": str(self.flight.location) if self.flight is not None else None,
            "flight_port": self.flight_port,
            "pid": os.getpid(),
            "device": self.runtime.device.label if self.runtime is not None else self.config.device,
            "data_dir": str(self.data_dir),
            "tls": self.config.tls is not None,
        }

    def _write_state(self) -> None:
        path = self.data_dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(self.state()) + "\n")
        os.replace(tmp, path)

    def request_stop(self, grace_s: float | None = None) -> None:
        """Ask :meth:`wait` to return (safe from signal handlers and RPC threads)."""
        self.stop_grace_s = grace_s
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested; True if it was."""
        return self._stop.wait(timeout)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish for ``grace_s``, then close everything.

        Returns after about ``grace_s`` even if offloads are still running: their calls
        are cancelled, but their threads cannot be stopped (see :attr:`busy`).
        """
        grace = self.config.grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        self._draining = True
        if self._server is not None:
            # Past the grace gRPC cancels the calls; the bound is for a handler that ignores it.
            self._server.stop(grace).wait(grace + 1.0)
            self._server = None
        if self.flight is not None:
            # Flight's close waits for calls in progress, an invoke of a hung offload among them.
            flight = self.flight
            closer = threading.Thread(target=lambda: _quietly(flight.close), name="dpdpu-flight-close", daemon=True)
            closer.start()
            closer.join(max(0.1, deadline - time.monotonic()))
            self.flight = None
        if self.pool is not None:
            self.pool.close()  # offloads still running past the grace are stopped with their workers
        if self.runtime is not None:
            if self.busy:
                # Closing the device waits for the tasks on it even without ``wait``, and
                # running or hung offloads may never return: bounded by what is left of the grace.
                runtime = self.runtime
                closer = threading.Thread(
                    target=lambda: _quietly(lambda: runtime.shutdown(wait=False)), name="dpdpu-close", daemon=True
                )
                closer.start()
                closer.join(max(0.1, deadline - time.monotonic()))
            else:
                self.runtime.shutdown(wait=True)
        state = self.data_dir / STATE_FILE
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state.read_text()).get("pid") == os.getpid():
                state.unlink()
        self._unlock_data_dir()

    @property
    def hung(self) -> int:
        """Invocations past their timeout whose task is still running."""
        return self._hung

    @property
    def busy(self) -> bool:
        """Whether threads are still inside offloads or module imports (nothing can join them)."""
        return bool(self._in_flight or self._hung or self.store.hung_imports)

    # --- invocation ----------------------------------------------------------------

    def invoke(self, offload: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], timeout_s: float | None) -> Any:
        """Run a deployed offload and return its value (used by Invoke and Flight's ``invoke``).

        Raises UnknownOffloadError, TooManyHungError, TimeoutError (past ``timeout_s``)
        or whatever the offload raised.
        """
        value, _ = self._run(offload, args, kwargs, timeout_s)
        return value

    def _run(
        self, offload: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], timeout_s: float | None
    ) -> tuple[Any, Any]:
        fn = self.store.lookup(offload)
        runtime = self.runtime
        if runtime is None or self._draining:
            raise RuntimeClosedError("the agent is shutting down")
        if self._hung >= self.max_hung:
            raise TooManyHungError(
                f"{self._hung} invocations are still running past their timeout; restart the agent to free them"
            )
        timeout = timeout_s if timeout_s is not None and timeout_s > 0 else self.config.invoke_timeout_s
        with self._lock:
            self._in_flight += 1
            self._invocations += 1
        try:
            # A worker offload's task reads its deadline from its context (copied at submit).
            token = DEADLINE.set(time.monotonic() + timeout)
            try:
                future = runtime.submit(fn, *args, **kwargs)
            finally:
                DEADLINE.reset(token)
            # A worker offload's task ends at the deadline itself (stopping its worker): let it say so.
            wait = timeout + _STOP_MARGIN_S if self.pool is not None else timeout
            try:
                return future.result(wait), future.placement
            except (TimeoutError, concurrent.futures.TimeoutError) as exc:
                if not future.done():
                    self._mark_hung(future)
                # A worker offload says what became of the call (its worker stopped, or none was free).
                why = f"; {exc}" if self.pool is not None and future.done() and str(exc) else ""
                raise TimeoutError(f"offload {offload} did not finish within {timeout:g} s{why}") from None
            except Exception:
                raise
            except BaseException as exc:
                # SystemExit or KeyboardInterrupt raised by the offload fail that call, not this thread.
                raise OffloadAbortedError(exception_text(exc)) from None
        except BaseException:
            with self._lock:
                self._failures += 1
            raise
        finally:
            with self._lock:
                self._in_flight -= 1

    def _mark_hung(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._hung += 1

        def finished(_: object) -> None:
            with self._lock:
                self._hung -= 1

        future.add_done_callback(finished)

    # --- gRPC handlers -------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Callable[[Any, grpc.ServicerContext], Any], Any]] = {
            "Deploy": (self._deploy, pb.DeployRequest),
            "Undeploy": (self._undeploy, pb.UndeployRequest),
            "ListOffloads": (self._list, pb.ListOffloadsRequest),
            "Invoke": (self._invoke, pb.InvokeRequest),
            "Devices": (self._devices, pb.DevicesRequest),
            "Stats": (self._stats, pb.StatsRequest),
            "Health": (self._health, pb.HealthRequest),
            "Shutdown": (self._shutdown, pb.ShutdownRequest),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    _guarded(fn),
                    request_deserializer=_parser(request),
                    response_serializer=lambda reply: reply.SerializeToString(),
                )
                for name, (fn, request) in methods.items()
            },
        )

    def _deploy(self, request: Any, context: grpc.ServicerContext) -> Any:
        deployment, unchanged = self.store.deploy(request.name, request.source, request.filename)
        return pb.DeployReply(deployment=_deployment_pb(deployment), unchanged=unchanged)

    def _undeploy(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.UndeployReply(deployment=_deployment_pb(self.store.undeploy(request.name)))

    def _list(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ListOffloadsReply(deployments=[_deployment_pb(d) for d in self.store.deployments()])

    def _invoke(self, request: Any, context: grpc.ServicerContext) -> Any:
        args, kwargs = decode_args(request.args_json, request.payload if request.has_payload else None)
        timeout: float | None = check_seconds(request.timeout_s, "timeout_s") or None
        remaining = context.time_remaining()
        if remaining is not None:
            # Answer before the caller's deadline, with our own message.
            timeout = min(timeout or self.config.invoke_timeout_s, max(0.001, remaining - 0.05))
        failure: tuple[str, str] | None = None
        reply = pb.InvokeReply()
        try:
            value, placement = self._run(request.offload, args, kwargs, timeout)
        except _REFUSALS:
            raise  # refused before running: _guarded gives their status
        except Exception as exc:
            failure = _failure(request.offload, exc, self._memory_bytes)
        if failure is None:
            try:
                encode_result(value, reply)
            except ValueError as exc:
                with self._lock:
                    self._failures += 1
                failure = ("UNKNOWN", f"result of {request.offload} cannot be sent: {exc}")
        if failure is not None:
            context.abort(grpc.StatusCode[failure[0]], clip(failure[1]))
        reply.engine = placement.engine
        if placement.wall_s is not None:
            reply.wall_s = placement.wall_s
        if placement.timeline is not None:
            reply.modeled_s = placement.timeline.modeled_s
        return reply

    def _devices(self, request: Any, context: grpc.ServicerContext) -> Any:
        runtime = self._runtime()
        dev = runtime.device
        engines = [
            pb.EngineInfo(name=e.label, kind=e.kind, lanes=e.lanes, ops=sorted(e.ops)) for d in runtime.devices
            for e in d.engines
        ]  # fmt: skip
        return pb.DevicesReply(
            device=dev.label, description=dev.profile.description, engines=engines,
            memory_bytes=int(dev.profile.memory.value),
        )  # fmt: skip

    def _stats(self, request: Any, context: grpc.ServicerContext) -> Any:
        runtime = self._runtime()
        stats = runtime.stats()
        reply = pb.StatsReply(
            device=stats.device, uptime_s=time.monotonic() - self._t0, modeled_s=stats.modeled_s, tasks=stats.tasks,
            errors=stats.errors, pcie_bytes=stats.pcie_bytes, invocations=self._invocations,
            invocation_failures=self._failures, in_flight=self._in_flight, hung=self._hung,
            deployments=len(self.store), isolation=self.config.isolation,
            worker_processes=self.pool.processes if self.pool is not None else 0,
            worker_restarts=self.pool.restarts if self.pool is not None else 0,
        )  # fmt: skip
        offloaded_s = 0.0
        for dev in runtime.devices:
            native = getattr(dev, "_native", None)  # the emulator's core: live queue occupancy
            for info in dev.engines:
                st = stats.engines[info.label]
                depth = capacity = 0
                if native is not None:
                    with contextlib.suppress(DpdpuError):
                        counters = native.engine_stats(info.index)
                        depth, capacity = counters["in_flight"], counters["capacity"]
                reply.engines.append(
                    pb.EngineStats(
                        engine=info.label,
                        kind=st.kind,
                        lanes=st.lanes,
                        tasks=st.tasks,
                        errors=st.errors,
                        bytes_in=st.bytes_in,
                        bytes_out=st.bytes_out,
                        utilization=stats.utilization(info.label),
                        queue_depth=depth,
                        queue_capacity=capacity,
                        wall_busy_s=st.wall_busy_s,
                        modeled_busy_s=st.modeled_busy_s,
                    )
                )
                if info.on_device:
                    # Work the device's engines did is work the host did not: its measured
                    # time on this host stands for the host core time it would have taken.
                    offloaded_s += st.wall_busy_s
        reply.host_cores_saved = offloaded_s / stats.modeled_s if stats.modeled_s > 0 else 0.0
        return reply

    def _health(self, request: Any, context: grpc.ServicerContext) -> Any:
        runtime = self.runtime
        return pb.HealthReply(
            status="draining" if self._draining or self._stop.is_set() else "serving", version=__version__,
            device=runtime.device.label if runtime is not None else "", uptime_s=time.monotonic() - self._t0,
            deployments=len(self.store), flight_port=self.flight_port, pid=os.getpid(),
        )  # fmt: skip

    def _shutdown(self, request: Any, context: grpc.ServicerContext) -> Any:
        grace = check_seconds(request.grace_s, "grace_s")
        self.request_stop(grace if grace > 0 else None)
        return pb.ShutdownReply()

    @property
    def _memory_bytes(self) -> int:
        return self.pool.memory_bytes if self.pool is not None else 0

    def _runtime(self) -> Runtime:
        if self.runtime is None:
            raise RuntimeClosedError("the agent has no runtime")
        return self.runtime

    # --- Flight actions ------------------------------------------------------------

    def _flight_offloads(self, body: Any) -> Any:
        return [d.as_dict() for d in self.store.deployments()]

    def _flight_invoke(self, body: Any) -> Any:
        """Flight action ``invoke``: ``{"offload": NAME, "args": [...] | {...}, "timeout_s": S}``.

        The result is the offload's value as JSON; bytes come as ``{"bytes_base64": ...}``.
        Failures get the Flight status matching Invoke's gRPC status (see :func:`_flight_failure`).
        """
        import pyarrow as pa
        import pyarrow.flight as flight

        # The endpoint hands over the body JSON-decoded; a JSON string is taken as the JSON it holds.
        try:
            if isinstance(body, str):
                body = json.loads(body or "{}")
        except ValueError:
            raise pa.ArrowInvalid("body of invoke is not valid JSON") from None
        except RecursionError:
            raise pa.ArrowInvalid("body of invoke is nested too deeply") from None
        if not isinstance(body, dict) or not isinstance(body.get("offload"), str):
            raise pa.ArrowInvalid('invoke takes {"offload": NAME, "args": [...] | {...}, "timeout_s": S}')
        offload: str = body["offload"]
        timeout = body.get("timeout_s")
        try:
            seconds = check_seconds(timeout, "timeout_s") if timeout is not None else None
        except InvalidArgumentError as exc:
            raise pa.ArrowInvalid(f"{exc} (0 or null: the agent's)") from None
        args, kwargs = split_args(body.get("args", []))
        try:
            value = self.invoke(offload, args, kwargs, seconds)
        except Exception as exc:
            raise _flight_failure(offload, exc, self._memory_bytes) from None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {"bytes_base64": base64.b64encode(value).decode()}
        try:
            # The endpoint encodes with plain json: numpy and Arrow values go through ours first.
            return json.loads(result_json(value))
        except (ValueError, RecursionError) as exc:
            with self._lock:
                self._failures += 1
            raise flight.FlightServerError(clip(f"result of {offload} cannot be sent: {exc}")) from None


def _failure(offload: str, exc: Exception, memory_bytes: int = 0) -> tuple[str, str]:
    """The wire status and message of an invocation that ran and failed.

    Whatever the offload raised is UNKNOWN, whatever its type: an offload's own
    KeyError or ValueError must not read as NOT_FOUND or INVALID_ARGUMENT.  Only
    the agent's own verdicts keep their status: the call timed out, its worker died.
    """
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED", str(exc)
    if isinstance(exc, WorkerDiedError):
        return exc.wire_status, (
            f"offload {offload} ended its worker process ({exc.status_text}); the call failed and the worker "
            "was replaced"
        )
    if isinstance(exc, RemoteError):
        if exc.stage == "result":
            return "UNKNOWN", f"result of {offload} cannot be sent: {exc.message}"
        if exc.stage == "load":
            return "UNKNOWN", f"offload {offload} could not be loaded in its worker: {exc.message}"
        note = ""
        if exc.recycled and memory_bytes:
            note = f" (each worker process may use {_size_text(memory_bytes)}; this one was replaced)"
        return "UNKNOWN", f"offload {offload} raised {clip(str(exc), 400)}{note}"
    if isinstance(exc, DpdpuError):
        return "UNKNOWN", f"offload {offload} failed: {exception_text(exc)}"
    return "UNKNOWN", f"offload {offload} raised {exception_text(exc)}"


def _flight_failure(offload: str, exc: Exception, memory_bytes: int = 0) -> Exception:
    """The Flight error for a failed invocation, with the status Invoke's gRPC reply would have.

    Built here rather than left to the endpoint's mapping, which maps by exception
    type: what the offload raised is UNKNOWN (see :func:`_failure`).
    """
    from ..network.flight_server import flight_exception

    if isinstance(exc, _REFUSALS):  # refused before running: the error's own status
        status, message = to_wire(exc, MAX_MESSAGE_CHARS)
        if isinstance(exc, TooManyHungError):
            status = "UNAVAILABLE"  # Flight has no RESOURCE_EXHAUSTED; its clients retry UNAVAILABLE
    else:
        status, message = _failure(offload, exc, memory_bytes)
    return flight_exception(status, clip(message))


def _quietly(fn: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        fn()


class _Unreadable:
    """What a request that is not a valid message of its method parses to."""


def _parser(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception:  # protobuf's DecodeError and friends: the request is bad, not the agent
            return _Unreadable()

    return parse


def _guarded(fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Turn refusals (dpdpu errors) into their gRPC status, with a short message; the agent keeps serving."""

    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Unreadable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid message of its method")
        try:
            return fn(request, context)
        except DpdpuError as exc:
            code, message = grpc_status(exc), to_wire(exc, MAX_MESSAGE_CHARS)[1]
        context.abort(code, message)

    return handler


def _size_text(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} bytes"


# --- the process -----------------------------------------------------------------------


def run_agent(config: AgentConfig, *, out: Callable[[str], None] | None = None) -> int:
    """Run an agent until SIGTERM/SIGINT or a Shutdown call; returns the exit status.

    The first line written to ``out`` (stdout by default) is a JSON object with the
    bound addresses (``listen``, ``flight``, ``flight_port``, ``pid``); the same is kept
    in ``DATA_DIR/agent.json`` while the agent runs.
    """
    emit = out or (lambda line: print(line, flush=True))
    agent = Agent(config).start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.request_stop()

    # Left installed until the process ends: a second signal during the drain changes nothing.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        emit(json.dumps(agent.state()))
        for problem in agent.restore_problems:
            print(f"dpdpu agent: {problem}", file=sys.stderr, flush=True)
        if agent.flight_error:
            print(f"dpdpu agent: {agent.flight_error}", file=sys.stderr, flush=True)
        while not agent.wait(0.5):
            pass
    finally:
        # Bounded by the grace: agent.json and the lock are released here, whatever still runs.
        agent.stop(agent.stop_grace_s)
    if agent.busy:
        # Threads still inside offloads (or imports) past the grace cannot be stopped or
        # joined, and a normal exit would wait for them (the thread pools join their
        # threads at exit): leave without running Python's exit handlers.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
