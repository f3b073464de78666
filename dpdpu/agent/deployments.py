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
        self.root = Path(data_dir) / "deployments"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_module_bytes = max_module_bytes
        self.import_timeout_s = import_timeout_s
        self._lock = threading.Lock()  # guards _deployments, _index and the manifest
        self._name_locks: dict[str, threading.Lock] = {}
        self._checks = threading.BoundedSemaphore(_MAX_CONCURRENT_CHECKS)
        self._deployments: dict[str, Deployment] = {}
        # Invoke's lookup table, rebuilt on every change and replaced whole, so readers
        # never take a lock: "<deployment>.<offload>" and unambiguous bare names.
        self._index: dict[str, Callable[..., Any]] = {}
        self._ambiguous: frozenset[str] = frozenset()

    # --- queries -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._deployments)

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
                module, offloads = _load(name, version, path)
            except DeploymentError:
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
                self._reindex()
                self._write_manifest()
            if current is not None:
                _forget(current.module)
                (folder / f"{current.version}.py").unlink(missing_ok=True)
            return deployment, False

    def undeploy(self, name: str) -> Deployment:
        """Remove a deployment (UnknownDeploymentError if there is none)."""
        with self._name_lock(name):
            with self._lock:
                deployment = self._deployments.pop(name, None)
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
        """Load the deployments recorded in the manifest; returns a message per one that failed."""
        manifest = self.root / "manifest.json"
        try:
            entries = json.loads(manifest.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            return [f"cannot read {manifest}: {exc}"]
        problems: list[str] = []
        for name, entry in sorted(entries.items()):
            path = self.root / name / f"{entry['version']}.py"
            try:
                source = path.read_text()
                if source_version(source) != entry["version"]:
                    raise DeploymentError(f"{path} does not match its recorded version")
                # Checked again in isolation: what imported at deploy time may hang or fail now
                # (the environment or the files it reads have changed).
                self._isolated_import(path)
                module, offloads = _load(name, entry["version"], path)
            except (OSError, DpdpuError) as exc:
                problems.append(f"deployment {name!r} not restored: {exc}")
                continue
            self._deployments[name] = Deployment(
                name, entry["version"], entry.get("filename", ""), len(source.encode()),
                float(entry.get("deployed_at", 0.0)), offloads, module,
            )  # fmt: skip
        with self._lock:
            self._reindex()
            if problems:
                self._write_manifest()
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
        data = {n: d.as_dict() for n, d in sorted(self._deployments.items())}
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
                    [sys.executable, "-c", _CHECK_SCRIPT, str(path)],
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
        sys.modules.pop(module_name, None)
        raise DeploymentError(f"module failed to import in the agent: {type(exc).__name__}: {exc}") from None
    offloads = find_offloads(module)
    if not offloads:
        sys.modules.pop(module_name, None)
        raise DeploymentError("module defines no @offload functions")
    return module, offloads


def _forget(module: ModuleType | None) -> None:
    if module is not None and sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]
