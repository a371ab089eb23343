"""The daemons' one rule for a broker that is down at start (deepedge.lifecycle): keep trying,
saying where and why in every line, and connect when it comes; a failure the broker would repeat
every time — here, plaintext to a TLS port — ends the daemon with exit 78 at once."""

from __future__ import annotations

import getpass
import json
import subprocess
import time
from pathlib import Path

import pytest

from deepedge.embedded_broker import MOSQUITTO, MosquittoProcess, free_port, wait_listening
from tests.helpers.node_proc import start_node

pytestmark = pytest.mark.mosquitto


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_a_daemon_keeps_trying_a_broker_that_is_down_and_connects_when_it_comes(tmp_path: Path) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    node = start_node(tmp_path, f"mqtt://127.0.0.1:{port}", "down", "n1", interval=0.5)
    broker = MosquittoProcess(tmp_path / "broker", port=port)
    try:
        time.sleep(3.0)  # the rule is about time passing: it must still be there, trying
        assert node.proc.poll() is None
        tries = [e for e in _events(node.log) if e.get("event") == "mqtt.disconnected"]
        assert tries and all(e["broker"] == f"mqtt://127.0.0.1:{port}" and e["error"] for e in tries), tries[:2]
        again = [e for e in _events(node.log) if e.get("event") == "mqtt.reconnecting"]
        assert again and all(e.get("broker") and e.get("error") for e in again), again[:2]
        broker.start()
        deadline = time.monotonic() + 40  # the backoff may be at up to 30 s by now
        while not any(e.get("event") == "mqtt.connected" for e in _events(node.log)):
            assert time.monotonic() < deadline and node.proc.poll() is None, "it did not connect"
            time.sleep(0.2)
    finally:
        node.stop()
        broker.stop()


def test_plaintext_to_a_tls_port_at_start_ends_the_daemon_with_exit_78(tmp_path: Path) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    from deepedge.deploy import DeploySpec, deploy_all

    out = tmp_path / "gen"  # the generated CA and server certificate for 127.0.0.1
    deploy_all(DeploySpec(cluster="lab", nodes=("n1",), operators=("op",), broker_hosts=("127.0.0.1",)), out)
    port = free_port()
    certs = out / "mosquitto"
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\ncafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
        f"keyfile {certs / 'server.key'}\nallow_anonymous true\nuser {getpass.getuser()}\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_listening(port, 10)
        node = start_node(tmp_path, f"mqtt://127.0.0.1:{port}", "lab", "n1")
        try:
            assert node.proc.wait(30) == 78
        finally:
            node.stop()
        assert "is it a TLS port? use mqtts://" in node.log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_daemons_outlive_a_broker_restart_and_come_back(tmp_path: Path, how: str) -> None:
    """The failure contract: a broker restart (``systemctl restart mosquitto`` is a SIGTERM, a
    crash a SIGKILL) — every client reconnects with backoff; nobody exits. Before, a node that saw
    its own will as the broker went down tried to republish its birth on the dead connection and
    the error ended the daemon."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    from tests.helpers.node_proc import start_coordinator

    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    coord = start_coordinator(tmp_path, broker.url, "restart")
    node = start_node(tmp_path, broker.url, "restart", "n1", interval=0.5)
    try:

        def connects(log: Path) -> int:
            return sum(e.get("event") == "mqtt.connected" for e in _events(log))

        deadline = time.monotonic() + 30
        while (connects(node.log) < 1 or connects(coord.log) < 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        for _ in range(2):  # twice: the second restart meets the retained will of the first
            time.sleep(1.0)
            before = (connects(node.log), connects(coord.log))
            broker.stop() if how == "sigterm" else broker.kill()
            time.sleep(2.0)
            broker.start()
            deadline = time.monotonic() + 40
            while (connects(node.log) <= before[0] or connects(coord.log) <= before[1]) and time.monotonic() < deadline:
                assert node.proc.poll() is None and coord.proc.poll() is None, "a daemon exited"
                time.sleep(0.2)
            assert connects(node.log) > before[0] and connects(coord.log) > before[1]
        time.sleep(2.0)
        assert node.proc.poll() is None and coord.proc.poll() is None, "a daemon exited after reconnecting"
    finally:
        node.stop()
        coord.stop()
        broker.stop()
