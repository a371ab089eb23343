"""deploy/mosquitto/acl on a real Mosquitto: a node may publish only under its own id."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from deepedge.broker_schemas import Telemetry, Topics
from deepedge.transport import MqttTransport, Received
from tests.conftest import MOSQUITTO, MosquittoBroker

ACL = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "acl"
pytestmark = pytest.mark.mosquitto


@pytest.fixture
def acl_broker(tmp_path: Path) -> MosquittoBroker:
    passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if MOSQUITTO is None or not Path(passwd_tool).exists():
        pytest.skip("mosquitto is not installed")
    passwd = tmp_path / "passwd"
    for i, user in enumerate(("coordinator", "n1", "n2")):
        flags = ["-c"] if i == 0 else []
        subprocess.run([passwd_tool, *flags, "-b", str(passwd), user, f"pw-{user}"], check=True)
    broker = MosquittoBroker(tmp_path, extra_conf=f"allow_anonymous false\npassword_file {passwd}\nacl_file {ACL}\n")
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()


async def test_node_cannot_speak_for_another_node(acl_broker: MosquittoBroker) -> None:
    t = Topics("lab")
    coord_cfg = acl_broker.config(username="coordinator", password="pw-coordinator")
    n1_cfg = acl_broker.config(username="n1", password="pw-n1")
    async with MqttTransport(coord_cfg) as coord, MqttTransport(n1_cfg) as n1:
        sub = await coord.subscribe(t.all_nodes("telemetry"))
        await asyncio.sleep(0.1)
        await n1.publish(t.node_telemetry("n2"), Telemetry(node="n2", ts=1.0), qos=1)  # forged: the broker drops it
        await n1.publish(t.node_telemetry("n1"), Telemetry(node="n1", ts=2.0), qos=1)
        got = await sub.get(5)
        assert isinstance(got, Received) and got.topic.node == "n1"
        with pytest.raises(TimeoutError):
            await sub.get(0.3)
