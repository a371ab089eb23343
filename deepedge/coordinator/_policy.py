"""Where the coordinator decides to re-plan, fail or exclude: pure functions of what it knows
(jobs, the cluster view, what it learned, the time) that return actions, which the service
executes (Flower's ``Strategy`` / ``Server`` split). No I/O, no clock, no mutation of their
inputs: the state machine test drives them through thousands of random events.

Actions:
- ``Replan(job, why)``: plan the job again (a new generation) — or find it cannot run yet;
- ``MarkRecovering(job, why)``: a participant is gone; the current plan cannot complete;
- ``Exclude(job, node, why)``: leave a node out of this job (it refused the plan, its worker
  failed or crash-looped); followed by ``Replan``, or ``Fail`` when nobody is left;
- ``Hold(job, node, why)``: leave a node out of this job's plans for PROFILE_HOLD_S (it refused
  the plan because it is being profiled: busy, not unfit); followed by ``Replan``;
- ``Fail(job, reason)``, ``Complete(job, why)``: terminal;
- ``SetCap(node, limit, ...)``: the LC feedback's new cap limit for a node (AIMD); also sent,
  limit unchanged, to start the cool-down when the forecast re-plans a node before a miss;
- ``TryImprove(job)``: ask the planner whether learned rates and links promise a clearly
  shorter job;
- ``Reform(job, why)``: plan the job again in a new process group, even with the same
  participants (its all-reduce stalled: the links must be probed again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from deepedge.broker_schemas import BEING_PROFILED, AppLatency, Heartbeat, JobState
from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._learning import NodeLearning

__all__ = [
    "CAP_DECREASE",
    "CAP_INCREASE",
    "CLIMB_MIN",
    "CLIMB_SETTLE_S",
    "COMFORT_FRACTION",
    "COMFORT_REPORTS",
    "DECREASE_COOLDOWN_S",
    "LC_HOLD_MAX_S",
    "LC_HOLD_S",
    "LOST_PEERS_GRACE_S",
    "MAX_PLANS_WITHOUT_PROGRESS",
    "NO_ROOM_REPEAT_S",
    "PAUSE_CAP",
    "PROFILE_HOLD_S",
    "PROFILE_STRIKES",
    "REFORM_MAX_S",
    "REPLAN_COOLDOWN_S",
    "REPLAN_MIN_GAIN_S",
    "REPLAN_RATIO",
    "SHARE_MIN_GAIN_S",
    "SHARE_PERSIST_S",
    "SHARE_RATIO",
    "STALL_FACTOR",
    "STALL_MIN_S",
    "START_RISE",
    "Action",
    "Complete",
    "Exclude",
    "Fail",
    "Hold",
    "JobRuntime",
    "LostPeers",
    "MarkRecovering",
    "Publish",
    "Reform",
    "Replan",
    "SetCap",
    "TryImprove",
    "Wait",
    "after_decision",
    "cap_rises",
    "finished_earlier",
    "forecast_risk",
    "held_back",
    "held_gain",
    "lc_hold",
    "no_room_to_start",
    "on_heartbeat",
    "on_latency",
    "on_node_joined",
    "on_node_lost",
    "on_nodes_changed",
    "on_tick",
    "paused_caps",
    "profile_hold",
    "profile_over",
    "profiled_out",
    "say_again",
    "should_improve",
    "without_progress",
]

CAP_DECREASE = 0.8  # multiplicative decrease of a node's cap when an LC deadline is missed
CAP_INCREASE = 0.1  # additive increase after COMFORT_REPORTS comfortable reports
COMFORT_REPORTS = 10
COMFORT_FRACTION = 0.7  # "comfortable": p95 under 70 % of the deadline
DECREASE_COOLDOWN_S = 5.0
LOST_PEERS_GRACE_S = 1.0  # after a worker reports lost peers, wait this long for a death notice
# A running job is re-planned when what was learned since its plan predicts a step at least 20 %
# shorter, saving at least REPLAN_MIN_GAIN_S over the rest of the job beyond what re-forming costs
# (the new plan's start-up as learned from the workers: its newcomers' start and the group's
# forming; 4-12 s measured on the demo's cluster, docs/benchmarks/lc-scenarios.md); a plan that
# keeps the participants (only shares and caps move: no re-form) when it predicts a step 8 %
# shorter, saving SHARE_MIN_GAIN_S. Checked every REPLAN_COOLDOWN_S.
REPLAN_RATIO = 0.8
REPLAN_MIN_GAIN_S = 5.0
SHARE_RATIO = 0.92
SHARE_MIN_GAIN_S = 0.5
REPLAN_COOLDOWN_S = 1.0
# A plan that keeps the group is published once every check for SHARE_PERSIST_S has predicted its
# gain, not at the first: on a board whose CPU is contended the rate of one step moves by 12 %
# (log sd, median; up to 37 %; 2 % on a calm one), the learned rate more than the 8 % asked, and shares swung
# back and forth (13 improvements in 107 s, run 6 of the demo series of 2026-12-06). Replayed on
# the steps of 43 stored demo runs (scripts/replay_share_churn.py), 2 s cut such plans by two
# thirds (194 -> 65) for steps 0.5 % longer in all (docs/coordinator.md). A re-forming
# improvement (its own 20 % and start-up cost), a forced re-plan and an LC risk do not wait.
SHARE_PERSIST_S = 2.0
# What re-forming may count against an improvement at most: the start-up estimate comes from the
# participants' own heartbeats (up to an hour), and one that reported an absurd one must not
# switch improvements off for the job.
REFORM_MAX_S = 60.0
# A plan that keeps the group is also published when it raises a participant's intensity cap by
# CLIMB_MIN or more (however small the step's gain) once that participant has trained at its
# current cap for a whole latency window and CLIMB_SETTLE_S more: its reports there narrowed the
# surrogate's interval near that cap, so the cap may climb in steps the live reports check, where
# the 8 % rule would keep a node that takes a small share at its first, most uncertain cap.
CLIMB_MIN = 0.05
CLIMB_SETTLE_S = 1.0
# An all-reduce pending on every participant for STALL_FACTOR expected steps (and STALL_MIN_S)
# has stalled (a link degraded mid-step): a new group, whose formation probes every link again.
STALL_FACTOR = 2.5
STALL_MIN_S = 2.0
# A job whose group is re-formed this many times in a row without completing a single step is
# failed: its participants cannot train together (a board whose worker keeps breaking the group, a
# hostile rank sending impossible state), and every re-form costs every board a start-up.
MAX_PLANS_WITHOUT_PROGRESS = 10
# A node a plan left out because its LC app was at risk there (lc.forecast, lc.violation) is not
# put back by an improvement for LC_HOLD_S, doubled for each such drop in a row (at most
# LC_HOLD_MAX_S): route-flap damping (RFC 2439). The LC bench's diurnal runs swapped the job between
# two boards 39 times in 587 s, each swap a re-form with every worker's start, and each re-add a
# plan the next steady report undid. A forced re-plan (a death, a miss, a forecast risk elsewhere)
# may still use a held node: a hold only stops the improvements.
LC_HOLD_S = 15.0
# An improvement does not put a node into a running job (a re-form, and its worker's start beside
# its LC apps) while one of that node's LC apps has less room than such a start takes: its p95
# now times START_RISE over its deadline (forecast jobs). The improvement is planned again without
# it (lc.no_room, said again for another set of nodes or NO_ROOM_REPEAT_S later); so are a job's
# first plan and a forced re-plan, unless no plan without such nodes is feasible, and the submit
# does not ask them for a pre-flight (Coordinator.with_room_to_start, _commands._with_room).
# Measured over the 62 times a plan put a node back in the stored LC-bench timelines
# (2026-12-02..04, docs/benchmarks/lc-scenarios.md): the re-added board's app rose a median 1.42x,
# 90 % of them under 1.75x, in the 10 s after, and 30 of the 62 went over their deadline. Where a
# deadline is under START_RISE x the app's p95 alone (the bench's `tight`, 1.5x), no plan puts that
# node in (while another can train) until its app runs faster than alone.
START_RISE = 1.75
NO_ROOM_REPEAT_S = 60.0
# When no plan is feasible because LC apps leave no room, the participants the planner left out
# for their LC app train at this cap in the same group (a pause in place) instead of going on at
# the cap that was just found unsafe; the group stays, so room coming back costs no worker's start.
PAUSE_CAP = 0.05
# A node that refuses a plan because it is being profiled (BEING_PROFILED) is left out of the job's
# plans for PROFILE_HOLD_S, not for good: the job's next improvement after that (which also leaves
# out a node whose LC reports still say profiling) may take it back. Its PROFILE_STRIKES-th such
# refusal in one job excludes it like any other refusal (a node that keeps saying so costs a
# re-plan at most every PROFILE_HOLD_S, and not for long).
PROFILE_HOLD_S = 30.0
PROFILE_STRIKES = 3
LC_HOLD_MAX_S = 120.0
MAX_STRIKES = 1000  # an LC hold's drops in a row are counted up to this (the hold is at its longest from 4)


@dataclass(frozen=True, slots=True)
class Replan:
    job: str
    why: str


@dataclass(frozen=True, slots=True)
class MarkRecovering:
    job: str
    why: str


@dataclass(frozen=True, slots=True)
class Exclude:
    job: str
    node: str
    why: str


@dataclass(frozen=True, slots=True)
class Hold:
    job: str
    node: str
    why: str


@dataclass(frozen=True, slots=True)
class Fail:
    job: str
    reason: str


@dataclass(frozen=True, slots=True)
class Complete:
    job: str
    why: str


@dataclass(frozen=True, slots=True)
class SetCap:
    node: str
    limit: float
    good_reports: int
    last_decrease: float
    why: str = ""  # set when the cap was lowered (an LC deadline was missed)


@dataclass(frozen=True, slots=True)
class TryImprove:
    job: str


@dataclass(frozen=True, slots=True)
class Reform:
    job: str
    why: str


@dataclass(frozen=True, slots=True)
class LostPeers:
    """A worker of the job's current generation reported that its peers are gone."""

    job: str
    generation: int
    node: str
    since: float


