"""Broker users: a random password each, Mosquitto's two password files (daemons, operators)
and a credential file per user (``clients/<user>/deepedge.toml``) to install on its machine.

A user whose credential file exists keeps its password (adding a board does not re-key the
others); ``force`` gives every listed user a new one. The password files are rebuilt from the
listed users each time, so a user left out of the list loses access."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

from deepedge.compat import tomllib
from deepedge.deploy._files import Layout, Written, write_file
from deepedge.deploy._spec import DeployError, DeploySpec

__all__ = ["mosquitto_passwd", "write_users"]


def mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/bin:/usr/local/bin")
    if found is None:
        raise DeployError("mosquitto_passwd is not installed: apt-get install mosquitto (it hashes the passwords)")
    return found


def write_users(spec: DeploySpec, out: Path, *, force: bool = False) -> list[Written]:
    host = spec.require_hosts("credential files")
    layout = Layout(out)
    tool = mosquitto_passwd()
    done: list[Written] = []
    passwords: dict[str, str] = {}
    for user in spec.users:
        path = layout.client(user) / "deepedge.toml"
        existed = path.exists()
        old = None if force else _password_in(path)
        passwords[user] = old or secrets.token_urlsafe(24)
        write_file(path, _client_toml(spec, user, host, passwords[user]).encode(), 0o600)
        what = f"{spec.label(user)}'s config and credentials"
        if old:
            done.append(Written(path, f"{what} (password kept)", "written"))
        else:
            done.append(Written(path, f"{what} (new password)", "replaced" if existed else "created"))
    daemons = [spec.coordinator, *spec.nodes]
    for name, users, listener in (
        ("daemons.passwd", daemons, f"daemon listener {spec.daemon_port}"),
        ("operators.passwd", list(spec.operators), f"operator listener {spec.operator_port}"),
    ):
        path = layout.broker / name
        gone = sorted(_users_in(path) - set(users))
        _hashed_password_file(tool, path, {u: passwords[u] for u in users})
        note = f"password file of the {listener}" + (f"; no longer in it: {', '.join(gone)}" if gone else "")
        done.append(Written(path, note, "written"))
    return done


def _hashed_password_file(tool: str, path: Path, passwords: dict[str, str]) -> None:
    """Mosquitto's password file for ``passwords``, hashed by ``mosquitto_passwd -U`` (which
    reads them from a 0600 file: no password is ever on a command line)."""
    if not passwords:  # (mosquitto_passwd -U refuses an empty file; no users, nothing to hash)
        write_file(path, b"", 0o600)
        return
    plain = path.with_name(f".{path.name}.plain")
    write_file(plain, "".join(f"{u}:{p}\n" for u, p in passwords.items()).encode(), 0o600)
    try:
        proc = subprocess.run([tool, "-U", str(plain)], capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise DeployError(f"mosquitto_passwd -U failed: {detail[-1] if detail else proc.returncode}")
        write_file(path, plain.read_bytes(), 0o600)
    finally:
        plain.unlink(missing_ok=True)


def _password_in(path: Path) -> str | None:
    """The password in an existing credential file (None if there is none)."""
    if not path.exists():
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"cannot read {path}: {exc} (remove it, or pass --force for a new password)") from None
    password = data.get("broker", {}).get("password")
    return password if isinstance(password, str) and password else None


def _users_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {line.split(":", 1)[0] for line in path.read_text().splitlines() if ":" in line}


def _client_toml(spec: DeploySpec, user: str, host: str, password: str) -> str:
    role = spec.role(user)
    where = "this board" if role == "node" else "the coordinator's host" if role == "coordinator" else "your machine"
    port = spec.port_of(user)
    url_host = f"[{host}]" if ":" in host else host
    if role == "operator":  # (a new operator's review: the header and install.md named two places)
        install = [
            f"# Install on {where}, its ca.crt as {spec.client_path(user, 'ca.crt')} (the path below), and",
            "# this file as ~/.config/deepedge/deepedge.toml (mode 0600) with",
            "# DEEPEDGE_CONFIG=~/.config/deepedge/deepedge.toml (docs/install.md, step 6).",
        ]
    else:
        install = [
            f"# Install on {where} as {spec.client_path(user, 'deepedge.toml')} (mode 0640, group deepedge)",
            "# with the ca.crt beside it.",
        ]
    lines = [
        f"# deepedge: the {spec.label(user)} of cluster {spec.cluster!r} (written by `deepedge deploy users`).",
        *install,
        "# Add the other sections you need (deploy/deepedge.toml.example). Secret: it holds this",
        "# user's password.",
        "",
        "[cluster]",
        f"name = {json.dumps(spec.cluster)}",
        "",
        "[broker]",
        f"url = {json.dumps(f'mqtts://{url_host}:{port}')}",
        f"username = {json.dumps(user)}",
        f"password = {json.dumps(password)}",
        f"ca_file = {json.dumps(spec.client_path(user, 'ca.crt'))}",
    ]
    if spec.client_certs:
        lines += [
            f"cert_file = {json.dumps(spec.client_path(user, 'client.crt'))}",
            f"key_file = {json.dumps(spec.client_path(user, 'client.key'))}",
        ]
    if role == "node":
        lines += ["", "[node]", f"id = {json.dumps(user)}"]
    return "\n".join(lines) + "\n"
