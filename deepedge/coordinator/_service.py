"""The coordinator service: one writer. Everything that changes its state — a message from a
node, a command, a timer — runs as a unit of work taken from one queue by one task
(:meth:`Coordinator.writer_loop`), so no two of them interleave; commands wait for their unit
with :meth:`Coordinator.in_writer`. What to do about an event is decided by the pure policy
(``_policy``); this module keeps the state, executes the actions, plans (on its own planner
thread) and publishes. A unit that raises is logged (rate-limited) and dropped; one that fails
about a job fails that job with the reason. Nothing it does waits on the network: publishing
while the broker is away is skipped, and the next connection reconciles the broker with the
store (``_reconcile``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import statistics
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar

import msgspec
import structlog

from deepedge import __version__, compat
from deepedge.broker_schemas import (
    MAX_FLOAT,
    MAX_INT,
    ArgValue,
    Cleared,
    CoordinatorStatus,
    Event,
    Heartbeat,
    JobState,
    LatencyReport,
    Message,
    NodeBirth,
    NodeDeath,
    Plan,
    Progress,
    SchemaError,
    Telemetry,
    Topics,
)
from deepedge.clock import Clock, RealClock
from deepedge.config import Config
from deepedge.coordinator import _memory as memory
from deepedge.coordinator import _policy as policy
from deepedge.coordinator._jobs import MAX_REASON, JobRecord
from deepedge.coordinator._learning import (
    LINK_PENDING_CONFIRM_S,
    CommModel,
    NodeLearning,
    ThroughputModel,
    confirm_stalled_drops,
    ring_floor_bps,
)
from deepedge.coordinator._planner_io import (
    DEFAULT_LATENCY_S,
    allreduce_efficiency,
    busy_elsewhere,
    continues_group,
    job_model,
    knowledge_base_path,
    node_models,
    plan_step_s,
    rendezvous_port,
    same_assignment,
    to_plan,
)
from deepedge.coordinator._store import JobStore
from deepedge.coordinator._view import ClusterView
from deepedge.coordinator.planner import (
    MIN_RATE,
    NetworkModel,
    PlanDecision,
    Planner,
    PlannerConfig,
    proportional_plan,
    uniform_plan,
)
from deepedge.profiling import TableCache
from deepedge.transport import RateLimiter, Received, Transport, TransportError

__all__ = ["Coordinator"]

log = structlog.get_logger("deepedge.coordinator")

T = TypeVar("T")
Work = tuple[Callable[[], Awaitable[Any]], "asyncio.Future[Any] | None"]
INBOX = 100_000  # units of work waiting for the writer; beyond it, node messages are dropped (counted)
PUBLISH_TIMEOUT_S = 2.0  # the writer never waits longer on the broker
MAX_FINISHED_IN_MEMORY = 1000  # finished jobs kept in memory for status (all stay in the store)
# a participant a plan leaves out within this long of its LC app's re-plan (lc.forecast,
# lc.violation) was left out for that app: it is held (policy.lc_hold)
LC_RISK_S = 5.0
MAX_LC_MODELS = 2000  # characters of plan.published's lc_models (every LC app's model, in words)
REMEMBER_EVERY_S = 5.0  # what was learned is saved this often when it changed (at once after a cap or hold)
SAVED_EVERY_S = 60.0  # and the save's time marked at least this often (a restart's MEMORY_TTL_S counts from it)
PER_NODE_PER_S = 50.0  # messages a second taken from one node's topics (a burst of 4 s of them)


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
        self.view = ClusterView(self.cfg.node_interval_s, self.cfg.missed_heartbeats, self.cfg.max_nodes)
        self.learning: dict[str, NodeLearning] = {}
        self.comm = CommModel()  # how the measured all-reduces compare with the links' model
        self.reform: set[str] = set()  # jobs whose next plan must form a new group (a stalled all-reduce)
        self.planner = Planner(PlannerConfig(margin=self.cfg.lc_margin, allow_half=True))
        self.tables = TableCache(knowledge_base_path(self.cfg.db))  # the knowledge base's surrogates
        self._planner_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="planner")
        jobs, skipped = store.load_all()
        for row, error in skipped:
            log.error("store.unreadable_row", job=row, error=error)
        self.jobs: dict[str, JobRecord] = {j.job: j for j in jobs}
        self.runtime: dict[str, policy.JobRuntime] = {}
        self.dirty: set[str] = set()  # jobs to re-plan at the next tick
        self.started = self.clock.monotonic()
        self._warm = False  # after a restart, wait one failure-detection period before judging plans
        # ... counted from the first connection's reconcile (None: not yet, and nothing is judged
        # before it), not from the process's start: loading the forecast and connecting can take
        # longer than the period itself (a loaded CI machine saw a restarted coordinator judge a
        # running job before any heartbeat and re-plan it; a first tick before the connection,
        # after a forecast load of 1.06 s, did the same on 2026-12-05)
        self._warm_since: float | None = None
        self.inbox: asyncio.Queue[Work] = asyncio.Queue(INBOX)
        self.dropped = 0  # node messages dropped because the writer fell behind by INBOX units
        self._errors = RateLimiter(1 / 60, 1, max_keys=1000, global_rate=1.0, global_burst=10)
        # a node sends a few messages a second (telemetry, latency, a heartbeat per job, a birth)
        self._per_node = RateLimiter(PER_NODE_PER_S, 4 * PER_NODE_PER_S, max_keys=max(1000, self.cfg.max_nodes))
        self.stale = False  # a retained publish was skipped: the broker may be behind the store
        self.reserved: set[str] = set()  # job ids being submitted (pre-flight in progress)
        self._cleared_finished = False
        for job in self.jobs.values():
            self.runtime[job.job] = policy.JobRuntime(state_since=self.started)
        self.remembered: dict[str, str] = {}  # key -> the memory row last saved (deepedge.coordinator._memory)
        self.remember_soon = False  # a cap or a hold changed: save at the next tick
        self.memory_dirty: set[str] = set()  # nodes whose memory may have changed since the last save
        self.saved_at = float("-inf")  # monotonic time of the last save
        self.recall()

    def recall(self) -> None:
        """Restore what the last coordinator learned (its caps, LC observations, holds) from the
        store's memory rows, unless it stopped more than MEMORY_TTL_S ago; an unreadable row is
        skipped and said (and deleted at the next save: it could never load)."""
        mono, wall = self.clock.monotonic(), self.clock.time()
        try:
            rows = self.store.recall(wall - memory.MEMORY_TTL_S)
        except sqlite3.Error as exc:
            log.error("store.memory_unreadable", error=str(exc)[:300])
            return
        unfinished = {name: rt for name, rt in self.runtime.items() if not self.jobs[name].terminal}
        nodes, jobs, skipped = memory.recall(rows, self.learning_of, unfinished, self.cfg.max_nodes, mono, wall)
        for key, error in skipped:
            log.error("store.unreadable_memory", key=key, error=error)
        self.remembered = dict(rows)
        if rows:
            log.info("coordinator.recalled", nodes=nodes, jobs=jobs)

    async def remember(self) -> None:
        """Save the memory rows that changed since the last save (the nodes marked in
        ``memory_dirty``, every unfinished job's), delete the ones gone (a finished job, a node
        forgotten), and mark the save's time at least every SAVED_EVERY_S. A failed write is said
        and tried again at the next one."""
        self.remember_soon = False
        mono, wall = self.clock.monotonic(), self.clock.time()
        dirty, self.memory_dirty = self.memory_dirty, set()
        rows = {k: v for k, v in self.remembered.items() if k.startswith("node:") and k[5:] in self.learning}
        for node in dirty:
            learn = self.learning.get(node)
            text = memory.node_row(learn, mono, wall) if learn is not None else None
            if text is None:
                rows.pop(f"node:{node}", None)
            else:
                rows[f"node:{node}"] = text
        rows |= memory.job_rows(self.runtime, self.jobs, mono, wall)
        changed = {k: v for k, v in rows.items() if self.remembered.get(k) != v}
        gone = [k for k in self.remembered if k not in rows]
        if not changed and not gone and mono - self.saved_at < SAVED_EVERY_S:
            return
        try:
            await asyncio.to_thread(self.store.remember, changed, gone, wall)
        except Exception as exc:  # the disk, or a closed store at shutdown: never the writer
            self.memory_dirty |= dirty
            self.log_error("store.remember_failed", exc)
            return
        self.remembered, self.saved_at = rows, mono

    # ---- the one writer -----------------------------------------------------------------------

    async def writer_loop(self) -> None:
        while True:
            fn, fut = await self.inbox.get()
            try:
                result = await fn()
            except Exception as exc:
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                else:
                    self.log_error("writer.unit_failed", exc)
            else:
                if fut is not None and not fut.done():
                    fut.set_result(result)

    async def in_writer(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` as one unit of the writer (after what is queued before it)."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self.inbox.put((fn, fut))
        return await fut

    def offer(self, fn: Callable[[], Awaitable[Any]]) -> bool:
        """Queue a unit without waiting for it; False (and counted) when the writer is INBOX
        units behind."""
        try:
            self.inbox.put_nowait((fn, None))
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    def log_error(self, event: str, exc: BaseException, **fields: Any) -> None:
        key = f"{event}:{type(exc).__name__}"
        if self._errors.allow(key, self.clock.monotonic()):
            log.error(event, error=f"{type(exc).__name__}: {exc}"[:500], **fields)

    # ---- helpers ------------------------------------------------------------------------------

    def status_message(self, state: str = "online") -> CoordinatorStatus:
        return CoordinatorStatus(state=state, session=self.session, version=__version__, ts=self.clock.time())  # type: ignore[arg-type]

    async def send(self, topic: str, message: Message | None, *, qos: int = 0, retain: bool = False) -> bool:
        """Publish without ever holding the writer long: skipped when the broker is away, given
        up after PUBLISH_TIMEOUT_S. A retained message not sent marks the broker stale (the next
        connection reconciles it)."""
        if self.transport.connected:
            try:
                async with compat.timeout(PUBLISH_TIMEOUT_S):
                    await self.transport.publish(topic, message, qos=qos, retain=retain)
                return True
            except (TransportError, TimeoutError) as exc:
                log.debug("publish.failed", topic=topic, error=str(exc) or "timed out")
            except SchemaError as exc:  # a message out of its bounds: dropped and said, never a dead loop
                log.error("publish.refused", topic=topic, error=str(exc))
                return False
        if retain:
            self.stale = True
        return False

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
        getattr(log, level if level in ("info", "warning", "error") else "info")(
            event, node=node, job=job, message=message, **fields
        )
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
        await self.send(self.topics.events(), ev)

    async def save(self, job: JobRecord) -> None:
        job.updated = self.clock.time()
        await asyncio.to_thread(self.store.save, job)

    def jobs_using(self, node: str) -> list[JobRecord]:
        return [
            j
            for j in self.jobs.values()
            if not j.terminal and j.plan is not None and any(a.node == node for a in j.plan.assignments)
        ]

    def learning_of(self, node: str) -> NodeLearning:
        if node not in self.learning:
            self.learning[node] = NodeLearning(
                ThroughputModel(prior=self.cfg.default_rate), seasons=self.cfg.forecast_seasons
            )
        return self.learning[node]

    def runtime_of(self, job: JobRecord) -> policy.JobRuntime:
        if job.job not in self.runtime:
            self.runtime[job.job] = policy.JobRuntime(state_since=self.clock.monotonic())
        return self.runtime[job.job]

    def move(self, job: JobRecord, to: JobState, reason: str = "") -> None:
        job.move(to, reason)
        self.runtime_of(job).state_since = self.clock.monotonic()

    # ---- ingest -------------------------------------------------------------------------------

    async def ingest(self, item: Received, arrived: float | None = None) -> None:
        """One message from a node topic or a retained plan (a unit of the writer). ``arrived``:
        when it reached this process (monotonic): a node's silence is judged by when its
        messages arrived, not by when the writer got to them behind a backlog."""
        now = self.clock.monotonic() if arrived is None else arrived
        await self._ingest(item, now)
        while self.view.revived:
            node = self.view.revived.pop()
            await self.emit("node.joined", "heard from again after it was declared dead by silence", node=node)
            await self.apply(policy.on_node_joined(node, self.jobs.values()))

    async def _ingest(self, item: Received, now: float) -> None:
        match item.message:
            case NodeBirth() as birth:
                was = self.view.nodes.get(birth.node)
                was_drained = was.drained if was is not None and was.alive else None
                what = self.view.on_birth(birth, now)
                if not what:
                    self.log_error("node.refused", OverflowError(f"{self.view.max_nodes} live nodes"), node=birth.node)
                    return
                self.learning_of(birth.node)
                if what == "joined" and len(self.learning) > self.view.max_nodes:
                    for gone in [n for n in self.learning if n not in self.view.nodes]:
                        del self.learning[gone]  # the view made room: what was learned of it goes too
                if what == "joined":
                    await self.emit("node.joined", f"session {birth.session}", node=birth.node)
                    await self.apply(policy.on_node_joined(birth.node, self.jobs.values()))
                if was_drained is not None and was_drained != birth.drained:
                    why = "node.drained" if birth.drained else "node.undrained"
                    await self.emit(why, node=birth.node)
                    await self.apply(policy.on_nodes_changed(birth.node, why, self.jobs.values()))
            case NodeDeath() as death:
                if self.view.on_death(death, now):
                    await self.node_lost(death.node, self.view.nodes[death.node].death_reason, death.reason)
            case Telemetry() as t:
                self.view.on_telemetry(t, now)
            case LatencyReport() as report:
                await self.on_latency(report, now)
            case Heartbeat() as hb:
                await self.on_heartbeat(hb, now)
            case Plan() as plan:
                await self.on_retained_plan(plan)

    async def node_lost(self, node: str, reason: str, how: str = "lost") -> None:
        # a clean shutdown is routine (info); a lost node is news (warning)
        await self.emit("node.dead", reason, level="info" if how == "shutdown" else "warning", node=node)
        self.learning_of(node).training_since = None
        await self.apply(policy.on_node_lost(node, reason, self.jobs.values()))

    def intensity_of(self, node: str) -> float:
        state = self.view.nodes.get(node)
        if state is None:
            return 0.0
        live = [
            hb.intensity for job, hb in state.heartbeats.items() if job in self.jobs and not self.jobs[job].terminal
        ]
        return max(live, default=0.0)

    async def on_latency(self, report: LatencyReport, now: float) -> None:
        before = self.view.nodes.get(report.node)
        was_profiling = before is not None and before.profiling
        self.view.on_latency(report, now)
        state = self.view.nodes.get(report.node)
        if state is None or not state.alive or report.profiling:
            return  # a profiled board's latency is the profile's stressors' and driven rate's
        if was_profiling:  # its profile is over: a job waiting for it since it refused is planned again
            await self.apply(
                policy.Replan(j.job, f"profile over {report.node}")
                for j in self.jobs.values()
                if j.state == JobState.RECOVERING and policy.profile_over(self.runtime_of(j), report.node, now)
            )
        using = self.jobs_using(report.node)
        learn = self.learning_of(report.node)
        self.memory_dirty.add(report.node)  # its observations and calibration (saved by remember)
        # Before the node has trained a whole latency window in its current generation, its LC
        # window mixes the worker's start (imports, data loading, re-forming the group) with
        # training at an intensity it has not yet reported: neither an observation of p95(u) nor
        # a reason to lower the cap.
        # Nor is a window that saw the board's pre-flight check for a job (see NodeLearning.in_check).
        # Its training must be of a current plan's generation: a node left out of a plan and put
        # back into a later one kept the training_since of its old generation (a non-participant's
        # heartbeats are not read), so its new worker's start passed for steady training: an
        # observation at a cap it did not run, a forecast check and a miss that re-planned at once.
        gens = {j.generation for j in using}
        since = learn.training_since
        steady = not using or (since is not None and since[0] in gens and now - since[1] >= report.window_s)
        steady = steady and not learn.in_check(now, report.window_s)
        u = self.intensity_of(report.node) if using else 0.0
        # every report feeds the apps' request-rate forecasts and the node's background CPU; a
        # steady one is also an observation of p95(u)
        learn.observe_latency(report, now, state.telemetry, state.birth.cpu_cores, u, steady)
        if not steady:
            return
        if using:
            learn.steady_at = now  # an observation at the node's current cap (see settled)
        current = max(
            (a.intensity_cap for j in using if j.plan for a in j.plan.assignments if a.node == report.node),
            default=learn.cap_limit,
        )
        await self.apply(policy.on_latency(report.node, report.apps, learn, using, current, now))

    async def on_heartbeat(self, hb: Heartbeat, now: float) -> None:
        job = self.jobs.get(hb.job)
        member = self.view.nodes.get(hb.node)
        if member is not None and job is not None and policy.finished_earlier(hb, job):
            self.view.touch(hb.node, now)  # (a node thought dead by silence is alive again)
            self.learning_of(hb.node).training_since = None
            job.step = job.total_steps
            job.samples_done = job.samples_after(job.step)
            job.loss = hb.loss if hb.loss is not None else job.loss
            why = f"{job.step} steps, {job.samples_done} samples (done in generation {hb.generation})"
            await self.apply([policy.Complete(job.job, why)])
            return
        if (
            member is None  # no birth yet (e.g. after a restart): it must say hello first
            or not member.alive
            or job is None
            or job.terminal
            or job.plan is None
            or hb.generation != job.generation
            or not any(a.node == hb.node and a.rank == hb.rank for a in job.plan.assignments)
        ):  # not a participant of the current plan at that rank: a sign of life, nothing more
            self.view.touch(hb.node, now)
            return
        self.view.on_heartbeat(hb, now)
        learn = self.learning_of(hb.node)
        learn.observe(hb, now)
        self.memory_dirty.add(hb.node)  # its throughput and start-up (saved by remember)
        if hb.state == "training" and hb.allreduce_s > 0:  # its all-reduce shows its link at least this fast
            nbytes = job.model_bytes // 2 if job.plan.grad_dtype == "float16" else job.model_bytes
            peers = [self.learning_of(a.node).link.believed for a in job.plan.assignments if a.node != hb.node]
            slowest = min((b for b in peers if b is not None), default=None)
            learn.link.bound(ring_floor_bps(len(job.plan.assignments), nbytes, hb.allreduce_s), slowest)
        if hb.state == "training":
            if learn.training_since is None or learn.training_since[0] != hb.generation:
                learn.training_since = (hb.generation, now)
        else:
            learn.training_since = None
        beats = [
            self.view.nodes[a.node].heartbeats.get(job.job) if a.node in self.view.nodes else None
            for a in job.plan.assignments
        ]
        current = [b for b in beats if b is not None and b.generation == job.generation]
        # every participant waiting in the all-reduce (none still computing its share) this long:
        # the links are what holds the step, so a drop a new probe found is confirmed
        waiting = max(LINK_PENDING_CONFIRM_S, 2 * job.plan.predicted_step_s)
        stalled = all(b.pending_s >= waiting for b in current)
        # or the group formed after a stall: every rank's probe is in (sent before the state sync),
        # and the lowest names the link that stalled it (a collapsed link re-plans before the sync
        # over it: the links bench's link at 1 % took 8 s to sync a 9 MB model)
        probed = self.runtime_of(job).stall_probe == job.generation and all(
            self.learning_of(b.node).link.fresh == (job.job, job.generation) for b in current
        )
        if len(current) == len(job.plan.assignments) and (stalled or probed):
            confirm_stalled_drops([self.learning_of(b.node).link for b in current])
        was = learn.link.confirmed_drop()
        expected = None
        if hb.pending_s > 0:  # a long all-reduce: is it longer than the links known now explain?
            nodes = node_models(self.view, self.learning, job, None, self.comm, now, self.tables)
            expected = plan_step_s(job.plan, nodes, job, NetworkModel(latency_s=DEFAULT_LATENCY_S))
        actions = policy.on_heartbeat(
            hb,
            job,
            self.runtime_of(job),
            now,
            beats={b.node: b for b in current},
            link_drop=(learn.link.believed or 0.0, was) if was is not None else None,
            expected_step_s=expected,
        )
        if actions:
            await self.apply(actions)
            return
        if len(current) == len(job.plan.assignments) and hb.pending_s == 0:
            ratio = allreduce_efficiency(current, self.learning)
            if ratio is not None:
                self.comm.observe(job.job, ratio)
        if len(current) == len(job.plan.assignments):
            job.step = max(job.step, min(b.step for b in current))
            job.samples_done = job.samples_after(job.step)
            losses = [b.loss for b in current if b.loss is not None]
            # each loss is within MAX_FLOAT, their mean may round past it (ten of 1e300)
            job.loss = max(-MAX_FLOAT, min(MAX_FLOAT, statistics.fmean(losses))) if losses else job.loss
            # complete once the model is saved: rank 0 writes model.pt before it reports done
            saved = any(b.rank == 0 and b.state == "done" for b in current)
            if all(b.state == "done" for b in current) or (job.step >= job.total_steps and saved):
                await self.apply([policy.Complete(job.job, f"{job.step} steps, {job.samples_done} samples")])

    async def on_retained_plan(self, plan: Plan) -> None:
        """A plan on the broker (retained at start, or our own coming back): the store is the
        truth. A plan of no job here, or of a finished one, is cleared; one that differs from the
        stored plan (another generation or session) is replaced by it."""
        job = self.jobs.get(plan.job)
        if job is None or job.terminal or job.plan is None:
            if job is None or job.terminal:
                log.info("plan.cleared_unknown", job=plan.job, generation=plan.generation, session=plan.session)
                await self.send(self.topics.job_plan(plan.job), None, qos=1, retain=True)
            return
        if plan.generation != job.generation or plan.session != self.session:
            await self.publish_plan(job)

    # ---- actions ------------------------------------------------------------------------------

    async def apply(self, actions: Iterable[policy.Action]) -> None:
        """Execute the policy's actions. One that fails fails its job (with the reason), never
        the writer."""
        for action in actions:
            name = getattr(action, "job", None)
            job = self.jobs.get(name) if isinstance(name, str) else None
            try:
                await self._execute(action, job)
            except Exception as exc:
                self.log_error("action.failed", exc, action=type(action).__name__, job=name)
                if job is not None and not job.terminal:
                    with contextlib.suppress(Exception):
                        await self.fail(job, f"internal error ({type(action).__name__}): {type(exc).__name__}: {exc}")

    async def _execute(self, action: policy.Action, job: JobRecord | None) -> None:
        match action:
            case policy.SetCap(node=node, limit=limit, good_reports=good, last_decrease=at, why=why):
                learn = self.learning_of(node)
                if (learn.cap_limit, learn.last_decrease) != (limit, at):
                    self.remember_soon = True
                self.memory_dirty.add(node)
                learn.cap_limit, learn.good_reports, learn.last_decrease = limit, good, at
                if why:
                    await self.emit("lc.violation", why, level="warning", node=node, cap=limit)
            case _ if job is None or job.terminal:
                return  # the job is gone or finished since the decision
            case policy.MarkRecovering(why=why):
                if job.state == JobState.RUNNING:
                    self.move(job, JobState.RECOVERING, why)
                    await self.save(job)
            case policy.Replan(why=why):
                event, _, detail = why.partition(" ")
                node, _, words = detail.partition(" ")
                if event in ("lc.forecast", "lc.violation"):  # a node left out now is held (policy.lc_hold)
                    self.runtime_of(job).lc_risk[node.rstrip(":")] = self.clock.monotonic()
                if event in ("lc.forecast", "link.changed"):  # the other causes have their own events
                    await self.emit(event, words.lstrip(": ") or detail, node=node.rstrip(":"), job=job.job)
                self.dirty.add(job.job)
            case policy.Reform(why=why):
                self.runtime_of(job).stalled = job.generation
                await self.emit("link.stalled", why, level="warning", job=job.job)
                self.reform.add(job.job)
                self.dirty.add(job.job)
            case policy.LostPeers(generation=gen, node=node, since=since):
                self.runtime_of(job).lost_peers = (gen, since, node)
            case policy.Exclude(node=node, why=why) | policy.Hold(node=node, why=why):
                if isinstance(action, policy.Hold):
                    await self.hold_profiled(job, node)
                else:
                    job.excluded[node] = why[:MAX_REASON]
                    await self.emit("node.excluded", why, level="warning", node=node, job=job.job)
                if job.state == JobState.RUNNING:
                    self.move(job, JobState.RECOVERING, f"{node} left out: {why}")
                await self.save(job)
                self.dirty.add(job.job)
            case policy.Fail(reason=reason):
                await self.fail(job, reason)
            case policy.Complete(why=why):
                self.move(job, JobState.COMPLETED, why)
                await self.finish(job)
            case policy.TryImprove():
                await self.improve(job)
            case policy.Publish() | policy.Wait():
                raise AssertionError(f"{action} is an outcome of replan, not an event's action")

    async def fail(self, job: JobRecord, reason: str) -> None:
        self.move(job, JobState.FAILED, reason)
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
        self.runtime.pop(job.job, None)
        self.dirty.discard(job.job)
        await self.save(job)
        await self.send(self.topics.job_plan(job.job), None, qos=1, retain=True)
        await self.publish_progress(job)
        level = "info" if job.state == JobState.COMPLETED else "warning"
        await self.emit(f"job.{job.state.value}", job.reason, level=level, job=job.job)
        finished = [j for j in self.jobs.values() if j.terminal]
        for old in sorted(finished, key=lambda j: j.updated)[: max(0, len(finished) - MAX_FINISHED_IN_MEMORY)]:
            del self.jobs[old.job]  # still in the store

    async def apply_cancel(self, job: JobRecord, reason: str) -> None:
        self.move(job, JobState.CANCELLED, reason)
        await self.finish(job)

    async def remove(self, name: str) -> None:
        """Forget a finished job (memory, store, its retained progress): its id is free again."""
        self.jobs.pop(name, None)
        self.runtime.pop(name, None)
        await asyncio.to_thread(self.store.delete, name)
        await self.send(self.topics.job_progress(name), None, qos=1, retain=True)
        await self.emit("job.removed", job=name)

    # ---- planning -----------------------------------------------------------------------------

    async def decide(self, job: JobRecord, keep_out: Mapping[str, str] | None = None) -> PlanDecision:
        """The planner's decision for ``job`` now; ``keep_out``: nodes that may not take part in
        it (node -> why), besides those left out of the job or busy with other jobs."""
        now = self.clock.monotonic()
        busy = busy_elsewhere(self.view, self.jobs.values(), job) | dict(keep_out or {})
        # held for a refusal while being profiled; and past the hold while its reports say so
        profiled = self.runtime_of(job).profiled
        busy |= policy.profiled_out(profiled, now)
        busy |= {
            n: "being profiled (its LC reports say so)"
            for n in profiled
            if (state := self.view.nodes.get(n)) is not None and state.profiling
        }
        nodes = node_models(self.view, self.learning, job, busy, self.comm, now, self.tables)
        # what each LC cap was planned from (the model, its live anchor and widening): said with
        # the plan, so that a run whose caps look low can be read afterwards
        bases = [f"{n.node}/{a.name}: {a.basis}" for n in nodes for a in n.lc_apps if a.basis]
        self.runtime_of(job).lc_models = "; ".join(bases)[:MAX_LC_MODELS]
        # each node's link latency is its own (NodeModel.latency_s): the planner takes the largest
        # of each participant set it weighs, so a node it does not choose slows no plan; this is
        # the latency of a node whose link is not probed yet
        net = NetworkModel(latency_s=DEFAULT_LATENCY_S)
        if job.spec.split == "uniform":
            return uniform_plan(nodes, job_model(job), net)
        if job.spec.split == "proportional":
            return proportional_plan(nodes, job_model(job), net)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._planner_thread, self.planner.plan, nodes, job_model(job), net)

    async def hold_profiled(self, job: JobRecord, node: str) -> None:
        """Leave ``node`` out of ``job``'s plans for a while: it refused the job because it is
        being profiled (``policy.Hold``; at submission, its pre-flight)."""
        rt = self.runtime_of(job)
        rt.profiled[node] = policy.profile_hold(rt.profiled.get(node), self.clock.monotonic())
        self.remember_soon = True
        why = (
            f"being profiled: left out of this job for {policy.PROFILE_HOLD_S:g} s, then asked again "
            f"(refusal {rt.profiled[node][1]} of {policy.PROFILE_STRIKES} before it is excluded for good)"
        )
        await self.emit("node.held", why, level="warning", node=node, job=job.job)

    def all_excluded(self, job: JobRecord) -> bool:
        """Every live node of the cluster is left out of this job."""
        alive = [s.node for s in self.view.alive()]
        return bool(job.excluded) and all(n in job.excluded for n in alive)

    async def improve(self, job: JobRecord) -> None:
        """Re-plan a running job when the throughput, interference and links learned since its
        plan promise a clearly shorter rest of the job (a smaller gain suffices when the
        participants stay: the group is kept)."""
        plan, rt = job.plan, self.runtime_of(job)
        if job.state != JobState.RUNNING or plan is None:
            return
        now = self.clock.monotonic()
        rt.planned_at = now  # checked: look again after the cool-down
        since, rt.improving = rt.improving, None  # kept below only while this check predicts it too
        learned = [self.learning.get(a.node) for a in plan.assignments]
        if any(n is None or n.throughput.observations < 2 for n in learned):
            return
        nodes = node_models(self.view, self.learning, job, None, self.comm, now, self.tables)
        current = plan_step_s(plan, nodes, job, NetworkModel(latency_s=DEFAULT_LATENCY_S))
        # nodes that must stay out of this improvement: an LC hold (its LC app took the node out
        # a moment ago) is known before planning; no room in its LC apps for a worker's start only
        # once a plan would put the node in, and then the improvement is planned again without it
        # (another node may still join; shares move)
        holds = policy.held_back((a.node for a in plan.assignments), rt.holds, rt.holds, now)
        keep_out = {n: "its LC hold lasts" for n in holds}
        # a board being profiled would refuse the plan (held out of the job, policy.Hold, and
        # excluded at its third refusal): an improvement (which can wait) leaves it out while its
        # reports say so. (Not the submit nor a forced re-plan: the flag outlasts the run by a
        # latency window, and a job submitted right after a profile, as the demo's is, would lose
        # that board.)
        current_nodes = {a.node for a in plan.assignments}
        keep_out |= {s.node: "being profiled" for s in self.view.alive() if s.profiling and s.node not in current_nodes}
        wanted = await self.decide(job, keep_out)
        if job.terminal or job.plan is not plan or not wanted.feasible:
            return  # changed while the planner ran, or nothing to improve to
        left = max(0, job.total_steps - job.step)
        decision, crowded = await self.without_crowded(job, current_nodes, wanted, keep_out)
        if crowded and not job.terminal and job.plan is plan:
            keeps = continues_group(plan, wanted, self.view, job.job)
            if policy.should_improve(left, current, wanted.step_s, keeps, reform_s=wanted.startup_s):
                await self.say_no_room(job, crowded, now)  # an improvement waits for them
        if decision is None:
            return
        keeps = continues_group(plan, decision, self.view, job.job)
        predicts = f"{decision.step_s * 1000:.0f} ms per step instead of {current * 1000:.0f} ms"
        if policy.should_improve(left, current, decision.step_s, keeps, reform_s=decision.startup_s):
            kept_s = ""
            if keeps:  # published once every check for SHARE_PERSIST_S predicts it (a noisy rate's swing does not)
                kept, held = policy.held_gain(since, plan.generation, now)
                if not held:
                    rt.improving = kept
                    return
                kept_s = f" (same group: no re-form; predicted at every check for {now - kept[1]:.1f} s)"
            what = f"learned rates and links predict {predicts}{kept_s}"
            await self.emit("plan.improving", what, job=job.job)
            await self.replan(job, decision)
            return
        rises = []
        if keeps and job.spec.lc_control == "forecast" and decision.step_s < current:
            # only caps a knowledge-base surrogate sets climb (a linear model's rise neither counts nor blocks)
            climbers = [(a.node, a.intensity_cap) for a in plan.assignments if self.surrogate_capped(a.node)]
            settled = [node for node, _ in climbers if self.settled(node, plan.generation, now)]
            rises = policy.cap_rises(climbers, decision.caps, settled)
        if rises:
            moves = ", ".join(f"{node} {old:.2f} -> {new:.2f}" for node, old, new in rises)
            what = f"live reports at the caps leave room: {moves}; {predicts} (same group: no re-form)"
            await self.emit("plan.climbing", what, job=job.job)
            await self.replan(job, decision)

    def crowded(self, current: Iterable[str], proposed: Iterable[str]) -> dict[str, list[tuple[str, float, float]]]:
        """The nodes of ``proposed`` not in ``current`` (a plan would start a worker there)
        without room in their LC apps for that start (:func:`policy.no_room_to_start`), with
        those apps. A node being profiled, or whose last report's window saw its pre-flight
        check, counts as having room: such a report says what the profile's stressors or the
        check cost its apps, not the room they have (a board checked at a submit would be left
        out of the job's first plan by its own check)."""
        current, proposed, now = set(current), list(proposed), self.clock.monotonic()
        apps = {}
        for n in proposed:
            state, learn = self.view.nodes.get(n), self.learning.get(n)
            if n in current or state is None or state.profiling:
                continue
            if learn is not None and learn.in_check(now, learn.window_s):
                continue
            apps[n] = [(a.app, a.p95_ms, a.deadline_ms) for a in state.latency.values() if a.count > 0]
        return policy.no_room_to_start(current, proposed, apps)

    async def with_room_to_start(self, job: JobRecord, decision: PlanDecision) -> PlanDecision:
        """A forecast job's plan that cannot wait (its first, a forced re-plan) does not start a
        worker beside an LC app without room for the start either: it is planned again without
        such nodes (``lc.no_room``), and again while that plan brings in other such nodes (at
        most once per node), unless no plan without them is feasible (then ``decision``: the
        job must train somewhere). An improvement waits instead (:meth:`improve`)."""
        if not decision.feasible:
            return decision
        current = [a.node for a in job.plan.assignments] if job.plan is not None else []
        plan, generation = job.plan, job.generation
        chosen, crowded = await self.without_crowded(job, current, decision, {})
        if crowded and chosen is not None:
            await self.say_no_room(job, crowded, self.clock.monotonic())
        elif crowded and not job.terminal and job.plan is plan and job.generation == generation:
            await self.say_crowded_start(job, crowded)
        return decision if chosen is None else chosen

    async def say_crowded_start(self, job: JobRecord, crowded: dict[str, list[tuple[str, float, float]]]) -> None:
        """``lc.crowded_start`` (a warning): no plan without these nodes was feasible, so the
        job's workers start beside LC apps without room for the start (their reports may go
        over in it; caps still bound the training). Was silent until 2026-12-06. Said again
        only for another set of nodes, or NO_ROOM_REPEAT_S later."""
        if not policy.say_again(self.runtime_of(job).said, "lc.crowded_start", tuple(crowded), self.clock.monotonic()):
            return
        await self.emit(
            "lc.crowded_start",
            "no plan without nodes whose LC apps lack room for a worker's start (x"
            f"{policy.START_RISE:g}) is feasible: the job starts on them anyway, at their caps "
            f"({_crowded_words(crowded)})",
            level="warning",
            job=job.job,
        )

    async def without_crowded(
        self, job: JobRecord, current: Collection[str], decision: PlanDecision, keep_out: Mapping[str, str]
    ) -> tuple[PlanDecision | None, dict[str, list[tuple[str, float, float]]]]:
        """``decision`` planned again, besides ``keep_out``, without the nodes it would bring in
        whose LC apps have no room for a worker's start (:meth:`crowded`), and again while that
        plan brings in others (at most once per node); a forecast job's rule only. Returns the
        last plan, None where one was infeasible or the job changed while the planner ran, and
        the crowded nodes (sorted)."""
        if job.spec.lc_control != "forecast":  # the rule is the forecast controller's
            return decision, {}
        plan, generation = job.plan, job.generation
        keep_out = dict(keep_out)
        crowded: dict[str, list[tuple[str, float, float]]] = {}
        while more := self.crowded(current, decision.participants):
            crowded |= more
            keep_out |= {n: "no room in its LC apps for a worker's start" for n in more}
            decision = await self.decide(job, keep_out)
            if job.terminal or job.plan is not plan or job.generation != generation or not decision.feasible:
                return None, dict(sorted(crowded.items()))
        return decision, dict(sorted(crowded.items()))

    async def say_no_room(self, job: JobRecord, crowded: dict[str, list[tuple[str, float, float]]], now: float) -> None:
        """``lc.no_room``: a plan would put these nodes into the job, and is made without them
        (an improvement waits for their room). Said again only for another set of nodes, or
        NO_ROOM_REPEAT_S later."""
        if not policy.say_again(self.runtime_of(job).said, "lc.no_room", tuple(crowded), now):
            return
        await self.emit(
            "lc.no_room",
            f"not put into the job while a worker's start (x{policy.START_RISE:g}) would take its LC app over: "
            f"{_crowded_words(crowded)}",
            job=job.job,
        )

    def surrogate_capped(self, node: str) -> bool:
        """The node's LC caps came from a knowledge-base cap table at the last plan."""
        learn = self.learning.get(node)
        return learn is not None and any(m.table is not None for m in learn.interference.values())

    def settled(self, node: str, generation: int, now: float) -> bool:
        """The node has trained in ``generation`` for a latency window and CLIMB_SETTLE_S more,
        and a steady report taken at its cap in that time has reached the models
        (:func:`policy.cap_rises`)."""
        learn = self.learning.get(node)
        if learn is None or learn.training_since is None or learn.training_since[0] != generation:
            return False
        since = learn.training_since[1]
        return now - since >= learn.window_s + policy.CLIMB_SETTLE_S and learn.steady_at >= since + learn.window_s

    async def replan(self, job: JobRecord, decision: PlanDecision | None = None) -> None:
        if job.terminal:
            return
        rt = self.runtime_of(job)
        if job.state == JobState.QUEUED:
            self.move(job, JobState.PLANNING)
        rt.planned_at = self.clock.monotonic()
        generation = job.generation
        if decision is None:
            decision = await self.with_room_to_start(job, await self.decide(job))
        if job.terminal or job.generation != generation:
            return  # cancelled or re-planned while the planner ran
        feasible, reason = decision.feasible, decision.reason
        if not feasible and self.all_excluded(job):
            left = "; ".join(f"{n}: {w}" for n, w in list(job.excluded.items())[:5])
            await self.fail(job, f"every node is left out of the job ({left})")
            return
        outcome = policy.after_decision(job, feasible, reason, rt, self.clock.monotonic(), self.cfg.recovery_timeout_s)
        match outcome:
            case policy.Fail(reason=why):
                await self.fail(job, why)
            case policy.Wait(reason=why, recovering=recovering):
                if recovering and await self.pause_for_lc(job, decision):
                    return
                if recovering:  # e.g. its last node drained: the current plan stays in effect
                    self.move(job, JobState.RECOVERING)
                    await self.emit("plan.infeasible", reason, level="warning", job=job.job)
                job.reason = why[:MAX_REASON]
                await self.save(job)
            case policy.Publish():
                if job.state == JobState.RUNNING and job.job not in self.reform and same_assignment(job.plan, decision):
                    return  # the plan in effect already is this one (two triggers, one change)
                await self.publish_new_plan(job, decision)

    async def pause_for_lc(self, job: JobRecord, decision: PlanDecision) -> bool:
        """No feasible plan because LC apps leave no room, while the job's group trains: the
        participants left out for their LC app go on at PAUSE_CAP in the same group
        (``plan.paused``) instead of at the cap just found unsafe; the job stays running, so
        improvements look for room every second. False where this does not apply (another
        cause, an LC-unaware job, a group not intact): the job waits as before."""
        plan = job.plan
        if plan is None or job.spec.lc_control == "unaware" or job.spec.split != "planned":
            return False
        paused = policy.paused_caps([(a.node, a.intensity_cap) for a in plan.assignments], decision.excluded)
        if paused is None:
            return False
        caps, lowered = paused
        slower = max(a.intensity_cap / max(1e-6, caps[a.node]) for a in plan.assignments)
        same = PlanDecision(
            feasible=True,
            participants=tuple(a.node for a in plan.assignments),
            shares={a.node: a.share for a in plan.assignments},
            caps=caps,
            step_s=plan.predicted_step_s * slower,  # compute-bound: at most this much slower
            allreduce_s=plan.predicted_allreduce_s,
            ideal_makespan_s=plan.ideal_makespan_s,
            grad_dtype=plan.grad_dtype,
        )
        if lowered and not continues_group(plan, same, self.view, job.job):
            return False
        job.reason = f"paused for LC apps: {decision.reason}"[:MAX_REASON]
        if not lowered:  # paused already: it stays so until an improvement finds room
            await self.save(job)
            return True
        nodes = ", ".join(n for n in same.participants if caps[n] < 1e-9 + policy.PAUSE_CAP)
        what = f"no plan keeps every LC app under its deadline ({decision.reason}); {nodes} at {policy.PAUSE_CAP:g}"
        await self.emit("plan.paused", what + " in the same group until there is room", level="warning", job=job.job)
        await self.publish_new_plan(job, same)
        return True

    async def publish_new_plan(self, job: JobRecord, decision: PlanDecision) -> None:
        try:
            port = rendezvous_port(job, self.jobs.values(), self.cfg.rendezvous_port, self.cfg.rendezvous_ports)
        except ValueError as exc:  # every port of the range is held by other running jobs
            job.reason = f"waiting: {exc}"[:MAX_REASON]
            await self.save(job)
            return
        rt = self.runtime_of(job)
        keeps = continues_group(job.plan, decision, self.view, job.job) and job.job not in self.reform
        if not keeps:  # only a plan that re-forms the group can keep a job from stepping
            stuck = policy.without_progress(job, rt)
            if stuck is not None:
                await self.fail(job, stuck.reason)
                return
            rt.plans_without_progress = rt.plans_without_progress + 1 if rt.planned_step == job.step else 0
            rt.planned_step = job.step
        generation = job.generation + 1
        rt.stall_probe = generation if job.job in self.reform else -1
        self.reform.discard(job.job)
        await self.hold_lc_drops(job, rt, decision)
        plan = to_plan(job, decision, self.view, generation, port, self.clock.time(), self.session, keeps)
        job.generation, job.plan = generation, plan
        rt.lost_peers = None
        self.forget_heartbeats(job)
        if job.state in (JobState.PLANNING, JobState.RECOVERING):
            self.move(job, JobState.RUNNING, "")
        job.reason = ""
        await self.save(job)  # before publishing: the store is never behind the broker
        await self.publish_plan(job)
        shares = ", ".join(f"{n}:{decision.shares[n]}@{decision.caps[n]:.2f}" for n in decision.participants)
        await self.emit(
            "plan.published",
            f"generation {generation}: {shares}",
            job=job.job,
            generation=generation,
            step_s=round(decision.step_s, 4),
            makespan_s=round(plan.predicted_makespan_s, 1),
            allreduce_s=round(decision.allreduce_s, 4),
            same_group=plan.same_group,
            grad_dtype=plan.grad_dtype,
            lc_models=rt.lc_models,
        )
        rt = self.runtime_of(job)
        left_out = {n: w for n, w in decision.excluded.items() if w.startswith("not worth")}
        for node, why in left_out.items():
            if node not in rt.left_out:  # said once, when the planner starts leaving it out
                await self.emit("node.left_out", why, node=node, job=job.job, generation=generation)
        rt.left_out = tuple(left_out)

    async def hold_lc_drops(self, job: JobRecord, rt: policy.JobRuntime, decision: PlanDecision) -> None:
        """The participants this plan leaves out because their LC app re-planned the job (within
        the last LC_RISK_S) are held out of its improvements (:func:`policy.lc_hold`)."""
        now = self.clock.monotonic()
        before = [a.node for a in job.plan.assignments] if job.plan is not None else []
        for node in before:
            if node in decision.participants or now - rt.lc_risk.get(node, -1e9) > LC_RISK_S:
                continue
            rt.holds[node] = policy.lc_hold(rt.holds.get(node), now)
            self.remember_soon = True
            until, strikes = rt.holds[node]
            what = f"left out for its LC app: not put back by an improvement for {until - now:.0f} s"
            what += f" (drop {strikes} in a row)"
            await self.emit("lc.hold", what, node=node, job=job.job)

    async def publish_plan(self, job: JobRecord) -> None:
        """(Re)publish the stored plan of an unfinished job under this coordinator's session: a
        node adopts the same generation without re-forming."""
        if job.plan is None or job.terminal:
            return
        if job.plan.session != self.session:
            job.plan = msgspec.structs.replace(job.plan, session=self.session)
            await self.save(job)
        await self.send(self.topics.job_plan(job.job), job.plan, qos=1, retain=True)

    async def tick(self) -> None:
        now = self.clock.monotonic()
        for node in self.view.check(now):
            await self.node_lost(node, self.view.nodes[node].death_reason)
        warm_start = False
        if not self._warm:
            since = self._warm_since
            if since is None or now - since < self.cfg.missed_heartbeats * self.cfg.node_interval_s:
                return
            self._warm = warm_start = True
        alive = {s.node for s in self.view.alive()}
        await self.apply(
            policy.on_tick(list(self.jobs.values()), self.runtime, alive, now, warm_start, self.cfg.recovery_timeout_s)
        )
        for name in sorted(self.dirty):
            self.dirty.discard(name)
            job = self.jobs.get(name)
            if job is not None:
                await self.replan_or_fail(job)

    async def replan_or_fail(self, job: JobRecord) -> None:
        """:meth:`replan`; an error while planning fails this job with the reason, nothing else
        (a submit whose first plan raised stayed `planning` for ever)."""
        try:
            await self.replan(job)
        except Exception as exc:
            self.log_error("replan.failed", exc, job=job.job)
            if not job.terminal:
                await self.fail(job, f"internal error while planning: {type(exc).__name__}: {exc}")

    async def publish_progress(self, job: JobRecord) -> None:
        rate = 0.0
        if job.plan is not None:
            for a in job.plan.assignments:
                state = self.view.nodes.get(a.node)
                hb = state.heartbeats.get(job.job) if state else None
                if hb is not None and hb.generation == job.generation:
                    rate = min(MAX_FLOAT, rate + hb.samples_per_s)  # each bounded, the sum too
        remaining = max(0, job.total_steps - job.step) * job.spec.global_batch
        # a rate under MIN_RATE is no rate (a participant's 1e-300 samples/s, while the others
        # reported none yet, gave an eta of 3e304 s, over the schema: a retained progress that
        # every reader refused; attacker review, 2026-12-06)
        eta = min(MAX_FLOAT, remaining / rate) if rate >= MIN_RATE and not job.terminal else None
        # the LC misses on this job's own boards (each node's own count: bounded by the wire, a
        # sum of many is capped: 2**53 from two apps made every job's progress undecodable)
        mine = {a.node for a in job.plan.assignments} if job.plan is not None else set()
        counted = (s for s in self.view.alive() if s.node in mine)
        violations = min(MAX_INT, sum(a.violations for s in counted for a in s.latency.values()))
        progress = Progress(
            job=job.job,
            state=job.state,
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
        await self.send(self.topics.job_progress(job.job), progress, qos=1, retain=True)

    async def reconcile(self) -> None:
        """(On every connection, as a unit of the writer.) The broker follows the store: the
        stored plan of every unfinished job is published again under this session (nodes adopt
        the same generation without re-forming); the retained plan of every finished job in
        memory is cleared, once per start. A retained plan the store does not know is cleared
        when it arrives (``on_retained_plan``)."""
        self.stale = False
        if self._warm_since is None:
            self._warm_since = self.clock.monotonic()
        for job in list(self.jobs.values()):
            if not job.terminal:
                await self.publish_plan(job)
            elif not self._cleared_finished:
                await self.send(self.topics.job_plan(job.job), None, qos=1, retain=True)
        self._cleared_finished = True
        log.info("coordinator.reconciled", jobs=len(self.jobs), session=self.session)

    def close(self) -> None:
        self._planner_thread.shutdown(wait=False, cancel_futures=True)

    # ---- loops --------------------------------------------------------------------------------

    async def ingest_loop(self) -> None:
        async with await self.transport.subscribe(self.topics.all_nodes(), qos=1, maxsize=100_000) as sub:
            async for item in sub:
                if not isinstance(item, Received) or isinstance(item.message, Cleared):
                    continue
                arrived = self.clock.monotonic()
                if not self._per_node.allow(item.topic.node or "", arrived):
                    self.dropped += 1  # one node flooding its own topics cannot starve the others
                    continue
                self.offer(lambda item=item, arrived=arrived: self.ingest(item, arrived))  # type: ignore[misc]

    async def plan_watch_loop(self) -> None:
        async with await self.transport.subscribe(self.topics.all_jobs("plan"), qos=1) as sub:
            async for item in sub:
                if isinstance(item, Received) and isinstance(item.message, Plan):
                    self.offer(lambda item=item: self.ingest(item))  # type: ignore[misc]

    async def tick_loop(self) -> None:
        last_progress = last_remember = 0.0
        while True:
            await self.in_writer(self.tick)
            now = self.clock.monotonic()
            if now - last_progress >= 1.0:
                last_progress = now
                await self.in_writer(self._publish_all_progress)
            if self.remember_soon or now - last_remember >= REMEMBER_EVERY_S:
                last_remember = now
                await self.in_writer(self.remember)
            await self.clock.sleep(min(0.25, self.cfg.node_interval_s / 2))

    async def _publish_all_progress(self) -> None:
        for job in list(self.jobs.values()):
            if not job.terminal:
                await self.publish_progress(job)

    def summary(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "version": __version__,
            "nodes": len(self.view.nodes),
            "alive": len(self.view.alive()),
            "jobs": {s.value: sum(j.state == s for j in self.jobs.values()) for s in JobState},
            "uptime_s": round(self.clock.monotonic() - self.started, 1),
            "dropped": self.dropped,
        }


def _crowded_words(crowded: Mapping[str, list[tuple[str, float, float]]]) -> str:
    """``n1: detector at 30.1 ms of 34.2 ms, ...``: the crowded nodes' apps, their p95 and deadline."""
    return ", ".join(
        f"{n}: {app} at {p95:.1f} ms of {dl:.1f} ms" for n, apps in crowded.items() for app, p95, dl in apps
    )
