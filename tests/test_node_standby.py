"""The standby worker (``deepedge.node._standby``): a real worker started ahead imports torch in
the idle class and waits; a job's supervisor takes it instead of starting a process; one that
exits early is logged and given up on after three; a profile ends one that still imports; the
daemon's first birth comes once its standby is ready, and its death (SIGKILL) ends the standby
too."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from deepedge.broker_schemas import NodeBirth, Topics
from deepedge.node import WorkerSupervisor
from deepedge.node._standby import MAX_EARLY_EXITS, StandbyWorker
from deepedge.transport import MqttTransport, Requester
from deepedge.worker_protocol import STANDBY_READY
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import WORKER, NodeProc, start_node
from tests.helpers.wait import wait_for
from tests.test_node_supervisor import make_plan

REAL_WORKER = [sys.executable, "-m", "deepedge.training.worker"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _torch_loaded(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


async def _until(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def test_a_standby_imports_torch_ahead_in_the_idle_class_and_ends_when_its_stdin_closes() -> None:
    cpu = sorted(os.sched_getaffinity(0))[0]
    standby = StandbyWorker(REAL_WORKER, cpus=(cpu,), nice=10)
    await standby.arm()
    pid = standby.pid
    assert pid is not None and standby.started == 1
    try:
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getaffinity(pid) == {cpu}
        assert not standby.ready
        await _until(lambda: standby.ready, 90)  # it says so once torch is imported ...
        assert _torch_loaded(pid)  # ... before any plan came
        await asyncio.sleep(0.5)
        assert standby.pid == pid  # and waits for one, with no time limit
        assert standby.take(["another", "command"]) is None and standby.pid == pid
        # the daemon's death closes its stdin: the standby ends by itself
        assert standby.proc is not None and standby.proc.stdin is not None
        standby.proc.stdin.close()
        async with asyncio.timeout(15):
            assert await standby.proc.wait() == 2
        assert standby.pid is None and standby.take(REAL_WORKER) is None
    finally:
        await standby.close()
    assert not _alive(pid)


async def test_a_job_takes_the_standby_instead_of_starting_a_worker(tmp_path: Path) -> None:
    standby = StandbyWorker(WORKER)
    await standby.arm()
    pid = standby.pid
    assert pid is not None
    reports = []
    sup = WorkerSupervisor(WORKER, "j", reports.append, standby=standby.take)
    task = asyncio.create_task(sup.run())
    try:
        sup.update(make_plan(out=tmp_path))
        await _until(lambda: bool(reports), 20)
        assert sup.pid == pid  # the standby, not a new process
        assert standby.taken == 1 and standby.pid is None and standby.proc is None
        assert standby.take(WORKER) is None  # taken once only
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await standby.close()
    assert not _alive(pid)


async def test_standbys_that_exit_early_are_logged_and_given_up_after_three() -> None:
    standby = StandbyWorker(["sh", "-c", "echo 'cannot import torch: boom' >&2; exit 3"])
    with capture_logs() as logs:
        for _ in range(MAX_EARLY_EXITS + 2):
            await standby.arm()
            if standby.proc is not None:
                await standby.proc.wait()
    exited = [e for e in logs if e["event"] == "worker.standby_exited"]
    assert [e["in_a_row"] for e in exited] == list(range(1, MAX_EARLY_EXITS + 1))
    assert all(e["why"] == "cannot import torch: boom" and e["exit_code"] == 3 for e in exited)
    assert standby.disabled and standby.started == MAX_EARLY_EXITS
    assert [e["event"] for e in logs].count("worker.standby_disabled") == 1


async def test_a_profile_ends_a_standby_that_still_imports_not_a_ready_one() -> None:
    importing = StandbyWorker(["sh", "-c", "sleep 60"])
    ready = StandbyWorker(["sh", "-c", f"echo 'some chatter'; echo '{STANDBY_READY}'; sleep 60"])
    try:
        for s in (importing, ready):
            await s.arm()
        await _until(lambda: ready.ready, 10)
        pids = importing.pid, ready.pid
        assert pids[0] is not None and pids[1] is not None
        for s in (importing, ready):
            await s.yield_to_measurement()
        assert importing.pid is None and not _alive(pids[0])
        assert ready.pid == pids[1]
        await importing.arm()  # held back while the profile starts
        assert importing.pid is None and importing.started == 1
    finally:
        for s in (importing, ready):
            await s.close()


async def test_waiting_for_a_standby_ends_when_none_can_come() -> None:
    never = StandbyWorker(["sh", "-c", "exit 0"])
    never.disabled = True
    t0 = time.monotonic()
    await never.wait_ready(10)  # given up on: at once
    idle = StandbyWorker(["sh", "-c", "exit 0"])
    await idle.wait_ready(0.3)  # never started: the timeout
    assert time.monotonic() - t0 < 2


@pytest.mark.mosquitto
async def test_the_daemon_keeps_a_standby_while_idle_and_its_sigkill_ends_it(
    mosquitto: MosquittoBroker, watcher: MqttTransport, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    t = Topics(cluster)
    status = await watcher.subscribe(t.node_status("n1"))
    # (at nice 0, not in the idle class: the import is not starved by whatever else this machine runs)
    node = start_node(
        tmp_path,
        mosquitto.url,
        cluster,
        "n1",
        worker=REAL_WORKER,
        node_extra="worker_nice = 0\nstandby_worker = true\nstandby_checker = true",
    )
    nodes.append(node)
    await wait_for(status, lambda m: isinstance(m, NodeBirth), 90)

    def started(kind: str) -> list[int]:
        return [int(e["pid"]) for e in node.log_events() if e.get("event") == f"{kind}.standby_started"]

    # the first standbys (worker, pre-flight checker) start after the torch probe, and the first
    # birth waits until both are ready
    pids = [started("worker")[0], started("preflight")[0]]
    async with Requester(watcher, t, timeout_s=5) as rpc:
        shown = (await rpc.request(t.node_command("n1", "status"))).result
    for pid, key in zip(pids, ("standby_worker", "standby_checker"), strict=True):
        assert shown[key] == {"pid": pid, "ready": True, "started": 1, "taken": 0, "disabled": False}
    for pid, kind in zip(pids, ("worker", "preflight"), strict=True):
        ready = [e for e in node.log_events() if e.get("event") == f"{kind}.standby_ready"]
        assert [e["pid"] for e in ready] == [pid] and 0 < float(ready[0]["import_s"]) < 60
        assert _alive(pid) and _torch_loaded(pid)
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(10)
    for pid in pids:
        await _until(lambda pid=pid: not _alive(pid), 20)  # type: ignore[misc]
