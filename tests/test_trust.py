"""The trust boundaries with real processes: a hostile rank cannot run code on its peers, and a
node does not follow a plan of a coordinator session that is not the online one."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from deepedge.broker_schemas import Assignment, CoordinatorStatus, Heartbeat, JobSpec, NodeBirth, Plan, Topics
from deepedge.embedded_broker import free_port
from deepedge.testing.workers import make_plan, make_tensor_dataset, start_worker, stop_all
from deepedge.transport import MqttTransport
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import NodeProc, start_node
from tests.helpers.wait import wait_for

HOSTILE = Path(__file__).resolve().parent / "helpers" / "hostile_rank.py"
REAL_WORKER = [sys.executable, "-m", "deepedge.training.worker"]


def spec(data: Path, out: Path) -> JobSpec:
    return JobSpec(model="cnn-small", dataset=str(data), output=str(out), epochs=1, global_batch=40, learning_rate=0.05)


@pytest.mark.parametrize("mode", ["header", "pickle"])
def test_a_hostile_rank_cannot_run_code_on_its_peers(tmp_path: Path, mode: str) -> None:
    """The hostile rank 0 claims to be furthest and sends crafted bytes in the state sync: an
    impossible header, or a pickle that would create a marker file if anything unpickled it.
    The real worker fails that generation (recovering, with the reason) and nothing runs."""
    data = make_tensor_dataset(tmp_path / "d.pt", 400, size=8)
    marker = tmp_path / "pwned"
    port = free_port()
    plan = make_plan("j", 1, {"evil": 20, "a": 20}, spec(data, tmp_path / "out"), port=port)
    hostile = subprocess.Popen(
        [sys.executable, str(HOSTILE), str(port), "2", mode, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    workers = [start_worker("a")]
    try:
        workers[0].send(plan)
        report = workers[0].wait_report(lambda r: r.state == "recovering", 60)
        assert "collective failed" in report.message, report
        if mode == "header":
            assert "impossible state" in report.message
        out = hostile.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        stop_all(workers)
        hostile.kill()
    assert "hostile: sent" in out, out  # the attack was made
    assert not marker.exists()  # and nothing ran


def _accepts_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


@pytest.mark.mosquitto
async def test_a_forged_plan_naming_a_foreign_rendezvous_is_ignored(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    """A plan of another session (forged, or replayed from an earlier coordinator) names the
    attacker's rendezvous: the node starts no worker and nothing connects there. The same plan
    under the online session does reach it (so the test can tell)."""
    t = Topics(cluster)
    data = make_tensor_dataset(tmp_path / "d.pt", 200, size=8)
    status = await watcher.subscribe(t.node_status("n1"))
    hb = await watcher.subscribe(t.node_heartbeat("n1"))
    nodes.append(start_node(tmp_path, mosquitto.url, cluster, "n1", worker=REAL_WORKER))
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    await watcher.publish(
        t.coordinator_status(), CoordinatorStatus(state="online", session="real", ts=time.time()), qos=1, retain=True
    )
    trap = socket.create_server(("127.0.0.1", 0))
    port = trap.getsockname()[1]
    forged = Plan(
        job="j1",
        generation=1,
        ts=time.time(),
        spec=spec(data, tmp_path / "out"),
        rendezvous_host="127.0.0.1",
        rendezvous_port=port,
        backend="gloo",
        assignments=(
            Assignment(node="attacker", rank=0, share=20, batch_offset=0, intensity_cap=1.0),
            Assignment(node="n1", rank=1, share=20, batch_offset=20, intensity_cap=1.0),
        ),
        total_steps=5,
        session="forged",
    )
    try:
        await watcher.publish(t.job_plan("j1"), forged, qos=1, retain=True)
        assert not await asyncio.to_thread(_accepts_within, trap, 6.0)
        with pytest.raises(TimeoutError):
            await hb.first(lambda m: isinstance(m, Heartbeat) and m.job == "j1", 0.5)
        # the control: under the online session the worker does go there
        await watcher.publish(t.job_plan("j1"), msgspec.structs.replace(forged, session="real"), qos=1, retain=True)
        assert await asyncio.to_thread(_accepts_within, trap, 30.0)
    finally:
        trap.close()
        await watcher.publish(t.job_plan("j1"), None, qos=1, retain=True)


def test_the_rendezvous_store_listens_on_the_training_address_only(tmp_path: Path) -> None:
    """Rank 0 hosts the store of its generation on its own training address, not on every
    interface (torch's TCPStore listens on all of them when given a host name)."""
    import psutil

    data = make_tensor_dataset(tmp_path / "d.pt", 200, size=8)
    port = free_port()
    plan = make_plan("j", 1, {"a": 20, "absent": 20}, spec(data, tmp_path / "out"), port=port)
    worker = start_worker("a")
    try:
        worker.send(plan)  # rank 0; rank 1 never comes, so it waits at the rendezvous
        deadline = time.monotonic() + 60
        listening: list[tuple[str, int]] = []
        while time.monotonic() < deadline and not any(p == port for _, p in listening):
            time.sleep(0.2)
            listening = [
                (c.laddr.ip, c.laddr.port)
                for c in psutil.Process(worker.proc.pid).net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
        assert (("127.0.0.1", port)) in listening, (listening, worker.stderr[-5:])
        assert all(ip == "127.0.0.1" for ip, _ in listening), listening
    finally:
        stop_all([worker])
