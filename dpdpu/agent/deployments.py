"""Deployed offload modules: validation, content hashing, persistence and loading.

A deployment is one Python source file holding ``@offload`` functions, kept under a
name.  Its version is the SHA-256 of its text.  Before the agent imports a module it
is imported once in a separate interpreter with a time limit, which must finish and
find at least one offload: a module with a syntax error, one that raises or loops at
import, or one without offloads is refused without touching the agent.

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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import DpdpuError, InvalidArgumentError

__all__ = [
    "DEFAULT_IMPORT_TIMEOUT_S",
    "DEFAULT_MAX_MODULE_BYTES",
    "Deployment",
    "DeploymentError",
    "DeploymentStore",
    "ImportTimeoutError",
    "ModuleTooLargeError",
    "UnknownDeploymentError",
    "UnknownOffloadError",
    "find_offloads",
    "source_version",
]

#: largest module source accepted (bytes of UTF-8)
DEFAULT_MAX_MODULE_BYTES = 1 << 20
#: time a module gets to import in the isolated check
DEFAULT_IMPORT_TIMEOUT_S = 10.0
#: isolated imports running at once (each is a whole interpreter)
_MAX_CONCURRENT_CHECKS = 2

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_RESULT_MARK = "@@dpdpu-deploy-check@@ "

# Run by the isolated interpreter: import the file, report the offloads or the error.
_CHECK_SCRIPT = f"""
import importlib.util, json, sys, traceback
path = sys.argv[1]
out = {{}}
try:
    spec = importlib.util.spec_from_file_location("_dpdpu_deploy_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from dpdpu.agent.deployments import find_offloads
    out["offloads"] = sorted(find_offloads(module))
except BaseException as exc:
    out["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
sys.stdout.flush()
sys.stdout.write({_RESULT_MARK!r} + json.dumps(out) + "\\n")
sys.stdout.flush()
"""


class DeploymentError(InvalidArgumentError):
    """A module was refused: bad name, syntax error, import failure or timeout, no offloads."""


class ImportTimeoutError(DpdpuError, TimeoutError):
    """The agent's own import of a module did not finish in time (its thread is left running)."""


class ModuleTooLargeError(DeploymentError):
    """The module's source exceeds the agent's size limit."""


class UnknownDeploymentError(DpdpuError, LookupError):
    """No deployment of that name exists."""


class UnknownOffloadError(DpdpuError, LookupError):
    """No deployed offload of that name exists (or a bare name is ambiguous)."""


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
        import_timeout_s: time the isolated import may take.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        max_module_bytes: int = DEFAULT_MAX_MODULE_BYTES,
        import_timeout_s: float = DEFAULT_IMPORT_TIMEOUT_S,
    ) -> None:
        # Absolute: the isolated import runs with the module's folder as its cwd.
        self.root = Path(data_dir).expanduser().absolute() / "deployments"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_module_bytes = max_module_bytes
        self.import_timeout_s = import_timeout_s
        self._lock = threading.Lock()  # guards _deployments, _index and the manifest
        self._name_locks: dict[str, threading.Lock] = {}
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
        raise UnknownOffloadError(f"no deployed offload {offload!r}")

    def offload_names(self) -> list[str]:
        """Every qualified offload name."""
        return sorted(f"{d.name}.{o}" for d in self._deployments.values() for o in d.offloads)

    # --- changes -------------------------------------------------------------------

    def deploy(self, name: str, source: str, filename: str = "") -> tuple[Deployment, bool]:
        """Validate, persist and load a module; returns (deployment, unchanged).

        Raises :class:`DeploymentError` (or :class:`ModuleTooLargeError`) when refused;
        the previous version, if any, stays deployed then.
        """
        _check_name(name)
        size = len(source.encode())
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
            folder.mkdir(exist_ok=True)
            pending = folder / f".{version}.{threading.get_ident()}.pending.py"
            pending.write_text(source)
            try:
                names = self._isolated_import(pending)
                path = folder / f"{version}.py"
                os.replace(pending, path)
            finally:
                pending.unlink(missing_ok=True)
            try:
                module, offloads = self._load_in_time(name, version, path)
            except (DeploymentError, ImportTimeoutError):
                path.unlink(missing_ok=True)  # unchanged versions returned above, so this is no live file
                raise
            if sorted(offloads) != names:
                # Imports that differ between two interpreters are not worth loading.
                _forget(module)
                path.unlink(missing_ok=True)
                raise DeploymentError(f"module defines offloads {sorted(offloads)} here but {names} when checked")
            deployment = Deployment(name, version, filename or f"{name}.py", size, time.time(), offloads, module)
            with self._lock:
                self._deployments[name] = deployment
                old = self._unrestored.pop(name, None)
                self._reindex()
                self._write_manifest()
            if current is not None:
                _forget(current.module)
                (folder / f"{current.version}.py").unlink(missing_ok=True)
            elif old is not None and old.get("version") != version:
                (folder / f"{old.get('version')}.py").unlink(missing_ok=True)
            return deployment, False

    def undeploy(self, name: str) -> Deployment:
        """Remove a deployment (UnknownDeploymentError if there is none)."""
        with self._name_lock(name):
            with self._lock:
                deployment = self._deployments.pop(name, None)
                if deployment is None and name in self._unrestored:
                    deployment = _unloaded(name, self._unrestored.pop(name))
                if deployment is None:
                    raise UnknownDeploymentError(f"no deployment named {name!r}")
                self._reindex()
                self._write_manifest()
            _forget(deployment.module)
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
                source = path.read_text()
                if source_version(source) != entry["version"]:
                    raise DeploymentError(f"{path} does not match its recorded version")
                # Checked again in isolation: what imported at deploy time may hang or fail now
                # (the environment or the files it reads have changed).
                self._isolated_import(path)
                module, offloads = self._load_in_time(name, entry["version"], path)
                deployment = Deployment(
                    name, entry["version"], str(entry.get("filename", "")), len(source.encode()),
                    float(entry.get("deployed_at", 0.0)), offloads, module,
                )  # fmt: skip
            except (OSError, ValueError, TypeError, DpdpuError) as exc:
                problems.append(f"deployment {name!r} not restored (kept in the manifest): {exc}")
                self._unrestored[name] = entry if isinstance(entry, dict) else {"version": str(entry)}
                continue
            self._deployments[name] = deployment
        with self._lock:
            self._reindex()
        return problems

    # --- internals -----------------------------------------------------------------

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

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
        with self._checks:
            try:
                proc = subprocess.run(
                    [sys.executable, "-c", _CHECK_SCRIPT, str(path.absolute())],
                    stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=path.parent,
                    timeout=self.import_timeout_s,
                    env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise DeploymentError(f"module did not finish importing within {self.import_timeout_s:g} s") from None
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(_RESULT_MARK)), None)
        if line is None:
            tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise DeploymentError(f"module import ended without a result: {tail[0]}")
        result = json.loads(line[len(_RESULT_MARK) :])
        if "error" in result:
            raise DeploymentError(f"module failed to import: {result['error']}")
        names: list[str] = result["offloads"]
        if not names:
            raise DeploymentError("module defines no @offload functions")
        return names

    def _load_in_time(self, name: str, version: str, path: Path) -> tuple[ModuleType, dict[str, Callable[..., Any]]]:
        """:func:`_load` within the import timeout.

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
                result: Any = _load(name, version, path)
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
                    _forget(result[0])

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
    if not _NAME.match(name):
        raise DeploymentError(
            f"invalid deployment name {name!r}: use letters, digits, '_' and '-' (64 at most), starting with a letter"
        )


def _module_name(name: str, version: str) -> str:
    return f"_dpdpu_deployed.{name.replace('-', '_')}_{version[:16]}"


def _load(name: str, version: str, path: Path) -> tuple[ModuleType, dict[str, Callable[..., Any]]]:
    """Import ``path`` in this process as a private module and collect its offloads."""
    module_name = _module_name(name, version)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DeploymentError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered while it lives: dataclasses, pickling and typing look modules up by name.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        if sys.modules.get(module_name) is module:  # a later load of the same version may own the name now
            del sys.modules[module_name]
        raise DeploymentError(f"module failed to import in the agent: {type(exc).__name__}: {exc}") from None
    offloads = find_offloads(module)
    if not offloads:
        _forget(module)
        raise DeploymentError("module defines no @offload functions")
    return module, offloads


def _forget(module: ModuleType | None) -> None:
    if module is not None and sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]