@dataclass(frozen=True, slots=True)
class Publish:
    """The planner found a plan: publish it as the job's next generation."""

    job: str


@dataclass(frozen=True, slots=True)
class Wait:
    """No plan now: keep the job (and its current plan, if any) and say why."""

    job: str
    reason: str
    recovering: bool  # the job moves to RECOVERING (it was running)


Action = (
    Replan
    | MarkRecovering
    | Exclude
    | Hold
    | Fail
    | Complete
    | SetCap
    | TryImprove
    | LostPeers
    | Publish
    | Wait
    | Reform
)


@dataclass
class JobRuntime:
    """What the coordinator tracks about a job between events (not persisted)."""

    planned_at: float = -1e9  # monotonic time of its latest plan (or improvement check)
    lost_peers: tuple[int, float, str] | None = None  # (generation, since, reporting node)
    state_since: float = 0.0  # monotonic time of its last state change, for timeouts
    planned_step: int = -1  # the job's step when its latest re-forming plan was published
    plans_without_progress: int = 0  # re-forming plans in a row with no step completed between them
    stalled: int = -1  # the generation whose stalled all-reduce was acted on (once per generation)
    stall_probe: int = -1  # the generation formed after a stall, to probe every link again
    left_out: tuple[str, ...] = ()  # feasible nodes the planner leaves out for their link or all-reduce cost
    lc_risk: dict[str, float] = field(default_factory=dict)  # node -> when its LC app last re-planned the job
    holds: dict[str, tuple[float, int]] = field(default_factory=dict)  # node -> (held until, drops in a row)
    profiled: dict[str, tuple[float, int]] = field(default_factory=dict)  # node -> (left out until, refusals)
    lc_models: str = ""  # the LC models the latest decision planned with, in words (plan.published)
    # event -> (the nodes it last named, when): lc.no_room and lc.crowded_start (:func:`say_again`)
    said: dict[str, tuple[tuple[str, ...], float]] = field(default_factory=dict)
    # (generation, since) of the same-group improvement every check has predicted since (:func:`held_gain`)
    improving: tuple[int, float] | None = None


