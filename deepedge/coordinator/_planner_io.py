"""From the cluster view and what was learned to the planner's inputs, and from its decision
to the wire Plan.

What the coordinator learned becomes the planner's numbers: each board's throughput, its link's
bandwidth (as probed, divided by how far the measured all-reduces fall short of the ring model:
:class:`~deepedge.coordinator._learning.CommModel`) and the slowest participant's latency, its
per-step overhead, and how long its worker takes to start (or, already running, to re-form). A
plan's predicted makespan is the time since submission, plus that start-up, plus the remaining
steps at the predicted step time — what the job's actual makespan is compared with."""

from __future__ import annotations

import ipaddress
import statistics
from collections.abc import Iterable, Mapping

import structlog

from deepedge.broker_schemas import Assignment, Heartbeat, NodeBirth, Plan, TorchInfo
from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._learning import MAX_RATE, CommModel, NodeLearning
from deepedge.coordinator._view import ClusterView, NodeState
from deepedge.coordinator.planner import (
    MIN_RATE,
    JobModel,
    LcAppModel,
    NetworkModel,
    NodeModel,
    PlanDecision,
    allreduce_s,
)
from deepedge.devices import BackendChoice, DeviceError, Participant, choose_backend, job_backend_setting
from deepedge.profiling import TableCache, knowledge_base_path, versions_key
from deepedge.transport import RateLimiter

log = structlog.get_logger("deepedge.coordinator")
# a node whose LC models keep failing is asked at every plan of every job: said once a minute per node
_lc_errors = RateLimiter(1 / 60, 1, max_keys=1000, global_rate=1.0, global_burst=10)

__all__ = [
    "DEFAULT_FORMING_S",
    "DEFAULT_LATENCY_S",
    "DEFAULT_SAMPLE_BYTES",
    "DEFAULT_STARTUP_S",
    "UNKNOWN_LINK_BPS",
    "allreduce_efficiency",
    "backend_choice",
    "busy_elsewhere",
    "continues_group",
    "job_model",
    "knowledge_base_path",
    "lc_models",
    "node_models",
    "plan_step_s",
    "rendezvous_port",
    "same_assignment",
    "to_plan",
    "torch_unavailable",
    "training_address",
]

DEFAULT_SAMPLE_BYTES = 16 * 1024 * 1024  # training memory per sample in a step, when not told
UNKNOWN_LINK_BPS = 1e9  # bytes/s of a link not probed yet: assumed fast (its first group probes it)
DEFAULT_LATENCY_S = 0.5e-3
DEFAULT_STARTUP_S = 5.0  # a worker's start to its first rendezvous, before any was seen
DEFAULT_FORMING_S = 1.0  # forming a group once every rank is there, before any was seen


def training_address(birth: NodeBirth) -> str | None:
    """The IP address the node says its worker listens on, if it is one."""
    try:
        return str(ipaddress.ip_address(birth.training_address))
    except ValueError:
        return None


def torch_unavailable(info: TorchInfo | None) -> str:
    """Why a board's torch (its birth's probe) cannot train in a job, or "". A board that did not
    say (an older node, one not probed) is planned as before."""
    if info is None:
        return ""
    if info.error:
        return f"its torch cannot train here: {info.error}"
    if not info.distributed:
        return f"its torch {info.version} has no torch.distributed (built with USE_DISTRIBUTED=0): it cannot all-reduce"
    if not info.gloo:
        return f"its torch {info.version} has no gloo backend: it cannot all-reduce"
    return ""


def backend_choice(births: Iterable[NodeBirth]) -> BackendChoice:
    """The job's backend for these participants (``deepedge.devices.choose_backend``), from their
    births: where each trains (``torch.kind``; a board without a probe counts as a CPU), whether its
    torch has NCCL, and their own ``training.backend``. A board's ``nccl`` that the others cannot
    honour gives gloo, with the reason."""
    births = list(births)
    parts = [
        Participant(b.node, b.torch.kind, b.torch.nccl) if b.torch is not None else Participant(b.node, "cpu", False)
        for b in births
    ]
    setting = job_backend_setting([b.torch.backend for b in births if b.torch is not None])
    try:
        return choose_backend(setting, parts)
    except DeviceError as exc:
        fallback = choose_backend("gloo", parts)
        return BackendChoice("gloo", f"{exc}: gloo", fallback.host_staged)


