"""An operator command against a cluster whose coordinator (or node) is not there answers
within about a second with what is wrong, instead of waiting for a reply that cannot come."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepedge.broker_schemas import CommandRequest, CoordinatorStatus, NodeBirth, NodeDeath, Topics
from deepedge.config import BrokerConfig, ClusterConfig, Config
from deepedge.errors import ExitCode
from deepedge.ops import Unavailable, coordinator_request, profile_node
from deepedge.transport import MqttTransport, TransportError, ok_reply, serve_commands
from tests.conftest import MosquittoBroker

pytestmark = pytest.mark.mosquitto

EXE = shutil.which("deepedge", path=str(Path(sys.executable).parent)) or shutil.which("deepedge")


def config(broker: MosquittoBroker, cluster: str) -> Config:
    return Config(cluster=ClusterConfig(name=cluster), broker=BrokerConfig(url=broker.url, connect_timeout_s=5.0))


async def coordinator_says(t: MqttTransport, cluster: str, state: str, ts: float) -> None:
    status = CoordinatorStatus(state=state, session="s-7f3a", version="0.1.0", ts=ts)  # type: ignore[arg-type]
    await t.publish(Topics(cluster).coordinator_status(), status, qos=1, retain=True)


async def timed(coro: object) -> tuple[BaseException, float]:
    t0 = time.monotonic()
    try:
        await coro  # type: ignore[misc]
    except Exception as exc:
        return exc, time.monotonic() - t0
    raise AssertionError("no error")


async def test_a_cluster_without_a_coordinator_is_named_within_2_s(
    mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str
) -> None:
    await coordinator_says(watcher, cluster, "online", time.time())  # the right cluster has one
    exc, took = await timed(coordinator_request(config(mosquitto, cluster + "b"), "status"))
    assert isinstance(exc, Unavailable) and exc.exit_code == ExitCode.UNAVAILABLE
    assert str(exc) == (
        f"no coordinator has ever been seen in cluster '{cluster}b' on {mosquitto.url} (check --cluster)"
    )
    assert took < 2.0, took


async def test_an_offline_coordinator_is_named_with_its_time_and_session_within_2_s(
    mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str
) -> None:
    ts = time.time() - 60
    await coordinator_says(watcher, cluster, "offline", ts)
    exc, took = await timed(coordinator_request(config(mosquitto, cluster), "status"))
    assert isinstance(exc, Unavailable)
    when = time.strftime("%H:%M:%S", time.localtime(ts))
    assert f"the coordinator of cluster '{cluster}' on {mosquitto.url} is offline since {when}" in str(exc)
    assert "session s-7f3a" in str(exc)
    assert took < 2.0, took
    await coordinator_says(watcher, cluster, "offline", 0.0)  # its last will carries no time
    exc, took = await timed(coordinator_request(config(mosquitto, cluster), "status"))
    assert isinstance(exc, Unavailable) and took < 2.0, took
    assert str(exc) == (
        f"the coordinator of cluster '{cluster}' on {mosquitto.url} is offline: its connection was lost "
        "(its last will; its session s-7f3a, deepedge 0.1.0)"
    )


async def test_an_online_coordinator_that_does_not_answer_is_a_transient_error(
    mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str
) -> None:
    await coordinator_says(watcher, cluster, "online", time.time())
    exc, took = await timed(coordinator_request(config(mosquitto, cluster), "status", timeout_s=0.5))
    assert isinstance(exc, TransportError) and exc.exit_code == ExitCode.TEMPFAIL
    assert f"the coordinator of cluster '{cluster}' was online" in str(exc)
    assert "but did not answer status within 0.5 s" in str(exc)
    assert took < 2.5, took


async def test_an_online_coordinator_is_asked(mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str) -> None:
    topics = Topics(cluster)
    await coordinator_says(watcher, cluster, "online", time.time())

    async def handler(verb: str, req: CommandRequest) -> object:
        return ok_reply(req, verb=verb)

    server = asyncio.create_task(serve_commands(watcher, topics, topics.coordinator_commands(), handler))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.2)
        reply = await coordinator_request(config(mosquitto, cluster), "status")
        assert reply.result == {"verb": "status"}
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


async def test_profile_of_a_node_never_seen_is_named_within_2_s(
    mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str
) -> None:
    exc, took = await timed(profile_node(config(mosquitto, cluster), "x", {"model": "cnn-small"}))
    assert isinstance(exc, Unavailable)
    assert str(exc) == (
        f"no node 'x' has ever been seen in cluster '{cluster}' on {mosquitto.url} (check the node id and --cluster)"
    )
    assert took < 2.0, took


async def test_profile_of_an_offline_node_says_how_it_went(
    mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str
) -> None:
    topics = Topics(cluster)
    ts = time.time() - 5
    await watcher.publish(
        topics.node_status("gone"), NodeDeath(node="gone", session="s1", reason="shutdown", ts=ts), retain=True, qos=1
    )
    await watcher.publish(topics.node_status("lost"), NodeDeath(node="lost", session="s2"), retain=True, qos=1)
    exc, took = await timed(profile_node(config(mosquitto, cluster), "gone", {}))
    assert isinstance(exc, Unavailable) and took < 2.0
    assert f"node 'gone' of cluster '{cluster}' is offline since {time.strftime('%H:%M:%S', time.localtime(ts))}" in (
        str(exc)
    )
    assert "shut down" in str(exc)
    exc, took = await timed(profile_node(config(mosquitto, cluster), "lost", {}))
    assert isinstance(exc, Unavailable) and took < 2.0
    assert "is offline: its connection was lost (its last will; its session s2)" in str(exc)


async def test_profile_of_an_online_node_that_does_not_answer(
    mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str
) -> None:
    birth = NodeBirth(node="mute", session="s3", ts=time.time())
    await watcher.publish(Topics(cluster).node_status("mute"), birth, retain=True, qos=1)
    exc, _ = await timed(profile_node(config(mosquitto, cluster), "mute", {}, reply_timeout_s=0.5))
    assert isinstance(exc, TransportError)
    assert "node 'mute' was online" in str(exc) and "did not answer profile within 0.5 s" in str(exc)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert EXE is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=clean, timeout=60)


async def test_the_cli_says_it_in_one_line_with_exit_69(
    mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str
) -> None:
    await coordinator_says(watcher, cluster, "offline", time.time())
    t0 = time.monotonic()
    r = await asyncio.to_thread(cli, "status", "--broker", mosquitto.url, "--cluster", cluster + "b")
    took = time.monotonic() - t0
    assert r.returncode == ExitCode.UNAVAILABLE, r.stderr
    seen = f"no coordinator has ever been seen in cluster '{cluster}b' on {mosquitto.url} (check --cluster)"
    assert r.stderr == f"deepedge: error: {seen}\n"
    assert took < 5.0, took  # (the interpreter's start included; it waited 10 s for a reply before)
    r = await asyncio.to_thread(cli, "--broker", mosquitto.url, "--cluster", cluster, "cancel", "j1")
    assert r.returncode == ExitCode.UNAVAILABLE and r.stderr.count("\n") == 1
    assert f"the coordinator of cluster '{cluster}' on {mosquitto.url} is offline since" in r.stderr
    r = await asyncio.to_thread(cli, "profile", "nope", "--broker", mosquitto.url, "--cluster", cluster)
    assert r.returncode == ExitCode.UNAVAILABLE and r.stderr.count("\n") == 1
    assert "no node 'nope' has ever been seen" in r.stderr


async def test_logs_of_a_cluster_without_a_coordinator_says_so_and_follows_its_events(
    mosquitto: MosquittoBroker, watcher: MqttTransport, cluster: str
) -> None:
    """(a new operator's review, 2026-12-06) `deepedge logs --cluster <typo>` waited in silence
    for ever. Now it says within about a second that no coordinator was ever seen there, and
    follows the cluster's events anyway (a node's come without one); with one, nothing is said."""
    from deepedge.broker_schemas import Event
    from deepedge.ops import tail_events

    for with_coordinator in (False, True):
        name = f"{cluster}{int(with_coordinator)}"
        if with_coordinator:
            await coordinator_says(watcher, name, "online", time.time())
        notices: list[tuple[str, float]] = []
        events: list[Event] = []
        t0 = time.monotonic()
        tail = asyncio.create_task(
            tail_events(
                config(mosquitto, name),
                events.append,
                limit=1,
                notice=lambda text, said=notices, t0=t0: said.append((text, time.monotonic() - t0)),
            )
        )
        await asyncio.sleep(1.5)
        await watcher.publish(
            Topics(name).events("n1"), Event(ts=1.0, source="node/n1", event="worker.started", node="n1")
        )
        assert await asyncio.wait_for(tail, 5.0) == 1
        assert [e.event for e in events] == ["worker.started"]
        if with_coordinator:
            assert notices == []
        else:
            assert len(notices) == 1 and notices[0][1] < 2.5
            assert notices[0][0].startswith(f"no coordinator has ever been seen in cluster '{name}'")