def _using(jobs: Iterable[JobRecord], node: str) -> list[JobRecord]:
    return [
        j for j in jobs if not j.terminal and j.plan is not None and any(a.node == node for a in j.plan.assignments)
    ]


def on_node_lost(node: str, reason: str, jobs: Iterable[JobRecord]) -> list[Action]:
    out: list[Action] = []
    for job in _using(jobs, node):
        if job.state == JobState.RUNNING:
            out.append(MarkRecovering(job.job, f"node {node} lost: {reason}"))
        out.append(Replan(job.job, f"node.dead {node}"))
    return out


def on_node_joined(node: str, jobs: Iterable[JobRecord]) -> list[Action]:
    return [Replan(j.job, f"node.joined {node}") for j in jobs if j.state == JobState.RECOVERING]


def on_nodes_changed(node: str, why: str, jobs: Iterable[JobRecord]) -> list[Action]:
    """A node was drained or undrained: re-plan the jobs it is in."""
    return [Replan(j.job, f"{why} {node}") for j in _using(jobs, node)]


def finished_earlier(hb: Heartbeat, job: JobRecord) -> bool:
    """``hb`` says that ``job``'s model is saved, from an earlier generation of the process group
    the current plan continues: its rank 0 reported done after the last step while a same-group
    plan (new shares or caps, the same participants at the same ranks) was on its way, so no
    report of the new generation would come (the LC bench's step job of 2026-12-04 06:52 waited
    600 s to be cancelled). The node must be the current plan's rank 0 — the rank 0 of every
    generation of that group — and not excluded from the job."""
    plan = job.plan
    return (
        not job.terminal
        and plan is not None
        and plan.same_group
        and plan.group_generation <= hb.generation < job.generation
        and hb.state == "done"
        and hb.rank == 0
        and hb.step >= job.total_steps
        and hb.node not in job.excluded
        and any(a.node == hb.node and a.rank == 0 for a in plan.assignments)
    )


