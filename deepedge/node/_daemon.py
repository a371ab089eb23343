"""The node daemon: birth/death, telemetry, LC latency, heartbeats, commands, plans → workers,
systemd readiness and watchdog. It never imports torch."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import msgspec
import structlog

from deepedge import __version__, compat
from deepedge.broker_schemas import (
    BEING_PROFILED,
    ID_PATTERN,
    MAX_INT,
    WORKER_NEWS,
    ArgValue,
    Cleared,
    CoordinatorStatus,
    Event,
    Heartbeat,
    JobSpec,
    LatencyReport,
    ModelProfile,
    NodeBirth,
    NodeDeath,
    Plan,
    Topics,
    WorkerState,
)
from deepedge.clock import Clock, RealClock
from deepedge.config import Config, ConfigError
from deepedge.devices import board_cpus
from deepedge.job_policy import JobRefused, check_job
from deepedge.lifecycle import run_daemon
from deepedge.node._commands import handle_command
from deepedge.node._identity import default_node_id, make_birth, new_session, training_address
from deepedge.node._latency import LatencyIntake, LatencyWindows
from deepedge.node._plans import PlanGate
from deepedge.node._preflight import PREFLIGHT_MODULE, Preflights
from deepedge.node._profile import BoardProfiler, ProfileError
from deepedge.node._standby import IDLE_BEFORE_S, STANDBY_BIRTH_WAIT_S, StandbyWorker
from deepedge.node._supervisor import SupervisorState, WorkerExit, WorkerSupervisor
from deepedge.node._torch_probe import PROBE_TIMEOUT_S, WORKER_MODULE, TorchProbe, probe_command
from deepedge.node.collectors import Collector, NvmlCollector, TelemetryDraft, probe_collectors
from deepedge.profiling._space import GPU, STRESSORS
from deepedge.sdnotify import SystemdNotifier
from deepedge.tasks import cancel_and_wait
from deepedge.transport import DropLog, MqttTransport, Received, Transport, TransportError, Will, serve_commands
from deepedge.worker_protocol import PlanForWorker, WorkerReport

__all__ = ["NodeDaemon", "run_node"]

log = structlog.get_logger("deepedge.node")

BIRTH_WAITS_FOR_PROBE_S = 20.0  # the first birth waits this long for the torch probe, then goes without
CRASH_EVENT_INTERVAL_S = 5.0  # at most one worker.crashed event per job this often (the rest are counted)
_ACTIVE = (SupervisorState.RUNNING, SupervisorState.BACKOFF)  # a worker runs, or is about to again


class CrashEvents:
    """Rate limit of ``worker.crashed`` events: one per job per ``interval_s``; the crashes in
    between are counted and the next event says how many were not reported."""

    def __init__(self, clock: Clock, interval_s: float = CRASH_EVENT_INTERVAL_S) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, job: str) -> int | None:
        """None: do not send this one (counted); else send it, with this many suppressed before."""
        now = self.clock.monotonic()
        last = self._last.get(job)
        if last is not None and now - last < self.interval_s:
            self._suppressed[job] = self._suppressed.get(job, 0) + 1
            return None
        if len(self._last) > 1024:  # bounded: forget jobs long gone
            self._last.clear()
            self._suppressed.clear()
        self._last[job] = now
        return self._suppressed.pop(job, 0)


class NodeDaemon:
    def __init__(
        self,
        config: Config,
        transport: Transport,
        *,
        node: str,
        session: str,
        collectors: list[Collector],
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
        training_address: str = "127.0.0.1",
    ) -> None:
        self.config = config
        self.node = node
        self.training_address = training_address
        self.gate = PlanGate()
        self.session = session
        self.topics = Topics(config.cluster.name)
        self.transport = transport
        self.collectors = collectors
        self.clock = clock or RealClock()
        self.notifier = notifier or SystemdNotifier({})
        self.drained = False
        self.started = self.clock.time()
        cfg = config.node
        self.windows = LatencyWindows(cfg.latency_window_s, self.clock, {a.name: a.deadline_ms for a in cfg.lc_apps})
        self.intake = LatencyIntake(cfg.latency_socket, self.windows, DropLog(self.clock))
        self.profiler = BoardProfiler(cfg, self.windows, self.clock, config.training)
        self.workers: dict[str, WorkerSupervisor] = {}
        self._worker_tasks: dict[str, asyncio.Task[None]] = {}
        self.crash_events = CrashEvents(self.clock)
        self.preflights = Preflights(node, cfg, config.training)
        self._accelerators = [a for c in collectors if isinstance(c, NvmlCollector) for a in c.accelerators()]
        self.telemetry_sent = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.torch_probe = TorchProbe()  # started by start_torch_probe (run_node), not by tests' daemons
        self._birth_lacked_torch = False
        self.standby: StandbyWorker | None = None  # started by start_standby (run_node), not by tests' daemons
        self._standby_waited = False  # (once, by the first birth)

    # ---- messages -----------------------------------------------------------------------------

    def birth(self) -> NodeBirth:
        birth = make_birth(self.node, self.session, self._accelerators, self.drained)
        birth = msgspec.structs.replace(
            birth,
            profiles=dict(self.profiler.profiles),
            training_address=self.training_address,
            max_workers=self.config.node.max_workers,
            torch=self.torch_probe.info,
        )
        if self.config.node.emulate_cpus:
            birth = msgspec.structs.replace(
                birth, cpu_cores=len(board_cpus(self.config.node.emulate_cpus, os.cpu_count() or 1))
            )
        if self.config.node.emulate_memory_mb:
            return msgspec.structs.replace(birth, memory_bytes=self.config.node.emulate_memory_mb << 20)
        return birth

    async def publish_birth(self) -> None:
        if self.torch_probe.pending:  # the first birth says what the board's torch can do, if it can in time
            await self.torch_probe.wait(BIRTH_WAITS_FOR_PROBE_S)
        first, self._standby_waited = not self._standby_waited, True
        if first and not self.torch_probe.pending:
            # the first birth comes once the first standbys are ready: their imports are the daemon's start's
            until = time.monotonic() + STANDBY_BIRTH_WAIT_S  # one wait for all of them (as wait_ready counts)
            for standby in self.standbys():
                await standby.wait_ready(max(0.0, until - time.monotonic()))
        self._birth_lacked_torch = self.torch_probe.pending
        await self.transport.publish(self.topics.node_status(self.node), self.birth(), qos=1, retain=True)

    def start_torch_probe(self) -> None:
        """Probe the worker's torch once (``deepedge.node._torch_probe``); a birth that went out
        before the answer is sent again with it."""
        self.torch_probe.start(probe_command(self.worker_command()), self.config.training)
        if self.torch_probe.task is not None:
            self._background(self._birth_after_probe(), "torch-probe-birth")

    def start_standby(self) -> None:
        """Keep a standby worker (``deepedge.node._standby``) for this board's worker command,
        when ``node.standby_worker`` is on and the command runs deepedge's worker."""
        on = self.config.node.standby_worker
        self.standby = self._new_standby("worker", on, "node.standby_worker", self.worker_command(), WORKER_MODULE)

    def start_standby_checker(self) -> None:
        """Keep a standby pre-flight checker (kind "preflight"), its torch imported while the
        board is idle, when ``node.standby_checker`` is on and the checker command runs deepedge's."""
        on = self.config.node.standby_checker
        command = self.preflights.command()
        self.preflights.standby = self._new_standby("preflight", on, "node.standby_checker", command, PREFLIGHT_MODULE)

    def _new_standby(
        self, kind: str, on: bool, switch: str, command: Sequence[str], module: str
    ) -> StandbyWorker | None:
        """A standby of ``kind`` for ``command``, on the worker's CPUs and at its priority; None
        (and why, logged) when ``switch`` is off or ``command`` does not run deepedge's ``module``."""
        if not on or module not in command:
            log.info(f"{kind}.standby_off", why=f"{switch} is off" if not on else f"its command does not run {module}")
            return None
        cfg = self.config.node
        return StandbyWorker(command, cfg.cpu_affinity, cfg.worker_nice, cfg.worker_comm_nice, kind=kind)

    def standbys(self) -> list[StandbyWorker]:
        """The standby worker and the standby checker this daemon keeps (those switched on)."""
        return [s for s in (self.standby, self.preflights.standby) if s is not None]

    def profiling(self) -> bool:
        """A profile or an interference run is in progress: this board takes no job meanwhile.
        (Between two runs of a session it does; the session's next run is then refused.)"""
        return self.profiler.running or self.profiler.measuring

    def active_jobs(self) -> list[str]:
        """The jobs whose worker runs here, or is about to again (in back-off)."""
        return [job for job, sup in self.workers.items() if sup.state in _ACTIVE]

    def busy(self) -> bool:
        """Whether a worker, a pre-flight check, a profile or the torch probe runs on this board."""
        return (
            bool(self.active_jobs())
            or bool(self.preflights.running)
            or self.profiler.running
            or self.profiler.measuring
            or self.torch_probe.pending
        )

    async def standby_loop(self) -> None:
        """Start a standby (worker, checker) once the board has been idle IDLE_BEFORE_S (none
        while a job, a check or a profile runs: its import would compete with them); the first
        as soon as the torch probe has answered (the first birth waits for it)."""
        idle_since: float | None = None
        while True:
            standbys = [s for s in self.standbys() if not s.disabled]
            await self.clock.sleep(0.1 if any(s.started == 0 for s in standbys) else 0.5)
            if self.busy():
                idle_since = None
                continue
            now = self.clock.monotonic()
            idle_since = now if idle_since is None else idle_since
            for standby in standbys:
                if self.busy():  # a check or a job came while the one before was being started
                    break
                if standby.started == 0 or now - idle_since >= IDLE_BEFORE_S:
                    try:
                        await standby.arm()
                    except Exception as exc:  # an optimisation must not take the daemon down
                        standby.disabled = True
                        log.error(
                            f"{standby.kind}.standby_disabled", error=f"{type(exc).__name__}: {exc}", exc_info=exc
                        )

    async def _birth_after_probe(self) -> None:
        await self.torch_probe.wait(PROBE_TIMEOUT_S + 10)
        if self._birth_lacked_torch and self.torch_probe.info is not None and self.transport.connected:
            with contextlib.suppress(TransportError):
                await self.publish_birth()

    async def emit(self, event: str, message: str = "", level: str = "info", **fields: ArgValue) -> None:
        ev = Event(
            ts=self.clock.time(),
            source=f"node/{self.node}",
            event=event,
            level=level,  # type: ignore[arg-type]
            node=self.node,
            job=fields.pop("job", None),  # type: ignore[arg-type]
            message=message,
            fields=fields,
        )
        try:
            await self.transport.publish(self.topics.events(self.node), ev)
        except TransportError as exc:
            log.debug("event.unsent", event_name=event, error=str(exc))

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "session": self.session,
            "version": __version__,
            "drained": self.drained,
            "uptime_s": round(self.clock.time() - self.started, 1),
            "collectors": [c.name for c in self.collectors],
            "lc_apps": {
                a.app: {"deadline_ms": a.deadline_ms, "p95_ms": a.p95_ms, "count": a.count}
                for a in self.windows.summary()
            },
            "workers": {
                job: {
                    "state": sup.state.value,
                    "pid": sup.pid,
                    "generation": sup.generation,
                    "restarts": sup.restarts,
                    "crashes": sup.crashes,
                    "last_exit": sup.last_exit,
                    "last_why": sup.last_why,
                    "step": sup.last_report.step if sup.last_report else None,
                }
                for job, sup in self.workers.items()
            },
            "telemetry_sent": self.telemetry_sent,
            "standby_worker": _standby_status(self.standby),
            "standby_checker": _standby_status(self.preflights.standby),
            "preflights": {"running": sorted(self.preflights.running), "done": self.preflights.done},
            "profile": {
                "running": self.profiler.running,
                "last_error": self.profiler.last_error,
                "models": {m: msgspec.to_builtins(p) for m, p in self.profiler.profiles.items()},
                # what an interference run here can load the board with (the operator's design asks this)
                "stressors": [*STRESSORS, GPU] if self.gpu_device() else list(STRESSORS),
            },
        }

    def gpu_device(self) -> str | None:
        """The CUDA device this board trains on (its torch probe's answer), where the GPU
        stressor of an interference run goes; None on a CPU board or before the probe answered."""
        info = self.torch_probe.info
        return info.device if info is not None and info.device.startswith("cuda") else None

    # ---- commands' effects --------------------------------------------------------------------

    async def set_drained(self, drained: bool, reason: str = "") -> None:
        self.drained = drained
        await self.publish_birth()  # retained: the coordinator sees it, now and after restarts
        await self.emit("node.drained" if drained else "node.undrained", reason)
        log.info("node.drain", drained=drained, reason=reason)

    async def set_deadline(self, app: str, deadline_ms: float | None) -> None:
        self.windows.set_deadline(app, deadline_ms)
        await self.emit("lc.deadline_set", f"{app}: {deadline_ms} ms", app=app, deadline_ms=deadline_ms)

    def start_profile(self, model: str, levels: list[float], seconds: float) -> None:
        """Profile this board in the background; the result goes out in a fresh birth message.
        Raises ProfileError if a profile or a training worker is running."""
        if self.profiler.running:
            raise ProfileError("a profile is already running on this node")
        busy = self.active_jobs()
        if busy:
            raise ProfileError(f"training is running here (job {', '.join(busy)}): profile an idle board")

        async def run() -> ModelProfile:
            self.profiler.last_error = ""
            await self.emit("profile.started", f"{model} at intensities {levels}, {seconds:g} s each")
            try:
                result = await self.profiler.measure(model, levels, seconds)
            except (ProfileError, OSError) as exc:
                self.profiler.last_error = str(exc)
                await self.emit("profile.failed", str(exc), level="warning")
                raise
            await self.publish_birth()
            await self.emit("profile.done", f"{model}: {result.samples_per_s:.1f} samples/s at full intensity")
            return result

        self.profiler.task = asyncio.create_task(run(), name="profile")
        self.profiler.task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: logged above

    async def stop_workers(self, job: str | None = None) -> list[str]:
        stopped = []
        for name, sup in list(self.workers.items()):
            if (job is None or name == job) and sup.state in (*_ACTIVE, SupervisorState.FAILED):
                await sup.stop()
                stopped.append(name)
                await self.emit("worker.stopped", "stopped by command", job=name)
        return stopped

    # ---- plans → workers ----------------------------------------------------------------------

    def worker_command(self) -> list[str]:
        return list(self.config.node.worker_command) or [sys.executable, "-m", "deepedge.training.worker"]

    def _supervisor(self, job: str) -> WorkerSupervisor:
        """The job's supervisor; a new one if there is none or its supervision task has ended."""
        sup = self.workers.get(job)
        task = self._worker_tasks.get(job)
        if sup is None or task is None or task.done():
            cfg = self.config.node
            sup = WorkerSupervisor(
                self.worker_command(),
                job,
                self._on_report,
                on_exit=self._on_exit,
                crash_limit=cfg.worker_crash_limit,
                clock=self.clock,
                cpus=cfg.cpu_affinity,
                nice=cfg.worker_nice,
                comm_nice=cfg.worker_comm_nice,
                standby=self.standby.take if self.standby is not None else None,
            )
            self.workers[job] = sup
            task = asyncio.create_task(sup.run(), name=f"worker:{job}")
            task.add_done_callback(functools.partial(self._supervision_ended, sup))
            self._worker_tasks[job] = task
        return sup

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task that is kept (not garbage-collected) and whose exception is
        logged, never lost."""
        task = asyncio.create_task(coro, name=name)
        self._pending.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task.failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def _supervision_ended(self, sup: WorkerSupervisor, task: asyncio.Task[None]) -> None:
        """A supervision task ends only when cancelled (a stop); anything else is a bug that
        must not go unseen: logged at error, the worker FAILED here, and reported."""
        if task.cancelled():
            return
        exc = task.exception()
        error = f"{type(exc).__name__}: {exc}" if exc is not None else "it returned"
        log.error("worker.supervision_failed", job=sup.job, error=error, exc_info=exc)
        plan = sup.current_plan
        failure = WorkerExit(
            job=sup.job,
            generation=plan.plan.generation if plan else 0,
            rank=plan.assignment.rank if plan else 0,
            world_size=len(plan.plan.assignments) if plan else 0,
            exit_code=sup.last_exit if sup.last_exit is not None else -1,
            why=f"the worker's supervision on {self.node} failed: {error}"[:2000],
            kind="failed",
            crashes=sup.crashes,
            first_generation=plan.plan.generation if plan else 0,
            restarts=sup.restarts,
            step=sup.last_report.step if sup.last_report else 0,
        )
        sup.fail(failure)
        self._background(self._report_supervision_failed(failure, plan is not None), f"report:{sup.job}")

    async def _report_supervision_failed(self, failure: WorkerExit, planned: bool) -> None:
        await self.emit("worker.supervision_failed", failure.why, level="error", job=failure.job)
        if planned:
            await self._publish_heartbeat(self._failed_heartbeat(failure))

    def _on_report(self, report: WorkerReport) -> None:
        if report.state in WORKER_NEWS:  # the coordinator acts on it: say so at once
            if report.state == WorkerState.FAILED:
                log.warning("worker.reported_failed", job=report.job, message=report.message)
            self._background(self._publish_heartbeat(self._heartbeat(report.job, report)), f"heartbeat:{report.job}")

    def _on_exit(self, ex: WorkerExit) -> None:
        self._background(self._report_exit(ex), f"report:{ex.job}")

    async def _report_exit(self, ex: WorkerExit) -> None:
        """Tell the operator (events) and the coordinator (a failed heartbeat) about a worker
        that exited other than with success."""
        if ex.kind == "failed":  # exit 2: a TrainingError; not restarted
            await self.emit(
                "worker.failed", ex.why, level="error", job=ex.job, exit_code=ex.exit_code, generation=ex.generation
            )
            if not ex.reported_failed:  # else the worker's own failed report went out already
                await self._publish_heartbeat(self._failed_heartbeat(ex))
            return
        suppressed = self.crash_events.allow(ex.job)
        if suppressed is not None:
            await self.emit(
                "worker.crashed",
                f"exit code {ex.exit_code}: {ex.why}",
                level="warning",
                job=ex.job,
                exit_code=ex.exit_code,
                why=ex.why,
                restarts=ex.restarts,
                crashes=ex.crashes,
                generation=ex.generation,
                suppressed=suppressed,
            )
        if ex.kind == "crash_loop":
            await self.emit(
                "worker.crash_loop",
                ex.summary(),
                level="error",
                job=ex.job,
                exit_code=ex.exit_code,
                why=ex.why,
                crashes=ex.crashes,
                limit=self.config.node.worker_crash_limit,
                generation=ex.generation,
            )
            await self._publish_heartbeat(self._failed_heartbeat(ex))

    def _failed_heartbeat(self, ex: WorkerExit) -> Heartbeat:
        return Heartbeat(
            node=self.node,
            ts=self.clock.time(),
            job=ex.job,
            generation=ex.generation,
            rank=ex.rank,
            world_size=ex.world_size,
            step=min(max(0, ex.step), MAX_INT),
            state=WorkerState.FAILED,
            message=ex.summary()[:4000],
        )

    async def preflight(self, job: str, spec: JobSpec) -> dict[str, Any]:
        """The ``preflight`` command (``deepedge.node._preflight``). Raises PreflightBusy. A
        drained node says so: it would ignore the job's plan."""
        if self.drained:
            result = self.preflights.refusal("drained", "this node is drained (deepedge undrain)", time.monotonic())
        elif self.profiling():
            result = self.preflights.refusal("profiling", BEING_PROFILED, time.monotonic())
        else:
            result = await self.preflights.run(job, spec)
        if not result["ok"]:
            log.info("preflight.refused", job=job, check=result["check"], reason=result["reason"])
        return result

    async def on_plan(self, job: str, plan: Plan | Cleared) -> None:
        if isinstance(plan, Cleared):  # the job ended (only the coordinator may clear it)
            await self._stop_job(job, "plan cleared")
            return
        current = self.gate.offer(plan)
        if current is None:
            if plan.generation > self.gate.highest(job):
                log.info("plan.held", job=job, generation=plan.generation, why=self.gate.why_held(plan))
            return
        await self.act_on(current)

    async def on_coordinator(self, status: CoordinatorStatus) -> None:
        was = (self.gate.online, self.gate.session)
        ready = self.gate.on_coordinator(status)
        if (self.gate.online, self.gate.session) != was:
            log.info("coordinator.seen", state=status.state, session=status.session)
        for plan in ready:
            await self.act_on(plan)

    async def _stop_job(self, job: str, why: str) -> None:
        sup = self.workers.get(job)
        if sup is not None and sup.state in (*_ACTIVE, SupervisorState.FAILED):
            log.info("plan.not_for_me", job=job, why=why)
            await sup.stop()

    async def refuse(self, plan: Plan, rank: int, why: str) -> None:
        """Tell the coordinator (a failed heartbeat: the job fails with the reason) and the
        operator (an event) that this node will not run its part of ``plan``."""
        log.warning("plan.refused", job=plan.job, generation=plan.generation, why=why)
        await self.emit("job.refused", why, level="warning", job=plan.job)
        hb = Heartbeat(
            node=self.node,
            ts=self.clock.time(),
            job=plan.job,
            generation=plan.generation,
            rank=rank,
            world_size=len(plan.assignments),
            state=WorkerState.FAILED,
            message=f"{self.node} refused: {why}"[:4000],
        )
        await self._publish_heartbeat(hb)

    async def act_on(self, plan: Plan) -> None:
        """A current plan of the online coordinator: start, steer or stop this node's worker."""
        job = plan.job
        mine = next((a for a in plan.assignments if a.node == self.node), None)
        if mine is None:
            await self._stop_job(job, f"not in generation {plan.generation}")
            return
        sup = self.workers.get(job)
        running = sup is not None and sup.state in _ACTIVE
        if self.drained and not running:
            log.info("plan.ignored_drained", job=job, generation=plan.generation)
            return
        if not running:
            busy = self.active_jobs()
            if len(busy) >= self.config.node.max_workers:
                await self.refuse(
                    plan,
                    mine.rank,
                    f"this node already runs {len(busy)} training worker(s) (job {', '.join(busy)}; node.max_workers "
                    f"= {self.config.node.max_workers})",
                )
                return
            if self.profiling():  # (its pre-flight said so too, unless the profile began since)
                await self.refuse(plan, mine.rank, BEING_PROFILED)
                return
            try:
                check_job(plan.spec, self.config.training)
            except JobRefused as exc:
                await self.refuse(plan, mine.rank, str(exc))
                return
        log.info("plan.accepted", job=job, generation=plan.generation, rank=mine.rank, share=mine.share)
        emulated = self.config.node.emulate_sample_ms / 1000.0
        self._supervisor(job).update(
            PlanForWorker(
                node=self.node,
                plan=plan,
                assignment=mine,
                emulated_sample_s=emulated,
                comm_nice=self.config.node.worker_comm_nice,
                training_address=self.training_address,
                policy=self.config.training,
            )
        )

    # ---- loops --------------------------------------------------------------------------------

    async def telemetry_loop(self) -> None:
        interval = self.config.node.telemetry_interval_s
        next_at = self.clock.monotonic()
        while True:
            now = self.clock.monotonic()
            draft = TelemetryDraft()
            for c in self.collectors:
                try:
                    c.collect(draft, now)
                except Exception as exc:  # a sensor failing must never stop telemetry
                    log.warning("collector.failed", collector=c.name, error=str(exc))
            draft.emulate_memory(self.config.node.emulate_memory_mb << 20)
            draft.emulate_cpus(self.config.node.emulate_cpus)
            wall = self.clock.time()
            if self.transport.connected:
                try:
                    await self.transport.publish(self.topics.node_telemetry(self.node), draft.freeze(self.node, wall))
                    self.telemetry_sent += 1
                    apps = self.windows.summary()
                    if apps:
                        report = LatencyReport(
                            node=self.node,
                            ts=wall,
                            window_s=self.windows.window_s,
                            apps=apps,
                            profiling=self.profiler.busy_within(self.windows.window_s),
                        )
                        await self.transport.publish(self.topics.node_latency(self.node), report)
                except TransportError as exc:
                    log.debug("telemetry.unsent", error=str(exc))
            next_at += interval
            await self.clock.sleep(max(0.0, next_at - self.clock.monotonic()))
            if next_at < self.clock.monotonic() - interval:  # fell far behind (suspend): do not burst
                next_at = self.clock.monotonic()

    def _heartbeat(self, job: str, r: WorkerReport) -> Heartbeat:
        return Heartbeat(
            node=self.node,
            ts=self.clock.time(),
            job=job,
            generation=r.generation,
            rank=r.rank,
            world_size=r.world_size,
            step=min(max(0, r.step), MAX_INT),
            samples_per_s=_finite(r.samples_per_s, 0.0, 1e12),
            loss=r.loss if r.loss is not None and math.isfinite(r.loss) else None,  # a diverged loss is NaN
            intensity=_finite(r.intensity, 0.0, 1.0),
            state=r.state,
            message=r.message[:4000],
            **r.heartbeat_fields(),  # step timing and link measurements (worker_protocol)
        )

    async def _publish_heartbeat(self, hb: Heartbeat) -> None:
        if not self.transport.connected:
            return
        try:
            await self.transport.publish(
                self.topics.node_heartbeat(self.node), hb, qos=1 if hb.state in WORKER_NEWS else 0
            )
        except TransportError as exc:
            log.debug("heartbeat.unsent", error=str(exc))

    async def heartbeat_loop(self) -> None:
        """A running worker's latest report; a FAILED one's failure, again every interval until a
        plan without this node (or a cleared plan) arrives, so a coordinator that missed it (or
        restarted) still learns it."""
        while True:
            await self.clock.sleep(self.config.node.heartbeat_interval_s)
            for job, sup in list(self.workers.items()):
                if sup.state is SupervisorState.RUNNING and sup.last_report is not None:
                    await self._publish_heartbeat(self._heartbeat(job, sup.last_report))
                elif sup.state is SupervisorState.FAILED and sup.failure is not None:
                    await self._publish_heartbeat(self._failed_heartbeat(sup.failure))

    async def plan_loop(self) -> None:
        """Plans and the coordinator's status, in the order they arrive (one subscription each,
        one consumer: a plan is never judged against a status that is not yet taken in)."""
        queue: asyncio.Queue[Received | BaseException] = asyncio.Queue(maxsize=10_000)

        async def feed(topic_filter: str) -> None:
            try:
                async with await self.transport.subscribe(topic_filter, qos=1) as sub:
                    async for item in sub:
                        if isinstance(item, Received) and not queue.full():
                            queue.put_nowait(item)
            except Exception as exc:  # the consumer raises it: a feed never dies unseen
                await queue.put(exc)

        feeds = [asyncio.create_task(feed(f)) for f in (self.topics.coordinator_status(), self.topics.all_jobs("plan"))]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                match item.message:
                    case CoordinatorStatus() as status:
                        await self.on_coordinator(status)
                    case Plan() | Cleared() if item.topic.job is not None:
                        await self.on_plan(item.topic.job, item.message)
        finally:
            await cancel_and_wait(feeds)

    async def self_status_loop(self) -> None:
        """Keep the record straight: a death notice for this running node (a late will of an
        earlier connection, or a forgery) is answered with a fresh birth; another live process
        using this node id is logged."""
        async with await self.transport.subscribe(self.topics.node_status(self.node), qos=1) as sub:
            async for item in sub:
                if not isinstance(item, Received):
                    continue
                match item.message:
                    case NodeDeath(session=s):
                        if item.retain and s != self.session:  # an earlier run's goodbye, seen on start
                            log.info("node.earlier_session_ended", session=s)
                        else:  # our own will published while we live, or a forgery
                            log.warning("node.death_notice_while_alive", session=s)
                        try:  # (retained: the record says this node lives)
                            await self.publish_birth()
                        except TransportError as exc:  # the broker went away meanwhile: the
                            log.info("node.birth_deferred", error=str(exc))  # reconnect publishes it
                    case NodeBirth(session=s, ts=ts) if s != self.session and ts > self.started:
                        log.error("node.id_conflict", other_session=s, hint="two daemons use the same node id")

    async def status_line_loop(self) -> None:
        while True:
            running = [j for j, s in self.workers.items() if s.state is SupervisorState.RUNNING]
            state = "connected" if self.transport.connected else "reconnecting"
            self.notifier.status(f"{state}; drained={self.drained}; workers={','.join(running) or 'none'}")
            await asyncio.sleep(10)

    def loops(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """What the daemon runs until it stops (``deepedge.lifecycle`` watches them)."""

        async def serve() -> None:
            await serve_commands(
                self.transport,
                self.topics,
                self.topics.node_commands(self.node),
                lambda verb, req: handle_command(self, verb, req),
                responder=self.node,
            )

        return [
            self.telemetry_loop,
            self.heartbeat_loop,
            self.plan_loop,
            self.self_status_loop,
            serve,
            self.status_line_loop,
            *([self.standby_loop] if self.standbys() else []),
        ]

    async def shutdown(self) -> None:
        """Stop workers, then say goodbye: a retained offline status (not the will)."""
        if self.profiler.task is not None:
            self.profiler.task.cancel()
            with contextlib.suppress(BaseException):
                await self.profiler.task
        await self.torch_probe.stop()
        for standby in self.standbys():
            await standby.close()
        for job, sup in self.workers.items():
            await sup.stop()
            self._worker_tasks[job].cancel()
        death = NodeDeath(node=self.node, session=self.session, reason="shutdown", ts=self.clock.time())
        if not self.transport.connected:  # no broker to tell: do not wait for one on the way out
            log.warning("node.offline_unsent", error="not connected to the broker")
        else:
            try:
                async with compat.timeout(2):
                    await self.transport.publish(self.topics.node_status(self.node), death, qos=1, retain=True)
            except (TransportError, TimeoutError) as exc:
                log.warning("node.offline_unsent", error=str(exc) or "timed out")
        for c in self.collectors:
            c.close()


def _finite(x: float, low: float, high: float) -> float:
    """``x`` clamped to [low, high]; ``low`` if it is not a number."""
    return min(high, max(low, x)) if math.isfinite(x) else low


def _check_cpus(config: Config) -> None:
    """``node.emulate_cpus`` must name CPUs this machine has (ConfigError); a training worker
    pinned outside them (``node.cpu_affinity``) is warned about: its CPU time would be taken off
    the board's busy time as if it ran there."""
    emulate, count = config.node.emulate_cpus, os.cpu_count() or 1
    absent = sorted({c for c in emulate if c >= count})
    if absent:
        raise ConfigError(f"node.emulate_cpus names CPUs this machine does not have: {absent} (it has 0-{count - 1})")
    outside = sorted(set(config.node.cpu_affinity) - set(emulate)) if emulate else []
    if outside:
        log.warning(
            "config.cpu_affinity_outside_board",
            message=f"node.cpu_affinity {outside} is outside node.emulate_cpus {list(emulate)}: the board's "
            "background CPU will read low",
        )


async def run_node(config: Config, *, node_id: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT (``deepedge.lifecycle``); returns the exit code."""
    node = node_id or config.node.id or default_node_id()
    if ID_PATTERN.fullmatch(node) is None:
        raise ConfigError(f"node id {node!r} does not match [A-Za-z0-9_.-]{{1,64}} (node.id / --node-id)")
    if config.broker.username and config.broker.username != node:
        raise ConfigError(
            f"node id {node!r} is not broker.username {config.broker.username!r}: the broker lets a node publish "
            "only under its own user name (set node.id to it)"
        )
    _check_cpus(config)
    session = new_session()
    notifier = SystemdNotifier()
    transport = MqttTransport(
        config.broker,
        client_id=f"deepedge-node-{node}"[:64],
        identity_client_id=True,
        will=Will(Topics(config.cluster.name).node_status(node), NodeDeath(node=node, session=session, reason="lost")),
        persistent=True,
        wait_first_connect=False,
        exit_on_config_error=True,
    )
    collectors = await asyncio.to_thread(
        probe_collectors, config.node.telemetry_interval_s, config.node.disabled_collectors
    )
    address = config.node.training_address or await asyncio.to_thread(training_address, config.broker)
    daemon = NodeDaemon(
        config,
        transport,
        node=node,
        session=session,
        collectors=collectors,
        notifier=notifier,
        training_address=address,
    )
    daemon.start_torch_probe()
    daemon.start_standby()
    daemon.start_standby_checker()
    log.info(
        "node.starting",
        node=node,
        session=session,
        broker=config.broker.url,
        training_address=address,
        collectors=[c.name for c in collectors],
        pid=os.getpid(),
    )
    await daemon.intake.start()
    try:
        return await run_daemon(
            "node",
            transport,
            daemon.loops(),
            on_connect=daemon.publish_birth,
            goodbye=daemon.shutdown,
            ready=f"connected to {config.broker.url} as {node}",
            notifier=notifier,
            goodbye_timeout_s=15.0,
        )
    finally:
        daemon.intake.close()


def _standby_status(standby: StandbyWorker | None) -> dict[str, Any] | None:
    if standby is None:
        return None
    return {
        "pid": standby.pid,
        "ready": standby.ready,
        "started": standby.started,
        "taken": standby.taken,
        "disabled": standby.disabled,
    }
