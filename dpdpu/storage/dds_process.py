"""The DDS back end in its own process: the DPU side of the read path, apart from the host's.

On a BlueField the back end runs on the DPU's Arm cores and the host reaches it
through shared memory only; here it runs in a second process that owns the
file service (its data directory is locked by that process) and the cache
table, and talks to the host process over a :class:`ChannelPair`::

    with DdsProcess.spawn("data", predicate="myapp.dds:small_reads_on_dpu") as back:
        with back.front_end(host_handler=read_from_host) as front:
            front.cache_put(b"user:7", 1, "users.bin", 4096, 512)
            value = front.get(b"user:7")

The offload predicate and offload function are named as ``"module:attribute"``
and imported in the back end process (with the host process's ``sys.path``);
``@dpdpu.offload`` functions run as tasks on the back end's runtime
(``device``).  The host handler stays in the host process.

Run by hand: ``python -m dpdpu.storage.dds_process --channel NAME --data-dir DIR
[--predicate MOD:ATTR] [--function MOD:ATTR] [--cache-capacity N] [--device SPEC]``
(the host side creates the channel first).
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import errors
from ..runtime.channel import ChannelPair
from ..runtime.runtime import Runtime
from .dds import CacheTable, DdsBackEnd, DdsFrontEnd, HostHandler
from .fs import FileService

__all__ = ["BackEndStartError", "DdsProcess", "main"]

# The child's stdout carries only these two lines; everything else it prints goes to stderr.
_READY = "dpdpu-dds-ready"
_FAILED = "dpdpu-dds-failed: "


class BackEndStartError(errors.DpdpuError, RuntimeError):
    """The back end process exited or stayed silent before it was ready to serve."""

    wire_status = "UNAVAILABLE"


def _load(spec: str) -> Callable[..., Any]:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise errors.InvalidArgumentError(f"name a callable as 'module:attribute', got {spec!r}")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise errors.InvalidArgumentError(f"{spec} is not callable")
    return obj  # type: ignore[no-any-return]


class DdsProcess:
    """A running back end process and the host side of its channel; see :meth:`spawn`."""

    def __init__(self, process: subprocess.Popen[str], pair: ChannelPair) -> None:
        self.process = process
        self.pair = pair

    @classmethod
    def spawn(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        predicate: str | None = None,
        function: str | None = None,
        cache_capacity: int = 1 << 16,
        device: str | None = None,
        max_batch: int = 256,
        channel_capacity: int = 1 << 20,
        ready_timeout: float = 60.0,
    ) -> DdsProcess:
        """Start a back end serving ``data_dir`` (an existing file service) in a new process.

        Args:
            data_dir: the file service's directory; the back end opens it
                (nobody else may have it open).
            predicate: ``"module:attribute"`` of the offload predicate (default: serve everything on the DPU).
            function: ``"module:attribute"`` of the offload function (default: the cache table).
            cache_capacity: entries of the back end's cache table.
            device: the back end's runtime and storage profile (default ``bluefield3``).
            max_batch: most requests the back end takes from the channel at once.
            channel_capacity: bytes of each ring.
            ready_timeout: seconds to wait for the back end to start.

        Raises:
            BackEndStartError: the process exited (a bad name, a locked data
                directory...) or did not become ready in time; its error output is in the message.
        """
        for name, spec in (("predicate", predicate), ("function", function)):
            if spec is not None and (not isinstance(spec, str) or ":" not in spec):
                raise errors.InvalidArgumentError(f"{name} must be 'module:attribute', got {spec!r}")
        pair = ChannelPair.create(capacity=channel_capacity)
        assert pair.name is not None
        argv = [
            sys.executable,
            "-m",
            "dpdpu.storage.dds_process",
            "--channel",
            pair.name,
            "--data-dir",
            os.fspath(data_dir),
            "--cache-capacity",
            str(cache_capacity),
            "--max-batch",
            str(max_batch),
        ]
        if predicate:
            argv += ["--predicate", predicate]
        if function:
            argv += ["--function", function]
        if device:
            argv += ["--device", device]
        env = dict(os.environ)
        # The child resolves "module:attribute" names the way this process would.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        try:
            # stderr is inherited, not piped: a pipe nobody reads fills up and stalls a chatty back end.
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        except BaseException:
            pair.close()
            raise
        back = cls(proc, pair)
        try:
            back._wait_ready(ready_timeout)
        except BaseException:
            back.close(timeout=5)
            raise
        return back

    def _wait_ready(self, timeout: float) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackEndStartError(f"the DDS back end did not start within {timeout:g} s", op="dds_spawn")
            ready, _, _ = select.select([self.process.stdout], [], [], min(left, 0.5))
            if ready:
                line = self.process.stdout.readline()
                if line.strip() == _READY:
                    return
                if line.startswith(_FAILED):
                    raise BackEndStartError(
                        f"the DDS back end failed to start: {line[len(_FAILED) :].strip()}", op="dds_spawn"
                    )
                if line == "":  # EOF: the process is exiting
                    self.process.wait(5)
            if self.process.poll() is not None:
                raise BackEndStartError(
                    f"the DDS back end exited with status {self.process.returncode} (its error output is above)",
                    op="dds_spawn",
                )

    @property
    def pid(self) -> int:
        """The back end's process id."""
        return self.process.pid

    def front_end(self, *, host_handler: HostHandler | None = None, timeout: float | None = 30.0) -> DdsFrontEnd:
        """A front end on this back end's channel (one at a time: it owns the host side)."""
        return DdsFrontEnd(self.pair, host_handler=host_handler, timeout=timeout)

    def close(self, timeout: float = 30.0) -> int | None:
        """Close the channel (the back end then exits) and wait for the process; returns its exit status."""
        self.pair.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> DdsProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The back end process: attach to the channel, serve until the host closes it."""
    parser = argparse.ArgumentParser(prog="python -m dpdpu.storage.dds_process", description=__doc__.splitlines()[0])
    parser.add_argument("--channel", required=True, help="name of the ChannelPair the host created")
    parser.add_argument("--data-dir", required=True, help="the file service's directory")
    parser.add_argument("--predicate", help="offload predicate as module:attribute")
    parser.add_argument("--function", help="offload function as module:attribute")
    parser.add_argument("--cache-capacity", type=int, default=1 << 16)
    parser.add_argument("--device", default="bluefield3", help="runtime and storage profile")
    parser.add_argument("--max-batch", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        predicate = _load(args.predicate) if args.predicate else None
        function = _load(args.function) if args.function else None
        with (
            Runtime(args.device) as rt,
            FileService(args.data_dir, device=args.device, create=False) as fs,
            ChannelPair.attach(args.channel, timeout=10.0) as pair,
        ):
            back = DdsBackEnd(
                pair,
                fs,
                CacheTable(args.cache_capacity),
                offload_predicate=predicate,
                offload_function=function,
                runtime=rt,
                max_batch=args.max_batch,
            )
            print(_READY, flush=True)
            # From here on stdout is the user's: send what offload code prints to stderr.
            os.dup2(2, 1)
            back.serve()
    except (errors.DpdpuError, ImportError, AttributeError) as exc:
        print(f"{_FAILED}{type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
