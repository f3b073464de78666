"""``dpdpu agent`` and the client commands: deploy, offloads, undeploy, invoke, stats, health.

Client commands find the agent through ``--agent`` / ``$DPDPU_AGENT``, else the address
a local agent recorded in its data dir, else 127.0.0.1:50051; the token through
``--token`` / ``$DPDPU_TOKEN``, ``--token-file``, else the local agent's token file.

Exit status: 0 ok; 1 the call failed (the offload raised or timed out, the module or
request was refused, no such name); 2 usage (bad options or arguments); 3 no agent
reachable; 4 wrong or missing token (the agent refused it, or ``--token-file`` is
missing or empty).  With ``--json`` a failure of the command prints
``{"error": MESSAGE, "code": CODE}`` on stdout (CODE: the gRPC status name, or
USAGE / AUTH for what failed before any call), with the same exit status.

grpc is imported inside the commands, so ``dpdpu --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..agent.payloads import MAX_TIMEOUT_S, clip, shown
from ..runtime.placement import POLICIES
from ..runtime.units import fmt_bytes
from .common import echo_json, make_console

if TYPE_CHECKING:
    from ..agent.client import AgentClient

__all__ = ["AGENT_COMMANDS", "EXIT_AUTH", "EXIT_FAILED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4

F = TypeVar("F", bound=Callable[..., Any])


class AgentCliError(click.ClickException):
    """A failure printed as one line ("Error: ..."), or as JSON with ``--json``, with the documented exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, code: str | None = None) -> None:
        super().__init__(clip(message))
        self.exit_code = exit_code  # type: ignore[misc]  # per instance: the documented status
        self.code = code or {EXIT_USAGE: "USAGE", EXIT_AUTH: "AUTH", EXIT_UNREACHABLE: "UNAVAILABLE"}.get(
            exit_code, "FAILED"
        )
        self.as_json = False

    def show(self, file: Any = None) -> None:
        """Print the error: JSON on stdout with ``--json`` (what a script parses), else click's line."""
        if self.as_json:
            click.echo(json.dumps({"error": self.format_message(), "code": self.code}))
        else:
            super().show(file)


