"""What the demo sees of its cluster, the way an operator would: everything it shows and
reports comes from the cluster's MQTT topics (plans, heartbeats, LC latency, events, progress)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from dataclasses import dataclass, field

from deepedge.broker_schemas import (
    AppLatency,
    CoordinatorStatus,
    Event,
    Heartbeat,
    LatencyReport,
    NodeBirth,
    NodeDeath,
    Plan,
    Progress,
    Topics,
)
from deepedge.errors import DeepEdgeError
from deepedge.transport import Received, Subscription, Transport

__all__ = ["AppRecord", "ClusterWatch"]

# A report's window counts as trained-in if a training heartbeat came up to this long before it:
# heartbeats are periodic (the demo's every 0.5 s, a board's every few seconds), a window's first
# training moments may fall between two.
HEARTBEAT_SLACK_S = 2.0


@dataclass
class AppRecord:
    """One LC app's latency while the job ran, from its node's reports (p95 over the node's
    sliding window; a violation is a report whose p95 is over the deadline). Every report while
    the job runs counts, the workers' start included (a report over the deadline then is a miss
    like any other); those whose window overlaps the job's start (workers importing torch and
    loading data) are also counted in ``startup_*``, to show where misses happen, and those whose
    window saw no worker of the job training anywhere in the cluster in ``untrained_violations``
    (before the first step: the workers starting, importing torch and loading data; later: the job
    waiting for room, or the app's own noise; not a capped worker's training), and those whose
    own board was in none of the job's plans during the window in ``offboard_violations`` (on
    separate boards the job could not have caused those; on the emulated cluster, whose boards
    share one machine, it may have)."""

    node: str
    app: str
    latest: AppLatency | None = None
    deadline_ms: float | None = None
    reports: int = 0
    violations: int = 0
    startup_reports: int = 0
    startup_violations: int = 0
    untrained_violations: int = 0
    offboard_violations: int = 0
    worst_p95_ms: float = 0.0
    over: list[tuple[float, float]] = field(default_factory=list)  # (report ts, p95) of each violation
    series: list[tuple[float, float, bool]] = field(default_factory=list)  # (report ts, p95, trained) of each counted

    @property
    def p95s(self) -> list[float]:
        """The p95 of each counted report, in order."""
        return [p for _, p, _ in self.series]

    def observe(self, a: AppLatency, phase: str, ts: float = 0.0, trained: bool = True, own: bool = True) -> None:
        """``phase``: "idle" (not counted), "startup" or "steady"; ``trained``: a worker of the
        job trained somewhere during the report's window; ``own``: this app's board was in a plan of
        the job during it."""
        self.latest = a
        if a.deadline_ms is not None:
            self.deadline_ms = a.deadline_ms
        if phase == "idle" or a.count == 0:
            return
        over = a.deadline_ms is not None and a.p95_ms > a.deadline_ms
        if phase == "startup":
            self.startup_reports += 1
            self.startup_violations += over
        self.reports += 1
        self.series.append((ts, a.p95_ms, trained))
        self.worst_p95_ms = max(self.worst_p95_ms, a.p95_ms)
        if over:
            self.violations += 1
            self.untrained_violations += not trained
            self.offboard_violations += not own
            self.over.append((ts, a.p95_ms))


@dataclass
class ClusterWatch:
    topics: Topics
    job: str | None = None
    counting_lc: bool = False  # count LC reports (while the job runs)
    alive: dict[str, bool] = field(default_factory=dict)
    plans: dict[int, Plan] = field(default_factory=dict)
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)
    beats: list[Heartbeat] = field(default_factory=list)  # this job's, in arrival order
    training_ts: list[float] = field(default_factory=list)  # sorted: this job's heartbeats of a worker training
    apps: dict[str, AppRecord] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    progress: Progress | None = None
    coordinator_online: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    failed: BaseException | None = None  # what stopped :meth:`run` (a bug in :meth:`on`): waits end at once

    def on(self, item: Received) -> None:
        match item.message:
            case NodeBirth(node=n):
                self.alive[n] = True
            case NodeDeath(node=n):
                self.alive[n] = False
            case Plan() as p if p.job == self.job:
                self.plans[p.generation] = p
            case Heartbeat() as hb if hb.job == self.job:
                self.heartbeats[hb.node] = hb
                self.beats.append(hb)
                if hb.state == "training" and hb.intensity > 0:
                    bisect.insort(self.training_ts, hb.ts)
            case LatencyReport() as r:
                first = self.first_step_ts()
                phase = "idle" if not self.counting_lc else "startup"
                if phase == "startup" and first is not None and r.ts >= first + r.window_s:
                    phase = "steady"
                since = r.ts - r.window_s - HEARTBEAT_SLACK_S
                trained = self.trained_between(since, r.ts)
                own = self.planned_between(since, r.ts, r.node)
                for a in r.apps:
                    self.apps.setdefault(a.app, AppRecord(r.node, a.app)).observe(a, phase, r.ts, trained, own)
            case CoordinatorStatus(state=state):
                self.coordinator_online = state == "online"
            case Event() as e:
                self.events.append(e)
            case Progress() as p if p.job == self.job:
                self.progress = p
            case _:
                return
        self.changed.set()

    async def run(self, transport: Transport) -> None:
        filters = [
            self.topics.all_nodes(),
            self.topics.all_jobs(),
            self.topics.all_events(),
            self.topics.coordinator_status(),
        ]
        async with contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(await transport.subscribe(f, maxsize=100_000)) for f in filters]

            async def pump(sub: Subscription) -> None:
                try:
                    async for item in sub:
                        if isinstance(item, Received):
                            self.on(item)
                except Exception as exc:  # not a silent stop: whoever waits on the watch is told
                    self.failed = exc
                    self.changed.set()
                    raise

            await asyncio.gather(*(pump(s) for s in subs))

    def check(self) -> None:
        """Raise if :meth:`run` stopped on an error (what the demo shows would be stale)."""
        if self.failed is not None:
            raise DeepEdgeError(f"demo: its watch of the cluster stopped: {self.failed!r}") from self.failed

    # ---- derived ------------------------------------------------------------------------------

    @property
    def plan(self) -> Plan | None:
        return self.plans[max(self.plans)] if self.plans else None

    def trained_between(self, t0: float, t1: float) -> bool:
        """A worker of the job reported training (intensity > 0) at a time in [t0, t1]."""
        i = bisect.bisect_left(self.training_ts, t0)
        return i < len(self.training_ts) and self.training_ts[i] <= t1

    def planned_between(self, t0: float, t1: float, node: str) -> bool:
        """``node`` was in a plan of the job in effect at a time in [t0, t1] (a plan from its
        ``ts`` to the next one's): a worker of the job ran there, starting or training."""
        plans = [self.plans[g] for g in sorted(self.plans)]
        for i, p in enumerate(plans):
            ends = plans[i + 1].ts if i + 1 < len(plans) else float("inf")
            if p.ts <= t1 and ends >= t0 and any(a.node == node for a in p.assignments):
                return True
        return False

    def first_step_ts(self) -> float | None:
        return next((hb.ts for hb in self.beats if hb.state == "training" and hb.step >= 1), None)

    def event(self, name: str, node: str | None = None, after: float = 0.0) -> Event | None:
        return next(
            (e for e in self.events if e.event == name and (node is None or e.node == node) and e.ts >= after), None
        )
