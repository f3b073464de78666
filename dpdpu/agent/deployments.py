"""Deployed offload modules: validation, content hashing, persistence and loading.

A deployment is one Python source file holding ``@offload`` functions, kept under a
name.  Its version is the SHA-256 of its text.  Before the agent loads a module it
is imported once in a separate process (forked from the agent's template process,
:mod:`dpdpu.agent.zygote`, so it starts in milliseconds) with a time and a memory
limit, which must finish and find at least one offload: a module with a syntax error,
one that raises, exits, crashes or loops at import, or one without offloads is refused
without touching the agent.  The store then loads it with its loader: by default an
import in this process; the agent's worker pool (:mod:`dpdpu.agent.isolation`) loads
it in a worker process instead.

Deployment names match ``[A-Za-z_][A-Za-z0-9_-]{0,63}`` (no dots: offloads are
invoked as ``DEPLOYMENT.OFFLOAD``), so a name is always one plain directory.

On disk (the agent's data directory)::

    deployments/manifest.json          name -> version, file name, time, offload names
    deployments/<name>/<version>.py    the source of the current version

Deploys of one name are serialized (a lock per name); each one replaces what the
previous one left, so the last deploy to finish wins.

The manifest is the record of what was deployed, not of what loaded: an entry whose
module fails to restore (file gone, changed, or failing to import now) stays in it,
so fixing the cause and restarting brings it back; only an undeploy or a new deploy
of that name replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import DpdpuError, InvalidArgumentError
from .frames import FrameSocket
from .payloads import clip, exception_text, shown
from .zygote import describe_status, shared_zygote

__all__ = [
    "DEFAULT_IMPORT_TIMEOUT_S",
    "DEFAULT_MAX_MODULE_BYTES",
    "DEFAULT_MEMORY_BYTES",
    "NAME_PATTERN",
    "Deployment",
    "DeploymentError",
    "DeploymentStore",
    "ImportTimeoutError",
    "ModuleTooLargeError",
    "UnknownDeploymentError",
    "UnknownOffloadError",
    "find_offloads",
    "forget_module",
    "load_module",
    "module_name",
    "source_version",
]

#: largest module source accepted (bytes of UTF-8)
DEFAULT_MAX_MODULE_BYTES = 1 << 20
#: time a module gets to import in the isolated check
DEFAULT_IMPORT_TIMEOUT_S = 10.0
#: memory limit of each process that runs deployed code (checks and workers): 4 GiB
DEFAULT_MEMORY_BYTES = 4 << 30
#: isolated imports running at once
_MAX_CONCURRENT_CHECKS = 2
#: largest answer of an isolated import (names and placement options of the offloads)
_MAX_CHECK_REPLY = 4 << 20

#: what a deployment name must match (whole)
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]{0,63}"
_NAME = re.compile(NAME_PATTERN)

#: a module loader: (name, version, path) -> (the module if loaded here, its offloads)
Loader = Callable[[str, str, Path], tuple[ModuleType | None, dict[str, Callable[..., Any]]]]


class DeploymentError(InvalidArgumentError):
    """A module was refused: bad name, syntax error, import failure or timeout, no offloads."""


class ImportTimeoutError(DpdpuError, TimeoutError):
    """The agent's own import of a module did not finish in time (its thread is left running)."""

    wire_status = "DEADLINE_EXCEEDED"


class ModuleTooLargeError(DeploymentError):
    """The module's source exceeds the agent's size limit."""

    wire_status = "RESOURCE_EXHAUSTED"


class UnknownDeploymentError(DpdpuError, LookupError):
    """No deployment of that name exists."""

    wire_status = "NOT_FOUND"


class UnknownOffloadError(DpdpuError, LookupError):
    """No deployed offload of that name exists (or a bare name is ambiguous)."""

    wire_status = "NOT_FOUND"


