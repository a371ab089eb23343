"""What a restarted coordinator remembers of what it learned: per node, the LC feedback's cap
limit and each LC app's live observations and calibration; per unfinished job, the nodes held
out of its improvements (LC holds with their strikes, profiling holds) and when each node's LC
app last re-planned it. Without it, a ``kill -9`` or an upgrade of the coordinator forgot a cap
lowered after a miss, the widened intervals and every hold, and the next improvement put a
board back at the cap that had just missed.

Saved in the job store's ``memory`` table (:class:`~deepedge.coordinator._store.JobStore`) as
JSON, a row per node and per job, when it changed; times are kept as wall-clock time (the
monotonic clock restarts with the process) and moved back to the monotonic clock on load. A
row older than MEMORY_TTL_S is not restored (a board's LC apps may have changed since); a row
that does not decode or is out of its bounds is skipped and said, never fatal. Not kept: the
links (re-probed when a group forms), the throughput and start-up estimates (re-learned from the
first heartbeats), the request-rate history of the forecasts."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated

import msgspec

from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._learning import ANCHOR_OBS, NodeLearning

if TYPE_CHECKING:
    from deepedge.coordinator._policy import JobRuntime

__all__ = [
    "MEMORY_TTL_S",
    "AppMemory",
    "JobMemory",
    "NodeMemory",
    "decode_job",
    "decode_node",
    "job_memory",
    "node_memory",
    "recall",
    "restore_job",
    "restore_node",
    "snapshot",
]

MEMORY_TTL_S = 3600.0  # a memory saved longer ago than this is not restored
KEEP_POINTS = 50  # (intensity, p95) pairs of the linear model kept per app
MAX_APPS = 16
MAX_NODES_HELD = 10_000

Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Ms = Annotated[float, msgspec.Meta(ge=0.0, le=1e7)]
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1e7)]
Cores = Annotated[float, msgspec.Meta(ge=0.0, le=1e4)]
Wall = Annotated[float, msgspec.Meta(ge=0.0, le=1e11)]  # seconds since the epoch
Count = Annotated[int, msgspec.Meta(ge=0, le=1 << 40)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class AppMemory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    points: Annotated[list[tuple[Unit, Ms]], msgspec.Meta(max_length=KEEP_POINTS)] = []
    observed: Annotated[list[tuple[Unit, Rate, Cores, Ms]], msgspec.Meta(max_length=ANCHOR_OBS)] = []
    widen: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    judged: Count = 0
    over: Count = 0


class NodeMemory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cap_limit: Unit = 1.0
    good_reports: Count = 0
    decreased: Wall | None = None  # when the cap limit was last lowered
    apps: Annotated[dict[Name, AppMemory], msgspec.Meta(max_length=MAX_APPS)] = {}


Held = tuple[Wall, Count]  # (until, strikes or refusals)


class JobMemory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    holds: Annotated[dict[Name, Held], msgspec.Meta(max_length=MAX_NODES_HELD)] = {}
    profiled: Annotated[dict[Name, Held], msgspec.Meta(max_length=MAX_NODES_HELD)] = {}
    lc_risk: Annotated[dict[Name, Wall], msgspec.Meta(max_length=MAX_NODES_HELD)] = {}


_ENC = msgspec.json.Encoder()
_NODE = msgspec.json.Decoder(NodeMemory)
_JOB = msgspec.json.Decoder(JobMemory)


def decode_node(text: str | bytes) -> NodeMemory:
    """Raises msgspec.DecodeError or ValidationError for a row out of its bounds."""
    return _NODE.decode(text)


def decode_job(text: str | bytes) -> JobMemory:
    return _JOB.decode(text)


class _Clocks:
    """Moves times between this process's monotonic clock and the wall clock."""

    def __init__(self, mono_now: float, wall_now: float) -> None:
        self.offset = wall_now - mono_now

    def wall(self, mono: float) -> float:
        return max(0.0, round(mono + self.offset, 1))

    def mono(self, wall: float) -> float:
        return wall - self.offset


def _finite(*values: float) -> bool:
    return all(v == v and abs(v) != float("inf") for v in values)


def node_memory(learn: NodeLearning, mono_now: float, wall_now: float) -> NodeMemory:
    clocks = _Clocks(mono_now, wall_now)
    apps = {}
    for name, model in list(learn.interference.items())[-MAX_APPS:]:
        apps[name] = AppMemory(
            points=[(u, p) for u, p in list(model.points)[-KEEP_POINTS:] if _finite(u, p)],
            observed=[o for o in list(model.observed)[-ANCHOR_OBS:] if _finite(*o)],
            widen=model.widen,
            judged=model.calibrated[0],
            over=model.calibrated[1],
        )
    decreased = clocks.wall(learn.last_decrease) if learn.last_decrease > -1e8 else None
    return NodeMemory(learn.cap_limit, learn.good_reports, decreased, apps)


