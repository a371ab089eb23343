"""Shared fixtures: a real Mosquitto broker on a free port, and a per-test cluster name."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deepedge.config import BrokerConfig

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on {port} within {timeout} s")


@dataclass
class MosquittoBroker:
    """A real mosquitto process on 127.0.0.1:<port>; ``kill()`` and ``start()`` restart it on
    the same port (for reconnect tests)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = "allow_anonymous true\n"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self, **overrides: object) -> BrokerConfig:
        params: dict[str, object] = {"url": self.url, "keepalive_s": 5, "connect_timeout_s": 5.0, **overrides}
        return BrokerConfig(**params)  # type: ignore[arg-type]

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        (self.workdir / "data").mkdir(exist_ok=True)
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{self.extra_conf}"
            "persistence true\n"
            f"persistence_location {self.workdir / 'data'}/\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_packet_size 1048576\n"
            f"user {getpass.getuser()}\n"
        )
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(self.port)
        except RuntimeError:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, connections drop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if MOSQUITTO is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; CI must install it (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = MosquittoBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def cluster() -> str:
    """A cluster name of its own for each test, so topics never collide."""
    return f"t{uuid.uuid4().hex[:10]}"
