"""What a restarted coordinator remembers of what it learned: per node, the LC feedback's cap
limit and each LC app's live observations and calibration; per unfinished job, the nodes held
out of its improvements (LC holds with their strikes, profiling holds) and when each node's LC
app last re-planned it. Without it, a ``kill -9`` or an upgrade of the coordinator forgot a cap
lowered after a miss, the widened intervals and every hold, and the next improvement put a
board back at the cap that had just missed.

Saved in the job store's ``memory`` table (:class:`~deepedge.coordinator._store.JobStore`) as
JSON, a row per node and per job, when it changed; times are kept as wall-clock time (the
monotonic clock restarts with the process) and moved back to the monotonic clock on load. A
coordinator stopped for longer than MEMORY_TTL_S restores nothing (its boards' LC apps may have
changed since); a row that does not decode or is out of its bounds is skipped and said, never
fatal. Not kept: the links (re-probed when a group forms), the forecasts' hold
(:meth:`RateForecast.steady`: the first plan after a restart is not held at the last one's
rate). Kept since 2026-12-06: each LC app's request-rate history (the last HISTORY_STEPS
seconds), so a restarted coordinator forecasts a repeating load from its season at once instead
of after two more periods (the seconds it was down carry the last rate before them); each
node's throughput, start-up, forming and per-step overhead estimates, so a re-plan soon after a
restart (a board's death) splits by what was learned, not by the ``default_rate`` prior."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, TypeVar

import msgspec
import numpy as np

from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._learning import ANCHOR_OBS, FORMING_MAX_S, OVERHEAD_MAX_S, STARTUP_MAX_S, NodeLearning
from deepedge.coordinator._policy import LC_HOLD_MAX_S, PROFILE_HOLD_S
from deepedge.profiling._forecast import HISTORY_STEPS

T = TypeVar("T")

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
    "job_rows",
    "node_memory",
    "node_row",
    "recall",
    "restore_job",
    "restore_node",
]

# a coordinator stopped for longer than this restores nothing (its boards' LC apps may have changed)
MEMORY_TTL_S = 3600.0
KEEP_POINTS = 50  # (intensity, p95) pairs of the linear model kept per app
MAX_APPS = 16
MAX_NODES_HELD = 10_000

MAX_MS, MAX_RATE, MAX_CORES = 1e7, 1e7, 1e4  # a kept p95, request rate (/s), background cores
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Ms = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_MS)]
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_RATE)]
Cores = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_CORES)]
Wall = Annotated[float, msgspec.Meta(ge=0.0, le=1e11)]  # seconds since the epoch
MAX_COUNT = 1 << 40
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class AppMemory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    points: Annotated[list[tuple[Unit, Ms]], msgspec.Meta(max_length=KEEP_POINTS)] = []
    observed: Annotated[list[tuple[Unit, Rate, Cores, Ms]], msgspec.Meta(max_length=ANCHOR_OBS)] = []
    widen: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    judged: Count = 0
    over: Count = 0
    # the request-rate history, one rate per step of the forecast, the last starting at rates_at
    rates: Annotated[list[Rate], msgspec.Meta(max_length=HISTORY_STEPS)] = []
    rates_at: Wall | None = None


class NodeMemory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cap_limit: Unit = 1.0
    good_reports: Count = 0
    decreased: Wall | None = None  # when the cap limit was last lowered
    apps: Annotated[dict[Name, AppMemory], msgspec.Meta(max_length=MAX_APPS)] = {}
    # since 2026-12-06: its throughput at full intensity (samples/s) and heartbeats it is
    # learned from, its worker's start-up and group forming (s), its per-step overhead (s)
    rate: Annotated[float, msgspec.Meta(gt=0.0, le=MAX_RATE)] | None = None
    rate_n: Count = 0
    startup: Annotated[float, msgspec.Meta(ge=0.0, le=STARTUP_MAX_S)] | None = None
    forming: Annotated[float, msgspec.Meta(ge=0.0, le=FORMING_MAX_S)] | None = None
    overhead: Annotated[float, msgspec.Meta(ge=0.0, le=OVERHEAD_MAX_S)] | None = None


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


def _within(value: float, high: float) -> bool:
    return 0.0 <= value <= high  # False for NaN


def _count(n: int) -> int:
    return min(max(0, n), MAX_COUNT)


def _last_within(items: Sequence[T], n: int, ok: Callable[[T], bool]) -> list[T]:
    """The last ``n`` of ``items`` that are ``ok``, in order: read from the end and stopped there,
    since a row keeps far fewer than a model holds (50 of 200 points, 30 of 200 observations)."""
    kept: list[T] = []
    for item in reversed(items):
        if len(kept) == n:
            break
        if ok(item):
            kept.append(item)
    kept.reverse()
    return kept


def _point_ok(point: tuple[float, float]) -> bool:
    return _within(point[0], 1.0) and _within(point[1], MAX_MS)


def _observation_ok(obs: tuple[float, float, float, float]) -> bool:
    u, rate, cores, p95 = obs
    return _within(u, 1.0) and _within(rate, MAX_RATE) and _within(cores, MAX_CORES) and _within(p95, MAX_MS)


def _rates_kept(rates: Sequence[float]) -> list[float] | None:
    """The rates a row keeps, rounded to 0.001 req/s; None when one is not finite or out of
    [0, MAX_RATE]. In numpy: a row of up to 600 rates per app is built at every save while its
    app reports, and a Python check and round() for each cost 0.6 of a 2-app row's 0.9 ms."""
    a = np.asarray(rates[-HISTORY_STEPS:], dtype=float)
    if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= MAX_RATE):
        return None
    # (numpy rounds a value exactly halfway, 4.1025, down where round() takes it up: 0.001 req/s)
    return np.round(a, 3).tolist()  # type: ignore[no-any-return]


