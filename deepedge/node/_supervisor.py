"""Supervision of one job's training worker on this node.

The supervisor starts the worker as a subprocess in its own process group, writes every plan
generation addressed to this node to its stdin (one JSON line, ``deepedge.worker_protocol``),
reads its reports from stdout, restarts it with exponential backoff if it crashes, and kills the
whole process group when told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

import msgspec
import structlog

from deepedge.backoff import Backoff
from deepedge.clock import Clock, RealClock
from deepedge.worker_protocol import COMM_THREADS, PlanForWorker, WorkerReport, decode_report_line, encode_line

__all__ = ["SupervisorState", "WorkerSupervisor"]

log = structlog.get_logger("deepedge.node")


class SupervisorState(StrEnum):
    IDLE = "idle"  # no plan for this node
    RUNNING = "running"
    BACKOFF = "backoff"  # crashed; waiting to restart
    FINISHED = "finished"  # the worker exited 0: its part of the job is done


class WorkerSupervisor:
    def __init__(
        self,
        command: Sequence[str],
        job: str,
        on_report: Callable[[WorkerReport], None] | None = None,
        *,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        stop_grace_s: float = 5.0,
        env: dict[str, str] | None = None,
        cpus: Sequence[int] = (),
        nice: int = 0,
        comm_nice: int | None = None,
    ) -> None:
        self.command = list(command)
        self.job = job
        self._on_report = on_report
        self._clock = clock or RealClock()
        self._backoff = backoff or Backoff(base=1.0, cap=30.0, floor=0.5)
        self._grace = stop_grace_s
        self._env = env
        self._cpus = set(cpus)
        self._nice = nice
        self._comm_nice = nice if comm_nice is None else comm_nice
        self._idle_start = False
        self._plan: PlanForWorker | None = None
        self._wake = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self.state = SupervisorState.IDLE
        self.restarts = 0
        self.last_report: WorkerReport | None = None
        self.last_exit: int | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def generation(self) -> int | None:
        return self._plan.plan.generation if self._plan is not None else None

    def update(self, plan: PlanForWorker) -> None:
        """Run (or steer) the worker with this plan generation."""
        if self._plan is not None and plan.plan.generation < self._plan.plan.generation:
            return
        self._plan = plan
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(encode_line(plan))
        self._wake.set()

    async def stop(self) -> None:
        """Stop the worker (its whole process group) and forget the plan."""
        self._plan = None
        self._wake.set()
        await self._kill()
        self.state = SupervisorState.IDLE

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self._signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self._grace):
                await proc.wait()
        except TimeoutError:
            log.warning("worker.kill", job=self.job, pid=proc.pid, after_s=self._grace)
        self._signal_group(proc.pid, signal.SIGKILL)  # also whatever the worker left behind
        await proc.wait()

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def run(self) -> None:
        """Supervise until cancelled; cancelling kills the worker."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                plan = self._plan
                if plan is None:
                    continue
                rc = await self._run_once(plan)
                if self._plan is None:  # stopped on purpose
                    continue
                if rc == 0:
                    log.info("worker.finished", job=self.job, generation=plan.plan.generation)
                    self.state = SupervisorState.FINISHED
                    self._plan = None
                    continue
                self.restarts += 1
                self.state = SupervisorState.BACKOFF
                delay = self._backoff.next_delay()
                log.warning(
                    "worker.crashed", job=self.job, exit_code=rc, restart_in_s=round(delay, 2), restarts=self.restarts
                )
                await self._clock.sleep(delay)
                self._wake.set()
        finally:
            await self._kill()

    async def _run_once(self, plan: PlanForWorker) -> int:
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as one
            env=self._env,
            limit=1 << 20,
        )
        self._proc = proc
        # Before the interpreter has started any thread of its own (threads inherit these): its
        # CPUs, and the idle scheduling class until it trains, so that its start (imports, data
        # loading) takes only CPU time nothing else wants; then nice (see _training_priority).
        self._idle_start = False
        try:
            if self._cpus:
                os.sched_setaffinity(proc.pid, self._cpus)
            if self._nice:
                os.sched_setscheduler(proc.pid, os.SCHED_IDLE, os.sched_param(0))
                self._idle_start = True
        except OSError as exc:
            log.warning(
                "worker.priority_failed", job=self.job, cpus=sorted(self._cpus), nice=self._nice, error=str(exc)
            )
        self._allow_comm_nice(proc.pid)
        self.state = SupervisorState.RUNNING
        log.info("worker.started", job=self.job, pid=proc.pid, generation=plan.plan.generation)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(encode_line(self._plan or plan))
        readers = [
            asyncio.create_task(self._read_reports(proc.stdout)),
            asyncio.create_task(self._read_stderr(proc.stderr)),
        ]
        try:
            rc = await self._wait_exit(proc)
        finally:
            for task in readers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    async with asyncio.timeout(2):
                        await task
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.close()
        self.last_exit = rc
        return rc

    async def _wait_exit(self, proc: asyncio.subprocess.Process) -> int:
        """The worker's exit code. asyncio's ``wait()`` also waits for the pipes to close, which a
        leftover child holding them would delay forever: once the worker itself has exited, its
        process group is killed so nothing it started outlives it."""
        waiter = asyncio.ensure_future(proc.wait())
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=0.5)
                if not waiter.done() and proc.returncode is not None:
                    self._signal_group(proc.pid, signal.SIGKILL)
            return waiter.result()
        finally:
            waiter.cancel()

    async def _read_reports(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            try:
                report = decode_report_line(line)
            except (msgspec.DecodeError, ValueError):
                log.info("worker.stdout", job=self.job, line=line[:300].decode(errors="replace").rstrip())
                continue
            self.last_report = report
            if self._idle_start and report.state == "training":
                self._idle_start = False
                self._training_priority()
            self._backoff.reset()
            if self._on_report is not None:
                self._on_report(report)

    def _allow_comm_nice(self, pid: int) -> None:
        """Let the worker set the communication threads of each group it forms to ``comm_nice``
        without privilege (RLIMIT_NICE; a no-op for a root worker; refused to a daemon that may
        not raise the limit — those threads then keep ``nice``)."""
        if self._comm_nice >= self._nice:
            return
        limit = 20 - self._comm_nice
        with contextlib.suppress(OSError, ValueError):
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NICE)
            if soft < limit:
                resource.prlimit(pid, resource.RLIMIT_NICE, (limit, max(limit, hard)))

    def _training_priority(self) -> None:
        """From the idle class to normal scheduling, every thread of the worker: its
        communication threads (``COMM_THREADS``) at ``comm_nice``, the others at ``nice``."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        except OSError:
            return
        for tid in tids:
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{proc.pid}/task/{tid}/comm").read_text().strip()
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, self._comm_nice if name.startswith(COMM_THREADS) else self._nice)

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            log.info("worker.stderr", job=self.job, line=line[:500].decode(errors="replace").rstrip())
