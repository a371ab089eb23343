"""Commands on ``cmd/coordinator/<verb>``: submit, status, cancel, drain, undrain, rm.

Each verb's arguments decode into its struct (``deepedge.broker_schemas`` ``*Args``) and its
result is its ``*Result`` struct. Handlers run outside the writer: whatever reads or changes the
coordinator's state runs as a unit of the writer (``Coordinator.in_writer``); what waits on the
network (asking nodes for their pre-flight, forwarding a drain) runs outside it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import structlog

from deepedge.broker_schemas import (
    BEING_PROFILED,
    ArgsError,
    CancelArgs,
    CancelResult,
    CommandReply,
    CommandRequest,
    CoordinatorSummary,
    DrainArgs,
    DrainResult,
    JobSpec,
    JobState,
    RmArgs,
    RmResult,
    StatusArgs,
    SubmitArgs,
    args_of,
)
from deepedge.coordinator._jobs import MAX_REASON, TERMINAL, JobRecord
from deepedge.coordinator._planner_io import busy_elsewhere, training_address
from deepedge.coordinator._service import Coordinator
from deepedge.coordinator._status import job_summary, node_summary, status_result
from deepedge.transport import CommandFailed, Requester, TransportError, ok_reply

__all__ = ["VERBS", "handle_command"]

log = structlog.get_logger("deepedge.coordinator")

VERBS = ("submit", "status", "cancel", "drain", "undrain", "rm")


def _result(req: CommandRequest, result: msgspec.Struct) -> CommandReply:
    return ok_reply(req, **msgspec.to_builtins(result))


def _args(req: CommandRequest, cls: type[Any]) -> Any:
    try:
        return args_of(dict(req.args), cls)
    except ArgsError as exc:
        raise CommandFailed("bad_args", str(exc)) from None


async def handle_command(c: Coordinator, verb: str, req: CommandRequest) -> CommandReply:
    match verb:
        case "status":
            args = _args(req, StatusArgs)
            return _result(req, await c.in_writer(lambda: _status(c, args)))
        case "submit":
            return await _submit(c, req, _args(req, SubmitArgs))
        case "cancel":
            args = _args(req, CancelArgs)
            return _result(req, await c.in_writer(lambda: _cancel(c, args)))
        case "drain" | "undrain":
            args = _args(req, DrainArgs)
            return _result(req, await _drain(c, verb, args))
        case "rm":
            args = _args(req, RmArgs)
            return _result(req, await c.in_writer(lambda: _rm(c, args)))
        case _:
            raise CommandFailed("unknown_verb", f"unknown verb {verb!r}; known: {', '.join(VERBS)}")


async def _status(c: Coordinator, args: StatusArgs) -> Any:
    now = c.clock.time()
    nodes = [node_summary(s, c.learning.get(s.node)) for s in sorted(c.view.nodes.values(), key=lambda s: s.node)]
    jobs = [job_summary(j, now) for j in sorted(c.jobs.values(), key=lambda j: j.created, reverse=True)]
    return status_result(msgspec.convert(c.summary(), CoordinatorSummary), nodes, jobs, args)


# ---- submit -------------------------------------------------------------------------------------


async def _submit(c: Coordinator, req: CommandRequest, args: SubmitArgs) -> CommandReply:
    """Check the job, ask every candidate node for its pre-flight (outside the writer, at once),
    then create and plan it (in the writer) without the nodes that refused it. Refused when
    every candidate refused."""
    spec = args.spec()
    if args.dataset_size < spec.global_batch:
        raise CommandFailed(
            "bad_args",
            f"the dataset ({args.dataset_size} samples) is smaller than the global batch ({spec.global_batch})",
        )
    total = spec.epochs * -(-args.dataset_size // spec.global_batch)
    if total > c.cfg.max_total_steps:
        raise CommandFailed(
            "bad_args",
            f"{spec.epochs} epochs of {args.dataset_size} samples in batches of {spec.global_batch} are {total} steps, "
            f"over coordinator.max_total_steps ({c.cfg.max_total_steps})",
        )
    name = args.job or f"job-{uuid.uuid4().hex[:8]}"
    candidates = await c.in_writer(lambda: _reserve(c, name, spec))
    try:
        asked, crowded = _with_room(c, spec, candidates)
        refused = await _preflight(c, name, spec, asked)
        if len(refused) == len(asked) < len(candidates):  # every node with room refused: ask the rest
            refused |= await _preflight(c, name, spec, [n for n in candidates if n not in asked])
        every = len(refused) == len(candidates)
        job = await c.in_writer(lambda: _create(c, name, args, spec, refused, every=every, crowded=crowded))
    finally:
        c.reserved.discard(name)
    if job.state == JobState.FAILED:
        raise CommandFailed("conflict", f"job {name} cannot run: {job.reason}")
    return _result(req, job_summary(job, c.clock.time()))


async def _reserve(c: Coordinator, name: str, spec: JobSpec) -> list[str]:
    """Claim the job id (a concurrent submit of the same id is refused) and list the nodes to
    ask for their pre-flight: alive, undrained, with a training address, not busy."""
    if name in c.jobs or name in c.reserved or await asyncio.to_thread(c.store.exists, name):
        state = c.jobs[name].state.value if name in c.jobs else "being submitted" if name in c.reserved else "stored"
        raise CommandFailed("conflict", f"job {name} exists ({state}); `deepedge rm {name}` frees a finished one's id")
    c.reserved.add(name)
    probe = JobRecord(job=name, spec=spec, dataset_size=1, model_bytes=0)
    busy = busy_elsewhere(c.view, c.jobs.values(), probe)
    return [
        s.node for s in c.view.alive() if not s.drained and s.node not in busy and training_address(s.birth) is not None
    ]


def _with_room(
    c: Coordinator, spec: JobSpec, candidates: list[str]
) -> tuple[list[str], dict[str, list[tuple[str, float, float]]]]:
    """The candidates to ask for a pre-flight: for a forecast job, not those whose LC apps have
    no room for a worker's start (the check imports torch beside them, which raised the demo's
    apps 1.7-2.0x, docs/benchmarks/lc-scenarios.md), since the first plan leaves them out too
    (``Coordinator.with_room_to_start``); every candidate when none has room, and then those
    crowded nodes (the submit says so if the first plan uses them: ``lc.crowded_start``). One
    put into the job later starts without it (its worker checks the same at start). Read on the
    event loop between the writer's units, with no await: a consistent view."""
    if spec.lc_control != "forecast":
        return candidates, {}
    crowded = c.crowded((), candidates)
    with_room = [n for n in candidates if n not in crowded]
    return (with_room, {}) if with_room else (candidates, crowded)


