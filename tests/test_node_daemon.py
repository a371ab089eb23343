"""The node daemon as a real subprocess against a real Mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from deepedge.broker_schemas import (
    Assignment,
    CommandReply,
    CoordinatorStatus,
    Heartbeat,
    JobSpec,
    LatencyReport,
    NodeBirth,
    NodeDeath,
    Plan,
    Telemetry,
    Topics,
    encode,
)
from deepedge.lc_client import LatencyReporter
from deepedge.transport import MqttTransport, Requester
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import NodeProc, start_node
from tests.helpers.wait import node_answers, wait_for

pytestmark = pytest.mark.mosquitto


async def boot(
    nodes: list[NodeProc], tmp: Path, broker: MosquittoBroker, cluster: str, node: str = "n1", **kw: Any
) -> NodeProc:
    n = start_node(tmp, broker.url, cluster, node, **kw)
    nodes.append(n)
    return n


async def test_birth_retained_and_telemetry_at_configured_rate(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    await boot(nodes, tmp_path, mosquitto, cluster, interval=0.2)
    birth = await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    assert birth.node == "n1" and birth.cpu_cores == os.cpu_count() and birth.memory_bytes > 0
    assert birth.software["deepedge"] and not birth.drained
    # retained: a late subscriber gets the same birth
    async with MqttTransport(mosquitto.config()) as late:
        sub = await late.subscribe(t.node_status("n1"))
        assert await wait_for(sub, lambda m: isinstance(m, NodeBirth)) == birth
    tele = await watcher.subscribe(t.node_telemetry("n1"))
    await wait_for(tele, lambda m: isinstance(m, Telemetry))
    start, count = time.monotonic(), 0
    while time.monotonic() - start < 3.0:
        msg = await wait_for(tele, lambda m: isinstance(m, Telemetry))
        count += 1
        assert len(msg.cpu_per_core) == os.cpu_count() and msg.mem_total_bytes > 0
    assert 12 <= count <= 18  # 5 Hz for 3 s


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="on one CPU the board is the whole machine anyway")
async def test_an_emulated_board_of_one_cpu_reports_that_cpu_only(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    """node.emulate_cpus (the demo's boards, a vCPU each): the birth's core count and the
    telemetry's CPU figures are that CPU's, so the coordinator does not read another emulated
    board's load as this one's background."""
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    tele = await watcher.subscribe(t.node_telemetry("n1"))
    await boot(nodes, tmp_path, mosquitto, cluster, interval=0.2, node_extra="emulate_cpus = [0]")
    birth = await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    assert birth.cpu_cores == 1
    msg = await wait_for(tele, lambda m: isinstance(m, Telemetry))
    assert len(msg.cpu_per_core) == 1 and msg.cpu_percent == msg.cpu_per_core[0]


async def test_sigkill_gives_offline_by_last_will(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    status = await watcher.subscribe(Topics(cluster).node_status("n1"))
    n = await boot(nodes, tmp_path, mosquitto, cluster)
    birth = await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    n.proc.send_signal(signal.SIGKILL)
    death = await wait_for(status, lambda m: isinstance(m, NodeDeath), 5)
    assert death.reason == "lost" and death.session == birth.session


async def test_sigterm_gives_clean_offline_and_exit_0(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    status = await watcher.subscribe(Topics(cluster).node_status("n1"))
    n = await boot(nodes, tmp_path, mosquitto, cluster)
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    assert n.socket.exists()
    n.proc.send_signal(signal.SIGTERM)
    death = await wait_for(status, lambda m: isinstance(m, NodeDeath), 10)
    assert death.reason == "shutdown"
    assert await asyncio.to_thread(n.proc.wait, 10) == 0
    assert not n.socket.exists()
    # no will after a clean stop: nothing but the shutdown notice
    with pytest.raises(TimeoutError):
        await status.get(1.0)


async def test_lc_latencies_reported_with_correct_percentiles(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    lat = await watcher.subscribe(t.node_latency("n1"))
    n = await boot(nodes, tmp_path, mosquitto, cluster, lc_apps={"detector": 80.0})
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    with LatencyReporter("detector", str(n.socket)) as rep:
        for ms in range(1, 101):  # 1..100 ms
            rep.report(float(ms))
        rep.flush()
        assert rep.sent == 100 and rep.dropped == 0

    def full(m: Any) -> bool:
        return isinstance(m, LatencyReport) and any(a.app == "detector" and a.count == 100 for a in m.apps)

    report = await wait_for(lat, full, 10)
    (app,) = [a for a in report.apps if a.app == "detector"]
    assert (app.p50_ms, app.p95_ms, app.p99_ms) == (50.0, 95.0, 99.0)
    assert app.deadline_ms == 80.0 and app.violations == 20


async def test_commands_answer_and_bad_commands_get_typed_errors(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    await boot(nodes, tmp_path, mosquitto, cluster, lc_apps={"det": 50.0})
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    await node_answers(watcher, t, "n1")
    async with Requester(watcher, t, timeout_s=5) as rpc:
        r = await rpc.request(t.node_command("n1", "status"))
        assert r.ok and r.result["node"] == "n1" and r.result["drained"] is False
        assert r.result["lc_apps"]["det"]["deadline_ms"] == 50.0

        r = await rpc.request(t.node_command("n1", "set-deadline"), {"app": "det", "deadline_ms": 35})
        assert r.ok
        r = await rpc.request(t.node_command("n1", "status"))
        assert r.result["lc_apps"]["det"]["deadline_ms"] == 35.0

        r = await rpc.request(t.node_command("n1", "drain"), {"reason": "maintenance"})
        assert r.ok and r.result == {"node": "n1", "drained": True}
        assert (await wait_for(status, lambda m: isinstance(m, NodeBirth) and m.drained)).drained
        r = await rpc.request(t.node_command("n1", "undrain"))
        assert r.ok and r.result == {"node": "n1", "drained": False}

        for verb, args, code in [
            ("fly", {}, "unknown_verb"),
            ("set-deadline", {"app": "det", "deadline_ms": -1}, "bad_args"),
            ("set-deadline", {"app": "bad app", "deadline_ms": 5}, "bad_args"),
            ("set-deadline", {"app": "det", "deadline_ms": "soon"}, "bad_args"),
            ("status", {"unexpected": 1}, "bad_args"),
            ("stop-worker", {"job": "nope"}, "not_found"),
        ]:
            r = await rpc.request(t.node_command("n1", verb), args)
            assert not r.ok and r.error is not None and r.error.code == code, (verb, r)

    replies = await watcher.subscribe(t.node_replies())
    await watcher.publish_raw(
        t.node_command("n1", "status"), b'{"kind":"command","request_id":"r1","reply_to":"hand","args":[1]}'
    )
    bad = await wait_for(replies, lambda m: isinstance(m, CommandReply))
    assert bad.request_id == "r1" and bad.error is not None and bad.error.code == "bad_request"
    await watcher.publish_raw(t.node_command("n1", "status"), b'{"kind":"command","request_id":"r2","reply_to":"hand"}')
    good = await wait_for(replies, lambda m: isinstance(m, CommandReply))
    assert good.request_id == "r2" and good.ok  # JSON typed by hand works


SESSION = "coord-1"  # the coordinator session these tests play


async def coordinator_online(watcher: MqttTransport, t: Topics, session: str = SESSION) -> None:
    """Play the coordinator's retained status: nodes act only on plans of the online session."""
    await watcher.publish(
        t.coordinator_status(), CoordinatorStatus(state="online", session=session, ts=time.time()), qos=1, retain=True
    )


def _plan(job: str, generation: int, nodes: list[str], model: str, out: Path, session: str = SESSION) -> Plan:
    share = 12 // len(nodes) if nodes else 0
    return Plan(
        session=session,
        job=job,
        generation=generation,
        ts=time.time(),
        spec=JobSpec(
            model=model, dataset=str(out / "data"), output=str(out), epochs=1, global_batch=12, learning_rate=0.1
        ),
        rendezvous_host="127.0.0.1",
        rendezvous_port=29500,
        backend="gloo",
        assignments=tuple(
            Assignment(node=n, rank=i, share=share, batch_offset=i * share, intensity_cap=0.5)
            for i, n in enumerate(nodes)
        ),
        total_steps=100,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is dead
    except (ProcessLookupError, FileNotFoundError):
        return False


async def test_worker_supervision_from_plan_to_heartbeats_restart_and_stop(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    hb = await watcher.subscribe(t.node_heartbeat("n1"))
    await boot(nodes, tmp_path, mosquitto, cluster)
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    out = tmp_path / "out"
    await coordinator_online(watcher, t)
    await watcher.publish(t.job_plan("j1"), _plan("j1", 1, ["n0", "n1"], "test:crash-once", out), qos=1, retain=True)
    first = await wait_for(hb, lambda m: isinstance(m, Heartbeat), 15)
    assert (first.job, first.generation, first.rank, first.world_size, first.intensity) == ("j1", 1, 1, 2, 0.5)
    async with Requester(watcher, t, timeout_s=5) as rpc:
        # the worker crashes once (exit 3) and is restarted with backoff
        deadline = time.monotonic() + 15
        while True:
            r = await rpc.request(t.node_command("n1", "status"))
            w = r.result["workers"]["j1"]
            if w["restarts"] == 1 and w["state"] == "running":
                break
            assert time.monotonic() < deadline, w
            await asyncio.sleep(0.2)
        # a new generation reaches the running worker
        await watcher.publish(t.job_plan("j1"), _plan("j1", 2, ["n1"], "test:crash-once", out), qos=1, retain=True)
        hb2 = await wait_for(hb, lambda m: isinstance(m, Heartbeat) and m.generation == 2, 10)
        assert hb2.rank == 0 and hb2.world_size == 1
        pid = (await rpc.request(t.node_command("n1", "status"))).result["workers"]["j1"]["pid"]
        assert pid and _alive(pid)
        r = await rpc.request(t.node_command("n1", "stop-worker"), {"job": "j1"})
        assert r.ok and r.result == {"stopped": ["j1"]}
        assert not _alive(pid)
        w = (await rpc.request(t.node_command("n1", "status"))).result["workers"]["j1"]
        assert w["state"] == "idle" and w["pid"] is None


async def test_plan_without_this_node_stops_its_worker_and_group(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    hb = await watcher.subscribe(t.node_heartbeat("n1"))
    await boot(nodes, tmp_path, mosquitto, cluster)
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    await coordinator_online(watcher, t)
    await watcher.publish(t.job_plan("j2"), _plan("j2", 1, ["n1"], "test:run", tmp_path), qos=1, retain=True)
    beat = await wait_for(hb, lambda m: isinstance(m, Heartbeat), 15)
    async with Requester(watcher, t, timeout_s=5) as rpc:
        pid = (await rpc.request(t.node_command("n1", "status"))).result["workers"]["j2"]["pid"]
    child_pid = None
    for ev in await asyncio.to_thread(nodes[0].log_events):
        if ev.get("event") == "worker.stderr" and "pid=" in str(ev.get("line")):
            child_pid = int(str(ev["line"]).split("pid=")[1])
    assert beat.job == "j2" and pid and child_pid and _alive(child_pid)
    await watcher.publish(t.job_plan("j2"), _plan("j2", 2, ["n9"], "test:run", tmp_path), qos=1, retain=True)
    deadline = time.monotonic() + 10
    while (_alive(pid) or _alive(child_pid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not _alive(pid) and not _alive(child_pid)  # the whole process group is gone


async def test_daemon_survives_10000_malformed_oversized_and_forged_messages(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    n = await boot(nodes, tmp_path, mosquitto, cluster, interval=0.2)
    birth = await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    forged_death = encode(NodeDeath(node="n1", session="forged"))
    forged_other = encode(NodeDeath(node="n2", session="x"))
    plan_for_other_job = msgspec.msgpack.encode({"kind": "plan", "job": "other"})
    payloads = [
        b"\xc1",
        b"{not json",
        b"\x00" * 70_000,
        b"\x81\xa4kind\xa4plan",
        forged_other,
        plan_for_other_job,
        msgspec.msgpack.encode({"kind": "command", "v": 99, "request_id": "r", "reply_to": "x"}),
    ]
    topics = [
        t.node_command("n1", "status"),
        t.node_command("n1", "drain"),
        t.job_plan("j1"),
        t.node_status("n1"),
        f"deepedge/{cluster}/cmd/node/n1/BAD",
        t.job_plan("evil"),
    ]
    async with MqttTransport(mosquitto.config()) as flooder:
        for i in range(10_000):
            await flooder.publish_raw(topics[i % len(topics)], payloads[i % len(payloads)])
    # the node has worked through the flood (its status answer comes after it) before the
    # forged death is sent, at QoS 1: a QoS 0 message behind 10,000 can be dropped by the
    # broker's queue for the node, which is the broker's right, not the daemon's failure
    async with Requester(watcher, t, timeout_s=20) as rpc:
        assert (await rpc.request(t.node_command("n1", "status"))).ok
    async with MqttTransport(mosquitto.config()) as forger:
        await forger.publish_raw(t.node_status("n1"), forged_death, qos=1, retain=False)
    # a forged death notice for a live node is answered with a fresh birth
    again = await wait_for(status, lambda m: isinstance(m, NodeBirth) and m.ts > birth.ts, 20)
    assert again.session == birth.session
    tele = await watcher.subscribe(t.node_telemetry("n1"))
    for _ in range(3):
        await wait_for(tele, lambda m: isinstance(m, Telemetry), 10)
    async with Requester(watcher, t, timeout_s=10) as rpc:
        r = await rpc.request(t.node_command("n1", "status"))
        assert r.ok and r.result["drained"] is False and r.result["workers"] == {}
    assert n.proc.poll() is None
    dropped = [e for e in await asyncio.to_thread(n.log_events) if e.get("event") == "message.dropped"]
    assert 1 <= len(dropped) <= 20  # logged, but rate-limited per sender


async def test_systemd_notify_ready_watchdog_status_stopping(
    mosquitto: MosquittoBroker, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    import socket as pysocket

    path = tmp_path / "notify.sock"
    sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    n = await boot(nodes, tmp_path, mosquitto, cluster, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    got: list[str] = []

    def collect(until: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not until():
            try:
                got.extend(sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue

    await asyncio.to_thread(collect, lambda: "READY=1" in got and got.count("WATCHDOG=1") >= 3, 30)
    assert "READY=1" in got and got.count("WATCHDOG=1") >= 3
    assert any(line.startswith("STATUS=") for line in got)
    n.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(collect, lambda: "STOPPING=1" in got, 10)
    assert "STOPPING=1" in got
    assert await asyncio.to_thread(n.proc.wait, 10) == 0
    sock.close()


async def test_flags_on_the_node_command(mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path) -> None:
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "deepedge")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
    env["DEEPEDGE_NODE_LATENCY_SOCKET"] = str(tmp_path / "l.sock")
    env["DEEPEDGE_NODE_PROFILE_PATH"] = str(tmp_path / "profile.json")  # not the default one another test may hold
    status = await watcher.subscribe(Topics("flagged").node_status("board-7"))
    proc = subprocess.Popen(
        [exe, "node", "--node-id", "board-7", "--cluster", "flagged", "--broker", mosquitto.url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        birth = await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
        assert birth.node == "board-7"
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
    bad = subprocess.run(
        [exe, "node", "--node-id", "bad id", "--broker", mosquitto.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 78 and "node id 'bad id'" in bad.stderr


async def test_sigterm_while_the_broker_is_down_exits_promptly(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    status = await watcher.subscribe(Topics(cluster).node_status("n1"))
    n = await boot(nodes, tmp_path, mosquitto, cluster)
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    mosquitto.kill()
    await asyncio.sleep(0.5)
    started = time.monotonic()
    n.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(n.proc.wait, 10) == 0
    assert time.monotonic() - started < 5.0  # the goodbye publish waits at most 2 s


@pytest.mark.slow
async def test_profile_measures_the_board_keeps_it_and_announces_it(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    """``profile`` trains cnn-small alone with the worker's step code on an emulated board (10 ms
    a sample: 100 samples/s at full intensity), takes the LC app's p95 at each level from the
    daemon's own latency intake, answers conflicts and bad arguments with typed errors, keeps the
    result across a restart and puts it in the retained birth message."""
    import threading

    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("p1"))
    kw: dict[str, Any] = {"lc_apps": {"det": 50.0}, "latency_window_s": 5, "node_extra": "emulate_sample_ms = 10"}
    n = await boot(nodes, tmp_path, mosquitto, cluster, "p1", **kw)
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    stop = threading.Event()

    def lc_app() -> None:  # a steady 10 ms app; what training does to a real one is the demo's
        with LatencyReporter("det", str(n.socket), flush_interval_s=0.05) as rep:
            while not stop.wait(0.02):
                rep.report(10.0)

    feeder = threading.Thread(target=lc_app, daemon=True)
    feeder.start()
    try:
        await asyncio.sleep(1.5)  # latency with nothing training
        async with Requester(watcher, t, timeout_s=10) as rpc:
            for bad in ({"levels": "2"}, {"levels": "fast"}, {"seconds": 60}, {"colour": "red"}):
                reply = await rpc.request(t.node_command("p1", "profile"), bad)
                assert not reply.ok and reply.error is not None and reply.error.code == "bad_args", bad
            # the profiler builds (imports) the model: a model the board does not allow is refused
            # (before, `profile --model evil:x` imported any module, whatever training.models said)
            reply = await rpc.request(t.node_command("p1", "profile"), {"model": "this:x"})
            assert not reply.ok and reply.error is not None and "training.model_modules" in reply.error.message
            reply = await rpc.request(t.node_command("p1", "profile"), {"levels": "1,0.5", "seconds": 1})
            assert reply.ok and reply.result["started"], reply
            again = await rpc.request(t.node_command("p1", "profile"), {})
            assert again.error is not None and again.error.code == "conflict"
            birth = await wait_for(status, lambda m: isinstance(m, NodeBirth) and "cnn-small" in m.profiles, 60)
            state = (await rpc.request(t.node_command("p1", "status"))).result["profile"]
    finally:
        stop.set()
        feeder.join(5)
    assert not state["running"] and state["last_error"] == ""
    prof = birth.profiles["cnn-small"]
    assert 70 <= prof.samples_per_s <= 105, prof  # paced at 10 ms a sample, plus the optimizer's steps
    intensities = sorted(p.intensity for p in prof.lc if p.app == "det")
    assert len(intensities) == 3 and intensities[0] == 0.0, prof.lc  # alone, then each level
    assert 0.4 <= intensities[1] <= 0.6 and intensities[2] >= 0.9, intensities
    assert all(p.p95_ms == 10.0 for p in prof.lc)
    # kept: a restarted daemon announces it again
    n.proc.send_signal(signal.SIGTERM)
    assert n.proc.wait(20) == 0
    await boot(nodes, tmp_path, mosquitto, cluster, "p1", **kw)
    reborn = await wait_for(
        status, lambda m: isinstance(m, NodeBirth) and m.session != birth.session and "cnn-small" in m.profiles, 30
    )
    assert reborn.profiles["cnn-small"] == prof
