"""Commands on ``cmd/node/<id>/<verb>``: status, drain, undrain, set-deadline, stop-worker.
Each returns a typed reply; bad arguments raise CommandFailed (a typed error reply)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepedge.broker_schemas import ID_PATTERN, CommandReply, CommandRequest
from deepedge.transport import CommandFailed, ok_reply

if TYPE_CHECKING:
    from deepedge.node._daemon import NodeDaemon

__all__ = ["VERBS", "handle_command"]

VERBS = ("status", "drain", "undrain", "set-deadline", "stop-worker")


def _only(req: CommandRequest, allowed: set[str]) -> None:
    extra = set(req.args) - allowed
    if extra:
        raise CommandFailed("bad_args", f"unknown argument(s): {', '.join(sorted(extra))}")


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
        case _:
            raise CommandFailed("unknown_verb", f"unknown verb {verb!r}; known: {', '.join(VERBS)}")