async def _preflight(c: Coordinator, name: str, spec: JobSpec, nodes: list[str]) -> dict[str, str]:
    """{node: why it refused}. A node that does not answer in time is left out too; one too old
    to know the verb (``unknown_verb``) is not (its worker checks the same at start)."""
    if not nodes:
        return {}
    args = {f: getattr(spec, f) for f in JobSpec.__struct_fields__} | {"job": name}
    timeout = c.cfg.preflight_timeout_s
    refused: dict[str, str] = {}
    async with Requester(c.transport, c.topics, timeout_s=timeout) as rpc:

        async def ask(node: str) -> None:
            learn = c.learning_of(node)  # its LC reports meanwhile are not observations (in_check)
            learn.check_started(c.clock.monotonic())
            try:
                reply = await rpc.request(c.topics.node_command(node, "preflight"), args)
            except TransportError:
                refused[node] = f"no pre-flight answer within {timeout:g} s"
                return
            finally:
                learn.check_done(c.clock.monotonic())
            if not reply.ok:
                if reply.error is None or reply.error.code != "unknown_verb":
                    refused[node] = reply.error.message if reply.error else "refused"
            elif reply.result.get("ok") is not True:  # its word, but a bool: not a truthy 1 or string
                refused[node] = str(reply.result.get("reason") or "pre-flight failed")

        await asyncio.gather(*(ask(n) for n in nodes))
    return {n: r[:MAX_REASON] for n, r in refused.items()}


