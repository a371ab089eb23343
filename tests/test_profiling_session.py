"""A real, short interference profiling session on a board, over MQTT: a node daemon, the real
LC app (``deepedge.demo.lc_app``) reporting to it, real stress-ng stressors and the real training
step code; the session, the fit and the knowledge base on the operator's side."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from deepedge.bench._interference import evaluate
from deepedge.broker_schemas import Event, LatencyReport, NodeBirth, Topics
from deepedge.config import BrokerConfig, ClusterConfig, Config
from deepedge.ops import CommandError
from deepedge.profiling import KnowledgeBase, Run, versions_key
from deepedge.profiling._design import Space
from deepedge.profiling._remote import profile_interference
from deepedge.profiling._surrogate import cross_validate, fit
from deepedge.transport import MqttTransport, Received, Requester
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import NodeProc, start_node
from tests.helpers.wait import wait_for

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("stress-ng") is None, reason="needs stress-ng"),
    pytest.mark.timeout(300),
]


def _stressors() -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["name", "status"])
        if (p.info["name"] or "").startswith("stress-ng") and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


async def test_a_short_profiling_session_measures_fits_and_stores_honestly(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("p1"))
    latency = await watcher.subscribe(t.node_latency("p1"))
    events = await watcher.subscribe(t.events("p1"))
    n = start_node(tmp_path, mosquitto.url, cluster, "p1", lc_apps={"det": 200.0}, latency_window_s=5)
    nodes.append(n)
    birth = await wait_for(status, lambda m: isinstance(m, NodeBirth), 30)
    cpu = sorted(os.sched_getaffinity(0))[0]
    lc = subprocess.Popen(
        [sys.executable, "-m", "deepedge.demo.lc_app", "--app", "det", "--socket", str(n.socket), "--frames", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    config = Config(cluster=ClusterConfig(name=cluster), broker=BrokerConfig(url=mosquitto.url, connect_timeout_s=5))
    kb_path = tmp_path / "knowledge.db"
    try:
        async with Requester(watcher, t, timeout_s=10) as rpc:
            deadline = time.monotonic() + 60
            while True:  # the LC app reports (it imports torch first)
                st = (await rpc.request(t.node_command("p1", "status"))).result
                if st["lc_apps"].get("det", {}).get("count"):
                    break
                assert time.monotonic() < deadline, st
                await asyncio.sleep(0.5)
            # bad arguments are typed errors before anything runs
            for bad in ({"interference": True, "app": "nope"}, {"interference": True, "cpu": 2}):
                reply = await rpc.request(t.node_command("p1", "profile"), bad)
                assert not reply.ok and reply.error is not None and reply.error.code in ("not_found", "bad_args")
            # the GPU stressor only where the board trains on a GPU (this one trains on its CPU,
            # or has not said yet where: its torch probe may still run), and its status says so
            assert st["profile"]["stressors"] == ["cpu", "cache", "mem", "io"], st["profile"]
            reply = await rpc.request(t.node_command("p1", "profile"), {"interference": True, "gpu": 0.5})
            assert not reply.ok and reply.error is not None and reply.error.code == "bad_args", reply
            assert "no GPU to stress" in reply.error.message, reply
        # an app the board does not have: said before anything is designed, run or stored
        with pytest.raises(CommandError, match="no LC app 'nope'") as refused:
            await profile_interference(config, "p1", kb_path, app="nope", budget=7, adaptive=1, seconds=1.0)
        assert refused.value.exit_code == 69 and not kb_path.exists()
        lines: list[str] = []
        result = await profile_interference(
            config,
            "p1",
            kb_path,
            budget=7,
            adaptive=1,
            seconds=1.0,
            space=Space(rate_min=20, rate_max=50),
            log=lines.append,
        )
        # two held-out runs of a 3-stressor mix, measured the same way
        async with Requester(watcher, t, timeout_s=120) as rpc:
            held = []
            for u in (0.0, 0.8):
                args = {
                    "interference": True,
                    "seconds": 1.0,
                    "intensity": u,
                    "rate": 30.0,
                    "cpu": 0.4,
                    "cache": 0.4,
                    "mem": 0.4,
                }
                reply = await rpc.request(t.node_command("p1", "profile"), args)
                assert reply.ok, reply
                r = Run.from_dict(reply.result["run"])
                held.append(Run.from_dict(r.to_dict() | {"phase": "heldout", "scenario": "cpu+cache+mem"}))
        # the board's latency reports said they were the profile's (the coordinator learns
        # nothing from them), and say so no longer once a window has passed without a run
        await wait_for(latency, lambda m: isinstance(m, LatencyReport) and m.profiling, 10)
        await wait_for(latency, lambda m: isinstance(m, LatencyReport) and not m.profiling, 20)
        # each run is an event `deepedge logs -f` shows (a session was silent there)
        said = []
        while not events._queue.empty():  # (what arrived so far: the events came before the reports)
            item = await events.get(0)
            if isinstance(item, Received) and isinstance(item.message, Event) and item.message.event == "profile.run":
                said.append(item.message)
        assert len(said) == 9 and all("det: u " in e.message and "-> p95 " in e.message for e in said), said
    finally:
        lc.terminate()
        lc.wait(10)
    assert not _stressors(), "stress-ng left running"
    runs = result.runs
    assert len(runs) == 7 and sum(r.phase == "adaptive" for r in runs) == 1
    assert all(r.count > 0 and r.p95_ms > 0 for r in runs), runs
    for r in runs:  # what was achieved, not what was asked: close for the training and the rate
        if r.asked.intensity >= 0.2:
            assert abs(r.intensity - r.asked.intensity) < 0.2, r
        assert 0.5 * r.asked.rate < r.rate < 1.5 * r.asked.rate, r
    stressed = [r for r in runs if r.asked.mix() != "none"]
    assert stressed and any(max(r.cache, r.mem, r.io, r.cpu_stress) > 0 for r in stressed), stressed
    # the machine's CPU pressure over each run: at least the LC app, and the training where it ran
    assert all(r.runnable > 0 for r in runs) and all(0 <= r.psi <= 1 for r in runs), runs
    assert any("Latin-hypercube runs of a 1215-run grid" in line for line in lines), lines
    assert any(line.endswith("; stressors cpu, cache, mem, io") for line in lines), lines  # no GPU here
    # the knowledge base holds the design, the runs and the model, under the board's key
    kb = KnowledgeBase(kb_path)
    [summary] = kb.profiles()
    assert summary.key.device_model == birth.device_model and summary.key.app == "det"
    assert summary.key.versions == versions_key(birth.software) and summary.runs == 7
    shown = kb.show(summary.id)
    assert shown is not None and shown["model"]["kind"] == result.surrogate.kind
    assert {c["kind"] for c in shown["model"]["candidates"]} == {"loglinear", "gbm", "gp", "linear"}
    assert len(shown["design"]) == 7
    # reported honestly: the stored cross-validated error is the one the stored runs give
    again = cross_validate(result.surrogate.kind, kb.runs(summary.id))
    assert shown["model"]["cv"]["median_ape"] == pytest.approx(again.median_ape)
    # the held-out error of runs the model never saw
    chosen, figures, _ = evaluate(kb.runs(summary.id) + held, Space(rate_min=20, rate_max=50))
    f = next(f for f in figures if f.kind == chosen)
    y = np.array([r.p95_ms for r in held])
    pred = fit(chosen, kb.runs(summary.id)).median_ms([r.features() for r in held])
    assert f.median_ape == pytest.approx(float(np.median(np.abs(pred - y) / y)))
    assert set(f.per_scenario) == {"cpu+cache+mem"}
    # the cap table the coordinator will plan with comes from the upper quantile
    table, _key = kb.table(birth.device_model, "det", versions_key(birth.software)) or (None, None)
    assert table is not None and table.q == 0.95
    assert all(u >= m for u, m in zip(table.upper, table.median, strict=True))