def on_heartbeat(
    hb: Heartbeat,
    job: JobRecord,
    runtime: JobRuntime,
    now: float,
    beats: Mapping[str, Heartbeat] | None = None,
    link_drop: tuple[float, float] | None = None,
    expected_step_s: float | None = None,
) -> list[Action]:
    """A heartbeat of a participant of ``job``'s current plan (the service checked that).
    ``beats``: every participant's latest heartbeat of this generation (for a stalled
    all-reduce); ``link_drop``: (bytes/s now, bytes/s before) of this node's link when its
    newest probe's drop was just confirmed (``LinkModel.confirmed_drop``);
    ``expected_step_s``: the plan's step time on what is known now (links probed since it was
    made included; default: its prediction)."""
    if hb.state == "failed":  # its worker gave up, or the node refused the plan
        if hb.message.endswith(BEING_PROFILED):
            until, strikes = runtime.profiled.get(hb.node, (0.0, 0))
            if now < until:  # held already: the same refusal again (QoS 1, a plan replayed)
                return []
            if strikes < PROFILE_STRIKES - 1:
                return [Hold(job.job, hb.node, "being profiled: it refused the plan")]
        return [Exclude(job.job, hb.node, hb.message or "its worker failed without a reason")]
    if hb.state == "recovering" and job.state == JobState.RUNNING and runtime.lost_peers is None:
        # A worker lost its peers. If a node died, its death notice re-plans the job; if only a
        # worker process crashed (its daemon restarts it), nothing else will: after a short grace
        # for a death notice to arrive first, on_tick re-plans with a new generation.
        return [LostPeers(job.job, job.generation, hb.node, now)]
    if job.state != JobState.RUNNING or job.plan is None:
        return []
    if link_drop is not None and job.spec.split == "planned":
        mbit, was = (x * 8 / 1e6 for x in link_drop)
        return [Replan(job.job, f"link.changed {hb.node} ({mbit:.1f} Mb/s, was {was:.1f})")]
    if hb.pending_s > 0 and beats is not None and runtime.stalled != job.generation:
        expected = expected_step_s if expected_step_s is not None else job.plan.predicted_step_s
        limit = max(STALL_MIN_S, STALL_FACTOR * expected)
        parts = [a.node for a in job.plan.assignments]
        if all(n in beats and beats[n].state == "training" and beats[n].pending_s >= limit for n in parts):
            return [Reform(job.job, f"link.stalled: every participant's all-reduce pending over {limit:.1f} s")]
    return []


