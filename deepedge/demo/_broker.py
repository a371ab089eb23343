"""The demo's embedded broker: Mosquitto when it is installed, else the pure-Python amqtt broker
(``pip install 'deepedge[broker]'``), each as a child process on a free loopback port."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from deepedge.embedded_broker import (
    MOSQUITTO,
    BrokerNotInstalled,
    MosquittoProcess,
    die_with_parent,
    free_port,
    stop_process,
    wait_listening,
)
from deepedge.errors import DeepEdgeError

__all__ = ["AmqttProcess", "EmbeddedBroker", "start_broker"]


class EmbeddedBroker(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def stop(self) -> None: ...


class AmqttProcess:
    kind = "amqtt"

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "amqtt.log"
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deepedge.demo._amqtt_main", str(self.port)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,  # out of the terminal's Ctrl-C: the demo stops it last
            )
        if not wait_listening(self.port, 15.0):
            self.stop()
            raise DeepEdgeError(f"the amqtt broker did not listen on port {self.port}; see {self.log}")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


class _Mosquitto(MosquittoProcess):
    kind = "mosquitto"


def start_broker(workdir: Path, prefer: str = "auto") -> EmbeddedBroker:
    """``prefer``: auto (Mosquitto if installed), mosquitto or amqtt."""
    if prefer in ("auto", "mosquitto") and MOSQUITTO is not None:
        broker = _Mosquitto(workdir, with_parent=True)
        broker.start()
        return broker
    if prefer == "mosquitto":
        raise BrokerNotInstalled("mosquitto is not installed (apt-get install mosquitto)")
    with contextlib.suppress(ImportError):
        import amqtt  # noqa: F401

        return AmqttProcess(workdir)
    raise BrokerNotInstalled(
        "no MQTT broker: install Mosquitto (apt-get install mosquitto) or amqtt (pip install 'deepedge[broker]')"
    )
