"""From the cluster view and what was learned to the planner's inputs, and from its decision
to the wire Plan."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from deepedge.broker_schemas import Assignment, NodeBirth, Plan, TorchInfo
from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._learning import MAX_RATE, InterferenceModel, NodeLearning
from deepedge.coordinator._view import ClusterView
from deepedge.coordinator.planner import JobModel, NodeModel, PlanDecision
from deepedge.devices import BackendChoice, DeviceError, Participant, choose_backend, job_backend_setting

__all__ = [
    "DEFAULT_SAMPLE_BYTES",
    "backend_choice",
    "busy_elsewhere",
    "job_model",
    "node_models",
    "rendezvous_port",
    "to_plan",
    "torch_unavailable",
    "training_address",
]

DEFAULT_SAMPLE_BYTES = 16 * 1024 * 1024  # training memory per sample in a step, when not told


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


def node_models(
    view: ClusterView, learning: dict[str, NodeLearning], job: JobRecord, busy: Mapping[str, str] | None = None
) -> list[NodeModel]:
    """The planner's view of every live, undrained node; one that cannot train now (excluded
    from this job, busy with other jobs, no usable training address) says why in
    ``unavailable``."""
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
        profiled = profile.lc if profile is not None else ()
        apps = tuple(
            (learn.interference.get(a.app) or InterferenceModel()).model(
                a.app, a.deadline_ms, [(p.intensity, p.p95_ms) for p in profiled if p.app == a.app]
            )
            for a in state.latency.values()
            if a.deadline_ms is not None
        )
        rate = learn.throughput.rate
        if learn.throughput.estimate is None and profile is not None and profile.samples_per_s > 0:
            rate = min(profile.samples_per_s, MAX_RATE)  # a board's claim, clamped as its heartbeats are
        out.append(
            NodeModel(
                state.node,
                rate=rate,
                max_share=min(max_share, job.spec.global_batch),
                lc_apps=apps,
                cap_limit=learn.cap_limit,
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
        predicted_makespan_s=decision.makespan_s,
        ideal_makespan_s=decision.ideal_makespan_s,
        session=session,
    )
