"""What to deploy: one cluster's nodes, coordinator and operators, and where the broker runs."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from deepedge.errors import DeepEdgeError, ExitCode

__all__ = ["CLIENT_ID_PREFIX", "DeployError", "DeploySpec"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
# Every client id deepedge sends starts with this (deepedge.transport.CLIENT_ID_PREFIX); the
# broker admits no other (``clientid_prefixes``), so no user name may start with it.
CLIENT_ID_PREFIX = "deepedge-"


class DeployError(DeepEdgeError):
    """Bad input to ``deepedge deploy``, or a file it will not overwrite. One line."""

    exit_code = ExitCode.CONFIG


@dataclass(frozen=True)
class DeploySpec:
    """A cluster's broker deployment.

    ``nodes`` are node ids, which are also their broker usernames (and client ids); the
    ``coordinator`` and the ``operators`` are usernames of their own. ``broker_hosts`` are the
    names and addresses the boards use to reach the broker (the server certificate's SANs; the
    first is the one in the boards' URLs). ``broker_dir`` is where the broker's files will be on
    the broker host, ``client_dir`` where each client's files will be on its machine (may
    contain ``{user}``)."""

    cluster: str
    nodes: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    coordinator: str = "coordinator"
    broker_hosts: tuple[str, ...] = ()
    daemon_port: int = 8883
    operator_port: int = 8884
    bind_address: str = ""
    broker_dir: str = "/etc/mosquitto/deepedge"
    client_dir: str = "/etc/deepedge"
    client_certs: bool = False
    cert_days: int = 825
    ca_days: int = 3650

    def __post_init__(self) -> None:
        if _NAME.fullmatch(self.cluster) is None:
            raise DeployError(f"cluster {self.cluster!r} does not match [A-Za-z0-9_.-]{{1,64}}")
        _check_user(self.coordinator, "coordinator user")
        for what, names in (("node", self.nodes), ("operator", self.operators)):
            for name in names:
                _check_user(name, what)
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise DeployError(f"{what} {dupes[0]!r} is listed twice")
        clash = sorted((set(self.nodes) | set(self.operators)) & {self.coordinator})
        if clash:
            raise DeployError(f"{clash[0]!r} is the coordinator user; a node or operator cannot have that name")
        both = sorted(set(self.nodes) & set(self.operators))
        if both:
            raise DeployError(f"{both[0]!r} is both a node and an operator: give the operator another name")
        for host in self.broker_hosts:
            if not _is_host(host):
                raise DeployError(f"broker host {host!r} is not a host name or an IP address")
        for what, port in (("daemon port", self.daemon_port), ("operator port", self.operator_port)):
            if not 1 <= port <= 65535:
                raise DeployError(f"{what} {port} is not a TCP port")
        if self.daemon_port == self.operator_port:
            raise DeployError("the daemon and operator listeners need two different ports")
        if self.bind_address and not _is_host(self.bind_address):
            raise DeployError(f"bind address {self.bind_address!r} is not a host name or an IP address")
        for what, path in (("broker directory", self.broker_dir), ("client directory", self.client_dir)):
            if not path.startswith("/") or any(c.isspace() for c in path):
                raise DeployError(f"{what} {path!r} must be an absolute path without spaces")
        if not 1 <= self.cert_days <= self.ca_days:
            raise DeployError("certificate lifetime must be at least a day and no longer than the CA's")

    @property
    def users(self) -> tuple[str, ...]:
        """Every broker user: the coordinator, the nodes, the operators."""
        return (self.coordinator, *self.nodes, *self.operators)

    def role(self, user: str) -> str:
        if user == self.coordinator:
            return "coordinator"
        return "node" if user in self.nodes else "operator"

    def label(self, user: str) -> str:
        """``coordinator``, ``node orin-1`` or ``operator alice``, for messages."""
        role = self.role(user)
        return role if role == "coordinator" else f"{role} {user}"

    def port_of(self, user: str) -> int:
        """The listener ``user`` connects to: operators have their own."""
        return self.operator_port if self.role(user) == "operator" else self.daemon_port

    def require_hosts(self, what: str) -> str:
        """The broker host the clients' URLs name; DeployError if none was given."""
        if not self.broker_hosts:
            raise DeployError(f"{what} need the broker's host name: --broker-host NAME (repeat it for every name/IP)")
        return self.broker_hosts[0]

    def client_path(self, user: str, name: str) -> str:
        """Where file ``name`` of ``user`` will be on that user's machine."""
        return f"{self.client_dir.replace('{user}', user).rstrip('/')}/{name}"


def _check_user(name: str, what: str) -> None:
    if _NAME.fullmatch(name) is None:
        raise DeployError(f"{what} {name!r} does not match [A-Za-z0-9_.-]{{1,64}}")
    if set(name) == {"."}:
        raise DeployError(f"{what} {name!r} is not a usable name (it names a folder: clients/<user>/)")
    if name.startswith(CLIENT_ID_PREFIX):
        raise DeployError(f"{what} {name!r} starts with {CLIENT_ID_PREFIX!r}, which is reserved for client ids")


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return _HOST.fullmatch(value) is not None and ".." not in value
    return True