async def _create(
    c: Coordinator,
    name: str,
    args: SubmitArgs,
    spec: JobSpec,
    refused: dict[str, str],
    every: bool,
    crowded: dict[str, list[tuple[str, float, float]]],
) -> JobRecord:
    """Store the job and plan it without the nodes that refused it. When every candidate
    refused, it is stored as failed with every reason (``status`` and ``logs`` say why; ``rm``
    frees the id). ``crowded``: the nodes asked although their LC apps had no room for a
    worker's start (none had): said if the first plan starts workers on them."""
    now = c.clock.time()
    # a board being profiled is busy, not unfit: left out for a while, not for good
    profiled = [n for n, why in refused.items() if why.endswith(BEING_PROFILED)]
    job = JobRecord(
        job=name,
        spec=spec,
        dataset_size=args.dataset_size,
        model_bytes=args.model_bytes,
        created=now,
        updated=now,
        excluded={n: why for n, why in refused.items() if n not in profiled},
    )
    c.jobs[name] = job
    await c.save(job)
    await c.emit("job.submitted", f"{spec.model} on {spec.dataset}", job=name)
    for node, why in job.excluded.items():
        await c.emit("node.excluded", f"pre-flight: {why}", level="warning", node=node, job=name)
    for node in profiled:
        await c.hold_profiled(job, node)
    if refused and every:
        why = "; ".join(f"{n}: {r}" for n, r in sorted(refused.items()))
        await c.fail(job, f"refused by every node: {why}")
    else:
        await c.replan_or_fail(job)
        if job.plan is not None and (chosen := {a.node for a in job.plan.assignments} & set(crowded)):
            await c.say_crowded_start(job, {n: crowded[n] for n in sorted(chosen)})
    return job


# ---- cancel, drain, rm --------------------------------------------------------------------------


async def _cancel(c: Coordinator, args: CancelArgs) -> CancelResult:
    job = c.jobs.get(args.job)
    if job is None:
        raise CommandFailed("not_found", f"no job {args.job!r}")
    if job.terminal:
        raise CommandFailed("conflict", f"job {args.job} is already {job.state.value}")
    await c.apply_cancel(job, args.reason or "cancelled by operator")
    return CancelResult(job=job.job, state=job.state.value)


async def _drain(c: Coordinator, verb: str, args: DrainArgs) -> DrainResult:
    known = await c.in_writer(lambda: _known(c, args.node))
    if not known:
        raise CommandFailed("not_found", f"no node {args.node!r}")
    try:  # the node says so in its birth; the coordinator re-plans when that arrives
        async with Requester(c.transport, c.topics, timeout_s=5) as rpc:
            reply = await rpc.request(c.topics.node_command(args.node, verb), {"reason": args.reason})
    except TransportError as exc:
        raise CommandFailed("unavailable", f"node {args.node} did not answer: {exc}") from None
    if not reply.ok:
        raise CommandFailed("unavailable", f"node {args.node}: {reply.error.message if reply.error else 'refused'}")
    return DrainResult(node=args.node, drained=verb == "drain")


async def _known(c: Coordinator, node: str) -> bool:
    return node in c.view.nodes


async def _rm(c: Coordinator, args: RmArgs) -> RmResult:
    if (args.job is None) == (args.older_than_s is None):
        raise CommandFailed("bad_args", "give a job id or older_than_s, not both and not neither")
    if args.job is not None:
        state = await asyncio.to_thread(c.store.state_of, args.job)
        if state is None:
            raise CommandFailed("not_found", f"no job {args.job!r}")
        if state not in TERMINAL:
            raise CommandFailed("conflict", f"job {args.job} is {state}: cancel it first")
        names = [args.job]
    else:
        cutoff = c.clock.time() - (args.older_than_s or 0.0)
        names = await asyncio.to_thread(c.store.finished_before, cutoff)
    for name in names:
        await c.remove(name)
    return RmResult(removed=names)