def on_latency(
    node: str,
    apps: Sequence[AppLatency],
    learn: NodeLearning,
    using: Sequence[JobRecord],
    current_cap: float,
    now: float,
) -> list[Action]:
    """The LC feedback (AIMD) for a steady report: a deadline missed lowers the node's cap
    limit (once per cool-down) and re-plans the jobs it trains (not the baselines, which
    ignore LC apps as torchrun would); comfortable reports raise it slowly."""
    over = [a for a in apps if a.deadline_ms is not None and a.count > 0 and a.p95_ms > a.deadline_ms]
    comfortable = all(
        a.deadline_ms is None or a.count == 0 or a.p95_ms <= COMFORT_FRACTION * a.deadline_ms for a in apps
    )
    using = [j for j in using if j.spec.lc_control != "unaware"]  # LC-unaware baselines get no feedback
    if over and using:
        if now - learn.last_decrease < DECREASE_COOLDOWN_S:
            return []
        limit = round(min(learn.cap_limit, current_cap) * CAP_DECREASE, 4)
        names = ", ".join(f"{a.app} p95 {a.p95_ms:.1f} ms > {a.deadline_ms:g} ms" for a in over)
        out: list[Action] = [SetCap(node, limit, 0, now, f"{names}; cap lowered to {limit:.2f}")]
        return out + [Replan(j.job, f"lc.violation {node}") for j in using if j.spec.split == "planned"]
    ahead = [j for j in using if j.spec.split == "planned" and j.spec.lc_control == "forecast"]
    if ahead and now - learn.last_decrease >= DECREASE_COOLDOWN_S:
        risk = forecast_risk(apps, learn, current_cap, now)
        if risk:  # before a miss: the forecast load makes the current cap unsafe
            ahead_out: list[Action] = [SetCap(node, learn.cap_limit, 0, now)]
            return ahead_out + [Replan(j.job, f"lc.forecast {node}: {risk}") for j in ahead]
    if comfortable and learn.cap_limit < 1.0:
        good = learn.good_reports + 1
        if good >= COMFORT_REPORTS:  # slow increase, applied at the next re-plan
            return [SetCap(node, min(1.0, round(learn.cap_limit + CAP_INCREASE, 4)), 0, learn.last_decrease)]
        return [SetCap(node, learn.cap_limit, good, learn.last_decrease)]
    if not comfortable and learn.good_reports:
        return [SetCap(node, learn.cap_limit, 0, learn.last_decrease)]
    return []


def forecast_risk(apps: Sequence[AppLatency], learn: NodeLearning, cap: float, now: float) -> str:
    """Why the node's current cap is no longer safe for the forecast load ("" if it is): an app
    with a surrogate whose upper-quantile p95 at ``cap``, for the forecast request rate and the
    node's background CPU, is over its deadline."""
    for a in apps:
        model = learn.interference.get(a.app)
        if a.deadline_ms is None or model is None or model.table is None or model.rates.last is None:
            continue
        rate = model.planning_rate(model.rates.last, now)
        predicted = model.at_risk(cap, a.deadline_ms, rate, learn.cpu_bg)
        if predicted is not None and predicted > a.deadline_ms:
            return f"{a.app} at {rate:.1f} req/s is predicted at {predicted:.1f} ms p95 > {a.deadline_ms:g} ms"
    return ""


def on_tick(
    jobs: Iterable[JobRecord],
    runtimes: dict[str, JobRuntime],
    alive: set[str],
    now: float,
    warm_start: bool,
    recovery_timeout_s: float,
) -> list[Action]:
    """Timers. ``warm_start``: the first tick after a restart's failure-detection period: keep
    plans whose nodes are all alive, re-plan the others. A job recovering for longer than the
    recovery timeout is re-planned once more (it fails if there is still no plan)."""
    out: list[Action] = []
    for job in jobs:
        if job.terminal:
            continue
        rt = runtimes.get(job.job) or JobRuntime(state_since=now)
        if warm_start and (job.plan is None or any(a.node not in alive for a in job.plan.assignments)):
            if job.state == JobState.RUNNING:
                out.append(MarkRecovering(job.job, "participants lost while the coordinator was away"))
            out.append(Replan(job.job, "coordinator restart"))
            continue
        if rt.lost_peers is not None:
            generation, since, node = rt.lost_peers
            if job.generation == generation and job.state == JobState.RUNNING and now - since >= LOST_PEERS_GRACE_S:
                out.append(MarkRecovering(job.job, f"the worker on {node} lost its peers (a worker crashed)"))
                out.append(Replan(job.job, "worker.lost_peers"))
                continue
        if job.state == JobState.RECOVERING and any(rt.planned_at < until <= now for until, _ in rt.profiled.values()):
            out.append(Replan(job.job, "profile hold over"))  # (a running job's improvements take it back)
            continue
        if job.state == JobState.RECOVERING and now - rt.state_since > recovery_timeout_s:
            out.append(Replan(job.job, "recovery timeout"))
            continue
        # the proportional baseline re-balances on learned rates too (as LB-BSP does); uniform never
        adapts = job.spec.split != "uniform"
        if job.state == JobState.RUNNING and adapts and now - rt.planned_at >= REPLAN_COOLDOWN_S:
            out.append(TryImprove(job.job))
    return out


