"""``deepedge bench failover``: 3 real gloo workers, one SIGKILLed mid-epoch; the time from the
kill to detection and to the next completed step, and the steps of work lost — for deepedge's
in-place recovery and, in the same run, for torchrun's elastic agent (restart every worker, load
the last checkpoint)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from deepedge.broker_schemas import JobSpec
from deepedge.config import CoordinatorConfig
from deepedge.testing.workers import first_report, make_plan, make_tensor_dataset, start_worker, stop_all

__all__ = ["FailoverResult", "failover_markdown", "run_failover_bench"]

BATCH, EPOCHS, SAMPLES, KILL_AT, CKPT_EVERY = 60, 2, 6000, 20, 10


@dataclass
class FailoverResult:
    system: str
    detected_s: float | None
    resumed_s: float | None
    steps_lost: int | None
    completed: bool
    note: str = ""


def _deepedge(tmp: Path, data: Path, failure: str) -> FailoverResult:
    """``failure``: "kill" (SIGKILL: the worker's TCP connections close at once) or "freeze"
    (SIGSTOP: nothing closes and nothing more is sent, as when a board's network is cut)."""
    spec = JobSpec(
        model="cnn-small",
        dataset=str(data),
        output=str(tmp / f"deepedge-{failure}"),
        epochs=EPOCHS,
        global_batch=BATCH,
        learning_rate=0.02,
        seed=3,
    )
    workers = [start_worker(n) for n in ("a", "b", "c")]
    try:
        plan1 = make_plan("bench", 1, {"a": 20, "b": 20, "c": 20}, spec)
        for w in workers:
            w.send(plan1)
        workers[1].wait_report(lambda r: r.state == "training" and r.step >= KILL_AT, 300)
        struck = time.monotonic()
        workers[1].proc.send_signal(signal.SIGKILL if failure == "kill" else signal.SIGSTOP)
        survivors = [workers[0], workers[2]]
        if failure == "kill":
            # The coordinator re-plans on the first survivor's "recovering" report (milliseconds:
            # tests/test_coordinator_integration.py); the bench plays that re-plan at once.
            _, first_lost = first_report(survivors, lambda r: r.state == "recovering", 60)
            detected = first_lost - struck
        else:
            # Nothing reports a frozen board: the coordinator declares it dead after
            # missed_heartbeats x node_interval_s of silence from its daemon (defaults 3 x 1 s).
            # The bench plays that rule; tests/test_coordinator_integration.py runs the real one.
            defaults = CoordinatorConfig()
            time.sleep(max(0.0, struck + defaults.missed_heartbeats * defaults.node_interval_s - time.monotonic()))
            detected = time.monotonic() - struck
        plan2 = make_plan("bench", 2, {"a": 30, "c": 30}, spec)
        for w in survivors:
            w.send(plan2)
        firsts = [w.wait_report(lambda r: r.generation == 2 and r.state == "training", 60) for w in survivors]
        resumed = max(w.arrived[w.reports.index(r)] for w, r in zip(survivors, firsts, strict=True)) - struck
        completed_before = max(r.step for w in workers for r in w.reports if r.generation == 1)
        resumed_from = min(r.step for r in firsts) - 1
        for w in survivors:
            w.wait_report(lambda r: r.state == "done", 600)
        name = "SIGKILL" if failure == "kill" else "frozen (SIGSTOP)"
        return FailoverResult(f"deepedge, worker {name}", detected, resumed, completed_before - resumed_from, True)
    finally:
        stop_all(workers)


def _last_steps(out: Path) -> list[dict[str, float]]:
    rows = []
    for path in out.glob("rank*.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _torchrun(tmp: Path, data: Path, limit_s: float = 120.0, extra_env: dict[str, str] | None = None) -> FailoverResult:
    out = tmp / "torchrun"
    out.mkdir()
    log = (tmp / "torchrun.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=3",
        "--max-restarts=3",
        "--monitor-interval=0.1",
        "-m",
        "deepedge.bench._torchrun_train",
        str(data),
        str(out),
        str(BATCH),
        str(EPOCHS),
        str(CKPT_EVERY),
        "0.02",
    ]
    env = {**os.environ, "LOGLEVEL": "INFO", **(extra_env or {})}  # the agent's decisions go to the log
    agent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while max((r["step"] for r in _last_steps(out)), default=0) < KILL_AT:
            if agent.poll() is not None or time.monotonic() > deadline:
                return FailoverResult("torchrun elastic", None, None, None, False, "did not reach the kill step")
            time.sleep(0.05)
        at_kill = max(r["step"] for r in _last_steps(out))
        wall_kill = time.time()
        os.kill(int((out / "pid1").read_text()), signal.SIGKILL)
        deadline = time.monotonic() + limit_s
        while True:
            again = [r for r in _last_steps(out) if r["restart"] >= 1]
            if again:
                first = min(again, key=lambda r: r["t"])
                resumed = first["t"] - wall_kill
                lost = int(at_kill - (first["step"] - 1))
                break
            if agent.poll() is not None or time.monotonic() > deadline:
                text = (tmp / "torchrun.log").read_text(errors="replace").splitlines()
                restarts = sum("will restart worker group" in line for line in text)
                errors = [line for line in text if line.startswith("RuntimeError: Gloo connectFullMesh")]
                why = errors[-1][:220] if errors else "see the agent's log"
                note = (
                    f"no step completed within {limit_s:g} s of the kill: the agent restarted the worker group "
                    f"{restarts} time(s), and each time the restarted workers failed in init_process_group: {why}"
                )
                return FailoverResult("torchrun elastic", None, None, None, False, note)
            time.sleep(0.05)
        agent.wait(600)
        completed = agent.returncode == 0
        return FailoverResult(
            f"torchrun elastic (checkpoint every {CKPT_EVERY} steps, restart all)", None, resumed, lost, completed
        )
    finally:
        _kill_tree(agent)
        log.close()


def _kill_tree(agent: subprocess.Popen[bytes]) -> None:
    """The agent and every worker it started: its workers run in sessions of their own, so
    killing the agent's process group alone left them running."""
    import psutil

    try:
        family = psutil.Process(agent.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if agent.poll() is None:
        os.killpg(agent.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    agent.wait(10)


def run_failover_bench() -> list[FailoverResult]:
    with tempfile.TemporaryDirectory(prefix="deepedge-failover-") as tmp_s:
        tmp = Path(tmp_s)
        data = make_tensor_dataset(tmp / "d.pt", SAMPLES, size=16)
        return [_deepedge(tmp, data, "kill"), _deepedge(tmp, data, "freeze"), _torchrun(tmp, data)]


def failover_markdown(results: list[FailoverResult], command: str) -> str:
    def f(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        f"Command: `{command}`  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} cores. "
        f"3 gloo workers on this machine, cnn-small on {SAMPLES:,} generated 16x16 images, global batch {BATCH}, "
        f"{EPOCHS} epochs; after step {KILL_AT} one worker is SIGKILLed (its TCP connections close at once) or "
        "frozen with SIGSTOP (nothing closes and nothing more is sent: a board whose network is cut). deepedge: "
        "the next plan generation is played by the bench — at once on the first survivor's `recovering` report "
        "after a kill (the coordinator's re-plan takes milliseconds), and, for the frozen worker, after the "
        "coordinator's death rule of 3 missed 1 s heartbeats; survivors abandon a pending all-reduce when the new "
        "plan arrives and re-form in place. torchrun: its elastic agent restarts every worker, which reloads the "
        "last checkpoint.",
        "",
        "| system | failure → detected (s) | failure → next completed step (s) | steps of work lost "
        "| job completed | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {f(r.detected_s)} | {f(r.resumed_s)} | {'-' if r.steps_lost is None else r.steps_lost} "
            f"| {'yes' if r.completed else 'no'} | {r.note} |"
        )
    lines += [
        "",
        "Goals: resumed <= 3 s after a kill and <= 10 s after a silent failure, <= 1 step lost, faster than "
        "torchrun's restart.",
        "",
    ]
    return "\n".join(lines)
