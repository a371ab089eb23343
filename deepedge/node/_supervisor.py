"""Supervision of one job's training worker on this node.

The supervisor starts the worker as a subprocess in its own process group, writes every plan
generation addressed to this node to its stdin (one JSON line, ``deepedge.worker_protocol``),
reads its reports from stdout, keeps the last lines of its stderr, restarts it with exponential
backoff if it crashes, gives up after ``node.worker_crash_limit`` crashes without progress, and
kills the whole process group when told to stop. Every exit that is not a success is described
(a ``WorkerExit``: exit code, why, counts) to the daemon, which reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shlex
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from deepedge import compat
from deepedge.backoff import Backoff
from deepedge.clock import Clock, RealClock
from deepedge.compat import StrEnum
from deepedge.worker_protocol import COMM_THREADS, PlanForWorker, WorkerReport, decode_report_line, encode_line

__all__ = [
    "STDERR_LINES",
    "STDERR_LINE_CHARS",
    "IllegalTransition",
    "SupervisorState",
    "WorkerExit",
    "WorkerSupervisor",
    "crash_reason",
]

log = structlog.get_logger("deepedge.node")

STDERR_LINES = 20  # the worker's last stderr lines kept (for the "why" of an exit)
STDERR_LINE_CHARS = 500  # each cut to this
EXIT_TRAINING_ERROR = 2  # the worker's TrainingError: it reported ``failed``; a restart fails the same way
EXIT_NOT_FOUND = 127  # the worker command could not be started: no such file (as a shell says)
EXIT_NOT_STARTED = 126  # ... or not executable / any other reason it could not be started


def starting_priority(pid: int, cpus: set[int], nice: int, comm_nice: int, **context: str) -> bool:
    """A just-started worker's CPUs, and the idle scheduling class until it trains (when
    ``nice``), set before its interpreter has started any thread of its own (threads inherit
    them), so that its start (imports, data loading) takes only CPU time nothing else wants; and
    leave to let it set its communication threads to ``comm_nice`` without privilege
    (RLIMIT_NICE; a no-op for a root worker; refused to a daemon that may not raise the limit —
    those threads then keep ``nice``). True if it is in the idle class."""
    idle = False
    try:
        if cpus:
            os.sched_setaffinity(pid, cpus)
        if nice:
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
            idle = True
    except OSError as exc:
        log.warning("worker.priority_failed", cpus=sorted(cpus), nice=nice, error=str(exc), **context)
    if comm_nice < nice:
        limit = 20 - comm_nice
        with contextlib.suppress(OSError, ValueError):
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NICE)
            if soft < limit:
                resource.prlimit(pid, resource.RLIMIT_NICE, (limit, max(limit, hard)))
    return idle


class SupervisorState(StrEnum):
    """The supervisor of one job's worker on this node.

    ======== ============================================== =====================================
    state    meaning                                        goes to
    ======== ============================================== =====================================
    IDLE     no plan (never had one, or stopped)            RUNNING, BACKOFF, FAILED (a start
                                                            attempt: started, or not startable)
    RUNNING  a worker process runs                          BACKOFF (crash), FAILED (exit 2, or
                                                            the crash limit), FINISHED (exit 0)
    BACKOFF  crashed; waiting to restart it                 RUNNING, BACKOFF, FAILED (the
                                                            restart: started, or not startable)
    FINISHED the worker exited 0: its part is done          RUNNING, BACKOFF, FAILED (a newer
                                                            generation: a start attempt)
    FAILED   no restart: exit 2 (a TrainingError), the      RUNNING, BACKOFF, FAILED (a newer
             crash limit, or supervision broke; the daemon  generation: a new attempt with the
             reports it until a plan without this node      crash count reset)
    ======== ============================================== =====================================

    Every state may also go to IDLE (stopped: a plan without this node, a cleared plan,
    ``stop-worker``, shutdown) and to FAILED (the supervision task itself ended with an error).
    Any other move is a bug and raises :class:`IllegalTransition`.
    """

    IDLE = "idle"
    RUNNING = "running"
    BACKOFF = "backoff"
    FINISHED = "finished"
    FAILED = "failed"


_S = SupervisorState
_START = {_S.RUNNING, _S.BACKOFF, _S.FAILED}  # a start attempt: it runs, or could not be started
_TRANSITIONS: dict[SupervisorState, set[SupervisorState]] = {
    _S.IDLE: _START | {_S.IDLE},
    _S.RUNNING: {_S.BACKOFF, _S.FAILED, _S.FINISHED, _S.IDLE},
    _S.BACKOFF: _START | {_S.IDLE},
    _S.FINISHED: _START | {_S.IDLE},
    _S.FAILED: _START | {_S.IDLE},
}


class IllegalTransition(RuntimeError):
    """A supervisor state change that the table does not allow: a bug."""


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A worker that ended other than with success, as the daemon reports it."""

    job: str
    generation: int  # of the newest plan the worker had
    rank: int
    world_size: int
    exit_code: int  # negative: killed by that signal; 126/127: the command could not be started
    why: str  # its last error line, else its last stderr line, else the exit code
    # "crash": it will be restarted; "crash_loop": the crash limit, no restart; "failed": exit 2
    # (a TrainingError), no restart
    kind: Literal["crash", "crash_loop", "failed"]
    crashes: int  # crashes counted toward the limit (since the last progress or new attempt)
    first_generation: int  # the generation of the first of them
    restarts: int  # restarts of this supervisor so far
    step: int = 0  # the last step the worker reported
    reported_failed: bool = False  # the worker itself reported ``failed`` (with ``why``)

    @property
    def final(self) -> bool:
        return self.kind != "crash"

    def summary(self) -> str:
        """One line: what the node says in its failed heartbeat and events."""
        if self.kind == "crash_loop":
            gens = (
                f"generation {self.generation}"
                if self.first_generation == self.generation
                else f"generations {self.first_generation}-{self.generation}"
            )
            return f"crash loop: {self.crashes} crashes of {gens}, exit code {self.exit_code}: {self.why}"
        return self.why


