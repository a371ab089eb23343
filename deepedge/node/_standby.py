"""The standby worker: one training worker the node daemon starts ahead of a job, while the
board is idle, so that a job's start does not wait for the worker's imports and its LC apps do
not pay for them while the job starts (docs/node.md, "Standby worker").

A worker spends its first seconds importing torch: about 2 s of CPU on the 2-vCPU VM, 5 s of
wall time in the idle scheduling class while two LC apps run, and more on a board's eMMC. A
standby (``python -m deepedge.training.worker --standby``) does that import in the idle class,
says so on stdout ("worker: standby ready") and waits on stdin. The next job's supervisor takes
it instead of starting a process (same command, same CPUs and priority); it holds the memory of
an imported torch meanwhile. Off unless ``node.standby_worker = true``: in the demo a job
started this much sooner made its LC apps miss more at the start (docs/node.md).

- The first standby starts as soon as the daemon's torch probe has answered, and the daemon's
  first birth waits for it (at most STANDBY_BIRTH_WAIT_S): its import is part of the daemon's
  start, before the board is online and anything measures its LC apps.
- Later ones start once the board has been idle IDLE_BEFORE_S: no job, pre-flight check or
  profile running.
- A profile that starts while a standby still imports ends it (the import would be measured as
  interference); another starts once the board is idle.

The same class keeps the standby pre-flight checker (``kind="preflight"``: ``python -m
deepedge.training.preflight --standby``, ``node.standby_checker``), which the next job's check
takes (``deepedge.node._preflight``); its log events are ``preflight.standby_*``.

A standby that exits by itself (a broken torch, say) is logged with its last stderr line and
started again at the next idle time; after ``MAX_EARLY_EXITS`` such exits in a row the daemon
stops trying (the job's own worker then fails the usual way, with its reason). The daemon's
death closes the standby's stdin, which ends it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence

import structlog

from deepedge import compat
from deepedge.node._supervisor import starting_priority
from deepedge.worker_protocol import STANDBY_READY

__all__ = ["IDLE_BEFORE_S", "MAX_EARLY_EXITS", "STANDBY_BIRTH_WAIT_S", "STANDBY_FLAG", "StandbyWorker"]

log = structlog.get_logger("deepedge.node")

STANDBY_FLAG = "--standby"
IDLE_BEFORE_S = 2.0  # the board idle this long before a standby is started (but the first)
STANDBY_BIRTH_WAIT_S = 30.0  # the daemon's first birth waits this long for the first standby
MAX_EARLY_EXITS = 3  # standbys that exited before a job took them, in a row, before it stops trying


class StandbyWorker:
    """At most one worker process started ahead for ``command`` (the node's worker command)."""

    def __init__(
        self, command: Sequence[str], cpus: Sequence[int] = (), nice: int = 0, comm_nice: int = 0, kind: str = "worker"
    ) -> None:
        self.command = list(command)
        self.kind = kind  # "worker", or "preflight" for the pre-flight checker's standby (its log events' prefix)
        self._cpus = set(cpus)
        self._nice = nice
        self._comm_nice = comm_nice
        self.proc: asyncio.subprocess.Process | None = None
        self.early_exits = 0
        self.disabled = False
        self.started = 0  # standbys started
        self._ready: asyncio.Task[bool] | None = None  # reads the standby's "ready" line
        self._held_until = 0.0  # (monotonic) no standby is started before this: a profile runs
        self.taken = 0  # ... of which a job's supervisor took

    @property
    def pid(self) -> int | None:
        """The standby's pid while it lives (None when there is none)."""
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def ready(self) -> bool:
        """Whether the standby has done its imports (said so on stdout) and waits."""
        t = self._ready
        return self.pid is not None and t is not None and t.done() and not t.cancelled() and t.result()

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait at most ``timeout_s`` until a standby is ready, or has exited, or is given up on
        (also while none has been started yet)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.disabled:
            proc = self.proc
            if self.ready or (proc is not None and proc.returncode is not None):
                return
            await asyncio.sleep(0.1)

    async def yield_to_measurement(self) -> None:
        """A measurement (a profile) is about to start: end a standby that is still importing,
        and start none for IDLE_BEFORE_S (the profile's own run then keeps the board busy)."""
        self._held_until = time.monotonic() + IDLE_BEFORE_S
        if self.pid is not None and not self.ready:
            log.info(f"{self.kind}.standby_ended", pid=self.pid, why="a profile starts while it imports")
            await self.close()

    async def arm(self) -> None:
        """Start a standby if there is none (and it has not been given up on, nor is held back
        by a profile that just started)."""
        asked = time.monotonic()
        if self.disabled or self.pid is not None or asked < self._held_until:
            return
        if self.proc is not None:  # it exited before any job took it
            self._stop_watching()
            await self._exited(self.proc)
            self.proc = None
            if self.disabled:
                return
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                STANDBY_FLAG,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, killed as one
                limit=1 << 20,
            )
        except (OSError, ValueError) as exc:
            self.disabled = True
            log.error(f"{self.kind}.standby_disabled", command=self.command, error=f"cannot start it: {exc}")
            return
        starting_priority(proc.pid, self._cpus, self._nice, self._comm_nice, standby="yes")
        self.proc = proc
        if self._held_until > asked:  # a profile started while it was being started: not now
            await self.close()
            return
        self._ready = asyncio.create_task(_said_ready(proc, time.monotonic(), self.kind), name="standby-ready")
        self.started += 1
        log.info(f"{self.kind}.standby_started", pid=proc.pid)

    async def _exited(self, proc: asyncio.subprocess.Process) -> None:
        why = "no output"
        with contextlib.suppress(Exception):
            assert proc.stderr is not None
            async with compat.timeout(1):
                tail = (await proc.stderr.read())[-(1 << 16) :].decode(errors="replace").strip().splitlines()
            why = tail[-1][:500] if tail else why
        self.early_exits += 1
        log.warning(
            f"{self.kind}.standby_exited", pid=proc.pid, exit_code=proc.returncode, why=why, in_a_row=self.early_exits
        )
        if self.early_exits >= MAX_EARLY_EXITS:
            self.disabled = True
            log.error(f"{self.kind}.standby_disabled", error=f"{self.early_exits} standbys in a row exited: {why}")

    def take(self, command: Sequence[str]) -> asyncio.subprocess.Process | None:
        """The standby for a job's worker of ``command`` (the caller owns it from now on; it may
        still be importing: the plan waits in its stdin), or None: there is none, or it was
        started for another command."""
        if list(command) != self.command or self.pid is None:
            return None
        proc, self.proc = self.proc, None
        assert proc is not None
        self._stop_watching()  # the supervisor reads its stdout from now on
        self.taken += 1
        self.early_exits = 0
        log.info(f"{self.kind}.standby_taken", pid=proc.pid)
        return proc

    async def unusable(self, proc: asyncio.subprocess.Process, why: str) -> None:
        """A standby just taken (``proc``) could not be used (its taker could not give it the
        priority it needs): ended, not counted as taken, and no more standbys, since every one
        would fail the same way."""
        self.taken -= 1
        self.disabled = True
        log.error(f"{self.kind}.standby_disabled", error=why)
        await _end(proc)

    def _stop_watching(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()  # a pending readline consumes nothing when cancelled
        self._ready = None

    async def close(self) -> None:
        """Kill the standby (its whole process group) and reap it."""
        self._stop_watching()
        proc, self.proc = self.proc, None
        if proc is not None:
            await _end(proc)


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill a standby's whole process group and reap it (at most 5 s)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        async with compat.timeout(5):
            await proc.wait()


async def _said_ready(proc: asyncio.subprocess.Process, started: float, kind: str) -> bool:
    """Whether the standby's first stdout line is the worker's STANDBY_READY."""
    assert proc.stdout is not None
    for _ in range(100):  # lines before it (a library's chatter) are logged, not lost
        try:
            line = await proc.stdout.readline()
        except (ValueError, OSError):  # a line over the stream's limit, a broken pipe: not ready
            return False
        if not line:
            return False
        text = line.decode(errors="replace").strip()
        if text == STANDBY_READY:
            log.info(f"{kind}.standby_ready", pid=proc.pid, import_s=round(time.monotonic() - started, 2))
            return True
        log.info(f"{kind}.standby_stdout", pid=proc.pid, line=text[:300])
    return False