def without_progress(job: JobRecord, runtime: JobRuntime) -> Fail | None:
    """Before a new plan is published: fail the job instead when it would be the
    MAX_PLANS_WITHOUT_PROGRESS-th plan in a row with no step completed."""
    if runtime.planned_step == job.step and runtime.plans_without_progress + 1 >= MAX_PLANS_WITHOUT_PROGRESS:
        return Fail(
            job.job,
            f"{MAX_PLANS_WITHOUT_PROGRESS} plans in a row without a step completed (stuck at step {job.step}): "
            f"its participants cannot train together; last: {job.reason or 'no reason given'}",
        )
    return None


def after_decision(
    job: JobRecord, feasible: bool, reason: str, runtime: JobRuntime, now: float, recovery_timeout_s: float
) -> Action:
    """What a re-plan's outcome means for the job."""
    if feasible:
        return Publish(job.job)
    if job.state in (JobState.QUEUED, JobState.PLANNING):
        return Fail(job.job, reason)
    if job.state == JobState.RECOVERING and now - runtime.state_since > recovery_timeout_s:
        return Fail(job.job, f"no feasible plan for {recovery_timeout_s:g} s: {reason}")
    return Wait(job.job, f"waiting for nodes: {reason}", recovering=job.state == JobState.RUNNING)


def should_improve(
    remaining_steps: int, current_s: float, new_s: float, same_group: bool = False, reform_s: float = 0.0
) -> bool:
    """Re-plan a running job when what was learned predicts clearly shorter steps (compute and
    all-reduce): at least 20 % shorter and REPLAN_MIN_GAIN_S over the rest of the job beyond
    ``reform_s``, what re-forming the group costs (the new plan's predicted start-up) — or, for a
    plan that keeps the group (no re-form, ``reform_s`` not counted), 8 % and SHARE_MIN_GAIN_S."""
    ratio, gain = (SHARE_RATIO, SHARE_MIN_GAIN_S) if same_group else (REPLAN_RATIO, REPLAN_MIN_GAIN_S)
    cost = 0.0 if same_group else min(REFORM_MAX_S, max(0.0, reform_s))
    return new_s < ratio * current_s and remaining_steps * (current_s - new_s) - cost >= gain


def held_gain(
    since: tuple[int, float] | None, generation: int, now: float, persist_s: float = SHARE_PERSIST_S
) -> tuple[tuple[int, float], bool]:
    """A check at ``now`` predicts a same-group improvement of the plan of ``generation``:
    (what the runtime keeps, whether every check has predicted it for ``persist_s``).
    ``since``: what it kept from the check before, None when that check predicted none."""
    kept = since if since is not None and since[0] == generation else (generation, now)
    return kept, now - kept[1] >= persist_s


def cap_rises(
    previous: Sequence[tuple[str, float]], caps: Mapping[str, float], settled: Iterable[str]
) -> list[tuple[str, float, float]]:
    """The (node, cap now, new cap) of the participants whose cap a new plan raises by CLIMB_MIN
    or more; empty when any rising one has not ``settled`` (trained a latency window at its
    current cap, see CLIMB_SETTLE_S). ``previous``: the plan in effect's (node, cap)."""
    ready = set(settled)
    rises = [(node, cap, caps.get(node, 0.0)) for node, cap in previous if caps.get(node, 0.0) >= cap + CLIMB_MIN]
    return rises if all(node in ready for node, _, _ in rises) else []


