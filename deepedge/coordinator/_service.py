"""The coordinator service: ingest node topics into the cluster view, detect failures, learn
throughput and interference, plan and re-plan jobs, persist them, answer commands."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog

from deepedge import __version__
from deepedge.broker_schemas import (
    ArgValue,
    Cleared,
    CoordinatorStatus,
    Event,
    Heartbeat,
    LatencyReport,
    NodeBirth,
    NodeDeath,
    Plan,
    Progress,
    Telemetry,
    Topics,
)
from deepedge.clock import Clock, RealClock
from deepedge.config import Config
from deepedge.coordinator._jobs import JobRecord, JobState
from deepedge.coordinator._learning import InterferenceModel, NodeLearning, ThroughputModel
from deepedge.coordinator._planner_io import busy_elsewhere, job_model, node_models, rendezvous_port, to_plan
from deepedge.coordinator._store import JobStore
from deepedge.coordinator._view import ClusterView
from deepedge.coordinator.planner import PlanDecision, Planner, PlannerConfig, uniform_plan
from deepedge.transport import Received, Transport, TransportError

__all__ = ["Coordinator"]

log = structlog.get_logger("deepedge.coordinator")

CAP_DECREASE = 0.8  # multiplicative decrease of a node's cap when an LC deadline is missed
CAP_INCREASE = 0.1  # additive increase after COMFORT_REPORTS comfortable reports
COMFORT_REPORTS = 10
COMFORT_FRACTION = 0.7  # "comfortable": p95 under 70 % of the deadline
DECREASE_COOLDOWN_S = 5.0
LOST_PEERS_GRACE_S = 1.0  # after a worker reports lost peers, wait this long for a death notice
# A running job is re-planned when what was learned since its plan predicts a step at least 20 %
# shorter, saving at least REPLAN_MIN_GAIN_S over the rest of the job (re-forming costs ~1 s).
REPLAN_RATIO = 0.8
REPLAN_MIN_GAIN_S = 5.0
REPLAN_COOLDOWN_S = 4.0


class Coordinator:
    def __init__(
        self, config: Config, transport: Transport, store: JobStore, *, clock: Clock | None = None, session: str = ""
    ) -> None:
        self.config = config
        self.cfg = config.coordinator
        self.transport = transport
        self.store = store
        self.clock = clock or RealClock()
        self.topics = Topics(config.cluster.name)
        self.session = session or uuid.uuid4().hex[:16]
        self.view = ClusterView(self.cfg.node_interval_s, self.cfg.missed_heartbeats)
        self.learning: dict[str, NodeLearning] = {}
        self.planner = Planner(PlannerConfig(margin=self.cfg.lc_margin))
        self.jobs: dict[str, JobRecord] = {j.job: j for j in store.load_all()}
        self.dirty: set[str] = set()
        self._last_decrease: dict[str, float] = {}
        self._lost_peers: dict[str, tuple[int, float, str]] = {}  # job -> (generation, since, reporting node)
        self._planned_at: dict[str, float] = {}  # job -> monotonic time of its latest plan
        self._training_since: dict[str, tuple[int, float]] = {}  # node -> (generation, since)
        self.started = self.clock.monotonic()
        self._warm = False  # after a restart, wait one failure-detection period before judging plans

    # ---- helpers ------------------------------------------------------------------------------

    def status_message(self, state: str = "online") -> CoordinatorStatus:
        return CoordinatorStatus(state=state, session=self.session, version=__version__, ts=self.clock.time())  # type: ignore[arg-type]

    async def emit(
        self,
        event: str,
        message: str = "",
        *,
        level: str = "info",
        node: str | None = None,
        job: str | None = None,
        **fields: ArgValue,
    ) -> None:
        log.info(event, node=node, job=job, message=message, **fields)
        ev = Event(
            ts=self.clock.time(),
            source="coordinator",
            event=event,
            level=level,  # type: ignore[arg-type]
            node=node,
            job=job,
            message=message[:4000],
            fields=fields,
        )
        try:
            await self.transport.publish(self.topics.events(), ev)
        except TransportError as exc:
            log.debug("event.unsent", error=str(exc))

    async def save(self, job: JobRecord) -> None:
        job.updated = self.clock.time()
        await asyncio.to_thread(self.store.save, job)

    def jobs_using(self, node: str) -> list[JobRecord]:
        return [
            j
            for j in self.jobs.values()
            if not j.terminal and j.plan is not None and any(a.node == node for a in j.plan.assignments)
        ]

    def _learning(self, node: str) -> NodeLearning:
        if node not in self.learning:
            self.learning[node] = NodeLearning(ThroughputModel(prior=self.cfg.default_rate))
        return self.learning[node]

    # ---- ingest -------------------------------------------------------------------------------

    async def ingest(self, item: Received) -> None:
        now = self.clock.monotonic()
        match item.message:
            case NodeBirth() as birth:
                was = self.view.nodes.get(birth.node)
                was_drained = was.drained if was is not None and was.alive else None
                what = self.view.on_birth(birth, now)
                self._learning(birth.node)
                if what == "joined":
                    await self.emit("node.joined", f"session {birth.session}", node=birth.node)
                    self.dirty.update(j.job for j in self.jobs.values() if j.state == JobState.RECOVERING)
                if was_drained is not None and was_drained != birth.drained:
                    await self.emit("node.drained" if birth.drained else "node.undrained", node=birth.node)
                    self.dirty.update(j.job for j in self.jobs_using(birth.node))
            case NodeDeath() as death:
                if self.view.on_death(death, now):
                    await self.node_lost(death.node, self.view.nodes[death.node].death_reason)
            case Telemetry() as t:
                self.view.on_telemetry(t, now)
            case LatencyReport() as report:
                await self.on_latency(report, now)
            case Heartbeat() as hb:
                await self.on_heartbeat(hb, now)
            case Plan() as plan:  # retained plans at startup: never go back to an older generation
                job = self.jobs.get(plan.job)
                if job is not None and plan.generation > job.generation:
                    job.generation, job.plan = plan.generation, plan
            case _:
                pass

    async def node_lost(self, node: str, reason: str) -> None:
        await self.emit("node.dead", reason, level="warning", node=node)
        for job in self.jobs_using(node):
            if job.state == JobState.RUNNING:
                job.move(JobState.RECOVERING, f"node {node} lost: {reason}")
                job.state_since = self.clock.monotonic()
                await self.save(job)
            self.dirty.add(job.job)

    def intensity_of(self, node: str) -> float:
        state = self.view.nodes.get(node)
        if state is None:
            return 0.0
        live = [
            hb.intensity for job, hb in state.heartbeats.items() if job in self.jobs and not self.jobs[job].terminal
        ]
        return max(live, default=0.0)

    def steady(self, node: str, window_s: float, now: float) -> bool:
        """Has the node trained in its current generation for a whole latency window? Before
        that, its LC window mixes the worker's start (imports, data loading, re-forming the
        group) with training at an intensity it has not yet reported."""
        since = self._training_since.get(node)
        return since is not None and now - since[1] >= window_s

    async def on_latency(self, report: LatencyReport, now: float) -> None:
        over = self.view.on_latency(report, now)
        if report.node not in self.view.nodes or not self.view.nodes[report.node].alive:
            return
        using = self.jobs_using(report.node)
        if using and not self.steady(report.node, report.window_s, now):
            return  # neither an observation of p95(u) nor a reason to lower the cap
        learn = self._learning(report.node)
        u = self.intensity_of(report.node) if using else 0.0
        comfortable = True
        for app in report.apps:
            if app.count > 0:
                learn.interference.setdefault(app.app, InterferenceModel()).observe(u, app.p95_ms)
            if app.deadline_ms is not None and app.count > 0 and app.p95_ms > COMFORT_FRACTION * app.deadline_ms:
                comfortable = False
        if over and using:
            last = self._last_decrease.get(report.node, -1e9)
            if now - last >= DECREASE_COOLDOWN_S:
                self._last_decrease[report.node] = now
                current = max(
                    (a.intensity_cap for j in using if j.plan for a in j.plan.assignments if a.node == report.node),
                    default=learn.cap_limit,
                )
                learn.cap_limit = round(min(learn.cap_limit, current) * CAP_DECREASE, 4)
                learn.good_reports = 0
                names = ", ".join(f"{a.app} p95 {a.p95_ms:.1f} ms > {a.deadline_ms:g} ms" for a in over)
                await self.emit(
                    "lc.violation",
                    f"{names}; cap lowered to {learn.cap_limit:.2f}",
                    level="warning",
                    node=report.node,
                    cap=learn.cap_limit,
                )
                for job in using:
                    if job.spec.split != "uniform":  # the baseline ignores LC apps, as torchrun would
                        self.dirty.add(job.job)
        elif comfortable and learn.cap_limit < 1.0:
            learn.good_reports += 1
            if learn.good_reports >= COMFORT_REPORTS:  # slow increase, applied at the next re-plan
                learn.cap_limit = min(1.0, round(learn.cap_limit + CAP_INCREASE, 4))
                learn.good_reports = 0
        elif not comfortable:
            learn.good_reports = 0

    async def on_heartbeat(self, hb: Heartbeat, now: float) -> None:
        job = self.jobs.get(hb.job)
        if (
            job is None
            or job.terminal
            or job.plan is None
            or hb.generation != job.generation
            or not any(a.node == hb.node and a.rank == hb.rank for a in job.plan.assignments)
        ):  # not a participant of the current plan at that rank: a sign of life, nothing more
            self.view.touch(hb.node, now)
            return
        self.view.on_heartbeat(hb, now)
        if hb.state == "training":
            self._learning(hb.node).throughput.observe(hb.samples_per_s, hb.intensity)
            if self._training_since.get(hb.node, (-1, 0.0))[0] != hb.generation:
                self._training_since[hb.node] = (hb.generation, now)
        else:
            self._training_since.pop(hb.node, None)
        if hb.state == "recovering" and job.state == JobState.RUNNING:
            # A worker lost its peers. If a node died, its death notice re-plans the job; if only a
            # worker process crashed (its daemon restarts it), nothing else will: after a short
            # grace for a death notice to arrive first, tick() re-plans with a new generation.
            self._lost_peers.setdefault(job.job, (job.generation, now, hb.node))
            return
        if hb.state == "failed":
            job.move(JobState.FAILED, f"worker on {hb.node} failed: {hb.message or 'no reason given'}")
            await self.finish(job)
            return
        beats = [
            self.view.nodes[a.node].heartbeats.get(job.job) if a.node in self.view.nodes else None
            for a in job.plan.assignments
        ]
        current = [b for b in beats if b is not None and b.generation == job.generation]
        if len(current) == len(job.plan.assignments):
            job.step = max(job.step, min(b.step for b in current))
            job.samples_done = job.samples_after(job.step)
            losses = [b.loss for b in current if b.loss is not None]
            job.loss = sum(losses) / len(losses) if losses else job.loss
            if all(b.state == "done" for b in current) or job.step >= job.total_steps:
                job.move(JobState.COMPLETED, f"{job.step} steps, {job.samples_done} samples")
                await self.finish(job)

    def forget_heartbeats(self, job: JobRecord) -> None:
        """Keep heartbeats only of the (node, job) pairs of a current plan."""
        keep = {a.node for a in job.plan.assignments} if job.plan is not None and not job.terminal else set()
        for state in self.view.nodes.values():
            if state.node not in keep:
                state.heartbeats.pop(job.job, None)

    async def finish(self, job: JobRecord) -> None:
        """A terminal state: persist, clear the retained plan (workers stop), say so."""
        self.forget_heartbeats(job)
        await self.save(job)
        await self.transport.publish(self.topics.job_plan(job.job), None, qos=1, retain=True)
        await self.publish_progress(job)
        level = "info" if job.state == JobState.COMPLETED else "warning"
        await self.emit(f"job.{job.state.value}", job.reason, level=level, job=job.job)

    # ---- planning -----------------------------------------------------------------------------

    async def decide(self, job: JobRecord) -> PlanDecision:
        nodes = node_models(self.view, self.learning, job, busy_elsewhere(self.view, self.jobs.values(), job))
        if job.spec.split == "uniform":
            return uniform_plan(nodes, job_model(job))
        return await asyncio.to_thread(self.planner.plan, nodes, job_model(job))

    async def improve(self, job: JobRecord, now: float) -> None:
        """Re-plan a running job when the throughput and interference learned since its plan
        promise a clearly shorter rest of the job."""
        plan = job.plan
        if job.state != JobState.RUNNING or plan is None or job.spec.split == "uniform":
            return
        if now - self._planned_at.get(job.job, -1e9) < REPLAN_COOLDOWN_S:
            return
        learned = [self.learning.get(a.node) for a in plan.assignments]
        if any(n is None or n.throughput.observations < 2 for n in learned):
            return
        rates = {a.node: self.learning[a.node].throughput.rate for a in plan.assignments}
        current = max(a.share / max(1e-9, rates[a.node] * a.intensity_cap) for a in plan.assignments if a.share)
        decision = await self.decide(job)
        remaining = max(0, job.total_steps - job.step)
        if (
            decision.feasible
            and decision.compute_s < REPLAN_RATIO * current
            and remaining * (current - decision.compute_s) >= REPLAN_MIN_GAIN_S
        ):
            await self.emit(
                "plan.improving",
                f"learned rates predict {decision.compute_s * 1000:.0f} ms of compute per step instead of "
                f"{current * 1000:.0f} ms",
                job=job.job,
            )
            await self.replan(job, decision)
        else:
            self._planned_at[job.job] = now  # checked: look again after the cool-down

    async def replan(self, job: JobRecord, decision: PlanDecision | None = None) -> None:
        if job.terminal:
            return
        if job.state == JobState.QUEUED:
            job.move(JobState.PLANNING)
        self._planned_at[job.job] = self.clock.monotonic()
        if decision is None:
            decision = await self.decide(job)
        if not decision.feasible:
            if job.state == JobState.PLANNING:
                job.move(JobState.FAILED, decision.reason)
                await self.finish(job)
            elif self.clock.monotonic() - job.state_since > self.cfg.recovery_timeout_s:
                job.move(JobState.FAILED, f"no feasible plan for {self.cfg.recovery_timeout_s:g} s: {decision.reason}")
                await self.finish(job)
            else:
                if job.state == JobState.RUNNING:  # e.g. its last node drained: the current plan stays in effect
                    job.move(JobState.RECOVERING)
                    job.state_since = self.clock.monotonic()
                    await self.emit("plan.infeasible", decision.reason, level="warning", job=job.job)
                job.reason = f"waiting for nodes: {decision.reason}"
                await self.save(job)
            return
        generation = job.generation + 1
        try:
            port = rendezvous_port(job, self.jobs.values(), self.cfg.rendezvous_port, self.cfg.rendezvous_ports)
        except ValueError as exc:  # every port of the range is held by other running jobs
            job.reason = f"waiting: {exc}"
            await self.save(job)
            return
        plan = to_plan(job, decision, self.view, generation, port, self.clock.time(), self.session)
        job.generation, job.plan = generation, plan
        self.forget_heartbeats(job)
        if job.state in (JobState.PLANNING, JobState.RECOVERING):
            job.move(JobState.RUNNING, "")
        job.reason = ""
        await self.save(job)  # before publishing: the store is never behind the broker
        await self.transport.publish(self.topics.job_plan(job.job), plan, qos=1, retain=True)
        shares = ", ".join(f"{n}:{decision.shares[n]}@{decision.caps[n]:.2f}" for n in decision.participants)
        await self.emit(
            "plan.published",
            f"generation {generation}: {shares}",
            job=job.job,
            generation=generation,
            step_s=round(decision.step_s, 4),
            makespan_s=round(decision.makespan_s, 1),
        )

    async def tick(self) -> None:
        now = self.clock.monotonic()
        for node in self.view.check(now):
            await self.node_lost(node, self.view.nodes[node].death_reason)
        if not self._warm:
            if now - self.started < self.cfg.missed_heartbeats * self.cfg.node_interval_s:
                return
            self._warm = True
            for job in self.jobs.values():  # after a restart: keep plans whose nodes are all alive
                if job.terminal:
                    continue
                alive = {s.node for s in self.view.alive()}
                if job.plan is None or any(a.node not in alive for a in job.plan.assignments):
                    if job.state == JobState.RUNNING:
                        job.move(JobState.RECOVERING, "participants lost while the coordinator was away")
                        job.state_since = now
                    self.dirty.add(job.job)
        for name, (generation, since, node) in list(self._lost_peers.items()):
            lost = self.jobs.get(name)
            if lost is None or lost.generation != generation or lost.state != JobState.RUNNING:
                del self._lost_peers[name]
            elif now - since >= LOST_PEERS_GRACE_S:
                del self._lost_peers[name]
                lost.move(JobState.RECOVERING, f"the worker on {node} lost its peers (a worker crashed)")
                lost.state_since = now
                await self.save(lost)
                self.dirty.add(name)
        for name in sorted(self.dirty):
            self.dirty.discard(name)
            if name in self.jobs:
                await self.replan(self.jobs[name])
        for job in list(self.jobs.values()):
            await self.improve(job, now)

    async def publish_progress(self, job: JobRecord) -> None:
        rate = 0.0
        if job.plan is not None:
            for a in job.plan.assignments:
                state = self.view.nodes.get(a.node)
                hb = state.heartbeats.get(job.job) if state else None
                if hb is not None and hb.generation == job.generation:
                    rate += hb.samples_per_s
        remaining = max(0, job.total_steps - job.step) * job.spec.global_batch
        eta = remaining / rate if rate > 0 and not job.terminal else None
        violations = sum(a.violations for s in self.view.alive() for a in s.latency.values())
        progress = Progress(
            job=job.job,
            state=job.state.value,
            ts=self.clock.time(),
            generation=job.generation,
            step=job.step,
            total_steps=job.total_steps,
            samples_done=job.samples_done,
            samples_per_s=rate,
            eta_s=eta,
            loss=job.loss,
            deadline_violations=violations,
            message=job.reason[:4000],
        )
        try:
            await self.transport.publish(self.topics.job_progress(job.job), progress, qos=1, retain=True)
        except TransportError as exc:
            log.debug("progress.unsent", error=str(exc))

    # ---- loops --------------------------------------------------------------------------------

    async def ingest_loop(self) -> None:
        async with await self.transport.subscribe(self.topics.all_nodes(), qos=1, maxsize=100_000) as sub:
            async for item in sub:
                if isinstance(item, Received) and not isinstance(item.message, Cleared):
                    await self.ingest(item)

    async def plan_watch_loop(self) -> None:
        async with await self.transport.subscribe(self.topics.all_jobs("plan"), qos=1) as sub:
            async for item in sub:
                if isinstance(item, Received) and isinstance(item.message, Plan):
                    await self.ingest(item)

    async def tick_loop(self) -> None:
        last_progress = 0.0
        while True:
            await self.tick()
            now = self.clock.monotonic()
            if now - last_progress >= 1.0:
                last_progress = now
                for job in list(self.jobs.values()):
                    if not job.terminal:
                        await self.publish_progress(job)
            await self.clock.sleep(min(0.25, self.cfg.node_interval_s / 2))

    def summary(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "version": __version__,
            "nodes": len(self.view.nodes),
            "alive": len(self.view.alive()),
            "jobs": {s.value: sum(j.state == s for j in self.jobs.values()) for s in JobState},
            "uptime_s": round(self.clock.monotonic() - self.started, 1),
        }
