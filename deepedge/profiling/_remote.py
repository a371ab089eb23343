"""``deepedge profile NODE --interference``: a profiling session whose runs a node daemon
measures, one ``profile`` command (``interference: true``) per design point over MQTT; the
design, the fit and the knowledge base are here, on the operator's machine, never on the board.
The key is the board's device model and software versions from its retained birth message, and
the LC app's name: every board of that model reuses the result. A board whose status says it
can run the GPU stressor (it trains on a CUDA GPU) is also profiled under it
(:func:`board_space`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from deepedge.broker_schemas import ArgValue, Topics
from deepedge.config import Config
from deepedge.errors import DeepEdgeError, ExitCode
from deepedge.profiling._design import Space
from deepedge.profiling._kb import KnowledgeBase, ProfileKey, versions_key
from deepedge.profiling._session import ProfileSession, SessionResult
from deepedge.profiling._space import GPU, Point, Run
from deepedge.transport import MqttTransport, Requester

__all__ = ["NameTheApp", "board_space", "profile_interference"]


class NameTheApp(DeepEdgeError):
    """The node has no LC app with a deadline, or several: --app must name one (a usage error)."""

    exit_code = ExitCode.USAGE


def board_space(space: Space, status: object) -> Space:
    """``space`` with the GPU stressor added where the board's ``status`` reply lists it among
    the stressors its interference runs can start (it trains on a CUDA GPU: a discrete GPU or a
    Jetson's); as it is otherwise, and for a node of before the GPU stressor (no such list: it
    would refuse the ``gpu`` argument). A peer's reply: its shape is not trusted."""
    profile = status.get("profile") if isinstance(status, dict) else None
    listed = profile.get("stressors") if isinstance(profile, dict) else None
    if not isinstance(listed, list) or GPU not in listed or GPU in space.stressors:
        return space
    return replace(space, stressors=(*space.stressors, GPU))


async def profile_interference(
    config: Config,
    node: str,
    kb_path: Path,
    *,
    app: str | None = None,
    budget: int = 40,
    adaptive: int = 8,
    seconds: float = 3.0,
    space: Space | None = None,
    q: float = 0.95,
    model: str = "cnn-small",
    workers: int = 1,
    log: Callable[[str], None] | None = None,
) -> SessionResult:
    """Run a session against ``node``; raises DeepEdgeError with the node's reason if a run is
    refused or fails."""
    from deepedge.ops import CommandError, node_status

    say = log or (lambda _m: None)
    topics = Topics(config.cluster.name)
    async with MqttTransport(config.broker) as t:
        birth = await node_status(t, config, node)
        if birth is None:
            raise DeepEdgeError(f"node {node!r}: its status message could not be read")
        async with Requester(t, topics, timeout_s=seconds + 150, sender="cli") as rpc:
            # the app is checked before anything is designed, run or stored
            status = await rpc.request(topics.node_command(node, "status"), {})
            if not status.ok:
                err = status.error
                raise CommandError(err.code if err else "?", f"node {node}: {err.message if err else ''}")
            lc = status.result.get("lc_apps")  # a peer's reply: its shape is not trusted
            apps = (
                sorted(str(a) for a, v in lc.items() if isinstance(v, dict) and v.get("deadline_ms"))
                if isinstance(lc, dict)
                else []
            )
            if app is not None and app not in apps:
                raise CommandError("not_found", f"node {node}: no LC app {app!r} with a deadline (it has {apps[:20]})")
            if app is None:
                if len(apps) != 1:
                    raise NameTheApp(f"node {node}: name the LC app with --app (apps with a deadline: {apps[:20]})")
                app = apps[0]
            key = ProfileKey(birth.device_model or "unknown", app, versions_key(birth.software))
            space = board_space(space or Space(), status.result)
            say(f"profiling {app} on {node} ({key}); stressors {', '.join(space.stressors)}")
            loop = asyncio.get_running_loop()

            async def one(p: Point) -> Run:
                args: dict[str, ArgValue] = {
                    "interference": True,
                    "app": app,
                    "model": model,
                    "seconds": seconds,
                    "intensity": p.intensity,
                    "rate": p.rate,
                    "cpu": p.cpu,
                    "cache": p.cache,
                    "mem": p.mem,
                    "io": p.io,
                    "workers": workers,
                }
                if p.gpu > 0:  # (only in a design the node's status allowed: see board_space)
                    args["gpu"] = p.gpu
                reply = await rpc.request(topics.node_command(node, "profile"), args)
                if not reply.ok:
                    err = reply.error
                    raise CommandError(err.code if err else "?", f"node {node}: {err.message if err else ''}")
                try:  # the node's measurement: checked like any peer's message
                    return Run.from_dict(dict(reply.result["run"]))
                except (KeyError, TypeError, ValueError) as exc:
                    raise DeepEdgeError(f"node {node}: an impossible run in its reply: {exc}") from None

            count = [0]

            def measure(points: list[Point], phase: str) -> list[Run]:
                out = []
                for p in points:
                    r = asyncio.run_coroutine_threadsafe(one(p), loop).result()
                    r = Run.from_dict(r.to_dict() | {"phase": phase})
                    count[0] += 1
                    say(
                        f"  run {count[0]}: u {r.intensity:.2f}, {r.rate:.0f} req/s, {p.mix()} -> p95 {r.p95_ms:.1f} ms"
                        + (f" ({'; '.join(r.notes)})" if r.notes else "")
                    )
                    out.append(r)
                return out

            session = ProfileSession(
                key, space, KnowledgeBase(kb_path), q=q, training_model=model, source=f"node {node}"
            )
            return await asyncio.to_thread(session.run, measure, budget, adaptive, say)