def say_again(said: dict[str, tuple[tuple[str, ...], float]], event: str, nodes: tuple[str, ...], now: float) -> bool:
    """Whether ``event`` naming ``nodes`` is said now: for another set of nodes than it last
    named, or NO_ROOM_REPEAT_S later (then recorded in ``said``)."""
    last, at = said.get(event, ((), float("-inf")))
    if nodes == last and now - at < NO_ROOM_REPEAT_S:
        return False
    said[event] = (nodes, now)
    return True


def lc_hold(previous: tuple[float, int] | None, now: float) -> tuple[float, int]:
    """The (held until, drops in a row) of a node a plan just left out for its LC app's risk:
    LC_HOLD_S, doubled for each drop that came within LC_HOLD_MAX_S of the last hold's end (at
    most LC_HOLD_MAX_S); a node that stayed in for that long starts again at LC_HOLD_S."""
    strikes = 1
    if previous is not None and now - previous[0] < LC_HOLD_MAX_S:
        strikes = previous[1] + 1
    # the exponent bounded: 2.0 ** 1024 overflowed (a node dropped 1,024 times in a row, about
    # 35 h at the longest hold, failed its job; attacker review, 2026-12-06), and so are the strikes
    strikes = min(strikes, MAX_STRIKES)
    return now + min(LC_HOLD_MAX_S, LC_HOLD_S * 2.0 ** min(strikes - 1, 16)), strikes


def profile_hold(previous: tuple[float, int] | None, now: float) -> tuple[float, int]:
    """(left out until, refusals so far) of a node that refused a job because it is being profiled."""
    return now + PROFILE_HOLD_S, (previous[1] if previous else 0) + 1


def profile_over(runtime: JobRuntime, node: str, now: float) -> bool:
    """``node`` refused the job while being profiled, its hold is over, and its reports just
    stopped saying it is profiled: a recovering job may take it again. (A profile over before
    the hold ends is on_tick's 'profile hold over'. A node flipping its flag re-plans at most
    as often as its latency reports get through the per-node rate limit.)"""
    until, _ = runtime.profiled.get(node, (math.inf, 0))
    return now >= until


def profiled_out(profiled: Mapping[str, tuple[float, int]], now: float) -> dict[str, str]:
    """The nodes a job's plans leave out now because they refused it while being profiled."""
    return {n: "being profiled (it refused this job a moment ago)" for n, (until, _) in profiled.items() if now < until}


def held_back(
    current: Iterable[str], proposed: Iterable[str], holds: Mapping[str, tuple[float, int]], now: float
) -> list[str]:
    """The nodes an improvement would put into the job while their LC hold lasts (:func:`lc_hold`):
    such an improvement waits."""
    kept = set(current)
    return sorted(n for n in proposed if n not in kept and n in holds and now < holds[n][0])


def no_room_to_start(
    current: Iterable[str], proposed: Iterable[str], apps: Mapping[str, Iterable[tuple[str, float, float | None]]]
) -> dict[str, list[tuple[str, float, float]]]:
    """The nodes an improvement would put into the job (in ``proposed``, not in ``current``) with
    an LC app that has no room for a worker's start, each with those apps' (name, p95, deadline):
    ``apps`` maps a node to its apps' (name, p95 now in ms, deadline in ms or None), and one whose
    p95 x START_RISE is over its deadline leaves no room. Such an improvement waits (the next
    check looks again)."""
    kept = set(current)
    out: dict[str, list[tuple[str, float, float]]] = {}
    for n in sorted(set(proposed) - kept):
        over = [(a, p95, dl) for a, p95, dl in apps.get(n, ()) if dl is not None and dl > 0 and p95 * START_RISE > dl]
        if over:
            out[n] = over
    return out


def paused_caps(
    current: Sequence[tuple[str, float]], excluded: Mapping[str, str]
) -> tuple[dict[str, float], bool] | None:
    """When the planner found no feasible plan: the caps of the plan in effect (``current``: its
    (node, cap) in rank order) with each participant it left out for an LC app (``excluded``:
    node -> why) lowered to PAUSE_CAP, and whether any was lowered; None when it left none of
    them out for an LC app (another cause: the job waits as before)."""
    lc = {n for n, _ in current if "LC app" in excluded.get(n, "")}
    if not lc:
        return None
    caps = {n: (min(c, PAUSE_CAP) if n in lc else c) for n, c in current}
    return caps, any(caps[n] < c for n, c in current)
