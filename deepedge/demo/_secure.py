"""The namespaced demo's broker: Mosquitto set up by ``deepedge.deploy`` (the generator behind
``deepedge deploy all``) exactly as a real cluster's — a CA and the broker's certificate for the
bridge's address, a random password per board, the coordinator and an operator, and the shipped
ACLs with username = node id — listening on the bridge's address, where the boards reach it
through their veth links.

One addition, for the demo itself: a loopback listener in this (the host's) namespace that only
watches (the report's facts come from every topic, as a monitoring tap would see them). The
boards cannot reach it: their namespaces have their own loopback and no route to the host's."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepedge.compat import tomllib
from deepedge.config import BrokerConfig
from deepedge.deploy import DeploySpec, deploy_all
from deepedge.embedded_broker import (
    MOSQUITTO,
    BrokerNotInstalled,
    die_with_parent,
    free_port,
    free_ports,
    stop_process,
)
from deepedge.errors import DeepEdgeError

__all__ = ["OPERATOR", "SecureBroker"]

OPERATOR = "demo"  # the demo's operator user (its commands: set-deadline, profile, submit)


def _listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class SecureBroker:
    workdir: Path
    cluster: str
    nodes: tuple[str, ...]
    host: str  # the bridge's address
    kind: str = "mosquitto (TLS, per-board passwords, ACL)"
    spec: DeploySpec | None = None
    watch_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    users: dict[str, str] = field(default_factory=dict)  # user -> its generated deepedge.toml

    @property
    def out(self) -> Path:
        return self.workdir / "deploy"

    @property
    def url(self) -> str:
        """Where the boards reach it (the daemon listener)."""
        assert self.spec is not None
        return f"mqtts://{self.host}:{self.spec.daemon_port}"

    def start(self) -> None:
        if MOSQUITTO is None or shutil.which("mosquitto_passwd") is None:
            why = "namespaced boards need mosquitto and mosquitto_passwd: apt-get install mosquitto"
            raise BrokerNotInstalled(why)
        self.workdir.mkdir(parents=True, exist_ok=True)
        daemon_port, operator_port = free_ports(2, self.host)
        self.spec = DeploySpec(
            cluster=self.cluster,
            nodes=self.nodes,
            operators=(OPERATOR,),
            broker_hosts=(self.host,),
            daemon_port=daemon_port,
            operator_port=operator_port,
            bind_address=self.host,
            broker_dir=str(self.out / "mosquitto"),
            client_dir=str(self.out / "clients" / "{user}"),
        )
        deploy_all(self.spec, self.out)
        self.users = {u: str(self.out / "clients" / u / "deepedge.toml") for u in self.spec.users}
        confd = self.workdir / "conf.d"
        confd.mkdir(exist_ok=True)
        shutil.copy(self.out / "mosquitto" / "deepedge.conf", confd / "deepedge.conf")
        (self.workdir / "data").mkdir(exist_ok=True)
        self.watch_port = next(p for p in iter(free_port, None) if p not in (daemon_port, operator_port))
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"user {getpass.getuser()}\n"
            f"persistence_location {self.workdir / 'data'}/\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"include_dir {confd}\n"
            "# the demo's watch tap: loopback of the host's namespace only, read-only\n"
            f"listener {self.watch_port} 127.0.0.1\nallow_anonymous true\n"
            f"acl_file {self.workdir / 'watch.acl'}\n"
        )
        (self.workdir / "watch.acl").write_text(f"topic read deepedge/{self.cluster}/#\n")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            start_new_session=True,  # out of the terminal's Ctrl-C: the demo stops it last
        )
        ports = [(self.host, self.spec.daemon_port), (self.host, self.spec.operator_port)]
        if not all(_listening(h, p, 10.0) for h, p in [*ports, ("127.0.0.1", self.watch_port)]):
            self.stop()
            log = self.workdir / "mosquitto.log"
            raise DeepEdgeError(f"mosquitto did not start: {log.read_text()[-500:] if log.exists() else ''}")

    def broker_section(self, user: str) -> str:
        """The ``[broker]`` section of ``user``'s generated deepedge.toml, as TOML text (the
        demo writes each daemon's config with it and its own sections)."""
        data = tomllib.loads(Path(self.users[user]).read_text())["broker"]
        lines = ["[broker]"] + [f"{k} = {_toml(v)}" for k, v in data.items()] + ["keepalive_s = 5"]
        return "\n".join(lines) + "\n"

    def operator_config(self) -> BrokerConfig:
        data = tomllib.loads(Path(self.users[OPERATOR]).read_text())["broker"]
        return BrokerConfig(**data, keepalive_s=5)

    def watch_config(self) -> BrokerConfig:
        return BrokerConfig(url=f"mqtt://127.0.0.1:{self.watch_port}", keepalive_s=5)

    def stop(self) -> None:
        stop_process(self.proc)


def _toml(value: object) -> str:
    import json

    return json.dumps(value)
