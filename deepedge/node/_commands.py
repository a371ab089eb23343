"""Commands on ``cmd/node/<id>/<verb>``: status, drain, undrain, set-deadline, stop-worker, profile,
preflight. Each returns a typed reply; bad arguments raise CommandFailed (a typed error reply)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import msgspec

from deepedge.broker_schemas import (
    ArgsError,
    CommandReply,
    CommandRequest,
    DrainResult,
    InterferenceRunResult,
    NoArgs,
    PreflightArgs,
    ProfileArgs,
    ProfileStarted,
    ReasonArgs,
    SetDeadlineArgs,
    SetDeadlineResult,
    StopWorkerArgs,
    StopWorkerResult,
    args_of,
)
from deepedge.job_policy import JobRefused, check_model
from deepedge.node._preflight import PreflightBusy
from deepedge.node._profile import ProfileError
from deepedge.profiling._space import Point
from deepedge.transport import CommandFailed, ok_reply

if TYPE_CHECKING:
    from deepedge.node._daemon import NodeDaemon

A = TypeVar("A", bound=msgspec.Struct)

__all__ = ["VERBS", "handle_command"]

VERBS = ("status", "drain", "undrain", "set-deadline", "stop-worker", "profile", "preflight")


def _args(req: CommandRequest, cls: type[A]) -> A:
    try:
        return args_of(dict(req.args), cls)
    except ArgsError as exc:
        raise CommandFailed("bad_args", str(exc)) from None


def _result(req: CommandRequest, result: msgspec.Struct) -> CommandReply:
    return ok_reply(req, **msgspec.to_builtins(result))


def _levels(daemon: NodeDaemon, args: ProfileArgs) -> tuple[list[float], float]:
    """levels (comma-separated intensities in (0, 1]; default 1 on a board without LC apps,
    else 1,0.5,0.25), seconds per level (0.5 .. the latency window, so every LC sample of a
    level is still there to measure)."""
    raw = args.levels or ("1,0.5,0.25" if daemon.windows.deadlines else "1")
    try:
        levels = [float(x) for x in raw.split(",")]
    except ValueError:
        raise CommandFailed("bad_args", f"levels must be comma-separated numbers, not {raw!r}") from None
    if not 0 < len(levels) <= 8 or not all(0 < u <= 1 for u in levels):
        raise CommandFailed("bad_args", "levels must be 1 to 8 intensities in (0, 1]")
    window = daemon.config.node.latency_window_s
    seconds = min(3.0, window) if args.seconds is None else args.seconds
    if seconds > window:
        raise CommandFailed("bad_args", f"seconds must be a number from 0.5 to the latency window ({window:g} s)")
    return levels, seconds


async def _interference_run(daemon: NodeDaemon, req: CommandRequest, prof: ProfileArgs) -> CommandReply:
    """One interference run: refused while training runs here (profile an idle board), when the
    app is not one of this board's, or when another run is in progress."""
    declared = sorted(daemon.windows.deadlines)
    app = prof.app or (declared[0] if len(declared) == 1 else None)
    if app is None:
        raise CommandFailed("bad_args", f"name the LC app to measure (app): this board has {declared or 'none'}")
    if app not in daemon.windows.deadlines:
        raise CommandFailed("not_found", f"no LC app {app!r} with a deadline on this node (set-deadline first)")
    window = daemon.config.node.latency_window_s
    seconds = min(3.0, window) if prof.seconds is None else prof.seconds
    if seconds > window:
        raise CommandFailed("bad_args", f"seconds must be a number from 0.5 to the latency window ({window:g} s)")
    gpu_device = daemon.gpu_device()
    if prof.gpu > 0 and gpu_device is None:
        info = daemon.torch_probe.info
        trains_on = "an unknown device (its torch probe has not answered)" if info is None else info.device
        raise CommandFailed("bad_args", f"gpu: this node trains on {trains_on}, it has no GPU to stress")
    point = Point(prof.intensity, prof.rate or 0.0, prof.cpu, prof.cache, prof.mem, prof.io, prof.gpu)
    for standby in daemon.standbys():
        await standby.yield_to_measurement()
    # checked after the awaits above (a plan that came meanwhile started a worker) and with no
    # await before run_point takes its lock, from which on a plan is refused (NodeDaemon.profiling)
    busy = daemon.active_jobs()
    if busy:
        raise CommandFailed("conflict", f"training is running here (job {', '.join(busy)}): profile an idle board")
    try:
        run = await daemon.profiler.run_point(app, point, seconds, prof.workers, prof.model, gpu_device or "cuda")
    except ProfileError as exc:
        if "already running" in str(exc):
            raise CommandFailed("conflict", str(exc)) from None
        raise CommandFailed("internal", str(exc)) from None
    # what `deepedge logs -f` shows of a session (one event a run; a session has a few dozen)
    load = ", ".join(f"{s} {getattr(run, s):.2f}" for s in ("cache", "mem", "io", "gpu") if getattr(run, s) > 0)
    await daemon.emit(
        "profile.run",
        f"{app}: u {run.intensity:.2f}, {run.rate:.0f} req/s, background {run.cpu:.2f} cores"
        + (f", {load}" if load else "")
        + f" -> p95 {run.p95_ms:.1f} ms ({run.count} requests)",
        app=app,
    )
    return _result(req, InterferenceRunResult(node=daemon.node, run=run.to_dict()))


async def handle_command(daemon: NodeDaemon, verb: str, req: CommandRequest) -> CommandReply:
    match verb:
        case "status":
            _args(req, NoArgs)
            return ok_reply(req, **daemon.status())
        case "drain" | "undrain":
            reason = _args(req, ReasonArgs).reason
            await daemon.set_drained(verb == "drain", reason)
            return _result(req, DrainResult(node=daemon.node, drained=daemon.drained))
        case "set-deadline":
            dl = _args(req, SetDeadlineArgs)
            await daemon.set_deadline(dl.app, dl.deadline_ms)
            return _result(req, SetDeadlineResult(app=dl.app, deadline_ms=dl.deadline_ms))
        case "stop-worker":
            job = _args(req, StopWorkerArgs).job
            stopped = await daemon.stop_workers(job)
            if job is not None and not stopped:
                raise CommandFailed("not_found", f"no worker for job {job!r} on this node")
            return _result(req, StopWorkerResult(stopped=stopped))
        case "profile":
            prof = _args(req, ProfileArgs)
            try:  # the profiler builds (imports) the model: the board's allow-list decides, as for a job
                check_model(prof.model, daemon.config.training)
            except JobRefused as exc:
                raise CommandFailed("bad_args", str(exc)) from None
            if prof.interference:
                return await _interference_run(daemon, req, prof)
            levels, seconds = _levels(daemon, prof)
            for standby in daemon.standbys():
                await standby.yield_to_measurement()
            try:
                daemon.start_profile(prof.model, levels, seconds)
            except ProfileError as exc:
                raise CommandFailed("conflict", str(exc)) from None
            shown = ",".join(f"{u:g}" for u in levels)
            return _result(req, ProfileStarted(started=True, model=prof.model, levels=shown, seconds=seconds))
        case "preflight":
            pre = _args(req, PreflightArgs)
            try:
                result = await daemon.preflight(pre.job, pre.spec())
            except PreflightBusy as exc:
                raise CommandFailed("conflict", str(exc)) from None
            return ok_reply(req, **result)
        case _:
            raise CommandFailed("unknown_verb", f"unknown verb {verb!r}; known: {', '.join(VERBS)}")