def restore_node(learn: NodeLearning, memory: NodeMemory, mono_now: float, wall_now: float) -> None:
    """Put ``memory`` into a fresh ``learn``."""
    clocks = _Clocks(mono_now, wall_now)
    learn.cap_limit = memory.cap_limit
    learn.good_reports = memory.good_reports
    if memory.decreased is not None:
        learn.last_decrease = clocks.mono(memory.decreased)
    for name, app in memory.apps.items():
        model = learn.app(name)
        model.points = deque(app.points, maxlen=model.points.maxlen)
        model.observed = deque(app.observed, maxlen=model.observed.maxlen)
        model.widen = app.widen
        model.calibrated = [app.judged, min(app.over, app.judged)]


def job_memory(
    holds: dict[str, tuple[float, int]],
    profiled: dict[str, tuple[float, int]],
    lc_risk: dict[str, float],
    mono_now: float,
    wall_now: float,
) -> JobMemory:
    """A job's holds and LC re-plans (a hold over still counts: the next drop soon after it
    doubles it, :func:`~deepedge.coordinator._policy.lc_hold`)."""
    clocks = _Clocks(mono_now, wall_now)

    def held(items: dict[str, tuple[float, int]]) -> dict[str, Held]:
        return {n: (clocks.wall(until), count) for n, (until, count) in items.items()}

    risk = {n: clocks.wall(at) for n, at in lc_risk.items() if at > -1e8}
    return JobMemory(held(holds), held(profiled), risk)


def restore_job(
    memory: JobMemory, mono_now: float, wall_now: float
) -> tuple[dict[str, tuple[float, int]], dict[str, tuple[float, int]], dict[str, float]]:
    """(holds, profiled, lc_risk) of a job, on this process's monotonic clock."""
    clocks = _Clocks(mono_now, wall_now)
    holds = {n: (clocks.mono(until), count) for n, (until, count) in memory.holds.items()}
    profiled = {n: (clocks.mono(until), count) for n, (until, count) in memory.profiled.items()}
    return holds, profiled, {n: clocks.mono(at) for n, at in memory.lc_risk.items()}


def snapshot(
    learning: Mapping[str, NodeLearning],
    runtime: Mapping[str, JobRuntime],
    jobs: Mapping[str, JobRecord],
    mono_now: float,
    wall_now: float,
) -> dict[str, str]:
    """key -> JSON of every node and unfinished job with something to remember ("node:NAME",
    "job:NAME"); one with nothing (no LC app, no hold) has no row."""
    rows: dict[str, str] = {}
    for node, learn in learning.items():
        mem = node_memory(learn, mono_now, wall_now)
        if mem != NodeMemory():
            rows[f"node:{node}"] = _ENC.encode(mem).decode()
    for name, rt in runtime.items():
        job = jobs.get(name)
        if job is None or job.terminal:
            continue
        jmem = job_memory(rt.holds, rt.profiled, rt.lc_risk, mono_now, wall_now)
        if jmem != JobMemory():
            rows[f"job:{name}"] = _ENC.encode(jmem).decode()
    return rows


def recall(
    rows: list[tuple[str, str]],
    learning_of: Callable[[str], NodeLearning],
    runtime: Mapping[str, JobRuntime],
    max_nodes: int,
    mono_now: float,
    wall_now: float,
) -> tuple[int, int, list[tuple[str, str]]]:
    """Restore ``rows`` (newest first, from the store) into the nodes' learning (at most
    ``max_nodes``) and the runtimes of the jobs in ``runtime``: (nodes, jobs restored, and
    (key, why) of each row skipped as unreadable)."""
    nodes = jobs = 0
    skipped: list[tuple[str, str]] = []
    for key, text in rows:
        kind, _, name = key.partition(":")
        if not name or len(name) > 256:
            skipped.append((key[:300], "no name, or a name too long"))
            continue
        try:
            if kind == "node" and nodes < max_nodes:
                memory = decode_node(text)
                restore_node(learning_of(name), memory, mono_now, wall_now)
                nodes += 1
            elif kind == "job" and name in runtime:
                held = restore_job(decode_job(text), mono_now, wall_now)
                rt = runtime[name]
                rt.holds, rt.profiled, rt.lc_risk = held
                jobs += 1
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            skipped.append((key[:300], str(exc)[:300]))
    return nodes, jobs, skipped
