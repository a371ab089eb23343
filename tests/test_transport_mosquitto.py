"""The MQTT transport against a real Mosquitto: retained, last will on SIGKILL, reconnect after
a broker restart, request/response."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepedge.backoff import Backoff
from deepedge.broker_schemas import CommandReply, CommandRequest, NodeBirth, NodeDeath, Telemetry, Topics
from deepedge.transport import (
    MqttTransport,
    Received,
    Requester,
    TransportError,
    ok_reply,
    serve_commands,
)
from tests.conftest import MosquittoBroker

pytestmark = pytest.mark.mosquitto
ROOT = Path(__file__).resolve().parent.parent


async def next_message(sub, timeout: float = 5.0) -> Received:  # type: ignore[no-untyped-def]
    item = await sub.get(timeout)
    assert isinstance(item, Received), item
    return item


async def test_retained_message_reaches_late_subscriber(mosquitto: MosquittoBroker, cluster: str) -> None:
    t = Topics(cluster)
    birth = NodeBirth(node="n1", session="s1", ts=time.time(), cpu_cores=6)
    async with MqttTransport(mosquitto.config()) as pub:
        await pub.publish(t.node_status("n1"), birth, qos=1, retain=True)
    async with MqttTransport(mosquitto.config()) as late:
        sub = await late.subscribe(t.all_nodes("status"))
        got = await next_message(sub)
        assert got.retain and got.message == birth and got.topic.node == "n1"


async def test_last_will_published_when_client_is_sigkilled(mosquitto: MosquittoBroker, cluster: str) -> None:
    t = Topics(cluster)
    async with MqttTransport(mosquitto.config()) as watcher:
        sub = await watcher.subscribe(t.all_nodes("status"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.will_client", mosquitto.url, cluster, "n1"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert line.strip() == b"READY"
            assert isinstance((await next_message(sub)).message, NodeBirth)
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            got = await next_message(sub)
            assert got.message == NodeDeath(node="n1", session="s1", reason="lost")
            assert time.monotonic() - killed_at < 2.0  # the TCP connection closes at once
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
    # the will is retained: a later subscriber sees the node as dead
    async with MqttTransport(mosquitto.config()) as late:
        sub = await late.subscribe(t.node_status("n1"))
        assert isinstance((await next_message(sub)).message, NodeDeath)


async def test_reconnects_by_itself_after_broker_restart(mosquitto: MosquittoBroker, cluster: str) -> None:
    t = Topics(cluster)
    hooks: list[float] = []

    async def on_connect() -> None:
        hooks.append(time.monotonic())

    client = MqttTransport(mosquitto.config(), backoff=Backoff(base=0.1, cap=0.5, floor=0.05))
    client.add_connect_hook(on_connect)
    async with client:
        sub = await client.subscribe(t.all_nodes("telemetry"))
        assert client.connects == 1 and len(hooks) == 1
        mosquitto.kill()
        deadline = time.monotonic() + 5
        while client.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not client.connected
        mosquitto.start()
        deadline = time.monotonic() + 10
        while client.connects < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert client.connects == 2 and len(hooks) == 2
        async with MqttTransport(mosquitto.config()) as pub:
            await pub.publish(t.node_telemetry("n7"), Telemetry(node="n7", ts=1.0))
        got = await next_message(sub)
        assert got.message == Telemetry(node="n7", ts=1.0)


async def test_publish_while_broker_down_waits_then_fails_clearly(mosquitto: MosquittoBroker, cluster: str) -> None:
    t = Topics(cluster)
    async with MqttTransport(mosquitto.config(connect_timeout_s=0.5)) as client:
        mosquitto.kill()
        await asyncio.sleep(0.2)
        with pytest.raises(TransportError, match=r"unreachable|no connection"):
            await client.publish(t.node_telemetry("n1"), Telemetry(node="n1", ts=1.0))


async def test_first_connect_failure_is_a_transport_error(cluster: str) -> None:
    from deepedge.config import BrokerConfig
    from tests.conftest import free_port

    with pytest.raises(TransportError, match="no connection"):
        async with MqttTransport(BrokerConfig(url=f"mqtt://127.0.0.1:{free_port()}", connect_timeout_s=0.5)):
            pass


async def test_request_response_over_real_broker(mosquitto: MosquittoBroker, cluster: str) -> None:
    t = Topics(cluster)

    async def handler(verb: str, req: CommandRequest) -> CommandReply:
        return ok_reply(req, verb=verb, node="n1")

    async with MqttTransport(mosquitto.config()) as node, MqttTransport(mosquitto.config()) as cli:
        server = asyncio.create_task(serve_commands(node, t, t.node_commands("n1"), handler, responder="n1"))
        await asyncio.sleep(0.2)  # the server's subscription reaches the broker
        async with Requester(cli, t, timeout_s=5) as rpc:
            reply = await rpc.request(t.node_command("n1", "status"))
            assert reply.ok and reply.result == {"verb": "status", "node": "n1"}
            with pytest.raises(TransportError, match="no reply"):
                await rpc.request(t.node_command("ghost", "status"), timeout_s=0.3)
        server.cancel()
