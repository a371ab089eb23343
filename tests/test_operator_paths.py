"""What an operator sees, with real processes (a coordinator, node daemons, the real worker and
the real pre-flight, the CLI): a bad job fails at once with the reason, and the reason reaches
``deepedge status`` and ``deepedge logs``; a job whose worker crash-loops on one board finishes
on the others and ``status`` says why that board was left out."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deepedge.broker_schemas import CoordinatorStatus, Event, NodeBirth, Topics
from deepedge.config import load_config
from deepedge.testing.workers import make_tensor_dataset
from deepedge.transport import MqttTransport
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import NodeProc, job_args, start_coordinator, start_node
from tests.helpers.wait import coordinator_lists, wait_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

REAL_WORKER = [sys.executable, "-m", "deepedge.training.worker"]
EXE = shutil.which("deepedge", path=str(Path(sys.executable).parent)) or "deepedge"


def cli(tmp: Path, broker: MosquittoBroker, cluster: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPEDGE_")}
    env |= {"DEEPEDGE_BROKER_URL": broker.url, "DEEPEDGE_CLUSTER_NAME": cluster}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=90, cwd=tmp)


async def up(
    mosquitto: MosquittoBroker, watcher: MqttTransport, tmp: Path, cluster: str, procs: list[NodeProc], **nodes: Any
) -> None:
    t = Topics(cluster)
    coord = await watcher.subscribe(t.coordinator_status())
    births = await watcher.subscribe(t.all_nodes("status"))
    procs.append(start_coordinator(tmp, mosquitto.url, cluster))
    await wait_for(coord, lambda m: isinstance(m, CoordinatorStatus) and m.state == "online", 30)
    for name, kw in nodes.items():
        procs.append(start_node(tmp, mosquitto.url, cluster, name, **kw))
    seen: set[str] = set()
    while seen != set(nodes):
        seen.add((await wait_for(births, lambda m: isinstance(m, NodeBirth), 30)).node)
    config = load_config(None, environ={"DEEPEDGE_BROKER_URL": mosquitto.url, "DEEPEDGE_CLUSTER_NAME": cluster})
    await coordinator_lists(config.config, nodes)


async def test_bad_jobs_fail_at_once_and_the_reason_reaches_status_and_logs(
    mosquitto: MosquittoBroker, watcher: MqttTransport, procs: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    data = make_tensor_dataset(tmp_path / "d.pt", 96, size=8)
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    events = await watcher.subscribe(Topics(cluster).all_events())
    await up(mosquitto, watcher, tmp_path, cluster, procs, n1={"worker": REAL_WORKER})

    def submit(job: str, **kw: Any) -> tuple[subprocess.CompletedProcess[str], float]:
        args = job_args(job, tmp_path, model="cnn-small", dataset=str(data), dataset_size=96, global_batch=24) | kw
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
        t0 = time.monotonic()
        return cli(tmp_path, mosquitto, cluster, "submit", *flags), time.monotonic() - t0

    cases = {
        "bad-model": ({"model": "evil.nets:build"}, "training.model_modules"),
        "no-dataset": ({"dataset": str(tmp_path / "missing")}, "no such file"),
        "outside": ({"dataset": "/etc/passwd"}, "outside training.data_roots"),
        "unwritable": ({"output": str(tmp_path / "blocker" / "out")}, "output"),
        "absurd": ({"epochs": 10**12}, "coordinator.max_total_steps"),
    }
    for job, (kw, needle) in cases.items():
        r, took = await asyncio.to_thread(submit, job, **kw)
        assert r.returncode == 69 and needle in r.stderr, (job, r.returncode, r.stderr)
        assert took < 20, (job, took)  # the pre-flight answers in seconds, no worker started
    status = await asyncio.to_thread(cli, tmp_path, mosquitto, cluster, "status", "--json")
    jobs = {j["job"]: j for j in json.loads(status.stdout)["jobs"]}
    for job, (_, needle) in cases.items():
        if job != "absurd":  # refused before it was a job: only the submit says why
            assert jobs[job]["state"] == "failed" and needle in json.dumps(jobs[job]), jobs[job]
    seen: list[Event] = []
    with pytest.raises(TimeoutError):
        await events.first(lambda m: isinstance(m, Event) and bool(seen.append(m)), 1.0)
    excluded = {e.job for e in seen if e.event == "node.excluded"}
    assert {"bad-model", "no-dataset", "outside", "unwritable"} <= excluded, [(e.event, e.job) for e in seen]

    # a symlink planted where the worker writes: the job starts, the worker refuses, the job fails
    out = tmp_path / "planted"
    (out / "accounting").mkdir(parents=True)
    (tmp_path / "victim").write_text("keep")
    os.symlink(tmp_path / "victim", out / "accounting" / "n1.jsonl")
    r, _ = await asyncio.to_thread(submit, "planted", output=str(out))
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(cli, tmp_path, mosquitto, cluster, "status", "--json")
        job = next(j for j in json.loads(status.stdout)["jobs"] if j["job"] == "planted")
        if job["state"] == "failed":
            break
        await asyncio.sleep(1)
    assert job["state"] == "failed" and "is a symlink: refused" in json.dumps(job), job
    assert (tmp_path / "victim").read_text() == "keep"
    logs = await asyncio.to_thread(cli, tmp_path, mosquitto, cluster, "status")
    assert "is a symlink: refused" in logs.stdout  # the table shows it too


async def test_a_job_whose_worker_crash_loops_on_one_board_finishes_on_the_others(
    mosquitto: MosquittoBroker, watcher: MqttTransport, procs: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    crash = [
        sys.executable,
        "-c",
        "import sys; print('worker: crashed: OSError: the GPU fell off', file=sys.stderr); sys.exit(3)",
    ]
    events = await watcher.subscribe(Topics(cluster).all_events())
    await up(
        mosquitto,
        watcher,
        tmp_path,
        cluster,
        procs,
        good={"stand_in_preflight": True},
        bad={"stand_in_preflight": True, "worker": crash, "node_extra": "worker_crash_limit = 2"},
    )
    r = await asyncio.to_thread(
        cli,
        tmp_path,
        mosquitto,
        cluster,
        "submit",
        *[f"--{k.replace('_', '-')}={v}" for k, v in job_args("j1", tmp_path, model="test:finish:60").items()],
    )
    assert r.returncode == 0, r.stderr
    loop = await wait_for(events, lambda m: isinstance(m, Event) and m.event == "worker.crash_loop", 60)
    assert loop.node == "bad" and "the GPU fell off" in loop.message
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = json.loads((await asyncio.to_thread(cli, tmp_path, mosquitto, cluster, "status", "--json")).stdout)
        (job,) = status["jobs"]
        if job["state"] in ("completed", "failed"):
            break
        await asyncio.sleep(1)
    assert job["state"] == "completed", job
    assert "crash loop" in job["excluded"]["bad"] and "the GPU fell off" in job["excluded"]["bad"], job
    assert list(job["participants"]) == ["good"]
    table = (await asyncio.to_thread(cli, tmp_path, mosquitto, cluster, "status")).stdout
    assert "bad left out: crash loop" in table
