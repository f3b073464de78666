"""The agent's token, TLS material and bind rules.

The token is a random URL-safe string made on the agent's first start and kept in
its data directory with mode 0600; every gRPC call (and every Flight call) must
present it.  A client on the same machine reads the same file, so nothing needs
configuring there.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgumentError
from ..network.addresses import is_loopback
from .payloads import shown

__all__ = [
    "TOKEN_FILE",
    "TlsFiles",
    "check_bind",
    "default_data_dir",
    "ensure_token",
    "is_loopback",
    "read_token",
    "split_address",
]

#: name of the token file inside the data directory
TOKEN_FILE = "token"


def default_data_dir() -> Path:
    """``$DPDPU_AGENT_DIR``, else ``$XDG_DATA_HOME/dpdpu/agent`` (``~/.local/share/dpdpu/agent``)."""
    env = os.environ.get("DPDPU_AGENT_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dpdpu" / "agent"


def ensure_token(data_dir: Path) -> str:
    """The agent's token, created (0600) on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / TOKEN_FILE
    token = read_token(path)
    if token is not None:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # tighten a file someone loosened
        return token
    token = secrets.token_urlsafe(32)
    # Written to a private temporary then renamed: never world-readable, never half written.
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return token


def read_token(path: Path) -> str | None:
    """The token stored in ``path`` (None if there is no such file)."""
    try:
        token = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return token or None


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"``) -> (host, port); InvalidArgumentError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or len(port) > 5 or not 0 <= int(port) <= 65535:
        raise InvalidArgumentError(f"expected HOST:PORT, got {shown(address)}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate chain and its private key (PEM files)."""

    cert: Path
    key: Path

    def load(self) -> tuple[bytes, bytes]:
        """(certificate chain, private key) bytes; InvalidArgumentError if unreadable."""
        try:
            cert, key = self.cert.read_bytes(), self.key.read_bytes()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read TLS file: {exc}") from exc
        # grpc only logs what it cannot parse, then fails without a reason: say it here.
        if b"-----BEGIN CERTIFICATE-----" not in cert:
            raise InvalidArgumentError(f"{shown(str(self.cert), 60)} holds no PEM certificate")
        if b"PRIVATE KEY-----" not in key:
            raise InvalidArgumentError(f"{shown(str(self.key), 60)} holds no PEM private key")
        return cert, key


def check_bind(host: str, token: str | None, tls: TlsFiles | None) -> None:
    """Refuse a non-loopback address unless both a token and TLS are configured."""
    if is_loopback(host):
        return
    if not token or tls is None:
        raise InvalidArgumentError(
            f"refusing to listen on non-loopback address {host!r} without TLS: "
            "pass --tls-cert and --tls-key (the token is always required)"
        )