def source_version(source: str) -> str:
    """The version of a module: SHA-256 of its UTF-8 text, in hex."""
    return hashlib.sha256(source.encode()).hexdigest()


def find_offloads(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The ``@offload`` functions a module holds, by offload name."""
    found: dict[str, Callable[..., Any]] = {}
    for value in vars(module).values():
        meta = getattr(value, "__dpdpu_offload__", None)
        if isinstance(meta, dict) and callable(value) and not isinstance(value, type):
            found.setdefault(str(meta.get("name") or getattr(value, "__name__", "offload")), value)
    return found


@dataclass
class Deployment:
    """One deployed module and its loaded offloads."""

    name: str
    version: str
    filename: str
    size: int
    deployed_at: float
    offloads: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)
    module: ModuleType | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (no functions), as stored in the manifest."""
        return {
            "name": self.name,
            "version": self.version,
            "filename": self.filename,
            "size": self.size,
            "deployed_at": self.deployed_at,
            "offloads": sorted(self.offloads),
        }


class DeploymentStore:
    """The agent's deployments, persisted under ``data_dir/deployments``.

    Args:
        data_dir: the agent's data directory.
        max_module_bytes: largest source accepted (:class:`ModuleTooLargeError` beyond).
        import_timeout_s: time the isolated import (and the loader's import) may take.
        memory_bytes: memory limit of the isolated import's process (0: none).
        load: how an accepted module is loaded (default: imported in this process,
            within ``import_timeout_s``).
        unload: told (name, version) when a loaded version is replaced or undeployed.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        max_module_bytes: int = DEFAULT_MAX_MODULE_BYTES,
        import_timeout_s: float = DEFAULT_IMPORT_TIMEOUT_S,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        load: Loader | None = None,
        unload: Callable[[str, str], None] | None = None,
    ) -> None:
        # Absolute: the isolated import runs with the module's folder as its cwd.
        self.root = Path(data_dir).expanduser().absolute() / "deployments"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_module_bytes = max_module_bytes
        self.import_timeout_s = import_timeout_s
        self.memory_bytes = memory_bytes
        self._load_module: Loader = load or self._load_in_time
        self._unload = unload or (lambda name, version: None)
        self._lock = threading.Lock()  # guards _deployments, _index, the manifest and _name_locks
        self._name_locks: dict[str, list[Any]] = {}  # name -> [lock, users]
        self._checks = threading.BoundedSemaphore(_MAX_CONCURRENT_CHECKS)
        self._deployments: dict[str, Deployment] = {}
        # Manifest entries that did not restore: kept on disk until undeployed or replaced.
        self._unrestored: dict[str, dict[str, Any]] = {}
        self._hung_imports = 0
        # Invoke's lookup table, rebuilt on every change and replaced whole, so readers
        # never take a lock: "<deployment>.<offload>" and unambiguous bare names.
        self._index: dict[str, Callable[..., Any]] = {}
        self._ambiguous: frozenset[str] = frozenset()

    # --- queries -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._deployments)

    @property
    def hung_imports(self) -> int:
        """Imports in the agent that ran past the import timeout and are still running."""
        return self._hung_imports

    def unrestored(self) -> list[str]:
        """Names recorded in the manifest whose module did not load at start."""
        with self._lock:
            return sorted(self._unrestored)

    def deployments(self) -> list[Deployment]:
        """Every deployment, by name."""
        with self._lock:
            return [self._deployments[n] for n in sorted(self._deployments)]

    def lookup(self, offload: str) -> Callable[..., Any]:
        """The function behind ``"<deployment>.<offload>"`` or a bare offload name unique across deployments."""
        fn = self._index.get(offload)
        if fn is not None:
            return fn
        if offload in self._ambiguous:
            raise UnknownOffloadError(f"offload name {offload!r} is ambiguous; qualify it as DEPLOYMENT.{offload}")
        raise UnknownOffloadError(f"no deployed offload {shown(offload)}")

    def offload_names(self) -> list[str]:
        """Every qualified offload name."""
        return sorted(f"{d.name}.{o}" for d in self._deployments.values() for o in d.offloads)

    # --- changes -------------------------------------------------------------------

    def deploy(self, name: str, source: str, filename: str = "") -> tuple[Deployment, bool]:
        """Validate, persist and load a module; returns (deployment, unchanged).

        Raises :class:`DeploymentError` (or :class:`ModuleTooLargeError`) when refused;
        the previous version, if any, stays deployed then, and a refused first deploy
        of a name leaves nothing on disk.
        """
        _check_name(name)
        try:
            data = source.encode()
        except UnicodeEncodeError:
            raise DeploymentError("module is not valid UTF-8 text") from None
        size = len(data)
        if size > self.max_module_bytes:
            raise ModuleTooLargeError(f"module is {size} bytes; the agent accepts at most {self.max_module_bytes}")
        if not source.strip():
            raise DeploymentError("module is empty")
        version = source_version(source)
        with self._name_lock(name):
            current = self._deployments.get(name)
            if current is not None and current.version == version:
                return current, True
            folder = self.root / name
            made_folder = not folder.is_dir()
            folder.mkdir(exist_ok=True)
            try:
                deployment, old = self._accept(name, version, data, folder, _clean_filename(filename, name))
            except BaseException:
                if made_folder:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                raise
            if current is not None:
                forget_module(current.module)
                self._unload(name, current.version)
                (folder / f"{current.version}.py").unlink(missing_ok=True)
            elif old is not None and old.get("version") != version:
                (folder / f"{old.get('version')}.py").unlink(missing_ok=True)
            return deployment, False

    def _accept(
        self, name: str, version: str, data: bytes, folder: Path, filename: str
    ) -> tuple[Deployment, dict[str, Any] | None]:
        """Check, store and load one version; on failure nothing of it stays on disk."""
        pending = folder / f".{version}.{threading.get_ident()}.pending.py"
        pending.write_bytes(data)
        try:
            names = self._isolated_import(pending)
            path = folder / f"{version}.py"
            os.replace(pending, path)
        finally:
            pending.unlink(missing_ok=True)
        try:
            module, offloads = self._load_module(name, version, path)
        except (DeploymentError, ImportTimeoutError):
            self._unload(name, version)
            path.unlink(missing_ok=True)  # unchanged versions return early, so this is no live file
            raise
        if sorted(offloads) != names:
            # Imports that differ between two processes are not worth loading.
            forget_module(module)
            self._unload(name, version)
            path.unlink(missing_ok=True)
            raise DeploymentError(
                clip(f"module defines offloads {sorted(offloads)} when loaded but {names} when checked")
            )
        deployment = Deployment(name, version, filename, len(data), time.time(), offloads, module)
        with self._lock:
            self._deployments[name] = deployment
            old = self._unrestored.pop(name, None)
            self._reindex()
            self._write_manifest()
        return deployment, old

    def undeploy(self, name: str) -> Deployment:
        """Remove a deployment (UnknownDeploymentError if there is none)."""
        with self._name_lock(name):
            with self._lock:
                deployment = self._deployments.pop(name, None)
                if deployment is None and name in self._unrestored:
                    deployment = _unloaded(name, self._unrestored.pop(name))
                if deployment is None:
                    raise UnknownDeploymentError(f"no deployment named {shown(name)}")
                self._reindex()
                self._write_manifest()
            forget_module(deployment.module)
            self._unload(name, deployment.version)
            folder = self.root / name
            (folder / f"{deployment.version}.py").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a concurrent deploy of the same name may be writing there
                folder.rmdir()
            return deployment

    def restore(self) -> list[str]:
        """Load the deployments recorded in the manifest; returns a message per one that failed.

        Entries that fail stay in the manifest (see the module's docstring).  Call it
        once, before serving, by the only agent on the data dir: it also removes the
        pending files of deploys a killed agent left behind.
        """
        for stale in self.root.glob("*/.*.pending.py"):
            stale.unlink(missing_ok=True)
        manifest = self.root / "manifest.json"
        try:
            entries = json.loads(manifest.read_text())
            if not isinstance(entries, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            # Kept aside, not overwritten by the next deploy: it is the only record there is.
            kept = manifest.with_name(f"manifest.json.unreadable-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(manifest, kept)
            return [f"cannot read {manifest} (moved to {kept.name}): {exc}"]
        problems: list[str] = []
        for name, entry in sorted(entries.items()):
            try:
                if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
                    raise DeploymentError("its manifest entry has no version")
                _check_name(name)
                path = self.root / name / f"{entry['version']}.py"
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != entry["version"]:
                    raise DeploymentError(f"{path} does not match its recorded version")
                # Checked again in isolation: what imported at deploy time may hang or fail now
                # (the environment or the files it reads have changed).
                self._isolated_import(path)
                module, offloads = self._load_module(name, entry["version"], path)
                deployment = Deployment(
                    name, entry["version"], _clean_filename(str(entry.get("filename", "")), name), len(data),
                    float(entry.get("deployed_at", 0.0)), offloads, module,
                )  # fmt: skip
            except (OSError, ValueError, TypeError, DpdpuError) as exc:
                if isinstance(entry, dict) and isinstance(entry.get("version"), str):
                    self._unload(name, entry["version"])  # a worker that failed to load it
                problems.append(f"deployment {name!r} not restored (kept in the manifest): {exc}")
                self._unrestored[name] = entry if isinstance(entry, dict) else {"version": str(entry)}
                continue
            self._deployments[name] = deployment
        with self._lock:
            self._reindex()
        return problems

    # --- internals -----------------------------------------------------------------

    @contextlib.contextmanager
    def _name_lock(self, name: str) -> Iterator[None]:
        """Serialize changes of one name (a lock that lives while someone uses it)."""
        with self._lock:
            entry = self._name_locks.setdefault(name, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._name_locks[name]

    def _reindex(self) -> None:
        index: dict[str, Callable[..., Any]] = {}
        bare: dict[str, list[Callable[..., Any]]] = {}
        for d in self._deployments.values():
            for offload, fn in d.offloads.items():
                index[f"{d.name}.{offload}"] = fn
                bare.setdefault(offload, []).append(fn)
        for offload, fns in bare.items():
            if len(fns) == 1:
                index.setdefault(offload, fns[0])
        self._ambiguous = frozenset(o for o, fns in bare.items() if len(fns) > 1)
        self._index = index

    def _write_manifest(self) -> None:
        entries = {**self._unrestored, **{n: d.as_dict() for n, d in self._deployments.items()}}
        data = dict(sorted(entries.items()))
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".manifest.")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / "manifest.json")

    def _isolated_import(self, path: Path) -> list[str]:
        """Import ``path`` in a child process of its own; the offload names it defines."""
        with self._checks:
            result = _check_in_child(path.absolute(), self.import_timeout_s, self.memory_bytes)
        if "error" in result:
            raise DeploymentError(f"module failed to import: {clip(str(result['error']), 400)}")
        offloads = result.get("offloads")
        if not isinstance(offloads, dict):
            raise DeploymentError("module check gave an unreadable answer")
        if not offloads:
            raise DeploymentError("module defines no @offload functions")
        return sorted(offloads)

    def _load_in_time(self, name: str, version: str, path: Path) -> tuple[ModuleType, dict[str, Callable[..., Any]]]:
        """:func:`load_module` within the import timeout.

        The isolated check passed, but this import can still hang (the module may
        behave differently the second time).  The import runs in a thread of its own;
        past the timeout the caller gets :class:`ImportTimeoutError` and so releases
        the name's lock, and the thread, which cannot be killed, is counted as hung
        and drops whatever it loads when it ever finishes.
        """
        done = threading.Event()
        abandoned = False
        outcome: list[Any] = []
        guard = threading.Lock()

        def run() -> None:
            nonlocal abandoned
            try:
                result: Any = load_module(name, version, path)
            except BaseException as exc:  # handed to the waiting thread, which raises it
                result = exc
            with guard:
                outcome.append(result)
                done.set()
                late = abandoned
            if late:
                with self._lock:
                    self._hung_imports -= 1
                if isinstance(result, tuple):
                    forget_module(result[0])

        thread = threading.Thread(target=run, name=f"dpdpu-import-{name}", daemon=True)
        thread.start()
        done.wait(self.import_timeout_s)
        with guard:
            if not outcome:
                abandoned = True
                with self._lock:
                    self._hung_imports += 1
                raise ImportTimeoutError(
                    f"module did not finish importing in the agent within {self.import_timeout_s:g} s "
                    "(its import thread is left running)"
                )
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]


def _unloaded(name: str, entry: dict[str, Any]) -> Deployment:
    """A manifest entry that did not restore, as a deployment without functions."""
    return Deployment(
        name, str(entry.get("version", "")), str(entry.get("filename", "")), int(entry.get("size", 0) or 0),
        float(entry.get("deployed_at", 0.0) or 0.0),
    )  # fmt: skip


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DeploymentError(
            f"invalid deployment name {shown(name, 40)}: use letters, digits, '_' and '-' (64 at most), "
            "starting with a letter or '_'"
        )


def _clean_filename(filename: str, name: str) -> str:
    """The client's file name, kept for messages only: printable and at most 255 characters."""
    cleaned = "".join(c if c.isprintable() else "?" for c in filename[:255])
    return cleaned or f"{name}.py"


def module_name(name: str, version: str) -> str:
    """The private module name a deployment's version is imported under."""
    return f"_dpdpu_deployed.{name.replace('-', '_')}_{version[:16]}"


def _check_in_child(path: Path, timeout_s: float, memory_bytes: int) -> dict[str, Any]:
    """Fork a check process (see :mod:`dpdpu.agent.worker`) and read its answer."""
    zygote = shared_zygote()
    child, ours = zygote.spawn("check", {"path": str(path), "memory_bytes": memory_bytes})
    link = FrameSocket(ours, max_frame=_MAX_CHECK_REPLY)
    try:
        reply = link.recv(time.monotonic() + timeout_s)
    except TimeoutError:
        zygote.reap(child, 0.0)
        raise DeploymentError(f"module did not finish importing within {timeout_s:g} s") from None
    except (EOFError, OSError):
        status = zygote.reap(child, 1.0)
        raise DeploymentError(f"module import ended without a result ({describe_status(status)})") from None
    finally:
        link.close()
    zygote.reap(child, 1.0)  # it exits after answering; whatever it started goes with it
    try:
        result = json.loads(bytes(reply))
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise DeploymentError("module check gave an unreadable answer")
    return result


def load_module(name: str, version: str, path: Path) -> tuple[ModuleType, dict[str, Callable[..., Any]]]:
    """Import ``path`` in this process as a private module and collect its offloads."""
    private = module_name(name, version)
    spec = importlib.util.spec_from_file_location(private, path)
    if spec is None or spec.loader is None:
        raise DeploymentError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered while it lives: dataclasses, pickling and typing look modules up by name.
    sys.modules[private] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        if sys.modules.get(private) is module:  # a later load of the same version may own the name now
            del sys.modules[private]
        raise DeploymentError(f"module failed to import: {exception_text(exc)}") from None
    offloads = find_offloads(module)
    if not offloads:
        forget_module(module)
        raise DeploymentError("module defines no @offload functions")
    return module, offloads


def forget_module(module: ModuleType | None) -> None:
    """Drop a module that :func:`load_module` made from ``sys.modules`` (if it is still the one there)."""
    if module is not None and sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]
