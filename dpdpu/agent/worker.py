"""What runs in the agent's child processes: the deploy check and the offload worker.

Both are forked by the template (:mod:`dpdpu.agent.zygote`) with one end of a frame
link (:mod:`dpdpu.agent.frames`) to the agent.

``check`` imports one module file, answers ``{"offloads": {NAME: {"engine", "fallback"}}}``
or ``{"error": "Type: message"}`` as JSON, and exits.

``worker`` answers requests until the link closes.  Requests are pickles the agent
made; replies are never pickles, so the agent never unpickles anything deployed code
made.  A reply is a tag byte and its body:

- ``R``: ready (sent once, at start; an ``E`` instead if the worker cannot start);
- ``J``: the JSON text of a result; ``B``: the bytes of a bytes-like result;
- ``L``: JSON, the offloads a module defines (the answer to a load);
- ``E``: JSON ``{"type", "message", "stage", "recycle"}``: the load, the call or the
  encoding of its result (``stage``) failed; with
  ``recycle`` the worker exits after answering (it ran out of memory: its state is
  not to be trusted).

The worker imports a deployment on first use (or when asked to load it) and keeps
one version per deployment name.  It runs offloads on its main thread, under a
runtime of its own on the agent's device profile, so what an offload calls
(``dpdpu.compute``, other offloads) runs there.
"""

from __future__ import annotations

import importlib.util
import os
import select
import socket
import sys
import threading
import traceback
from collections.abc import Callable

# Bound now, in the template, before any deployed code runs: a module that patches
# ``json`` or ``pickle`` in its own process must not garble what this process answers.
from json import dumps as _dumps
from pathlib import Path
from pickle import loads as _loads
from types import ModuleType
from typing import Any

from .frames import FrameSocket
from .payloads import clip, result_json

__all__ = ["run"]

# Requests from the agent carry at most the gRPC message limit plus a little.
_MAX_REQUEST = (1 << 31) - 1
_ERROR_CHARS = 400


def run(role: str, fd: int, options: dict[str, Any]) -> int:
    """Run ``role`` ("check" or "worker") on the link ``fd``; returns the exit status."""
    link = FrameSocket(socket.socket(fileno=fd), max_frame=_MAX_REQUEST)
    if role == "check":
        return _check(link, str(options["path"]), int(options.get("memory_bytes") or 0))
    if role == "worker":
        _exit_with_agent(fd)
        return _Worker(link, options).serve()
    return 64


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of an exception, cut short."""
    try:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    except Exception:
        text = type(exc).__name__
    return clip(text, _ERROR_CHARS)


def describe_offloads(offloads: dict[str, Callable[..., Any]]) -> dict[str, dict[str, Any]]:
    """Where each offload asks to run, as plain data."""
    out: dict[str, dict[str, Any]] = {}
    for name, fn in offloads.items():
        meta = getattr(fn, "__dpdpu_offload__", {})
        engine = meta.get("engine")
        fallback = bool(meta.get("fallback", True))
        out[name] = {"engine": engine if isinstance(engine, str) else None, "fallback": fallback}
    return out


def _check(link: FrameSocket, path: str, memory_bytes: int) -> int:
    from .deployments import find_offloads
    from .zygote import limit_memory

    out: dict[str, Any]
    try:
        limit_memory(memory_bytes)
    except MemoryError as exc:
        link.send(_dumps({"error": f"the module cannot be checked: {exc}"}).encode())
        return 0
    try:
        os.chdir(os.path.dirname(path))
        spec = importlib.util.spec_from_file_location("_dpdpu_deploy_check", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        out = {"offloads": describe_offloads(find_offloads(module))}
    except BaseException as exc:  # whatever the import did, it is the check's answer
        out = {"error": describe_exception(exc)}
    link.send(_dumps(out).encode())
    return 0


def _exit_with_agent(fd: int) -> None:
    """End this process when the agent's end of the link closes, even in the middle of an offload."""

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLRDHUP)
        while True:
            for _, events in poller.poll():
                if events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    os._exit(0)

    threading.Thread(target=watch, name="dpdpu-worker-watch", daemon=True).start()


class _Worker:
    def __init__(self, link: FrameSocket, options: dict[str, Any]) -> None:
        self.link = link
        self.options = options
        # deployment name -> (version, module, offloads)
        self.modules: dict[str, tuple[str, ModuleType, dict[str, Callable[..., Any]]]] = {}

    def serve(self) -> int:
        from ..runtime.runtime import Runtime
        from .zygote import limit_memory

        try:
            runtime = Runtime(str(self.options["device"]), workers=2, policy=str(self.options["policy"]))
            limit_memory(int(self.options.get("memory_bytes") or 0))
        except Exception as exc:  # the agent reports it as a worker that could not start
            self.link.send(_error(exc, "start"))
            return 0
        with runtime.as_current():
            self.link.send(b"R")
            while True:
                try:
                    request = _loads(self.link.recv())
                except EOFError:
                    return 0
                reply, recycle = self._answer(request)
                del request
                self.link.send(*reply)
                if recycle:
                    return 0

    def _answer(self, request: tuple[Any, ...]) -> tuple[tuple[bytes | bytearray, ...], bool]:
        kind, name, version, path = request[:4]
        stage = "load"
        try:
            offloads = self._offloads(name, version, path)
            if kind == "load":
                return (b"L", _dumps(describe_offloads(offloads)).encode()), False
            offload, args, kwargs = request[4:]
            fn = offloads.get(offload)
            if fn is None:
                raise LookupError(f"the module defines no offload {offload!r} in this worker")
            stage = "call"
            value = getattr(fn, "__wrapped__", fn)(*args, **kwargs)
            stage = "result"
            if isinstance(value, (bytes, bytearray)):
                return (b"B", value), False
            if isinstance(value, memoryview):
                return (b"B", value.tobytes()), False
            return (b"J", result_json(value).encode()), False
        except MemoryError as exc:
            return (_error(exc, stage, recycle=True),), True
        except BaseException as exc:  # the offload's failure (SystemExit too) is its caller's answer
            return (_error(exc, stage),), False

    def _offloads(self, name: str, version: str, path: str) -> dict[str, Callable[..., Any]]:
        from .deployments import forget_module, load_module

        held = self.modules.get(name)
        if held is not None and held[0] == version:
            return held[2]
        if held is not None:
            del self.modules[name]
            forget_module(held[1])
        module, offloads = load_module(name, version, Path(path))
        self.modules[name] = (version, module, offloads)
        return offloads


def _error(exc: BaseException, stage: str, *, recycle: bool = False) -> bytes:
    try:
        message = clip(str(exc), _ERROR_CHARS)
    except Exception:
        message = "(its message cannot be shown)"
    body = {"type": type(exc).__name__, "message": message, "stage": stage, "recycle": recycle}
    return b"E" + _dumps(body).encode()
