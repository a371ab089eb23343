"""The worker supervisor's crash accounting (real short-lived processes, a fake clock for the
backoff), its state table, the why of an exit, and the daemon's reporting of it (in-memory
broker)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from deepedge.broker_schemas import (
    BEING_PROFILED,
    Assignment,
    Event,
    Heartbeat,
    JobSpec,
    Plan,
    decode,
)
from deepedge.config import Config, NodeConfig, TrainingConfig
from deepedge.node import NodeDaemon, SupervisorState, WorkerSupervisor
from deepedge.node._daemon import CrashEvents
from deepedge.node._supervisor import IllegalTransition, WorkerExit, crash_reason
from deepedge.testing import FakeClock
from deepedge.transport import FakeBroker, FakeTransport
from deepedge.worker_protocol import PlanForWorker


def make_plan(generation: int = 1, job: str = "j", out: Path = Path("/tmp/out")) -> PlanForWorker:
    plan = Plan(
        session="s",
        job=job,
        generation=generation,
        ts=time.time(),
        spec=JobSpec(
            model="crash", dataset=str(out / "data"), output=str(out), epochs=1, global_batch=4, learning_rate=0.1
        ),
        rendezvous_host="127.0.0.1",
        rendezvous_port=29500,
        backend="gloo",
        assignments=(
            Assignment(node="n0", rank=0, share=2, batch_offset=0, intensity_cap=1.0),
            Assignment(node="n1", rank=1, share=2, batch_offset=2, intensity_cap=1.0),
        ),
        total_steps=10,
    )
    return PlanForWorker(node="n1", plan=plan, assignment=plan.assignments[1])


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


# A worker that reports a training step read from a counter file (+1 per run, or the same each
# run), then exits 3; after ``runs`` runs it exits 0.
STEPPER = """
import sys, pathlib
from deepedge.worker_protocol import WorkerReport, encode_line
counter = pathlib.Path(sys.argv[1]); n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
if n + 1 >= int(sys.argv[3]):
    sys.exit(0)
