"""What ``deepedge status`` shows, built in the writer: nodes (health, load, the rate the
planner uses and where it comes from, LC p95 vs deadline, cap limit) and jobs (progress, the
predicted makespan of the current plan or the actual one, who is left out and why), paginated
so a reply always fits under the payload limit."""

from __future__ import annotations

import msgspec

from deepedge.broker_schemas import (
    MAX_PAYLOAD_BYTES,
    CoordinatorSummary,
    JobState,
    JobSummary,
    LcSummary,
    NodeSummary,
    ShareCap,
    StatusArgs,
    StatusResult,
)
from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._learning import NodeLearning
from deepedge.coordinator._view import NodeState

__all__ = ["DEFAULT_JOBS", "DEFAULT_NODES", "job_summary", "node_summary", "status_result"]

DEFAULT_NODES = 200
DEFAULT_JOBS = 50
_BUDGET = MAX_PAYLOAD_BYTES - 4096  # room for the reply's envelope
_ENC = msgspec.msgpack.Encoder()


def job_summary(job: JobRecord, now: float) -> JobSummary:
    plan = job.plan
    makespan, actual = None, False
    if job.state == JobState.COMPLETED:
        makespan, actual = max(0.0, job.updated - job.created), True
    elif plan is not None and not job.terminal:
        rest = max(0, job.total_steps - job.step) * plan.predicted_step_s
        makespan = max(0.0, now - job.created) + rest
        if job.step <= plan.resume_step:  # no step of this plan yet: its workers' start is still to come
            makespan = max(makespan, plan.predicted_makespan_s)
    return JobSummary(
        job=job.job,
        state=job.state.value,
        generation=job.generation,
        step=job.step,
        total_steps=job.total_steps,
        samples_done=job.samples_done,
        loss=job.loss,
        reason=job.reason,
        participants={a.node: ShareCap(share=a.share, cap=a.intensity_cap) for a in plan.assignments} if plan else {},
        excluded=dict(job.excluded),
        predicted_makespan_s=makespan,
        makespan_actual=actual,
    )


def node_summary(s: NodeState, learn: NodeLearning | None) -> NodeSummary:
    t = s.telemetry
    rate, source = None, ""
    if learn is not None:
        if learn.throughput.estimate is not None:
            rate, source = learn.throughput.estimate, "learned"
        elif s.birth.profiles:
            model, profile = next(iter(s.birth.profiles.items()))
            rate, source = profile.samples_per_s, f"profile {model}"
        else:
            rate, source = learn.throughput.prior, "prior"
    return NodeSummary(
        node=s.node,
        alive=s.alive,
        drained=s.drained,
        why_dead=s.death_reason,
        cpu_percent=t.cpu_percent if t else None,
        mem_percent=t.mem_percent if t else None,
        rate=round(rate, 2) if rate is not None else None,
        rate_source=source,
        cap_limit=learn.cap_limit if learn is not None else None,
        background_cores=learn.cpu_bg if learn is not None else None,
        lc={a.app: LcSummary(p95_ms=a.p95_ms, deadline_ms=a.deadline_ms, count=a.count) for a in s.latency.values()},
    )


def status_result(
    coordinator: CoordinatorSummary,
    nodes: list[NodeSummary],
    jobs: list[JobSummary],
    args: StatusArgs,
) -> StatusResult:
    """The page of ``args`` (offset, limit) of nodes and jobs (newest jobs first); without a
    limit, as many as fit in one reply (``truncated`` says when some did not)."""
    n_nodes = args.limit or DEFAULT_NODES
    n_jobs = args.limit or DEFAULT_JOBS
    while True:
        page = StatusResult(
            coordinator=coordinator,
            nodes=nodes[args.offset : args.offset + n_nodes],
            nodes_total=len(nodes),
            jobs=jobs[args.offset : args.offset + n_jobs],
            jobs_total=len(jobs),
            offset=args.offset,
            truncated=args.offset + n_nodes < len(nodes) or args.offset + n_jobs < len(jobs),
        )
        if len(_ENC.encode(page)) <= _BUDGET or (n_nodes <= 1 and n_jobs <= 1):
            return page
        n_nodes, n_jobs = max(1, n_nodes // 2), max(1, n_jobs // 2)