def busy_elsewhere(view: ClusterView, jobs: Iterable[JobRecord], job: JobRecord) -> dict[str, str]:
    """Nodes that already run as many other jobs' workers as their birth says they may: why."""
    others: dict[str, list[str]] = {}
    for other in jobs:
        if other.job != job.job and not other.terminal and other.plan is not None:
            for a in other.plan.assignments:
                others.setdefault(a.node, []).append(other.job)
    return {
        n: f"busy with job {', '.join(js)} (its node.max_workers is {view.nodes[n].birth.max_workers})"
        for n, js in others.items()
        if n in view.nodes and len(js) >= view.nodes[n].birth.max_workers
    }


def lc_models(
    state: NodeState, learn: NodeLearning, job: JobRecord, tables: TableCache | None, now: float = 0.0
) -> tuple[LcAppModel, ...]:
    """The planner's model of each LC app with a deadline on the node: with ``lc_control``
    "forecast" and a cap table for the board's device model and app in the knowledge base, the
    table's upper quantile at the forecast rate and the node's background CPU, corrected by live
    reports; otherwise the linear model (fitted, joined by the board's profile points)."""
    if job.spec.lc_control == "unaware":
        return ()
    profile = state.birth.profiles.get(job.spec.model)
    profiled = profile.lc if profile is not None else ()
    out = []
    for a in state.latency.values():
        if a.deadline_ms is None:
            continue
        model = learn.app(a.app)
        found = None
        if tables is not None and job.spec.lc_control == "forecast":
            found = tables.get(state.birth.device_model, a.app, versions_key(state.birth.software))
        if found is not None:
            model.table, model.table_source = found[0], str(found[1])
            rate = model.planning_rate(model.rates.last or 0.0, now)
            out.append(model.surrogate_model(a.app, a.deadline_ms, found[0], rate, learn.cpu_bg))
            continue
        model.table = None
        out.append(model.model(a.app, a.deadline_ms, [(p.intensity, p.p95_ms) for p in profiled if p.app == a.app]))
    return tuple(out)


