"""The ``preflight`` command's work on the node: before a job's first plan, check on this board
what can be checked here and answer within a few seconds.

The board's policy (``[training]``) is checked here first, without torch. Then, with the
pre-flight cache on (``node.preflight_cache_s``), the torch-free checks and the cache's key, in a
thread: a job whose torch part passed here before is answered without a process. The rest needs
torch, which the daemon never imports: it runs ``python -m deepedge.training.preflight`` (one JSON
request on stdin: this node, the job, its spec, this board's own ``[training]``; one JSON line
back) on the training worker's CPUs and at its priority, killed (its whole process group) after
``node.preflight_timeout_s``. One preflight per job at a time; a second one of the same job while
the first runs is refused (``conflict``). At most ``MAX_CHECKERS`` checker processes run at once
on a board; more requests wait their turn (their time counts against the asker's timeout), so a
burst of submissions cannot start a process, and import torch, for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

import msgspec
import structlog

from deepedge import compat
from deepedge.broker_schemas import JobSpec
from deepedge.config import NodeConfig, TrainingConfig
from deepedge.job_policy import JobRefused, check_job
from deepedge.node._standby import StandbyWorker

__all__ = ["PREFLIGHT_MODULE", "PreflightAnswer", "PreflightBusy", "Preflights"]

log = structlog.get_logger("deepedge.node")

MAX_OUTPUT = 1 << 16  # bytes of the checker's stdout / stderr kept
PREFLIGHT_MODULE = "deepedge.training.preflight"
MAX_CHECKERS = 2  # checker processes at once on this board; more wait


def cached_answer(raw: bytes) -> tuple[dict[str, Any], int] | None:
    """The pre-flight cache's torch-free answer, imported only when a check
    asks for it: the daemon does not load deepedge.training at start."""
    from deepedge.training.preflight import cached_answer as answer

    return answer(raw)


class PreflightAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The checker's answer line (``deepedge.training.preflight``), as the daemon takes it."""

    ok: bool
    check: str = ""  # the check that failed
    reason: str = ""  # "node <id>: <check>: <why>"
    samples: int = 0
    classes: int = 0
    params: int = 0
    checkpoint_bytes: int = 0
    free_bytes: int = 0
    needed_bytes: int = 0
    seconds: float = 0.0  # the checker's own time, from reading the request to answering
    import_s: float = 0.0  # of which importing torch and the model registry
    cache: str = ""  # hit, stored, unwritable, uncacheable or off (node.preflight_cache_s)


_ANSWER = msgspec.json.Decoder(PreflightAnswer)


class PreflightBusy(Exception):
    """A preflight of this job is already running on this node."""


