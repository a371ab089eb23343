"""From the cluster view and what was learned to the planner's inputs, and from its decision
to the wire Plan."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from deepedge.broker_schemas import Assignment, NodeBirth, Plan
from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._learning import NodeLearning
from deepedge.coordinator._view import ClusterView, NodeState
from deepedge.coordinator.planner import JobModel, LcAppModel, NodeModel, PlanDecision
from deepedge.profiling import TableCache, versions_key

__all__ = [
    "DEFAULT_SAMPLE_BYTES",
    "busy_elsewhere",
    "job_model",
    "knowledge_base_path",
    "lc_models",
    "node_models",
    "rendezvous_port",
    "to_plan",
    "training_address",
]

DEFAULT_SAMPLE_BYTES = 16 * 1024 * 1024  # training memory per sample in a step, when not told


def training_address(birth: NodeBirth) -> str | None:
    """The IP address the node says its worker listens on, if it is one."""
    try:
        return str(ipaddress.ip_address(birth.training_address))
    except ValueError:
        return None


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


def knowledge_base_path(db: str) -> str:
    """The knowledge base the coordinator plans with: ``knowledge.db`` beside its job store
    (``deepedge profile import --kb`` puts profiles there)."""
    from pathlib import Path

    return str(Path(db).with_name("knowledge.db"))


def lc_models(
    state: NodeState, learn: NodeLearning, job: JobRecord, tables: TableCache | None
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
            rate = model.planning_rate(model.rates.last or 0.0)
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
    tables: TableCache | None = None,
) -> list[NodeModel]:
    """The planner's view of every live, undrained node; one that cannot train now (excluded
    from this job, busy with other jobs, no usable training address) says why in
    ``unavailable``. ``tables``: the knowledge base's cap tables (see :func:`lc_models`)."""
    out = []
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
        learn = learning[state.node]
        t = state.telemetry
        free = (
            (t.mem_total_bytes - t.mem_used_bytes) if t is not None and t.mem_total_bytes else state.birth.memory_bytes
        )
        max_share = max(0, int(free // DEFAULT_SAMPLE_BYTES))
        # What ``deepedge profile`` measured on this board for this model: the prior until
        # heartbeats and latency reports say otherwise.
        profile = state.birth.profiles.get(job.spec.model)
        apps = lc_models(state, learn, job, tables)
        rate = learn.throughput.rate
        if learn.throughput.estimate is None and profile is not None and profile.samples_per_s > 0:
            rate = profile.samples_per_s
        out.append(
            NodeModel(
                state.node,
                rate=rate,
                max_share=min(max_share, job.spec.global_batch),
                lc_apps=apps,
                # an LC-unaware baseline ignores what LC feedback taught as well
                cap_limit=learn.cap_limit if job.spec.lc_control != "unaware" else 1.0,
                unavailable=unavailable,
            )
        )
    return out


def job_model(job: JobRecord) -> JobModel:
    return JobModel(job.spec.global_batch, job.dataset_size, job.spec.epochs, job.model_bytes)


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
) -> Plan:
    assignments = []
    offset = 0
    for rank, node in enumerate(decision.participants):
        share = decision.shares[node]
        assignments.append(
            Assignment(
                node=node, rank=rank, share=share, batch_offset=offset, intensity_cap=round(decision.caps[node], 4)
            )
        )
        offset += share
    host = training_address(view.nodes[decision.participants[0]].birth)
    assert host is not None  # node_models offers only nodes with one
    # NCCL only where every participant has a discrete NVIDIA GPU (Jetson boards have no NCCL).
    cuda = all(any(a.kind == "cuda" for a in view.nodes[n].birth.accelerators) for n in decision.participants)
    return Plan(
        job=job.job,
        generation=generation,
        ts=ts,
        spec=job.spec,
        rendezvous_host=host,
        rendezvous_port=port,
        backend="nccl" if cuda else "gloo",
        assignments=tuple(assignments),
        total_steps=job.total_steps,
        resume_step=job.step,
        predicted_step_s=decision.step_s,
        predicted_makespan_s=decision.makespan_s,
        ideal_makespan_s=decision.ideal_makespan_s,
        session=session,
    )
