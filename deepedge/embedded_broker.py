"""A Mosquitto broker process on a free loopback port: for tests, benchmarks and the demo."""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepedge.config import BrokerConfig
from deepedge.errors import DeepEdgeError, ExitCode

__all__ = [
    "MOSQUITTO",
    "BrokerNotInstalled",
    "MosquittoProcess",
    "die_with_parent",
    "free_port",
    "stop_process",
    "wait_listening",
]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``Popen(preexec_fn=...)``: the child gets SIGTERM when the process that started it
    dies, however it dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


MOSQUITTO = _find_mosquitto()


class BrokerNotInstalled(DeepEdgeError):
    exit_code = ExitCode.UNAVAILABLE


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: every socket is held until all are chosen (one closed before the
    next is bound may be handed out again: a test broker got the same port for two listeners)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(n):
            s = held.enter_context(socket.socket())
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@dataclass
class MosquittoProcess:
    """``mosquitto`` on 127.0.0.1:<port> with its config, data and log under ``workdir``.
    ``kill()`` then ``start()`` restarts it on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = "allow_anonymous true\n"
    proc: subprocess.Popen[bytes] | None = None
    with_parent: bool = False  # SIGTERM when the process that started it dies (the demo's)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self, **overrides: object) -> BrokerConfig:
        params: dict[str, object] = {"url": self.url, "keepalive_s": 5, "connect_timeout_s": 5.0, **overrides}
        return BrokerConfig(**params)  # type: ignore[arg-type]

    def start(self) -> None:
        if MOSQUITTO is None:
            raise BrokerNotInstalled("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
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
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent if self.with_parent else None,
            # the demo's: a terminal's Ctrl-C reaches the demo, which stops its boards before it
            start_new_session=self.with_parent,
        )
        if not wait_listening(self.port, 10.0):
            self.stop()
            raise DeepEdgeError(f"mosquitto did not listen on port {self.port}; see {self.workdir / 'mosquitto.log'}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown; connections drop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