class Preflights:
    def __init__(self, node: str, cfg: NodeConfig, training: TrainingConfig) -> None:
        self.node = node
        self.cfg = cfg
        self.training = training
        self.running: dict[str, float] = {}  # job -> monotonic start
        self.done = 0
        self.checkers = 0  # processes running now (at most MAX_CHECKERS)
        self._slots: asyncio.Semaphore | None = None  # made in the daemon's loop, at first use
        self.standby: StandbyWorker | None = None  # a checker started ahead (node.standby_checker)

    def refusal(self, check: str, why: str, started: float) -> dict[str, Any]:
        return {
            "ok": False,
            "node": self.node,
            "check": check,
            "reason": f"node {self.node}: {check}: {why}"[:4000],
            "wall_s": round(time.monotonic() - started, 3),
        }

    async def run(self, job: str, spec: JobSpec) -> dict[str, Any]:
        """The reply's result: ``{"ok": true, ...figures}`` or ``{"ok": false, "check", "reason"}``.
        Raises PreflightBusy if this job's preflight is already running here."""
        if job in self.running:
            raise PreflightBusy(
                f"a preflight of job {job} is already running on {self.node} "
                f"(for {time.monotonic() - self.running[job]:.1f} s); ask again when it has answered"
            )
        started = time.monotonic()
        self.running[job] = started
        try:
            try:
                check_job(spec, self.training)  # torch-free and instant: no process for a refusal
            except JobRefused as exc:
                return self.refusal("policy", str(exc), started)
            cached = self.cfg.preflight_cache_s > 0 and bool(self.cfg.preflight_cache_path)
            ours = not self.cfg.preflight_command  # never in place of an operator's own checker
            request = self._request(job, spec, cached and ours)
            if self._slots is None:
                self._slots = asyncio.Semaphore(MAX_CHECKERS)
            async with self._slots:
                if cached and ours:
                    # deepedge's own checks, torch-free, in a thread: answered here, without a
                    # process, when the torch part is cached
                    try:
                        async with compat.timeout(self.cfg.preflight_timeout_s):
                            quick = await asyncio.to_thread(cached_answer, request)
                    except TimeoutError:
                        log.warning(
                            "preflight.timeout", job=job, timeout_s=self.cfg.preflight_timeout_s, part="torch-free"
                        )
                        return self.refusal(
                            "timeout",
                            f"the torch-free checks did not answer within {self.cfg.preflight_timeout_s:g} s "
                            "(node.preflight_timeout_s): a hung file system at the output or dataset?",
                            started,
                        )
                    if quick is not None:
                        return self._result(job, msgspec.convert(quick[0], PreflightAnswer), started)
                self.checkers += 1
                try:
                    return await self._checker(job, request, started)
                finally:
                    self.checkers -= 1
        finally:
            del self.running[job]
            self.done += 1

    def command(self) -> tuple[str, ...]:
        return self.cfg.preflight_command or (sys.executable, "-m", PREFLIGHT_MODULE)

    def _request(self, job: str, spec: JobSpec, cached: bool) -> bytes:
        """The checker's request: this node, the job, and this board's own policy and (for
        deepedge's own checker, with the cache on) its cache."""
        request: dict[str, Any] = {"node": self.node, "job": job, "spec": spec, "policy": self.training}
        if cached:
            request |= {"cache": self.cfg.preflight_cache_path, "cache_s": self.cfg.preflight_cache_s}
        return msgspec.json.encode(request)

    async def _checker(self, job: str, request: bytes, started: float) -> dict[str, Any]:
        timeout = self.cfg.preflight_timeout_s
        proc = await self._standby_checker(job)
        if proc is None:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.command(),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,  # its own process group, killed as one
                )
            except OSError as exc:
                return self.refusal("internal", f"cannot start the preflight checker: {exc}", started)
            try:
                # as the training worker runs: on its CPUs, at its priority (not in the idle class: it
                # must answer within seconds)
                if self.cfg.cpu_affinity:
                    os.sched_setaffinity(proc.pid, self.cfg.cpu_affinity)
                os.setpriority(os.PRIO_PROCESS, proc.pid, self.cfg.worker_nice)
            except OSError as exc:
                log.warning("preflight.priority_failed", job=job, error=str(exc))
        try:
            async with compat.timeout(timeout):
                out, err = await proc.communicate(request + b"\n")
        except TimeoutError:
            log.warning("preflight.timeout", job=job, timeout_s=timeout)
            return self.refusal(
                "timeout", f"the checks did not answer within {timeout:g} s (node.preflight_timeout_s)", started
            )
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        answer = _last_answer(out[-MAX_OUTPUT:])
        if answer is None:
            tail = err[-MAX_OUTPUT:].decode(errors="replace").strip().splitlines()
            why = tail[-1][:500] if tail else "no output"
            return self.refusal(
                "internal", f"the preflight checker exited {proc.returncode} without an answer: {why}", started
            )
        return self._result(job, answer, started)

    def _result(self, job: str, answer: PreflightAnswer, started: float) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": answer.ok, "node": self.node}
        if answer.ok:
            result.update(msgspec.structs.asdict(answer))
            del result["check"], result["reason"]
        else:
            result.update(check=answer.check, reason=answer.reason[:4000], seconds=answer.seconds)
        result["wall_s"] = round(time.monotonic() - started, 3)
        log.info(
            "preflight.done", job=job, ok=answer.ok, check=answer.check, cache=answer.cache, wall_s=result["wall_s"]
        )
        return result

    async def _standby_checker(self, job: str) -> asyncio.subprocess.Process | None:
        """The standby checker (its imports done, on the worker's CPUs), every thread of it moved
        out of the idle class to the worker's priority; None when there is no ready one. One that
        cannot be moved (a daemon whose RLIMIT_NICE does not allow ``worker_nice``) is ended, and
        no standby checker is started again: a process of its own checks, as without one."""
        standby = self.standby
        if standby is None or not standby.ready or (proc := standby.take(self.command())) is None:
            return None
        try:
            for tid in (int(t) for t in os.listdir(f"/proc/{proc.pid}/task")):
                try:  # the nice value first: leaving the idle class then needs only RLIMIT_NICE for it
                    os.setpriority(os.PRIO_PROCESS, tid, self.cfg.worker_nice)
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                except ProcessLookupError:
                    continue  # a thread that ended meanwhile
        except OSError as exc:
            log.warning("preflight.standby_priority_failed", job=job, error=str(exc))
            await standby.unusable(proc, f"cannot move it out of the idle class to nice {self.cfg.worker_nice}: {exc}")
            return None
        return proc


def _last_answer(out: bytes) -> PreflightAnswer | None:
    for line in reversed(out.splitlines()):
        if not line.strip().startswith(b"{"):
            continue
        try:
            return _ANSWER.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return None