def node_memory(learn: NodeLearning, mono_now: float, wall_now: float) -> NodeMemory:
    """What to keep of ``learn``: only what the row's bounds admit (a report may carry a p95 of
    1e300 ms, which the models take and a row does not), so that every row saved loads again."""
    clocks = _Clocks(mono_now, wall_now)
    apps = {}
    for name, model in list(learn.interference.items())[-MAX_APPS:]:
        points = _last_within(model.points, KEEP_POINTS, _point_ok)
        observed = _last_within(model.observed, ANCHOR_OBS, _observation_ok)
        judged, over = (_count(n) for n in model.calibrated)
        snap = model.rates.snapshot()
        rates: list[float] = []
        rates_at = None
        if snap is not None and (kept := _rates_kept(snap[1])) is not None:
            rates_at, rates = clocks.wall(snap[0]), kept
        apps[name] = AppMemory(
            points=points,
            observed=observed,
            widen=model.widen if _within(model.widen, 1.0) else 0.0,
            judged=judged,
            over=over,
            rates=rates,
            rates_at=rates_at,
        )
    decreased = clocks.wall(learn.last_decrease) if learn.last_decrease > -1e8 else None
    cap = learn.cap_limit if _within(learn.cap_limit, 1.0) else 1.0
    rate = learn.throughput.estimate
    return NodeMemory(
        cap,
        _count(learn.good_reports),
        decreased,
        apps,
        rate=rate if rate is not None and 0.0 < rate <= MAX_RATE else None,
        rate_n=_count(learn.throughput.observations) if rate is not None else 0,
        startup=_ewma(learn.startup.value, STARTUP_MAX_S),
        forming=_ewma(learn.forming.value, FORMING_MAX_S),
        overhead=_ewma(learn.overhead.value, OVERHEAD_MAX_S),
    )


def _ewma(value: float | None, high: float) -> float | None:
    return value if value is not None and _within(value, high) else None


def restore_node(learn: NodeLearning, memory: NodeMemory, mono_now: float, wall_now: float) -> None:
    """Put ``memory`` into a fresh ``learn``."""
    clocks = _Clocks(mono_now, wall_now)
    learn.cap_limit = memory.cap_limit
    learn.good_reports = memory.good_reports
    if memory.rate is not None:  # the first plans after a restart at the learned rate, not the prior
        learn.throughput.estimate, learn.throughput.observations = memory.rate, memory.rate_n
    for ewma, value in (
        (learn.startup, memory.startup),
        (learn.forming, memory.forming),
        (learn.overhead, memory.overhead),
    ):
        if value is not None:
            ewma.value, ewma.observations = value, max(1, ewma.observations)
    if memory.decreased is not None:  # not in the future: a wall clock set back since (no RTC
        # before NTP) would hold off the LC feedback's next decrease (its cool-down) for that long
        learn.last_decrease = min(mono_now, clocks.mono(memory.decreased))
    for name, app in memory.apps.items():
        model = learn.app(name)
        model.points = deque(app.points, maxlen=model.points.maxlen)
        model.observed = deque(app.observed, maxlen=model.observed.maxlen)
        model.widen = app.widen
        model.calibrated = [app.judged, min(app.over, app.judged)]
        if app.rates and app.rates_at is not None:
            model.rates.restore(clocks.mono(app.rates_at), app.rates, mono_now)


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
    """(holds, profiled, lc_risk) of a job, on this process's monotonic clock; none longer than a
    hold can be (a wall clock set back since would stretch them) nor an LC re-plan in the future."""
    clocks = _Clocks(mono_now, wall_now)
    lc_end, profile_end = mono_now + LC_HOLD_MAX_S, mono_now + PROFILE_HOLD_S
    holds = {n: (min(lc_end, clocks.mono(until)), count) for n, (until, count) in memory.holds.items()}
    profiled = {n: (min(profile_end, clocks.mono(until)), count) for n, (until, count) in memory.profiled.items()}
    return holds, profiled, {n: min(mono_now, clocks.mono(at)) for n, at in memory.lc_risk.items()}


def node_row(learn: NodeLearning, mono_now: float, wall_now: float) -> str | None:
    """The JSON row of a node's memory; None when it learned nothing to keep (no LC app, its cap
    limit at 1.0, never lowered)."""
    mem = node_memory(learn, mono_now, wall_now)
    return None if mem == NodeMemory() else _ENC.encode(mem).decode()


def job_rows(
    runtime: Mapping[str, JobRuntime], jobs: Mapping[str, JobRecord], mono_now: float, wall_now: float
) -> dict[str, str]:
    """ "job:NAME" -> JSON of every unfinished job with a hold or an LC re-plan to remember."""
    rows: dict[str, str] = {}
    for name, rt in runtime.items():
        job = jobs.get(name)
        if job is None or job.terminal:
            continue
        mem = job_memory(rt.holds, rt.profiled, rt.lc_risk, mono_now, wall_now)
        if mem != JobMemory():
            rows[f"job:{name}"] = _ENC.encode(mem).decode()
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
