"""From the cluster view and what was learned to the planner's inputs, and from its decision
to the wire Plan."""

from __future__ import annotations

from deepedge.broker_schemas import Assignment, Plan
from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._models import InterferenceModel, NodeLearning
from deepedge.coordinator._view import ClusterView
from deepedge.coordinator.planner import JobModel, NodeModel, PlanDecision

__all__ = ["DEFAULT_SAMPLE_BYTES", "job_model", "node_models", "to_plan"]

DEFAULT_SAMPLE_BYTES = 16 * 1024 * 1024  # training memory per sample in a step, when not told


def node_models(view: ClusterView, learning: dict[str, NodeLearning], job: JobRecord) -> list[NodeModel]:
    out = []
    for state in view.alive():
        if state.drained or state.node not in learning:
            continue
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
            learn.interference.setdefault(a.app, InterferenceModel()).model(
                a.app, a.deadline_ms, [(p.intensity, p.p95_ms) for p in profiled if p.app == a.app]
            )
            for a in state.latency.values()
            if a.deadline_ms is not None
        )
        rate = learn.throughput.rate
        if learn.throughput.estimate is None and profile is not None and profile.samples_per_s > 0:
            rate = profile.samples_per_s
        out.append(
            NodeModel(
                state.node,
                rate=rate,
                max_share=min(max_share, job.spec.global_batch),
                lc_apps=apps,
                cap_limit=learn.cap_limit,
            )
        )
    return out


def job_model(job: JobRecord) -> JobModel:
    return JobModel(job.spec.global_batch, job.dataset_size, job.spec.epochs, job.model_bytes)


def to_plan(job: JobRecord, decision: PlanDecision, view: ClusterView, generation: int, port: int, ts: float) -> Plan:
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
    host = view.nodes[decision.participants[0]].birth.hostname or decision.participants[0]
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
    )
