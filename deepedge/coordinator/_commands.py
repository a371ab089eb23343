"""Commands on ``cmd/coordinator/<verb>``: submit, status, cancel, drain, undrain."""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

from deepedge.broker_schemas import ID_PATTERN, CommandReply, CommandRequest, JobSpec
from deepedge.coordinator._jobs import JobRecord, JobState
from deepedge.coordinator._service import Coordinator
from deepedge.transport import CommandFailed, Requester, TransportError, ok_reply

__all__ = ["VERBS", "handle_command"]

VERBS = ("submit", "status", "cancel", "drain", "undrain")
_SPEC_FIELDS = set(JobSpec.__struct_fields__)
_SUBMIT_FIELDS = _SPEC_FIELDS | {"job", "dataset_size", "model_bytes"}
MAX_NODES_IN_STATUS = 200  # a reply must stay under 64 KiB


def _job_summary(c: Coordinator, j: JobRecord) -> dict[str, Any]:
    plan = j.plan
    return {
        "job": j.job,
        "state": j.state.value,
        "generation": j.generation,
        "step": j.step,
        "total_steps": j.total_steps,
        "samples_done": j.samples_done,
        "loss": j.loss,
        "reason": j.reason,
        "participants": {a.node: {"share": a.share, "cap": a.intensity_cap} for a in plan.assignments} if plan else {},
        "predicted_makespan_s": plan.predicted_makespan_s if plan else None,
    }


def status(c: Coordinator) -> dict[str, Any]:
    nodes = []
    for s in sorted(c.view.nodes.values(), key=lambda s: s.node)[:MAX_NODES_IN_STATUS]:
        t = s.telemetry
        learn = c.learning.get(s.node)
        nodes.append(
            {
                "node": s.node,
                "alive": s.alive,
                "drained": s.drained,
                "why_dead": s.death_reason,
                "cpu_percent": t.cpu_percent if t else None,
                "mem_percent": t.mem_percent if t else None,
                "rate": round(learn.throughput.rate, 2) if learn else None,
                "cap_limit": learn.cap_limit if learn else None,
                "lc": {
                    a.app: {"p95_ms": a.p95_ms, "deadline_ms": a.deadline_ms, "count": a.count}
                    for a in s.latency.values()
                },
            }
        )
    return {
        "coordinator": c.summary(),
        "nodes": nodes,
        "nodes_total": len(c.view.nodes),
        "jobs": [_job_summary(c, j) for j in sorted(c.jobs.values(), key=lambda j: j.created)][-50:],
    }


def _spec(args: dict[str, Any]) -> tuple[str, JobSpec, int, int]:
    unknown = set(args) - _SUBMIT_FIELDS
    if unknown:
        raise CommandFailed("bad_args", f"unknown argument(s): {', '.join(sorted(unknown))}")
    job = args.get("job") or f"job-{uuid.uuid4().hex[:8]}"
    if not isinstance(job, str) or ID_PATTERN.fullmatch(job) is None:
        raise CommandFailed("bad_args", "job must be an id ([A-Za-z0-9_.-]{1,64})")
    try:
        spec = msgspec.convert({k: v for k, v in args.items() if k in _SPEC_FIELDS}, JobSpec, strict=False)
    except msgspec.ValidationError as exc:
        raise CommandFailed("bad_args", re.sub(r"\$\.", "", str(exc))) from None
    size, model_bytes = args.get("dataset_size"), args.get("model_bytes", 4_000_000)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CommandFailed("bad_args", "dataset_size (samples in the dataset) must be a positive integer")
    if isinstance(model_bytes, bool) or not isinstance(model_bytes, int) or model_bytes < 0:
        raise CommandFailed("bad_args", "model_bytes must be a non-negative integer")
    if size < spec.global_batch:
        raise CommandFailed(
            "bad_args", f"the dataset ({size} samples) is smaller than the global batch ({spec.global_batch})"
        )
    return job, spec, size, model_bytes


async def handle_command(c: Coordinator, verb: str, req: CommandRequest) -> CommandReply:
    args = dict(req.args)
    match verb:
        case "status":
            return ok_reply(req, **status(c))
        case "submit":
            name, spec, size, model_bytes = _spec(args)
            if name in c.jobs:
                raise CommandFailed("conflict", f"job {name} exists ({c.jobs[name].state.value})")
            now = c.clock.time()
            job = JobRecord(
                job=name,
                spec=spec,
                dataset_size=size,
                model_bytes=model_bytes,
                created=now,
                updated=now,
                state_since=c.clock.monotonic(),
            )
            c.jobs[name] = job
            await c.save(job)
            await c.emit("job.submitted", f"{spec.model} on {spec.dataset}", job=name)
            await c.replan(job)
            if job.state == JobState.FAILED:
                raise CommandFailed("conflict", f"job {name} cannot run: {job.reason}")
            return ok_reply(req, **_job_summary(c, job))
        case "cancel":
            target = args.get("job")
            if not isinstance(target, str) or target not in c.jobs:
                raise CommandFailed("not_found", f"no job {target!r}")
            job = c.jobs[target]
            if job.terminal:
                raise CommandFailed("conflict", f"job {target} is already {job.state.value}")
            job.move(JobState.CANCELLED, str(args.get("reason") or "cancelled by operator"))
            await c.finish(job)
            return ok_reply(req, job=target, state=job.state.value)
        case "drain" | "undrain":
            node = args.get("node")
            if not isinstance(node, str) or node not in c.view.nodes:
                raise CommandFailed("not_found", f"no node {node!r}")
            try:
                async with Requester(c.transport, c.topics, timeout_s=5) as rpc:
                    reply = await rpc.request(c.topics.node_command(node, verb), {"reason": args.get("reason") or ""})
            except TransportError as exc:
                raise CommandFailed("unavailable", f"node {node} did not answer: {exc}") from None
            if not reply.ok:
                raise CommandFailed("unavailable", f"node {node}: {reply.error.message if reply.error else 'refused'}")
            return ok_reply(req, node=node, drained=verb == "drain")
        case _:
            raise CommandFailed("unknown_verb", f"unknown verb {verb!r}; known: {', '.join(VERBS)}")