# A line that reads like an error: the worker's own last words (``worker: crashed: ...``), the
# last line of a Python traceback (``FileNotFoundError: ...``, ``torch.OutOfMemoryError: ...``),
# or anything that says error/fatal.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:|$)")
_ERROR_WORD = re.compile(r"\b(error|errno|fatal|panic|traceback)\b", re.IGNORECASE)


def _looks_like_error(line: str, exit_code: int) -> bool:
    if line.startswith("worker: crashed: ") or _EXCEPTION_LINE.match(line) or _ERROR_WORD.search(line):
        return True
    # a TrainingError's reason, printed just before exit 2
    return exit_code == EXIT_TRAINING_ERROR and line.startswith("worker: ")


def crash_reason(exit_code: int, stderr: Sequence[str]) -> str:
    """Why a worker exited ``exit_code``: the last of its ``stderr`` lines that looks like an
    error, else its last stderr line, else the exit code (or the signal that killed it)."""
    lines = [line.strip() for line in stderr if line.strip()]
    if exit_code < 0:
        try:
            killed = f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            killed = f"killed by signal {-exit_code}"
        error = next((x for x in reversed(lines) if _looks_like_error(x, exit_code)), None)
        return f"{killed} (last error: {_strip(error)})" if error else killed
    error = next((x for x in reversed(lines) if _looks_like_error(x, exit_code)), None)
    if error is not None:
        return _strip(error)
    return _strip(lines[-1]) if lines else f"exit code {exit_code}"


_LOG_EVENT = {"crash": "worker.crashed", "crash_loop": "worker.crash_loop", "failed": "worker.failed"}


def _strip(line: str) -> str:
    return line.removeprefix("worker: ")