class _Command(click.Command):
    """A command whose usage errors are one short line, whatever was typed."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as exc:
            exc.message = clip(exc.message, 300)  # type: ignore[misc]
            raise


class _Seconds(click.ParamType):  # type: ignore[type-arg]
    """A finite number of seconds within bounds (click's FloatRange lets nan through)."""

    name = "seconds"

    def __init__(self, low: float, high: float = MAX_TIMEOUT_S) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{shown(value, 40)} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or not self.low <= seconds <= self.high:
            self.fail(f"{shown(value, 40)} is not between {self.low:g} and {self.high:g} seconds", param, ctx)
        return seconds


_SIZE = re.compile(r"\s*(\d+)\s*(|b|k|kib|m|mib|g|gib|t|tib)\s*", re.IGNORECASE)
_SCALE = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class _Bytes(click.ParamType):  # type: ignore[type-arg]
    """A size in bytes: ``536870912``, ``512M``, ``512MiB``, ``4G`` (powers of 1024)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.fullmatch(str(value))
        if m is None:
            self.fail(f"{shown(value, 40)} is not a size (bytes, or a number with K, M, G or T)", param, ctx)
        size = int(m.group(1)) * _SCALE[m.group(2).lower()[:1]]
        if size > 1 << 50:
            self.fail(f"{shown(value, 40)} is too large", param, ctx)
        return size


def _exit_code(exc: BaseException) -> int:
    from ..agent.client import AgentAuthError, AgentUnavailableError

    if isinstance(exc, AgentUnavailableError):
        return EXIT_UNREACHABLE
    if isinstance(exc, AgentAuthError):
        return EXIT_AUTH
    return EXIT_FAILED


def _client_options(fn: F) -> F:
    """The options every client command takes; passes ``client`` (opened lazily) and ``as_json``."""

    @click.option("--agent", "address", envvar="DPDPU_AGENT", help="Agent HOST:PORT [env DPDPU_AGENT].")
    @click.option("--token", envvar="DPDPU_TOKEN", help="Agent token [env DPDPU_TOKEN].")
    @click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="File holding the token [default: the local agent's].",
    )
    @click.option(
        "--tls-ca",
        envvar="DPDPU_TLS_CA",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Use TLS, checking the agent's certificate against this PEM file [env DPDPU_TLS_CA].",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @functools.wraps(fn)
    def wrapper(
        address: str | None, token: str | None, token_file: Path | None, tls_ca: Path | None, **kwargs: Any
    ) -> Any:
        from ..agent.client import AgentClient, AgentError, default_address, default_token
        from ..agent.security import read_token, split_address
        from ..errors import InvalidArgumentError

        try:
            address = address or default_address()
            try:
                split_address(address)
            except InvalidArgumentError as exc:
                raise AgentCliError(f"--agent: {exc}", EXIT_USAGE) from None
            if tls_ca is not None and not _looks_like_pem(tls_ca):
                raise AgentCliError(f"--tls-ca {shown(str(tls_ca), 60)} holds no PEM certificate", EXIT_USAGE)
            if token is None and token_file is not None:
                try:
                    token = read_token(token_file)
                except (OSError, UnicodeDecodeError) as exc:
                    raise AgentCliError(f"cannot read token file {token_file}: {exc}", EXIT_AUTH) from None
                if token is None:
                    # A missing token, like a wrong one: the README's exit status 4.
                    raise AgentCliError(f"no token in {token_file} (missing or empty file)", EXIT_AUTH)
            try:
                client = AgentClient(address, token if token is not None else default_token(), tls_ca=tls_ca)
            except AgentError as exc:  # a token that cannot be sent
                raise AgentCliError(str(exc), _exit_code(exc), exc.code) from None
            except (OSError, ValueError) as exc:  # an unreadable --tls-ca, an address grpc cannot parse
                raise AgentCliError(f"cannot connect: {exc}", EXIT_USAGE) from None
            try:
                return fn(client=client, **kwargs)
            except AgentError as exc:
                raise AgentCliError(str(exc), _exit_code(exc), exc.code) from None
            except InvalidArgumentError as exc:  # refused here before any call (e.g. an unreadable file)
                raise AgentCliError(str(exc), EXIT_USAGE) from None
            finally:
                client.close()
        except AgentCliError as exc:
            exc.as_json = bool(kwargs.get("as_json"))
            raise

    return wrapper  # type: ignore[return-value]


def _looks_like_pem(path: Path) -> bool:
    """Whether ``path`` holds a PEM certificate (grpc only logs, and then fails to connect)."""
    try:
        with open(path, "rb") as fh:
            return b"-----BEGIN CERTIFICATE-----" in fh.read(1 << 20)
    except OSError:
        return False


# --- the agent process -----------------------------------------------------------------


@click.command(cls=_Command)
@click.option(
    "--device", default="bluefield3", show_default=True, help="Device profile: host, bluefield2, bluefield3 or a TOML."
)
@click.option("--listen", default="127.0.0.1:50051", show_default=True, help="gRPC HOST:PORT (port 0: any free port).")
@click.option(
    "--flight-port", type=click.IntRange(0, 65535), default=0, show_default=True, help="Arrow Flight port (0: any)."
)
@click.option("--no-flight", is_flag=True, help="Do not start the Arrow Flight endpoint.")
@click.option(
    "--data-dir",
    envvar="DPDPU_AGENT_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Token, deployments and state [env DPDPU_AGENT_DIR; default ~/.local/share/dpdpu/agent].",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PEM certificate chain.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PEM private key.")
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default="dpu-only",
    show_default=True,
    help="Placement policy of invocations.",
)
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Worker threads per engine [default: 8+].")
@click.option(
    "--invoke-timeout", type=_Seconds(0.001), default=30.0, show_default=True, help="Default invoke timeout (s)."
)
@click.option(
    "--import-timeout",
    type=_Seconds(0.1),
    default=10.0,
    show_default=True,
    help="Time a deployed module may take to import in isolation (s).",
)
@click.option(
    "--max-module-bytes", type=click.IntRange(1), default=1 << 20, show_default=True, help="Largest module accepted."
)
@click.option("--grace", type=_Seconds(0), default=10.0, show_default=True, help="Drain time on shutdown (s).")
@click.option(
    "--isolation",
    type=click.Choice(["process", "none"]),
    default="process",
    show_default=True,
    help="Run offloads in worker processes, or in the agent itself (none: faster, but a crash takes the agent).",
)
@click.option(
    "--worker-memory",
    type=_Bytes(),
    default="4G",
    show_default=True,
    help="Memory each worker (and import check) process may use, e.g. 512M, 4G; 0: no limit.",
)
def agent(
    device: str,
    listen: str,
    flight_port: int,
    no_flight: bool,
    data_dir: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    policy: str,
    workers: int | None,
    invoke_timeout: float,
    import_timeout: float,
    max_module_bytes: int,
    grace: float,
    isolation: str,
    worker_memory: int,
) -> None:
    """Run the agent: a runtime on DEVICE, the control service and an Arrow Flight endpoint.

    The first line printed is JSON with the bound addresses ("listen", "flight",
    "pid"); DATA_DIR/agent.json holds the same while the agent runs.  SIGTERM or
    SIGINT drain in-flight calls (up to --grace seconds) and exit.  Offloads run in
    worker processes (--isolation process): one that crashes, exits or runs out of
    --worker-memory fails its call and its worker is replaced.
    """
    from ..agent.security import TlsFiles, default_data_dir
    from ..agent.server import AgentConfig, run_agent
    from ..errors import DpdpuError, InvalidArgumentError, ProfileError, UnknownDeviceError

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    config = AgentConfig(
        data_dir=data_dir or default_data_dir(), device=device, listen=listen,
        flight_port=None if no_flight else flight_port,
        tls=TlsFiles(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None,
        policy=policy, workers=workers, invoke_timeout_s=invoke_timeout, import_timeout_s=import_timeout,
        max_module_bytes=max_module_bytes, grace_s=grace, isolation=isolation, worker_memory_bytes=worker_memory,
    )  # fmt: skip
    try:
        code = run_agent(config)
    except (InvalidArgumentError, ProfileError, UnknownDeviceError) as exc:
        raise AgentCliError(str(exc), EXIT_USAGE) from None
    except OSError as exc:  # the data directory, a TLS file
        raise AgentCliError(f"cannot start: {exc}", EXIT_USAGE) from None
    except DpdpuError as exc:  # e.g. worker processes cannot start
        raise AgentCliError(str(exc), EXIT_FAILED) from None
    sys.exit(code)


# --- client commands -------------------------------------------------------------------


@click.command(cls=_Command)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Deployment name [default: the file's stem].")
@_client_options
def deploy(client: AgentClient, file: Path, name: str | None, as_json: bool) -> None:
    """Deploy FILE (a Python module with @offload functions) to the agent.

    The agent imports it in a separate process first; a module that fails to
    import, takes too long or defines no offloads is refused.  Deploying a name
    again replaces it (concurrent deploys of one name run one after the other; the
    last wins).
    """
    from ..agent.deployments import NAME_PATTERN

    name = name if name is not None else file.stem
    if not re.fullmatch(NAME_PATTERN, name):
        raise AgentCliError(
            f"invalid deployment name {shown(name, 40)}: it must match {NAME_PATTERN} (pass --name)", EXIT_USAGE
        )
    err = make_console(stderr=True)
    if err.is_terminal and not as_json:
        with err.status(f"deploying {file.name} ..."):
            info = client.deploy(file, name=name)
    else:
        info = client.deploy(file, name=name)
    if as_json:
        echo_json(info.as_dict())
        return
    state = "unchanged" if info.unchanged else "deployed"
    click.echo(f"{state} {info.name} version {info.version[:12]}: {', '.join(info.offloads)}")


@click.command(cls=_Command)
@_client_options
def offloads(client: AgentClient, as_json: bool) -> None:
    """List the deployments and their offloads."""
    from rich.table import Table

    items = client.offloads()
    if as_json:
        echo_json([d.as_dict() for d in items])
        return
    table = Table(title="deployed offloads (invoke as DEPLOYMENT.OFFLOAD)", title_justify="left")
    for col in ("deployment", "version", "offloads", "size", "deployed"):
        table.add_column(col)
    for d in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.deployed_at))
        table.add_row(d.name, d.version[:12], "\n".join(d.offloads), f"{d.size} B", when)
    make_console().print(table)


@click.command(cls=_Command)
@click.argument("name")
@_client_options
def undeploy(client: AgentClient, name: str, as_json: bool) -> None:
    """Remove the deployment NAME."""
    info = client.undeploy(name)
    if as_json:
        echo_json(info.as_dict())
    else:
        click.echo(f"undeployed {info.name} version {info.version[:12]}")


@click.command(cls=_Command)
@click.argument("name")
@click.argument("args_json", required=False)
@click.option(
    "--input",
    "input_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Pass this file's bytes as the first argument.",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write a bytes result to this file.")
@click.option("--timeout", type=_Seconds(0.001), default=None, help="Seconds [default: the agent's --invoke-timeout].")
@_client_options
def invoke(
    client: AgentClient,
    name: str,
    args_json: str | None,
    input_file: Path | None,
    output: Path | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run the offload NAME (DEPLOYMENT.OFFLOAD) on the agent and print its result.

    ARGS_JSON is a JSON array of positional arguments, a JSON object of keyword
    arguments, or one JSON value.  Results print as JSON; a bytes result is
    written raw to stdout (or --output).
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if args_json:
        try:
            value = json.loads(args_json)
        except ValueError as exc:
            raise AgentCliError(f"ARGS_JSON is not valid JSON: {exc}", EXIT_USAGE) from None
        except RecursionError:
            raise AgentCliError("ARGS_JSON is nested too deeply", EXIT_USAGE) from None
        if isinstance(value, list):
            args = value
        elif isinstance(value, dict):
            kwargs = value
        else:
            args = [value]
    try:
        payload = input_file.read_bytes() if input_file is not None else None
    except OSError as exc:
        raise AgentCliError(f"cannot read --input: {exc}", EXIT_USAGE) from None
    result = client.invoke_ex(name, *args, payload=payload, timeout=timeout, **kwargs)
    value = result.value
    if isinstance(value, bytes):
        if output is not None:
            try:
                output.write_bytes(value)
            except OSError as exc:
                raise AgentCliError(f"cannot write --output: {exc}", EXIT_USAGE) from None
            value = {"bytes": len(value), "written_to": str(output)}
        elif as_json:
            import base64

            value = {"bytes_base64": base64.b64encode(value).decode()}
        else:
            sys.stdout.buffer.write(value)
            sys.stdout.flush()
            return
    if as_json:
        echo_json({"result": value, "engine": result.engine, "wall_s": result.wall_s, "modeled_s": result.modeled_s})
    else:
        click.echo(json.dumps(value))


@click.command(cls=_Command)
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option(
    "--interval", type=_Seconds(0.05, 3600), default=1.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--count", type=click.IntRange(0), default=0, help="With --watch: stop after this many refreshes.")
@_client_options
def stats(client: AgentClient, watch: bool, interval: float, count: int, as_json: bool) -> None:
    """Per-engine utilization, queue depths, tasks and bytes; invocations; host cores saved."""
    if not watch:
        data = client.stats()
        if as_json:
            echo_json(data)
        else:
            make_console().print(_stats_view(data))
        return
    if as_json:
        n = 0
        while True:
            click.echo(json.dumps(client.stats()))
            n += 1
            if count and n >= count:
                return
            time.sleep(interval)
    from rich.live import Live

    console = make_console()
    with Live(_stats_view(client.stats()), console=console, auto_refresh=False) as live:
        n = 1
        try:
            while not count or n < count:
                time.sleep(interval)
                live.update(_stats_view(client.stats()), refresh=True)
                n += 1
        except KeyboardInterrupt:
            pass


def _stats_view(data: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    summary = Text(
        f"{data['device']}: up {data['uptime_s']:.0f} s, {data['deployments']} deployments, "
        f"{data['invocations']} invocations ({data['invocation_failures']} failed, {data['in_flight']} running, "
        f"{data['hung']} hung)\n"
        f"isolation {data['isolation']}: {data['worker_processes']} worker processes, "
        f"{data['worker_restarts']} replaced\n"
        f"modeled: device time {data['modeled_s'] * 1e3:.3f} ms, host cores saved {data['host_cores_saved']:.2f}"
    )
    table = Table()
    for col in ("engine", "kind", "lanes", "tasks", "errors", "queue", "in", "out", "util"):
        table.add_column(col, justify="left" if col in ("engine", "kind") else "right")
    for e in data["engines"]:
        table.add_row(
            e["engine"], e["kind"], str(e["lanes"]), str(e["tasks"]), str(e["errors"]),
            f"{e['queue_depth']}/{e['queue_capacity']}", fmt_bytes(e["bytes_in"]), fmt_bytes(e["bytes_out"]),
            f"{e['utilization']:.0%}",
        )  # fmt: skip
    return Group(summary, table)


@click.command(cls=_Command)
@_client_options
def health(client: AgentClient, as_json: bool) -> None:
    """Check that the agent answers: status, version, device, uptime."""
    data = client.health()
    if as_json:
        echo_json(data)
    else:
        flight = f", flight port {data['flight_port']}" if data["flight_port"] else ""
        click.echo(
            f"{data['status']}: dpdpu {data['version']} on {data['device']}, up {data['uptime_s']:.0f} s, "
            f"{data['deployments']} deployments, pid {data['pid']}{flight}"
        )


#: The agent process and its client commands.
AGENT_COMMANDS: tuple[click.Command, ...] = (agent, deploy, offloads, undeploy, invoke, stats, health)
