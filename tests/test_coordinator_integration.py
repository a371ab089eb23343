"""The coordinator with real node daemons (and the stand-in worker) as subprocesses, against a
real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deepedge.broker_schemas import CoordinatorStatus, Event, NodeBirth, Plan, Progress, Topics
from deepedge.config import load_config
from deepedge.lc_client import LatencyReporter
from deepedge.ops import CommandError, coordinator_request
from deepedge.transport import MqttTransport, Received
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import NodeProc, job_args, start_coordinator, start_node
from tests.helpers.wait import coordinator_lists, wait_for

pytestmark = pytest.mark.mosquitto


async def cluster_up(
    mosquitto: MosquittoBroker,
    watcher: MqttTransport,
    tmp: Path,
    cluster: str,
    procs: list[NodeProc],
    nodes: list[str],
    lc_apps: dict[str, float] | None = None,
    worker: list[str] | None = None,
    latency_window_s: float = 30,
    coordinator_interval: float = 0.2,
) -> Any:
    t = Topics(cluster)
    coord = await watcher.subscribe(t.coordinator_status())
    births = await watcher.subscribe(t.all_nodes("status"))
    procs.append(start_coordinator(tmp, mosquitto.url, cluster, interval=coordinator_interval))
    await wait_for(coord, lambda m: isinstance(m, CoordinatorStatus) and m.state == "online", 30)
    for n in nodes:
        procs.append(
            start_node(
                tmp,
                mosquitto.url,
                cluster,
                n,
                lc_apps=lc_apps,
                worker=worker,
                latency_window_s=latency_window_s,
                stand_in_preflight=worker is None,
            )
        )
    seen: set[str] = set()
    while seen != set(nodes):
        seen.add((await wait_for(births, lambda m: isinstance(m, NodeBirth), 30)).node)
    config = load_config(None, environ={"DEEPEDGE_BROKER_URL": mosquitto.url, "DEEPEDGE_CLUSTER_NAME": cluster})
    await coordinator_lists(config.config, nodes)
    return config


async def test_submit_publishes_plan_to_the_right_nodes(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    t = Topics(cluster)
    loaded = await cluster_up(mosquitto, watcher, tmp_path, cluster, procs, ["a1", "a2", "a3"])
    plans = await watcher.subscribe(t.job_plan("j1"))
    hbs = await watcher.subscribe(t.all_nodes("heartbeat"))
    reply = await coordinator_request(loaded.config, "submit", job_args("j1", tmp_path))
    assert reply.result["state"] == "running" and reply.result["generation"] == 1
    plan = await wait_for(plans, lambda m: isinstance(m, Plan))
    # the forecast's statsmodels was loaded before the coordinator connected, not at a job's plan
    names = [e.get("event") for e in procs[0].log_events()]
    assert "coordinator.forecast_loaded" in names and "mqtt.connected" in names
    assert names.index("coordinator.forecast_loaded") < names.index("mqtt.connected")
    assert {a.node for a in plan.assignments} == {"a1", "a2", "a3"}
    assert sum(a.share for a in plan.assignments) == 32 and plan.total_steps == 100
    beating = set()
    while beating != {"a1", "a2", "a3"}:  # each node started its worker for this plan
        beating.add((await wait_for(hbs, lambda m: m.job == "j1" and m.generation == 1)).node)
    status = (await coordinator_request(loaded.config, "status")).result
    assert [j["job"] for j in status["jobs"]] == ["j1"] and {n["node"] for n in status["nodes"]} == {"a1", "a2", "a3"}
    for bad, code in [
        ({"job": "j1"}, "bad_args"),
        (job_args("j1", tmp_path), "conflict"),
        (job_args("j2", tmp_path, epochs=0), "bad_args"),
        (job_args("j3", tmp_path, dataset_size=8), "bad_args"),
        (job_args("bad id", tmp_path), "bad_args"),
    ]:
        with pytest.raises(CommandError) as err:
            await coordinator_request(loaded.config, "submit", bad)
        assert err.value.code == code, bad
    with pytest.raises(CommandError) as err:  # every node runs j1 (node.max_workers 1)
        await coordinator_request(loaded.config, "submit", job_args("second", tmp_path))
    assert err.value.code == "conflict" and "a1: busy with job j1" in str(err.value)
    cancelled = await coordinator_request(loaded.config, "cancel", {"job": "j1"})
    assert cancelled.result["state"] == "cancelled"
    with pytest.raises(CommandError) as err:
        await coordinator_request(
            loaded.config, "submit", job_args("huge", tmp_path, global_batch=10_000_000, dataset_size=10**8)
        )
    assert err.value.code == "conflict" and "does not fit" in str(err.value)


async def test_kill_9_of_a_node_replans_with_new_generation_within_3_s(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    t = Topics(cluster)
    # The killed node is found dead by its last will, at once. The survivors' liveness is judged
    # on 3 missed heartbeats of 0.5 s, not 0.2 s. Two clean-clone CI runs saw the re-plan keep
    # only b1: "b3 not worth its all-reduce cost: a step 0.34 s with it, 0.32 s without" (the
    # coordinator's log). A participant that must still start delays the job once, and that cost
    # is paid back over the steps left: over 100 steps b3's start outweighed its share (likely b1's
    # worker counted as started and b3's not yet; not traced further). Over 2000 steps it cannot.
    loaded = await cluster_up(
        mosquitto, watcher, tmp_path, cluster, procs, ["b1", "b2", "b3"], coordinator_interval=0.5
    )
    plans = await watcher.subscribe(t.job_plan("j1"))
    await coordinator_request(loaded.config, "submit", job_args("j1", tmp_path, epochs=20))
    first = await wait_for(plans, lambda m: isinstance(m, Plan))
    assert {a.node for a in first.assignments} == {"b1", "b2", "b3"}
    victim = next(p for p in procs if p.node == "b2")
    killed = time.monotonic()
    victim.proc.send_signal(signal.SIGKILL)
    second = await wait_for(plans, lambda m: isinstance(m, Plan) and m.generation > first.generation, 10)
    assert time.monotonic() - killed < 3.0
    assert {a.node for a in second.assignments} == {"b1", "b3"}
    assert sum(a.share for a in second.assignments) == 32


async def test_coordinator_restart_resumes_jobs_from_sqlite(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    t = Topics(cluster)
    loaded = await cluster_up(mosquitto, watcher, tmp_path, cluster, procs, ["c1", "c2"])
    plans = await watcher.subscribe(t.job_plan("j1"))
    await coordinator_request(loaded.config, "submit", job_args("j1", tmp_path))
    first = await wait_for(plans, lambda m: isinstance(m, Plan))
    coord = procs[0]
    coord.proc.send_signal(signal.SIGKILL)
    coord.proc.wait(10)
    # the plan in effect: the first, or one the first coordinator re-planned to from learned rates
    # before it died (a loaded clean-clone CI run once saw generation 2 go out first)
    last = max([first.generation, *await _generations(plans)])
    status_sub = await watcher.subscribe(t.coordinator_status())
    procs.append(start_coordinator(tmp_path, mosquitto.url, cluster))
    await wait_for(status_sub, lambda m: isinstance(m, CoordinatorStatus) and m.state == "online", 30)
    await asyncio.sleep(2.0)  # past its warm-up: it has judged the plan and kept it
    status = (await coordinator_request(loaded.config, "status")).result
    (job,) = status["jobs"]
    assert job["job"] == "j1" and job["state"] == "running" and job["generation"] == last
    republished = await _generations(plans)  # nothing stale (nor new) was republished: the nodes are fine
    assert all(g == last for g in republished)
    # and it still manages the job: a node loss after the restart re-plans from the stored generation
    next(p for p in procs if p.node == "c2").proc.send_signal(signal.SIGKILL)
    second = await wait_for(plans, lambda m: isinstance(m, Plan) and m.generation == last + 1, 10)
    assert [a.node for a in second.assignments] == ["c1"]


async def _generations(plans: Any) -> list[int]:
    """The generations of the plans ``plans`` has received, until it is quiet for 0.5 s."""
    out = []
    while True:
        try:
            item = await plans.get(0.5)
        except TimeoutError:
            return out
        if isinstance(item, Received) and isinstance(item.message, Plan):
            out.append(item.message.generation)


async def test_lc_latency_over_deadline_lowers_that_nodes_cap(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    t = Topics(cluster)
    loaded = await cluster_up(
        mosquitto, watcher, tmp_path, cluster, procs, ["d1", "d2"], lc_apps={"det": 50.0}, latency_window_s=1.0
    )
    plans = await watcher.subscribe(t.job_plan("j1"))
    events = await watcher.subscribe(t.all_events())
    await coordinator_request(loaded.config, "submit", job_args("j1", tmp_path))
    first = await wait_for(plans, lambda m: isinstance(m, Plan))
    await asyncio.sleep(2.0)  # the coordinator acts on LC reports once d1 has trained for a whole window
    cap_before = next(a.intensity_cap for a in first.assignments if a.node == "d1")
    d1 = next(p for p in procs if p.node == "d1")
    with LatencyReporter("det", str(d1.socket)) as rep:
        for _ in range(50):
            rep.report(80.0)  # over the 50 ms deadline
    violation = await wait_for(events, lambda m: isinstance(m, Event) and m.event == "lc.violation", 10)
    assert violation.node == "d1"
    second = await wait_for(plans, lambda m: isinstance(m, Plan) and m.generation > first.generation, 10)
    d1_after = [a for a in second.assignments if a.node == "d1"]
    assert not d1_after or d1_after[0].intensity_cap < cap_before
    d2_before = next(a.intensity_cap for a in first.assignments if a.node == "d2")
    assert next(a.intensity_cap for a in second.assignments if a.node == "d2") == d2_before


async def test_a_cap_lowered_for_an_lc_miss_survives_a_kill_9_of_the_coordinator(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    """The cap limit an LC miss set is saved at once (the next tick): the coordinator killed
    right after it, the next one plans with the lowered limit, not the default 1.0 (before, a
    restart forgot it, and the next improvement put the board back at the cap that missed)."""
    t = Topics(cluster)
    loaded = await cluster_up(
        mosquitto, watcher, tmp_path, cluster, procs, ["k1", "k2"], lc_apps={"det": 50.0}, latency_window_s=1.0
    )
    events = await watcher.subscribe(t.all_events())
    await coordinator_request(loaded.config, "submit", job_args("j1", tmp_path))
    await asyncio.sleep(2.0)  # the coordinator acts on LC reports once k1 has trained for a whole window
    k1 = next(p for p in procs if p.node == "k1")
    with LatencyReporter("det", str(k1.socket)) as rep:
        for _ in range(50):
            rep.report(80.0)  # over the 50 ms deadline
    violation = await wait_for(events, lambda m: isinstance(m, Event) and m.event == "lc.violation", 10)
    lowered = violation.fields["cap"]
    assert violation.node == "k1" and isinstance(lowered, float) and lowered < 1.0
    await asyncio.sleep(1.0)  # saved at the next tick (0.1 s)
    coord = procs[0]
    coord.proc.send_signal(signal.SIGKILL)
    coord.proc.wait(10)
    status_sub = await watcher.subscribe(t.coordinator_status())
    procs.append(start_coordinator(tmp_path, mosquitto.url, cluster, interval=0.2))
    await wait_for(status_sub, lambda m: isinstance(m, CoordinatorStatus) and m.state == "online", 30)
    status = (await coordinator_request(loaded.config, "status")).result
    caps = {n["node"]: n["cap_limit"] for n in status["nodes"]}
    assert caps["k1"] == pytest.approx(lowered)


async def test_progress_and_completion(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    t = Topics(cluster)
    loaded = await cluster_up(mosquitto, watcher, tmp_path, cluster, procs, ["e1", "e2"])
    progress = await watcher.subscribe(t.job_progress("j1"))
    await coordinator_request(
        loaded.config, "submit", job_args("j1", tmp_path, model="test:finish:15", dataset_size=32 * 15)
    )
    done = await wait_for(progress, lambda m: isinstance(m, Progress) and m.state == "completed", 30)
    assert done.step >= 15 and done.samples_done == 15 * 32


async def test_coordinator_survives_garbage_and_forgeries(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    import msgspec

    from deepedge.broker_schemas import Telemetry, encode

    t = Topics(cluster)
    loaded = await cluster_up(mosquitto, watcher, tmp_path, cluster, procs, ["f1"])
    forged = encode(Telemetry(node="f1", ts=1.0))  # published on another node's topic below
    payloads = [
        b"\xc1",
        b"\x00" * 70_000,
        forged,
        b"{}",
        msgspec.msgpack.encode({"kind": "birth", "v": 42}),
        b'{"kind":"command","request_id":"r","reply_to":"x","args":{"job":[1,2]}}',
    ]
    topics = [
        t.node_telemetry("intruder"),
        t.node_status("ghost"),
        t.coordinator_command("submit"),
        t.coordinator_command("cancel"),
        t.node_heartbeat("f1"),
        f"deepedge/{cluster}/cmd/coordinator/DROP",
    ]
    async with MqttTransport(mosquitto.config()) as flooder:
        for i in range(10_000):
            await flooder.publish_raw(topics[i % len(topics)], payloads[i % len(payloads)])
    status = (await coordinator_request(loaded.config, "status", timeout_s=30)).result
    assert [n["node"] for n in status["nodes"]] == ["f1"]  # no intruder, no ghost became a member
    assert status["jobs"] == []
    assert procs[0].proc.poll() is None


REAL_WORKER = [sys.executable, "-m", "deepedge.training.worker"]


async def train_real_job(
    mosquitto: MosquittoBroker,
    watcher: MqttTransport,
    tmp: Path,
    cluster: str,
    procs: list[NodeProc],
    nodes: list[str],
    job: str,
    fault: Any,
) -> None:
    """Coordinator + daemons running the real worker; submit a 2-epoch job on 2,400 generated
    images; once it trains, ``fault(procs, watcher)`` strikes; the job must complete with every
    sample of every epoch trained exactly once."""
    from deepedge.testing.workers import make_tensor_dataset
    from deepedge.training import verify_accounting

    t = Topics(cluster)
    data = make_tensor_dataset(tmp / "d.pt", 2400, size=16)
    loaded = await cluster_up(mosquitto, watcher, tmp, cluster, procs, nodes, worker=REAL_WORKER)
    out = tmp / "out"
    progress = await watcher.subscribe(t.job_progress(job))
    hbs = await watcher.subscribe(t.all_nodes("heartbeat"))
    spec = {
        "job": job,
        "model": "cnn-small",
        "dataset": str(data),
        "output": str(out),
        "epochs": 2,
        "global_batch": 60,
        "learning_rate": 0.02,
        "dataset_size": 2400,
    }
    await coordinator_request(loaded.config, "submit", spec)
    await wait_for(hbs, lambda m: m.job == job and m.step >= 5, 60)
    await fault(procs, watcher)
    done = await wait_for(progress, lambda m: isinstance(m, Progress) and m.state in ("completed", "failed"), 240)
    assert done.state == "completed", done.message
    assert done.generation >= 2
    assert verify_accounting(out, 2400, 2) == {"ok": True, "missing": 0, "duplicated": 0, "samples": 4800}


@pytest.mark.slow
async def test_real_training_end_to_end_with_a_node_killed(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    """A node daemon (and so its board's membership) SIGKILLed mid-job: re-plan without it."""

    async def kill_node(procs: list[NodeProc], watcher: MqttTransport) -> None:
        next(p for p in procs if p.node == "r2").proc.send_signal(signal.SIGKILL)

    await train_real_job(mosquitto, watcher, tmp_path, cluster, procs, ["r1", "r2", "r3"], "e2e", kill_node)


@pytest.mark.slow
async def test_a_crashed_worker_process_is_restarted_and_the_job_completes(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    """SIGKILL of a worker process (its node stays up): the survivors report lost peers, the
    coordinator re-plans, the daemon restarts the worker, which joins the new generation."""
    from deepedge.transport import Requester

    async def kill_worker(procs: list[NodeProc], watcher: MqttTransport) -> None:
        t = Topics(cluster)
        async with Requester(watcher, t, timeout_s=5) as rpc:
            pid = (await rpc.request(t.node_command("w2", "status"))).result["workers"]["crash"]["pid"]
        os.kill(pid, signal.SIGKILL)

    await train_real_job(mosquitto, watcher, tmp_path, cluster, procs, ["w1", "w2"], "crash", kill_worker)


@pytest.mark.slow
async def test_a_frozen_board_is_declared_dead_and_the_survivors_resume_within_10_s(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp_path: Path, cluster: str, procs: list[NodeProc]
) -> None:
    """A silent failure: the daemon and worker of one board SIGSTOPped, so no connection closes
    and nothing more is sent (as when its network is cut). The coordinator declares it dead on
    missed heartbeats and re-plans; the survivors abandon their hung all-reduce for the new
    generation instead of waiting for gloo's timeout; the job completes, every sample once."""
    from deepedge.transport import Requester

    frozen: list[int] = []
    timing: dict[str, float] = {}

    async def freeze_board(procs: list[NodeProc], watcher: MqttTransport) -> None:
        t = Topics(cluster)
        async with Requester(watcher, t, timeout_s=5) as rpc:
            pid = (await rpc.request(t.node_command("z2", "status"))).result["workers"]["frozen"]["pid"]
        hbs = await watcher.subscribe(t.all_nodes("heartbeat"))
        daemon = next(p for p in procs if p.node == "z2").proc.pid
        os.killpg(pid, signal.SIGSTOP)
        os.kill(daemon, signal.SIGSTOP)
        frozen.extend([pid, daemon])
        struck = time.monotonic()
        await wait_for(hbs, lambda m: m.job == "frozen" and m.generation >= 2 and m.state == "training", 30)
        timing["resumed"] = time.monotonic() - struck

    try:
        await train_real_job(mosquitto, watcher, tmp_path, cluster, procs, ["z1", "z2", "z3"], "frozen", freeze_board)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert timing["resumed"] < 10, timing  # the goal for a silent failure; gloo alone would take 10 s
