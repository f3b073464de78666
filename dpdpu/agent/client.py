"""A typed Python client of the agent's control service.

>>> with AgentClient("127.0.0.1:50051", token) as agent:      # doctest: +SKIP
...     agent.deploy("examples/offloads_example.py")
...     agent.invoke("offloads_example.word_count", "a b c")

Failures raise :class:`AgentError` subclasses carrying the gRPC status name in
``code``: :class:`AgentUnavailableError` (no agent there), :class:`AgentAuthError`
(wrong, missing or unusable token), :class:`OffloadFailedError` (the offload raised,
or ended its worker process: code ``ABORTED``), :class:`OffloadTimeoutError`,
:class:`AgentNotFoundError`, :class:`AgentRejectedError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc  # type: ignore[import-untyped]

from ..errors import DpdpuError, InvalidArgumentError, from_wire
from ._proto import control_pb2 as pb
from .payloads import check_seconds, clip
from .security import default_data_dir, read_token

__all__ = [
    "AgentAuthError",
    "AgentClient",
    "AgentError",
    "AgentNotFoundError",
    "AgentRejectedError",
    "AgentUnavailableError",
    "DeploymentInfo",
    "InvokeResult",
    "OffloadFailedError",
    "OffloadTimeoutError",
    "check_token",
    "default_address",
    "default_token",
]

#: full name of the gRPC service (the server registers it under this name too)
SERVICE = "dpdpu.agent.v1.Control"
DEFAULT_ADDRESS = "127.0.0.1:50051"
#: marks a call made without a deadline (grpc's ``timeout=None``)
_NO_DEADLINE = -1.0
#: longest token accepted (a header line, well within gRPC's metadata limit)
MAX_TOKEN_CHARS = 1024


class AgentError(DpdpuError):
    """A call to the agent failed; ``code`` is the gRPC status name."""


class AgentUnavailableError(AgentError, ConnectionError):
    """No agent answered at the address."""

    wire_status = "UNAVAILABLE"


class AgentAuthError(AgentError, PermissionError):
    """The agent refused the token (or it cannot be sent: empty, too long, not printable ASCII)."""

    wire_status = "UNAUTHENTICATED"


class AgentNotFoundError(AgentError, LookupError):
    """No deployment or offload of that name."""

    wire_status = "NOT_FOUND"


class AgentRejectedError(AgentError, InvalidArgumentError):
    """The request was refused: a bad module, arguments, name, or a size limit."""


class OffloadFailedError(AgentError, RuntimeError):
    """The offload raised; the message carries its exception."""

    wire_status = "UNKNOWN"


class OffloadTimeoutError(AgentError, TimeoutError):
    """The offload did not finish within the timeout."""

    wire_status = "DEADLINE_EXCEEDED"


#: the client's error for each status the agent answers with (any other: AgentError)
_ERRORS: dict[str, type[DpdpuError]] = {
    "UNAVAILABLE": AgentUnavailableError,
    "UNAUTHENTICATED": AgentAuthError,
    "PERMISSION_DENIED": AgentAuthError,
    "NOT_FOUND": AgentNotFoundError,
    "INVALID_ARGUMENT": AgentRejectedError,
    "RESOURCE_EXHAUSTED": AgentRejectedError,
    "UNKNOWN": OffloadFailedError,
    "ABORTED": OffloadFailedError,
    "DEADLINE_EXCEEDED": OffloadTimeoutError,
}


def default_address(data_dir: Path | None = None) -> str:
    """``$DPDPU_AGENT``, else the address a local agent recorded in its data dir, else 127.0.0.1:50051."""
    env = os.environ.get("DPDPU_AGENT")
    if env:
        return env
    state = (data_dir or default_data_dir()) / "agent.json"
    try:
        return str(json.loads(state.read_text())["listen"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_ADDRESS


def default_token(data_dir: Path | None = None) -> str | None:
    """``$DPDPU_TOKEN``, else the token file of the default data dir (a local agent's)."""
    return os.environ.get("DPDPU_TOKEN") or read_token((data_dir or default_data_dir()) / "token")


@dataclass(frozen=True)
class DeploymentInfo:
    """A deployed module as the agent reports it."""

    name: str
    version: str
    offloads: list[str]
    deployed_at: float
    size: int
    filename: str
    unchanged: bool = False

    @classmethod
    def _of(cls, d: Any, unchanged: bool = False) -> DeploymentInfo:
        return cls(d.name, d.version, list(d.offloads), d.deployed_at, d.size, d.filename, unchanged)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        return {
            "name": self.name, "version": self.version, "offloads": self.offloads, "deployed_at": self.deployed_at,
            "size": self.size, "filename": self.filename, "unchanged": self.unchanged,
        }  # fmt: skip


@dataclass(frozen=True)
class InvokeResult:
    """An invocation's value and where and how long it ran."""

    value: Any
    engine: str
    wall_s: float
    modeled_s: float


class AgentClient:
    """A connection to an agent.

    Args:
        address: ``host:port`` (default: :func:`default_address`).
        token: the agent's token (default: :func:`default_token`).
        tls_ca: PEM file of the certificate (or CA) the agent's TLS certificate is checked against;
            with it the channel uses TLS.
        timeout: default deadline of calls other than Invoke, in seconds (an Invoke without
            its own timeout has no deadline: the agent ends it at its ``--invoke-timeout``).
        tls_server_name: name to check the certificate for, when it differs from the address's host.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        tls_ca: str | Path | None = None,
        timeout: float = 30.0,
        tls_server_name: str | None = None,
        max_message_bytes: int = 256 << 20,
    ) -> None:
        self.address = address or default_address()
        self.timeout = check_seconds(timeout, "timeout", allow_zero=False)
        token = token if token is not None else default_token() or ""
        check_token(token)
        self._metadata = (("authorization", f"Bearer {token}"),)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_ca is not None:
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self._channel = grpc.secure_channel(self.address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(self.address, options=options)
        self._calls: dict[str, Any] = {}
        for name, reply in (
            ("Deploy", pb.DeployReply), ("Undeploy", pb.UndeployReply), ("ListOffloads", pb.ListOffloadsReply),
            ("Invoke", pb.InvokeReply), ("Devices", pb.DevicesReply), ("Stats", pb.StatsReply),
            ("Health", pb.HealthReply), ("Shutdown", pb.ShutdownReply),
        ):  # fmt: skip
            self._calls[name] = self._channel.unary_unary(
                f"/{SERVICE}/{name}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=reply.FromString,
            )

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, name: str, request: Any, timeout: float | None = None) -> Any:
        deadline = None if timeout == _NO_DEADLINE else timeout or self.timeout
        try:
            return self._calls[name](request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc, self.address) from None

    # --- calls -------------------------------------------------------------------

    def deploy(self, source: str | Path, *, name: str | None = None, text: str | None = None) -> DeploymentInfo:
        """Deploy a module: a path to a ``.py`` file, or ``text`` with ``name``.

        Default name: the file's stem.  Redeploying the same text is a no-op
        (``unchanged`` in the result).
        """
        if text is None:
            path = Path(source)
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidArgumentError(f"cannot read {path}: {exc}") from None
            filename = path.name
        else:
            filename = str(source)
        name = name or Path(filename).stem
        reply = self._call("Deploy", pb.DeployRequest(name=name, source=text, filename=filename))
        return DeploymentInfo._of(reply.deployment, reply.unchanged)

    def undeploy(self, name: str) -> DeploymentInfo:
        """Remove a deployment."""
        return DeploymentInfo._of(self._call("Undeploy", pb.UndeployRequest(name=name)).deployment)

    def offloads(self) -> list[DeploymentInfo]:
        """Every deployment with its offloads."""
        return [DeploymentInfo._of(d) for d in self._call("ListOffloads", pb.ListOffloadsRequest()).deployments]

    def invoke_ex(
        self, offload: str, *args: Any, payload: bytes | None = None, timeout: float | None = None, **kwargs: Any
    ) -> InvokeResult:
        """Invoke ``"<deployment>.<offload>"`` and return value, engine and times.

        Arguments travel as JSON (positional or keyword, not both); ``payload``
        bytes go as the first positional argument without JSON.
        """
        if args and kwargs:
            raise InvalidArgumentError("pass positional or keyword arguments, not both (they travel as JSON)")
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout")
        body = kwargs if kwargs else list(args)
        try:
            args_json = json.dumps(body) if body else ""
        except RecursionError:
            raise InvalidArgumentError("arguments are nested too deeply to send as JSON") from None
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"arguments cannot be sent as JSON: {clip(str(exc), 200)}") from None
        request = pb.InvokeRequest(
            offload=offload, args_json=args_json, timeout_s=timeout or 0.0,
            has_payload=payload is not None, payload=payload or b"",
        )  # fmt: skip
        # The agent answers at the invocation's timeout, its own default when none is given
        # (which only it knows): a deadline here would only cut it shorter.  With a
        # timeout ours leaves the agent room to answer first, with its own message.
        deadline = timeout + 5.0 if timeout else _NO_DEADLINE
        reply = self._call("Invoke", request, timeout=deadline)
        value = reply.result_bytes if reply.is_bytes else json.loads(reply.result_json) if reply.result_json else None
        return InvokeResult(value, reply.engine, reply.wall_s, reply.modeled_s)

    def invoke(
        self, offload: str, *args: Any, payload: bytes | None = None, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Invoke a deployed offload and return its value (see :meth:`invoke_ex`)."""
        return self.invoke_ex(offload, *args, payload=payload, timeout=timeout, **kwargs).value

    def devices(self) -> dict[str, Any]:
        """The agent's device and its engines."""
        r = self._call("Devices", pb.DevicesRequest())
        return {
            "device": r.device, "description": r.description, "memory_bytes": r.memory_bytes,
            "engines": [{"name": e.name, "kind": e.kind, "lanes": e.lanes, "ops": list(e.ops)} for e in r.engines],
        }  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Runtime counters: per-engine utilization, queue depths, tasks, bytes; host cores saved."""
        r = self._call("Stats", pb.StatsRequest())
        names = [f.name for f in pb.StatsReply.DESCRIPTOR.fields if f.name != "engines"]
        out: dict[str, Any] = {n: getattr(r, n) for n in names}
        engine_fields = [f.name for f in pb.EngineStats.DESCRIPTOR.fields]
        out["engines"] = [{n: getattr(e, n) for n in engine_fields} for e in r.engines]
        return out

    def health(self) -> dict[str, Any]:
        """Status, version, device, uptime, deployments, Flight port and pid."""
        r = self._call("Health", pb.HealthRequest())
        return {f.name: getattr(r, f.name) for f in pb.HealthReply.DESCRIPTOR.fields}

    def shutdown(self, grace_s: float | None = None) -> None:
        """Ask the agent to drain in-flight calls and exit."""
        self._call("Shutdown", pb.ShutdownRequest(grace_s=grace_s or 0.0))


def check_token(token: str) -> None:
    """Refuse a token that cannot travel in a header: AgentAuthError (the token is wrong either way)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise AgentAuthError(f"the token is {len(token)} characters; at most {MAX_TOKEN_CHARS}", code="UNAUTHENTICATED")
    if not all("!" <= c <= "~" for c in token):
        raise AgentAuthError(
            "the token may hold printable ASCII characters only (no spaces, newlines or control characters)",
            code="UNAUTHENTICATED",
        )


def _error(exc: grpc.RpcError, address: str) -> AgentError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = clip((exc.details() if hasattr(exc, "details") else None) or str(code))
    if _ERRORS.get(status) is AgentUnavailableError:
        details = f"no agent reachable at {clip(address, 200)}: {details}"
    err = from_wire(status, details, classes=_ERRORS, default=AgentError)
    err.code = status
    return cast(AgentError, err)