class WorkerSupervisor:
    """One job's worker on this node.

    Crash accounting: a non-zero exit other than 2 is a crash. The crashes since the worker
    last made progress (a ``training`` report beyond the step it had reached at the previous
    crash) or since a new attempt (a newer generation after FAILED) are counted; at
    ``crash_limit`` of them it is not restarted again: FAILED, and ``on_exit`` says so. A newer
    generation does not reset the count: in a job of several nodes the coordinator re-plans after
    every crash, and a worker that crashes at once in every generation is still a crash loop.
    Exit 2 (a TrainingError: the worker already reported ``failed``) is never restarted.
    """

    def __init__(
        self,
        command: Sequence[str],
        job: str,
        on_report: Callable[[WorkerReport], None] | None = None,
        *,
        on_exit: Callable[[WorkerExit], None] | None = None,
        crash_limit: int = 3,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        stop_grace_s: float = 5.0,
        env: dict[str, str] | None = None,
        cpus: Sequence[int] = (),
        nice: int = 0,
        comm_nice: int | None = None,
        standby: Callable[[Sequence[str]], asyncio.subprocess.Process | None] | None = None,
    ) -> None:
        if crash_limit < 1:
            raise ValueError("crash_limit must be at least 1")
        self.command = list(command)
        self.job = job
        self._on_report = on_report
        self._on_exit = on_exit
        self.crash_limit = crash_limit
        self._clock = clock or RealClock()
        self._backoff = backoff or Backoff(base=1.0, cap=30.0, floor=0.5)
        self._grace = stop_grace_s
        self._env = env
        self._cpus = set(cpus)
        self._nice = nice
        self._comm_nice = nice if comm_nice is None else comm_nice
        self._standby = standby  # a worker started ahead for this command, if there is one
        self._idle_start = False
        self._plan: PlanForWorker | None = None
        self._halted = False  # FAILED: no start until a newer generation (or a stop)
        self._wake = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self.state = SupervisorState.IDLE
        self.restarts = 0
        self.last_report: WorkerReport | None = None
        self.last_exit: int | None = None
        self.last_why = ""
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)  # of the current (or last) run
        self.crashes = 0  # counted toward crash_limit
        self._first_crash_generation = 0
        self._high_step = -1  # the highest step reported
        self._step_at_crash = -1  # the highest step reported before the last counted crash
        self.failure: WorkerExit | None = None  # why it is FAILED

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def generation(self) -> int | None:
        return self._plan.plan.generation if self._plan is not None else None

    @property
    def current_plan(self) -> PlanForWorker | None:
        """The newest plan generation given (kept while FAILED, for the reports)."""
        return self._plan

    def _move(self, new: SupervisorState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise IllegalTransition(f"worker supervisor of job {self.job}: {self.state} -> {new}")
        self.state = new

    def update(self, plan: PlanForWorker) -> None:
        """Run (or steer) the worker with this plan generation."""
        current = self._plan.plan.generation if self._plan is not None else None
        if current is not None and plan.plan.generation < current:
            return
        if self._halted:
            if current is not None and plan.plan.generation <= current:
                return  # the plan it failed with: no new attempt
            self._halted = False  # a newer generation: a new attempt, counted afresh
            self._reset_crashes()
        self._plan = plan
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(encode_line(plan))
        self._wake.set()

    async def stop(self) -> None:
        """Stop the worker (its whole process group) and forget the plan."""
        self._plan = None
        self._halted = False
        self._reset_crashes()  # a later plan is a new attempt
        self._wake.set()
        await self._kill()
        self._move(SupervisorState.IDLE)

    def fail(self, failure: WorkerExit) -> None:
        """FAILED from outside (the daemon: its supervision task ended with an error)."""
        self._halted = True
        self.failure = failure
        self._move(SupervisorState.FAILED)

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self._signal_group(proc.pid, signal.SIGTERM)
        try:
            async with compat.timeout(self._grace):
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
                if plan is None or self._halted:
                    continue
                rc = await self._run_once(plan)
                if self._plan is None:  # stopped on purpose
                    continue
                if rc == 0:
                    log.info("worker.finished", job=self.job, generation=plan.plan.generation)
                    self._move(SupervisorState.FINISHED)
                    self._plan = None
                    continue
                if not self._exited(rc, self._plan):
                    continue  # FAILED: no restart
                self.restarts += 1
                delay = self._backoff.next_delay()
                log.warning(
                    "worker.restart", job=self.job, exit_code=rc, restart_in_s=round(delay, 2), restarts=self.restarts
                )
                await self._clock.sleep(delay)
                self._wake.set()
        finally:
            await self._kill()

    def _exited(self, rc: int, plan: PlanForWorker) -> bool:
        """Account for a non-zero exit; True if the worker is to be restarted."""
        report = self.last_report
        gen = plan.plan.generation
        reported = report is not None and report.state == "failed" and report.generation == gen
        if rc == EXIT_TRAINING_ERROR:
            why = report.message if reported and report is not None and report.message else None
            kind: Literal["crash", "crash_loop", "failed"] = "failed"
        else:
            why = None
            if self.crashes == 0:
                self._first_crash_generation = gen
            self.crashes += 1
            self._step_at_crash = self._high_step
            kind = "crash_loop" if self.crashes >= self.crash_limit else "crash"
        self.last_why = why or crash_reason(rc, self.stderr_tail)
        ex = WorkerExit(
            job=self.job,
            generation=gen,
            rank=plan.assignment.rank,
            world_size=len(plan.plan.assignments),
            exit_code=rc,
            why=self.last_why[:2000],
            kind=kind,
            crashes=self.crashes,
            first_generation=self._first_crash_generation if kind != "failed" else gen,
            restarts=self.restarts,
            step=max(0, self._high_step),
            reported_failed=reported,
        )
        log_fn = log.warning if kind == "crash" else log.error
        log_fn(_LOG_EVENT[kind], job=self.job, exit_code=rc, why=ex.why, crashes=self.crashes, generation=gen)
        if ex.final:
            self.failure = ex
            self._halted = True
            self._move(SupervisorState.FAILED)
        else:
            self._move(SupervisorState.BACKOFF)
        if self._on_exit is not None:
            self._on_exit(ex)
        return not ex.final

    def _reset_crashes(self) -> None:
        self.crashes = 0
        self.failure = None
        self._step_at_crash = self._high_step

    async def _spawn(self) -> asyncio.subprocess.Process | int:
        """The worker process, or the exit code that stands for "could not be started": the
        node's standby worker when it has one for this command (its imports done), else a new
        process."""
        if self._standby is not None and self._env is None and (proc := self._standby(self.command)) is not None:
            return proc
        try:
            return await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, killed as one
                env=self._env,
                limit=1 << 20,
            )
        except (OSError, ValueError) as exc:  # no such file, not executable, bad format, NUL in it
            line = f"cannot start the worker command {shlex.join(self.command)[:300]}: {exc}"
            self.stderr_tail.append(line[:STDERR_LINE_CHARS])
            log.error("worker.not_started", job=self.job, command=self.command, error=str(exc))
            return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_STARTED

    async def _run_once(self, plan: PlanForWorker) -> int:
        self.stderr_tail.clear()
        spawned = await self._spawn()
        if isinstance(spawned, int):
            self.last_exit = spawned
            return spawned
        proc = self._proc = spawned
        if self._plan is None:  # stopped while it was being started
            self._signal_group(proc.pid, signal.SIGKILL)
            return await proc.wait()
        # its CPUs and the idle class until it trains; then nice (see _training_priority). A
        # standby worker had them set when it started: setting them again changes nothing.
        self._idle_start = starting_priority(proc.pid, self._cpus, self._nice, self._comm_nice, job=self.job)
        self._move(SupervisorState.RUNNING)
        log.info("worker.started", job=self.job, pid=proc.pid, generation=plan.plan.generation)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        with contextlib.suppress(OSError, RuntimeError):  # it may be gone already
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
                    async with compat.timeout(2):
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
            if report.state == "training":
                if report.step > self._step_at_crash and self.crashes:
                    self.crashes = 0  # progress beyond where it crashed: not a loop
                self._high_step = max(self._high_step, report.step)
            if self._idle_start and report.state == "training":
                self._idle_start = False
                self._training_priority()
            self._backoff.reset()
            if self._on_report is not None:
                self._on_report(report)

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
            text = line[:STDERR_LINE_CHARS].decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            log.info("worker.stderr", job=self.job, line=text)
