"""A real network partition (``ip netns`` + veth, the link cut with ``ip link set down``): the
failure contract's "network partition of a node" row, with a coordinator and a node in the root
namespace, one node in its own namespace, and Mosquitto listening on both sides."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from deepedge.broker_schemas import CoordinatorStatus, Event, NodeBirth, Plan, Topics
from deepedge.config import load_config
from deepedge.embedded_broker import MOSQUITTO, MosquittoProcess, free_port
from deepedge.ops import coordinator_request
from deepedge.transport import MqttTransport, Requester
from tests.helpers.node_proc import NodeProc, job_args, start_coordinator, start_node
from tests.helpers.wait import coordinator_lists, wait_for


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _netns_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"de-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError):
        return False
    _ip("netns", "del", probe)
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.mosquitto,
    pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto"),
    pytest.mark.skipif(not _netns_usable(), reason="needs root and ip netns"),
]


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """(namespace, the host's veth address, the veth link on the host side)."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"de-{tag}", f"deh{tag}", f"den{tag}"
    octet = int(tag[:2], 16) % 200 + 20
    host_ip, ns_ip = f"10.77.{octet}.1", f"10.77.{octet}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_ip, host_if
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)
        _ip("netns", "del", ns)


@pytest.fixture
def broker(tmp_path: Path, netns: tuple[str, str, str]) -> Iterator[MosquittoProcess]:
    port = free_port()
    listen_outside = f"listener {port} {netns[1]}\nallow_anonymous true\n"  # and 127.0.0.1, as always
    b = MosquittoProcess(tmp_path / "broker", port=port, extra_conf=listen_outside)
    b.start()
    yield b
    b.stop()


@pytest.fixture
async def watcher(broker: MosquittoProcess) -> AsyncIterator[MqttTransport]:
    async with MqttTransport(broker.config()) as t:
        yield t


async def test_a_partitioned_node_is_dropped_within_3_s_and_rejoins_when_the_link_returns(
    broker: MosquittoProcess,
    netns: tuple[str, str, str],
    watcher: MqttTransport,
    procs: list[NodeProc],
    tmp_path: Path,
) -> None:
    """Contract: detected by missed heartbeats (3 at 1 Hz: 3 s); re-planned without it; the node
    sees its broker connection drop; once the link is back it reconnects, announces itself again,
    takes the retained plan that no longer names it and stops its worker."""
    ns, host_ip, host_if = netns
    cluster = f"p{uuid.uuid4().hex[:8]}"
    t = Topics(cluster)
    coord = await watcher.subscribe(t.coordinator_status())
    births = await watcher.subscribe(t.all_nodes("status"))
    events = await watcher.subscribe(t.all_events())
    plans = await watcher.subscribe(t.job_plan("part"))
    procs.append(start_coordinator(tmp_path, broker.url, cluster, interval=1.0))
    await wait_for(coord, lambda m: isinstance(m, CoordinatorStatus) and m.state == "online", 30)
    procs.append(start_node(tmp_path, broker.url, cluster, "inside", interval=1.0, stand_in_preflight=True))
    remote = f"mqtt://{host_ip}:{broker.port}"
    procs.append(
        start_node(
            tmp_path,
            remote,
            cluster,
            "outside",
            interval=1.0,
            prefix=["ip", "netns", "exec", ns],
            env={"DEEPEDGE_BROKER_ALLOW_INSECURE": "true"},  # plaintext over the test veth
            stand_in_preflight=True,
        )
    )
    seen: set[str] = set()
    while seen != {"inside", "outside"}:
        seen.add((await wait_for(births, lambda m: isinstance(m, NodeBirth), 30)).node)
    config = load_config(None, environ={"DEEPEDGE_BROKER_URL": broker.url, "DEEPEDGE_CLUSTER_NAME": cluster})
    await coordinator_lists(config.config, ["inside", "outside"])
    await coordinator_request(config.config, "submit", job_args("part", tmp_path, dataset_size=32000))
    first = await wait_for(plans, lambda m: isinstance(m, Plan), 30)
    assert {a.node for a in first.assignments} == {"inside", "outside"}
    await asyncio.sleep(2.0)  # both workers run

    _ip("link", "set", host_if, "down")  # the partition: packets vanish, nothing is closed
    cut = time.monotonic()
    dead = await wait_for(events, lambda m: isinstance(m, Event) and m.event == "node.dead" and m.node == "outside", 15)
    detected = time.monotonic() - cut
    replan = await wait_for(plans, lambda m: isinstance(m, Plan) and m.generation > first.generation, 15)
    assert [a.node for a in replan.assignments] == ["inside"]
    assert detected <= 4.0, (detected, dead.message)  # 3 missed 1 s heartbeats, plus the 1 s tick

    # the isolated node notices too (MQTT keepalive 5 s: a ping unanswered)
    outside = procs[-1]
    deadline = time.monotonic() + 30
    while not any(e.get("event") == "mqtt.disconnected" for e in outside.log_events()):
        assert time.monotonic() < deadline, "the partitioned node never saw its connection drop"
        await asyncio.sleep(0.5)

    noticed = time.monotonic() - cut
    _ip("link", "set", host_if, "up")
    healed = time.monotonic()
    back = await wait_for(births, lambda m: isinstance(m, NodeBirth) and m.node == "outside", 60)
    assert back.node == "outside"
    async with Requester(watcher, t, timeout_s=10) as rpc:
        deadline = time.monotonic() + 20
        while True:
            status = (await rpc.request(t.node_command("outside", "status"))).result
            if all(w["state"] != "running" for w in status["workers"].values()):
                break
            assert time.monotonic() < deadline, status["workers"]
            await asyncio.sleep(0.5)
    assert outside.proc.poll() is None  # the daemon itself rode it out
    back_s = time.monotonic() - healed
    print(f"partition: dead after {detected:.2f} s, node noticed by {noticed:.1f} s, back {back_s:.1f} s")