step = n + 1 if sys.argv[2] == "progress" else 1
sys.stdin.readline()
sys.stdout.buffer.write(encode_line(WorkerReport(job="j", generation=1, rank=1, step=step)))
sys.stdout.flush()
print("worker: crashed: ValueError: run %d" % (n + 1), file=sys.stderr)
sys.exit(3)
"""


async def until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


class Run:
    """A supervisor running in a task, with its exits collected."""

    def __init__(self, command: list[str], limit: int = 3) -> None:
        self.exits: list[WorkerExit] = []
        self.clock = FakeClock()
        self.sup = WorkerSupervisor(command, "j", on_exit=self.exits.append, crash_limit=limit, clock=self.clock)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Run:
        self.task = asyncio.create_task(self.sup.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        await self.sup.stop()
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


# ---- the why of an exit ---------------------------------------------------------------------------


def test_crash_reason_prefers_the_last_error_line() -> None:
    traceback = [
        "Traceback (most recent call last):",
        '  File "worker.py", line 3, in <module>',
        "FileNotFoundError: [Errno 2] No such file or directory: '/proc/x'",
        "worker: crashed: FileNotFoundError: [Errno 2] No such file or directory: '/proc/x'",
        "",
    ]
    assert crash_reason(1, traceback) == "crashed: FileNotFoundError: [Errno 2] No such file or directory: '/proc/x'"
    assert crash_reason(1, traceback[:3]) == "FileNotFoundError: [Errno 2] No such file or directory: '/proc/x'"
    assert crash_reason(1, ["torch.OutOfMemoryError: CUDA out of memory", "cleanup done"]).startswith("torch.OutOf")
    # a TrainingError's reason (exit 2) is a plain "worker: ..." line
    assert crash_reason(2, ["worker: resuming", "worker: dataset /d: no such file"]) == "dataset /d: no such file"
    assert crash_reason(3, ["just a line", "the last line"]) == "the last line"  # no error line: the last one
    assert crash_reason(3, []) == "exit code 3"
    assert crash_reason(-9, ["progress 10%"]) == "killed by SIGKILL"
    assert crash_reason(-11, ["RuntimeError: bad"]) == "killed by SIGSEGV (last error: RuntimeError: bad)"


def test_crash_loop_summary_names_the_generations() -> None:
    ex = WorkerExit(
        job="j", generation=4, rank=1, world_size=2, exit_code=3, why="boom", kind="crash_loop",
        crashes=3, first_generation=2, restarts=2,
    )  # fmt: skip
    assert ex.summary() == "crash loop: 3 crashes of generations 2-4, exit code 3: boom"
    one = WorkerExit(
        job="j", generation=4, rank=1, world_size=2, exit_code=3, why="boom", kind="crash_loop",
        crashes=3, first_generation=4, restarts=2,
    )  # fmt: skip
    assert one.summary() == "crash loop: 3 crashes of generation 4, exit code 3: boom"


def test_state_table_refuses_a_move_it_does_not_list() -> None:
    sup = WorkerSupervisor(["true"], "j")
    sup._move(SupervisorState.RUNNING)
    with pytest.raises(IllegalTransition):
        sup._move(SupervisorState.RUNNING)
    sup._move(SupervisorState.FINISHED)
    sup._move(SupervisorState.IDLE)
    with pytest.raises(ValueError):
        WorkerSupervisor(["true"], "j", crash_limit=0)


# ---- crash accounting -----------------------------------------------------------------------------


async def test_a_crash_loop_stops_at_the_limit_with_the_why() -> None:
    script = "echo 'worker: crashed: RuntimeError: always' >&2; echo noise >&2; exit 3"
    async with Run(sh(script), limit=3) as r:
        r.sup.update(make_plan())
        await until(lambda: r.sup.state is SupervisorState.FAILED)
        await asyncio.sleep(0.3)  # no restart follows
        assert [e.kind for e in r.exits] == ["crash", "crash", "crash_loop"]
        assert [e.crashes for e in r.exits] == [1, 2, 3]
        assert r.sup.restarts == 2 and len(r.clock.sleeps) == 2  # two backoff waits, on the fake clock
        last = r.exits[-1]
        assert (last.exit_code, last.why, last.generation, last.rank, last.world_size) == (
            3, "crashed: RuntimeError: always", 1, 1, 2
        )  # fmt: skip
        assert last.summary() == "crash loop: 3 crashes of generation 1, exit code 3: crashed: RuntimeError: always"
        assert r.sup.failure == last and r.sup.last_exit == 3 and list(r.sup.stderr_tail)[-1] == "noise"
        # the same generation again (a retained plan seen after a reconnect): no new attempt
        r.sup.update(make_plan(1))
        await asyncio.sleep(0.3)
        assert len(r.exits) == 3
        # a newer generation is a new attempt, counted afresh
        r.sup.update(make_plan(2))
        await until(lambda: len(r.exits) == 6)
        assert [e.crashes for e in r.exits[3:]] == [1, 2, 3] and r.exits[-1].generation == 2


async def test_a_worker_command_that_cannot_start_is_a_crash_not_a_dead_task(tmp_path: Path) -> None:
    async with Run([str(tmp_path / "no-such-worker")], limit=2) as r:
        r.sup.update(make_plan())
        await until(lambda: r.sup.state is SupervisorState.FAILED)
        assert [(e.kind, e.exit_code) for e in r.exits] == [("crash", 127), ("crash_loop", 127)]
        assert "cannot start the worker command" in r.exits[-1].why and "no-such-worker" in r.exits[-1].why
        assert r.task is not None and not r.task.done()  # supervision goes on
    not_exec = tmp_path / "not-executable"
    not_exec.write_text("#!/bin/sh\n")
    async with Run([str(not_exec)], limit=1) as r:
        r.sup.update(make_plan())
        await until(lambda: r.sup.state is SupervisorState.FAILED)
        assert [(e.kind, e.exit_code) for e in r.exits] == [("crash_loop", 126)]
        assert "Permission denied" in r.exits[0].why


async def test_exit_2_is_not_restarted() -> None:
    async with Run(sh("echo 'worker: dataset /d: no such file or folder' >&2; exit 2"), limit=3) as r:
        r.sup.update(make_plan())
        await until(lambda: r.sup.state is SupervisorState.FAILED)
        await asyncio.sleep(0.5)
        assert [(e.kind, e.exit_code) for e in r.exits] == [("failed", 2)]
        assert r.exits[0].why == "dataset /d: no such file or folder" and not r.exits[0].reported_failed
        assert r.sup.restarts == 0 and r.clock.sleeps == []


async def test_progress_between_crashes_is_not_a_loop_and_no_progress_is(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", STEPPER]
    async with Run([*cmd, str(tmp_path / "a"), "progress", "6"], limit=2) as r:
        r.sup.update(make_plan())
        await until(lambda: r.sup.state is SupervisorState.FINISHED)  # 5 crashes, each after a new step
        assert [e.crashes for e in r.exits] == [1, 1, 1, 1, 1] and r.sup.restarts == 5
    async with Run([*cmd, str(tmp_path / "b"), "same", "6"], limit=2) as r:
        r.sup.update(make_plan())
        await until(lambda: r.sup.state is SupervisorState.FAILED)  # the same step every time
        assert [e.kind for e in r.exits] == ["crash", "crash_loop"]
        assert r.exits[-1].why == "crashed: ValueError: run 2" and r.exits[-1].step == 1


async def test_a_newer_generation_during_backoff_does_not_reset_the_count() -> None:
    """In a job of several nodes the coordinator re-plans after each crash: a worker that
    crashes at once in every generation is still a crash loop."""
    r = Run(sh("exit 3"), limit=3)
    r.clock = r.sup._clock = HeldClock()  # type: ignore[assignment]
    async with r:
        r.sup.update(make_plan(1))
        for gen in (2, 3):
            await until(lambda g=gen: len(r.exits) == g - 1)  # type: ignore[misc]
            r.sup.update(make_plan(gen))  # the coordinator's re-plan, while it waits to restart
            r.clock.release.put_nowait(None)  # type: ignore[attr-defined]
        await until(lambda: r.sup.state is SupervisorState.FAILED)
        assert [(e.generation, e.crashes) for e in r.exits] == [(1, 1), (2, 2), (3, 3)]
        assert r.exits[-1].summary() == "crash loop: 3 crashes of generations 1-3, exit code 3: exit code 3"


class HeldClock(FakeClock):
    """A fake clock whose sleeps end only when the test releases them."""

    def __init__(self) -> None:
        super().__init__()
        self.release: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.release.get()


def test_crash_events_are_rate_limited_per_job_with_a_count() -> None:
    clock = FakeClock()
    limit = CrashEvents(clock, interval_s=5.0)
    assert limit.allow("a") == 0
    clock.advance(1)
    assert limit.allow("a") is None and limit.allow("a") is None
    assert limit.allow("b") == 0  # per job
    clock.advance(4.5)
    assert limit.allow("a") == 2  # the next one says how many were left out
    clock.advance(1)
    assert limit.allow("a") is None


# ---- the daemon's reports (in-memory broker) ------------------------------------------------------


def daemon_config(tmp: Path, command: list[str], limit: int = 3) -> Config:
    return Config(
        node=NodeConfig(
            worker_command=tuple(command),
            worker_crash_limit=limit,
            latency_socket=str(tmp / "lat.sock"),
            profile_path="",
        ),
        training=TrainingConfig(models=("crash",), data_roots=(str(tmp),), output_root=str(tmp)),
    )


def published(broker: FakeBroker, kind: type) -> list:  # type: ignore[type-arg]
    out = []
    for topic, payload, _, _ in broker.log:
        if payload:
            msg = decode(topic, payload).message
            if isinstance(msg, kind):
                out.append(msg)
    return out


async def test_the_daemon_reports_crashes_and_the_crash_loop(tmp_path: Path) -> None:
    broker = FakeBroker()
    script = "echo 'worker: crashed: OSError: [Errno 28] No space left on device' >&2; exit 1"
    async with FakeTransport(broker, client_id="n1") as transport:
        daemon = NodeDaemon(
            daemon_config(tmp_path, sh(script), limit=4), transport, node="n1", session="s", collectors=[],
            clock=FakeClock(),
        )  # fmt: skip
        await daemon.act_on(make_plan(out=tmp_path).plan)
        await until(lambda: any(e.event == "worker.crash_loop" for e in published(broker, Event)))
        await asyncio.sleep(0.1)
        events = published(broker, Event)
        crashed = [e for e in events if e.event == "worker.crashed"]
        (loop,) = [e for e in events if e.event == "worker.crash_loop"]
        why = "crashed: OSError: [Errno 28] No space left on device"
        assert 1 <= len(crashed) < 4 and crashed[0].fields["suppressed"] == 0  # rate-limited
        assert crashed[0].level == "warning" and crashed[0].fields["why"] == why and crashed[0].job == "j"
        assert loop.level == "error" and loop.node == "n1" and loop.job == "j"
        assert loop.fields["exit_code"] == 1 and loop.fields["why"] == why and loop.fields["crashes"] == 4
        (hb,) = published(broker, Heartbeat)
        assert hb.state == "failed" and (hb.job, hb.generation, hb.rank, hb.world_size) == ("j", 1, 1, 2)
        assert hb.message == f"crash loop: 4 crashes of generation 1, exit code 1: {why}"
        w = daemon.status()["workers"]["j"]
        assert (w["state"], w["restarts"], w["crashes"], w["last_exit"], w["last_why"]) == ("failed", 3, 4, 1, why)
        # failed heartbeats repeat until a plan without this node arrives; then it is idle
        without = msgspec.structs.replace(
            make_plan(2, out=tmp_path).plan,
            assignments=(Assignment(node="n0", rank=0, share=4, batch_offset=0, intensity_cap=1.0),),
        )
        await daemon.act_on(without)
        assert daemon.workers["j"].state is SupervisorState.IDLE
        await daemon.shutdown()


async def test_a_supervision_task_that_dies_is_logged_and_reported(tmp_path: Path) -> None:
    broker = FakeBroker()
    async with FakeTransport(broker, client_id="n1") as transport:
        daemon = NodeDaemon(
            daemon_config(tmp_path, sh("sleep 30")), transport, node="n1", session="s", collectors=[], clock=FakeClock()
        )

        async def broken(self: WorkerSupervisor) -> None:
            await asyncio.sleep(0)
            raise KeyError("a bug")

        with capture_logs() as logs, pytest.MonkeyPatch.context() as mp:
            mp.setattr(WorkerSupervisor, "run", broken)
            await daemon.act_on(make_plan(out=tmp_path).plan)
            await until(lambda: any(e.event == "worker.supervision_failed" for e in published(broker, Event)))
            await until(lambda: bool(published(broker, Heartbeat)))
        (ev,) = [e for e in published(broker, Event) if e.event == "worker.supervision_failed"]
        assert ev.level == "error" and "KeyError" in ev.message and ev.job == "j"
        (hb,) = published(broker, Heartbeat)
        assert hb.state == "failed" and "supervision on n1 failed: KeyError" in hb.message
        assert any(e["event"] == "worker.supervision_failed" and e["log_level"] == "error" for e in logs)
        assert daemon.workers["j"].state is SupervisorState.FAILED
        # a newer plan gets a new supervisor (the dead task is not reused)
        await daemon.act_on(make_plan(2, out=tmp_path).plan)
        await until(lambda: daemon.workers["j"].state is SupervisorState.RUNNING)
        await daemon.shutdown()


async def test_a_board_being_profiled_refuses_a_jobs_pre_flight_and_plan_and_takes_the_next_after(
    tmp_path: Path,
) -> None:
    """A worker started beside a profile would load the LC apps with the profile's stressors and
    the job at once, and the profile would measure the job: while a profile or an interference run
    goes on, the board refuses the job's pre-flight and its plan, with the reason. Before, it
    started the worker."""
    broker = FakeBroker()
    async with FakeTransport(broker, client_id="n1") as transport:
        daemon = NodeDaemon(
            daemon_config(tmp_path, sh("sleep 30")), transport, node="n1", session="s", collectors=[], clock=FakeClock()
        )
        plan = make_plan(out=tmp_path).plan
        async with daemon.profiler._point_lock:  # an interference run is being measured
            check = await daemon.preflight("j", plan.spec)
            assert not check["ok"] and check["check"] == "profiling" and "being profiled" in check["reason"]
            await daemon.act_on(plan)
        assert "j" not in daemon.workers or daemon.workers["j"].state is SupervisorState.IDLE
        (hb,) = published(broker, Heartbeat)
        assert hb.state == "failed" and hb.message == f"n1 refused: {BEING_PROFILED}"
        assert any(e.event == "job.refused" and e.message == BEING_PROFILED for e in published(broker, Event))
        await daemon.act_on(make_plan(2, out=tmp_path).plan)  # the run is over: the next plan is run
        await until(lambda: daemon.workers["j"].state is SupervisorState.RUNNING)
        await daemon.shutdown()
