"""Writing deployment files: secrets 0600, nothing replaced unless asked, and a record of
what was done for the command to print."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Layout", "Written", "write_file"]

Action = Literal["created", "replaced", "kept", "written"]


@dataclass(frozen=True)
class Written:
    """One file ``deepedge deploy`` created, replaced, rewrote or kept as it was."""

    path: Path
    what: str
    action: Action

    def line(self) -> str:
        mode = f"{self.path.stat().st_mode & 0o777:04o}" if self.path.exists() else "----"
        return f"{self.action:<8} {mode}  {self.path}  ({self.what})"


@dataclass(frozen=True)
class Layout:
    """Where ``deepedge deploy`` puts things under its output directory::

    ca/ca.crt, ca/ca.key              the cluster's CA (keep ca.key off the broker)
    mosquitto/                        copy to the broker host's broker_dir
        deepedge.conf                 to /etc/mosquitto/conf.d/
        ca.crt server.crt server.key
        daemons.passwd operators.passwd daemons.acl operators.acl
    clients/<user>/                   copy to that user's machine (client_dir)
        deepedge.toml ca.crt [client.crt client.key]
    """

    out: Path

    @property
    def ca_cert(self) -> Path:
        return self.out / "ca" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.out / "ca" / "ca.key"

    @property
    def broker(self) -> Path:
        return self.out / "mosquitto"

    def client(self, user: str) -> Path:
        return self.out / "clients" / user


def _private_dirs(folder: Path) -> None:
    """Create ``folder`` and each missing one above it 0700 (``mkdir(parents=True)`` would make
    the ones above with the umask's mode); existing folders are left as they are."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(mode=0o700, exist_ok=True)
        os.chmod(made, 0o700)  # whatever the umask


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with exactly ``mode``; directories on the way are
    created 0700 (they hold keys and passwords)."""
    _private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
