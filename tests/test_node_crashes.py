"""Crash loops reach the operator and the coordinator: real node daemons, real workers (the
stand-in and the real one), a real Mosquitto. Issue #14: a worker that died at once was restarted
forever (11 crashes a minute) and nobody was told why."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepedge.broker_schemas import Event, Heartbeat, NodeBirth, Topics
from deepedge.transport import MqttTransport, Received, Requester, Subscription
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import NodeProc, start_node
from tests.helpers.wait import wait_for
from tests.test_node_daemon import _plan, coordinator_online

pytestmark = pytest.mark.mosquitto

REAL_WORKER = [sys.executable, "-m", "deepedge.training.worker"]


class Collected:
    """Every message of a subscription, kept in a list by a background task."""

    def __init__(self, sub: Subscription) -> None:
        self.items: list[Any] = []
        self._task = asyncio.create_task(self._read(sub))

    async def _read(self, sub: Subscription) -> None:
        while True:
            item = await sub.get()
            if isinstance(item, Received):
                self.items.append(item.message)

    async def wait(self, pred: Callable[[Any], bool], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.items if pred(m)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no matching message; got {self.items}"
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self._task.cancel()


async def start(
    nodes: list[NodeProc], tmp: Path, broker: MosquittoBroker, watcher: MqttTransport, cluster: str, **kw: Any
) -> tuple[Collected, Collected]:
    """A node n1 that is up, with the coordinator online; (events, heartbeats) collected."""
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    events = Collected(await watcher.subscribe(t.all_events()))
    beats = Collected(await watcher.subscribe(t.all_nodes("heartbeat")))
    nodes.append(start_node(tmp, broker.url, cluster, "n1", **kw))
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    await coordinator_online(watcher, t)
    return events, beats


def failed(m: Any) -> bool:
    return isinstance(m, Heartbeat) and m.state == "failed"


def event(name: str) -> Callable[[Any], bool]:
    return lambda m: isinstance(m, Event) and m.event == name


async def worker_status(watcher: MqttTransport, t: Topics, job: str) -> dict[str, Any]:
    async with Requester(watcher, t, timeout_s=5) as rpc:
        r = await rpc.request(t.node_command("n1", "status"))
    assert r.ok
    return dict(r.result["workers"][job])


async def test_a_crash_looping_worker_is_restarted_at_most_the_limit_then_reported(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    events, beats = await start(nodes, tmp_path, mosquitto, watcher, cluster, node_extra="worker_crash_limit = 3")
    await watcher.publish(t.job_plan("j1"), _plan("j1", 1, ["n1"], "test:crash-always", tmp_path), qos=1, retain=True)
    why = "crashed: RuntimeError: the stand-in always crashes"
    hb = await beats.wait(failed, 30)
    assert (hb.node, hb.job, hb.generation, hb.rank) == ("n1", "j1", 1, 0)
    assert hb.message == f"crash loop: 3 crashes of generation 1, exit code 3: {why}"
    loop = await events.wait(event("worker.crash_loop"), 5)
    assert loop.level == "error" and (loop.node, loop.job) == ("n1", "j1")
    assert loop.fields["exit_code"] == 3 and loop.fields["why"] == why and loop.fields["crashes"] == 3
    crashed = await events.wait(event("worker.crashed"), 5)
    assert crashed.level == "warning" and crashed.fields["why"] == why and crashed.fields["exit_code"] == 3
    await asyncio.sleep(3)  # well past the next backoff: no restart
    w = await worker_status(watcher, t, "j1")
    assert (w["state"], w["restarts"], w["crashes"], w["last_exit"], w["last_why"], w["pid"]) == (
        "failed", 2, 3, 3, why, None
    )  # fmt: skip
    starts = [e for e in nodes[0].log_events() if e.get("event") == "worker.started"]
    assert len(starts) == 3
    # the failed heartbeat repeats (a coordinator that missed it still learns it) ...
    assert len([m for m in beats.items if failed(m)]) >= 2
    # ... until the job's plan is cleared
    await watcher.publish(t.job_plan("j1"), None, qos=1, retain=True)
    await asyncio.sleep(0.5)
    n = len([m for m in beats.items if failed(m)])
    await asyncio.sleep(1.0)
    assert len([m for m in beats.items if failed(m)]) == n
    assert (await worker_status(watcher, t, "j1"))["state"] == "idle"
    events.close()
    beats.close()


async def test_a_worker_command_that_does_not_exist_is_a_crash_loop_and_the_daemon_stays_up(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    missing = str(tmp_path / "no" / "such-worker")
    events, beats = await start(
        nodes, tmp_path, mosquitto, watcher, cluster, worker=[missing], node_extra="worker_crash_limit = 2"
    )
    await watcher.publish(t.job_plan("j2"), _plan("j2", 1, ["n1"], "test:run", tmp_path), qos=1, retain=True)
    hb = await beats.wait(failed, 30)
    assert hb.message.startswith("crash loop: 2 crashes of generation 1, exit code 127: cannot start the worker")
    assert missing in hb.message and "No such file or directory" in hb.message
    loop = await events.wait(event("worker.crash_loop"), 5)
    assert loop.fields["exit_code"] == 127
    w = await worker_status(watcher, t, "j2")  # the daemon answers
    assert (w["state"], w["restarts"], w["last_exit"]) == ("failed", 1, 127)
    assert nodes[0].proc.poll() is None
    assert not [e for e in nodes[0].log_events() if e.get("event") == "worker.supervision_failed"]
    events.close()
    beats.close()


async def test_a_worker_that_exits_2_is_not_restarted(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    events, beats = await start(nodes, tmp_path, mosquitto, watcher, cluster)
    await watcher.publish(t.job_plan("j3"), _plan("j3", 1, ["n1"], "test:fail", tmp_path), qos=1, retain=True)
    hb = await beats.wait(failed, 30)
    assert hb.message == "the stand-in's training error"  # the worker's own failed report
    ev = await events.wait(event("worker.failed"), 5)
    assert ev.level == "error" and ev.fields["exit_code"] == 2 and ev.message == "the stand-in's training error"
    await asyncio.sleep(2.5)
    w = await worker_status(watcher, t, "j3")
    assert (w["state"], w["restarts"], w["last_exit"]) == ("failed", 0, 2)
    assert len([e for e in nodes[0].log_events() if e.get("event") == "worker.started"]) == 1
    assert not [m for m in events.items if isinstance(m, Event) and m.event.startswith("worker.crash")]
    events.close()
    beats.close()


async def test_the_real_worker_with_an_output_it_cannot_write_fails_once_with_the_reason(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    """The issue's ``--output /proc/x``: here a file where the output folder should be (the
    output must lie inside training.output_root, which is the test's folder)."""
    t = Topics(cluster)
    events, beats = await start(nodes, tmp_path, mosquitto, watcher, cluster, worker=REAL_WORKER)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    plan = _plan("j4", 1, ["n1"], "cnn-small", blocker / "out")
    await watcher.publish(t.job_plan("j4"), plan, qos=1, retain=True)
    hb = await beats.wait(failed, 60)
    assert f"output folder {blocker / 'out'}" in hb.message and "Not a directory" in hb.message, hb.message
    ev = await events.wait(event("worker.failed"), 5)
    assert ev.fields["exit_code"] == 2 and "Not a directory" in ev.message
    await asyncio.sleep(2.5)
    w = await worker_status(watcher, t, "j4")
    assert (w["state"], w["restarts"], w["last_exit"]) == ("failed", 0, 2)
    events.close()
    beats.close()