def node_models(
    view: ClusterView,
    learning: dict[str, NodeLearning],
    job: JobRecord,
    busy: Mapping[str, str] | None = None,
    comm: CommModel | None = None,
    now: float = 0.0,
    tables: TableCache | None = None,
) -> list[NodeModel]:
    """The planner's view of every live, undrained node; one that cannot train now (excluded
    from this job, busy with other jobs, no usable training address) says why in
    ``unavailable``. ``now``: the coordinator's monotonic time (a link probed too long ago is
    unknown again). ``tables``: the knowledge base's cap tables (see :func:`lc_models`)."""
    out = []
    factor = comm.factor(job.job) if comm is not None else 1.0
    running = {a.node for a in job.plan.assignments} if job.plan is not None and not job.terminal else set()
    for state in view.alive():
        if state.drained or state.node not in learning:
            continue
        unavailable = job.excluded.get(state.node) or (busy or {}).get(state.node, "")
        if job.excluded.get(state.node):
            unavailable = f"excluded from this job: {unavailable}"
        if training_address(state.birth) is None:
            unavailable = (
                f"its birth names no training address (node.training_address {state.birth.training_address!r})"
            )
        if not unavailable:
            unavailable = torch_unavailable(state.birth.torch)
        learn = learning[state.node]
        t = state.telemetry
        free = (
            (t.mem_total_bytes - t.mem_used_bytes) if t is not None and t.mem_total_bytes else state.birth.memory_bytes
        )
        max_share = max(0, int(free // DEFAULT_SAMPLE_BYTES))
        # What ``deepedge profile`` measured on this board for this model: the prior until
        # heartbeats and latency reports say otherwise.
        profile = state.birth.profiles.get(job.spec.model)
        try:
            apps = lc_models(state, learn, job, tables, now)
        except Exception as exc:  # one node's state must never fail the plans of every job
            if _lc_errors.allow(state.node, now):
                log.error("lc_models.failed", node=state.node, job=job.job, error=f"{type(exc).__name__}: {exc}"[:500])
            apps, unavailable = (), unavailable or f"its LC models could not be computed: {type(exc).__name__}"
        rate = learn.throughput.rate
        if learn.throughput.estimate is None and profile is not None and profile.samples_per_s > 0:
            rate = min(max(profile.samples_per_s, MIN_RATE), MAX_RATE)  # a board's claim, clamped as its heartbeats are
        hb = state.heartbeats.get(job.job)
        in_group = state.node in running and hb is not None and hb.state in ("training", "starting")
        link = (learn.link.planned(factor) if learn.link.known(now) else None) or UNKNOWN_LINK_BPS / factor
        out.append(
            NodeModel(
                state.node,
                rate=rate,
                max_share=min(max_share, job.spec.global_batch),
                overhead_s=learn.overhead.get(0.0),
                bandwidth_bps=link,
                lc_apps=apps,
                # an LC-unaware baseline ignores what LC feedback taught as well
                cap_limit=learn.cap_limit if job.spec.lc_control != "unaware" else 1.0,
                unavailable=unavailable,
                # a running worker re-forms; a new one starts first (the slowest participant's
                # start-up is the plan's: the others wait for it at the rendezvous)
                startup_s=learn.forming.get(DEFAULT_FORMING_S)
                + (0.0 if in_group else learn.startup.get(DEFAULT_STARTUP_S)),
                latency_s=learn.link.latency if learn.link.known(now) else None,
            )
        )
    return out


def allreduce_efficiency(beats: Iterable[Heartbeat], learning: Mapping[str, NodeLearning]) -> float | None:
    """Measured / modelled all-reduce seconds for one generation's heartbeats (None when it
    cannot be told: one rank, links not probed, no timing). Measured: the least all-reduce time
    among the ranks (the last to arrive waits for nobody: its time is the communication).
    Modelled on the links as probed (the old probe while a drop is pending; not the floors the
    all-reduces raised them to: the efficiency corrects the probes, :meth:`LinkModel.planned`),
    and not at all while a probe is under its floor (shown wrong)."""
    current = [b for b in beats if b.state == "training" and b.allreduce_s > 0 and b.comm_bytes > 0]
    k = len(current)
    links = [learning[b.node].link for b in current if b.node in learning]
    if k < 2 or len(links) < k or any(lk.probed is None or lk.latency is None for lk in links):
        return None
    if any(lk.floor > (lk.probed or 0.0) for lk in links):
        return None  # a probe the all-reduces showed wrong says nothing of how gloo uses a link
    slowest = min(lk.probed or 0.0 for lk in links)
    latency = max(lk.latency or 0.0 for lk in links)
    modelled = allreduce_s(k, statistics.median(b.comm_bytes for b in current), slowest, latency)
    measured = min(b.allreduce_s for b in current)
    return measured / modelled if modelled > 0 else None


def plan_step_s(plan: Plan, nodes: Iterable[NodeModel], job: JobRecord, net: NetworkModel) -> float:
    """``plan``'s step time (compute of its slowest share, overhead, all-reduce) under what is
    known now: how long its participants' steps should take at their learned rates and links."""
    models = {n.node: n for n in nodes}
    parts = [a for a in plan.assignments if a.share > 0]
    if any(a.node not in models for a in parts):
        return float("inf")
    compute = max(a.share / max(1e-9, models[a.node].rate * a.intensity_cap) + models[a.node].overhead_s for a in parts)
    nbytes = job.model_bytes // 2 if plan.grad_dtype == "float16" else job.model_bytes
    bw = min(models[a.node].bandwidth_bps for a in parts)
    slowest = max(models[a.node].latency(net.latency_s) for a in parts)  # as the planner weighs a set
    return compute + allreduce_s(len(parts), nbytes, bw, slowest)


def same_assignment(plan: Plan | None, decision: PlanDecision) -> bool:
    """Whether ``decision`` is the plan already in effect (participants, shares, caps, dtype)."""
    if plan is None or tuple(a.node for a in plan.assignments) != decision.participants:
        return False
    return plan.grad_dtype == decision.grad_dtype and all(
        a.share == decision.shares[a.node] and a.intensity_cap == round(decision.caps[a.node], 4)
        for a in plan.assignments
    )


def continues_group(previous: Plan | None, decision: PlanDecision, view: ClusterView, job: str) -> bool:
    """Whether a new plan may continue ``previous``'s process group (a share-only change): the
    same participants at the same ranks, the same gradient dtype, and every one of them training
    in the previous generation (a worker that is starting or recovering needs a new group)."""
    if previous is None or tuple(a.node for a in previous.assignments) != decision.participants:
        return False
    if previous.grad_dtype != decision.grad_dtype:
        return False
    for a in previous.assignments:
        state = view.nodes.get(a.node)
        hb = state.heartbeats.get(job) if state is not None else None
        if hb is None or hb.generation != previous.generation or hb.state != "training":
            return False
    return True


def job_model(job: JobRecord) -> JobModel:
    left = max(0, job.total_steps - job.step)
    return JobModel(job.spec.global_batch, job.dataset_size, job.spec.epochs, job.model_bytes, left)


def rendezvous_port(job: JobRecord, jobs: Iterable[JobRecord], first: int, count: int) -> int:
    """The next port of ``[first, first + count)`` after this job's last one that no other
    running job's plan uses (a new generation never reuses the port its predecessor's store may
    still hold)."""
    taken = {j.plan.rendezvous_port for j in jobs if j.job != job.job and not j.terminal and j.plan is not None}
    last = job.plan.rendezvous_port if job.plan is not None else first - 1
    for k in range(1, count + 1):
        port = first + (last - first + k) % count
        if port not in taken:
            return port
    raise ValueError(f"all {count} rendezvous ports from {first} are in use (coordinator.rendezvous_ports)")


def to_plan(
    job: JobRecord,
    decision: PlanDecision,
    view: ClusterView,
    generation: int,
    port: int,
    ts: float,
    session: str,
    same_group: bool = False,
) -> Plan:
    """The wire plan of ``decision``. ``same_group``: it continues the current plan's process
    group (its rendezvous and group generation; no start-up in its prediction)."""
    previous = job.plan
    if same_group and previous is not None:
        port = previous.rendezvous_port
        group = previous.group_generation if previous.same_group else previous.generation
    else:
        same_group, group = False, generation
    startup = 0.0 if same_group else decision.startup_s
    remaining = max(0, job.total_steps - job.step)
    elapsed = max(0.0, ts - job.created) if job.created else 0.0
    assignments = []
    offset = 0
    births = [view.nodes[n].birth for n in decision.participants]
    for rank, (node, birth) in enumerate(zip(decision.participants, births, strict=True)):
        share = decision.shares[node]
        assignments.append(
            Assignment(
                node=node,
                rank=rank,
                share=share,
                batch_offset=offset,
                intensity_cap=round(decision.caps[node], 4),
                device=birth.torch.device if birth.torch is not None else "",
            )
        )
        offset += share
    host = training_address(births[0])
    assert host is not None  # node_models offers only nodes with one
    # NCCL only where every participant trains on a discrete GPU whose torch has NCCL (by its
    # probe, not by its accelerators: a CUDA board may train on its CPU); gloo otherwise.
    backend = backend_choice(births).backend
    return Plan(
        job=job.job,
        generation=generation,
        ts=ts,
        spec=job.spec,
        rendezvous_host=host,
        rendezvous_port=port,
        backend=backend,
        assignments=tuple(assignments),
        total_steps=job.total_steps,
        resume_step=job.step,
        predicted_step_s=decision.step_s,
        predicted_makespan_s=elapsed + startup + remaining * decision.step_s,
        ideal_makespan_s=decision.ideal_makespan_s,
        session=session,
        same_group=same_group,
        group_generation=group,
        grad_dtype="float16" if decision.grad_dtype == "float16" else "float32",
        predicted_startup_s=startup,
        predicted_allreduce_s=decision.allreduce_s,
    )
