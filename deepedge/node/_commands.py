"""Commands on ``cmd/node/<id>/<verb>``: status, drain, undrain, set-deadline, stop-worker, profile,
preflight. Each returns a typed reply; bad arguments raise CommandFailed (a typed error reply)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from deepedge.broker_schemas import ID_PATTERN, CommandReply, CommandRequest, JobSpec
from deepedge.node._preflight import PreflightBusy
from deepedge.node._profile import ProfileError
from deepedge.transport import CommandFailed, ok_reply

if TYPE_CHECKING:
    from deepedge.node._daemon import NodeDaemon

__all__ = ["VERBS", "handle_command"]

VERBS = ("status", "drain", "undrain", "set-deadline", "stop-worker", "profile", "preflight")
SPEC_FIELDS = set(JobSpec.__struct_fields__)


def _only(req: CommandRequest, allowed: set[str]) -> None:
    extra = set(req.args) - allowed
    if extra:
        raise CommandFailed("bad_args", f"unknown argument(s): {', '.join(sorted(extra))}")


def _profile_args(daemon: NodeDaemon, req: CommandRequest) -> tuple[str, list[float], float]:
    """model (a model name, default cnn-small), levels (comma-separated intensities in (0, 1];
    default 1 on a board without LC apps, else 1,0.5,0.25), seconds per level (0.5 .. the
    latency window, so every LC sample of a level is still there to measure)."""
    model = req.args.get("model", "cnn-small")
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise CommandFailed("bad_args", "model must be a model name")
    raw = req.args.get("levels") or ("1,0.5,0.25" if daemon.windows.deadlines else "1")
    try:
        levels = [float(x) for x in str(raw).split(",")]
    except ValueError:
        raise CommandFailed("bad_args", f"levels must be comma-separated numbers, not {raw!r}") from None
    if not 0 < len(levels) <= 8 or not all(0 < u <= 1 for u in levels):
        raise CommandFailed("bad_args", "levels must be 1 to 8 intensities in (0, 1]")
    window = daemon.config.node.latency_window_s
    seconds = req.args.get("seconds", min(3.0, window))
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0.5 <= seconds <= window:
        raise CommandFailed("bad_args", f"seconds must be a number from 0.5 to the latency window ({window:g} s)")
    return model, levels, float(seconds)


def _preflight_args(req: CommandRequest) -> tuple[str, JobSpec]:
    """job (an id) and the job's spec fields (model, dataset, output, epochs, global_batch,
    learning_rate, base_checkpoint, seed, split), checked as the wire checks a plan's spec."""
    _only(req, SPEC_FIELDS | {"job"})
    job = req.args.get("job")
    if not isinstance(job, str) or ID_PATTERN.fullmatch(job) is None:
        raise CommandFailed("bad_args", "job must be a job id ([A-Za-z0-9_.-]{1,64})")
    fields = {k: v for k, v in req.args.items() if k != "job"}
    try:
        spec = msgspec.convert(fields, JobSpec)
    except msgspec.ValidationError as exc:
        raise CommandFailed("bad_args", f"not a job spec: {exc}") from None
    return job, spec


async def handle_command(daemon: NodeDaemon, verb: str, req: CommandRequest) -> CommandReply:
    match verb:
        case "status":
            _only(req, set())
            return ok_reply(req, **daemon.status())
        case "drain" | "undrain":
            _only(req, {"reason"})
            await daemon.set_drained(verb == "drain", str(req.args.get("reason") or ""))
            return ok_reply(req, drained=daemon.drained)
        case "set-deadline":
            _only(req, {"app", "deadline_ms"})
            app, deadline = req.args.get("app"), req.args.get("deadline_ms")
            if not isinstance(app, str) or ID_PATTERN.fullmatch(app) is None:
                raise CommandFailed("bad_args", "app must be an id ([A-Za-z0-9_.-]{1,64})")
            if deadline is not None and (
                isinstance(deadline, bool) or not isinstance(deadline, int | float) or not 0 < deadline < 1e7
            ):
                raise CommandFailed("bad_args", "deadline_ms must be a number of milliseconds > 0, or null to remove")
            await daemon.set_deadline(app, None if deadline is None else float(deadline))
            return ok_reply(req, app=app, deadline_ms=deadline)
        case "stop-worker":
            _only(req, {"job"})
            job = req.args.get("job")
            if job is not None and not isinstance(job, str):
                raise CommandFailed("bad_args", "job must be a job id")
            stopped: list[Any] = await daemon.stop_workers(job)
            if job is not None and not stopped:
                raise CommandFailed("not_found", f"no worker for job {job!r} on this node")
            return ok_reply(req, stopped=stopped)
        case "profile":
            _only(req, {"model", "levels", "seconds"})
            model, levels, seconds = _profile_args(daemon, req)
            try:
                daemon.start_profile(model, levels, seconds)
            except ProfileError as exc:
                raise CommandFailed("conflict", str(exc)) from None
            return ok_reply(req, started=True, model=model, levels=",".join(f"{u:g}" for u in levels), seconds=seconds)
        case "preflight":
            job, spec = _preflight_args(req)
            try:
                result = await daemon.preflight(job, spec)
            except PreflightBusy as exc:
                raise CommandFailed("conflict", str(exc)) from None
            return ok_reply(req, **result)
        case _:
            raise CommandFailed("unknown_verb", f"unknown verb {verb!r}; known: {', '.join(VERBS)}")
