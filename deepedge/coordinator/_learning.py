"""What the coordinator has learned about each node, updated online: throughput at full
intensity (a prior, then an exponentially weighted estimate from heartbeats) and, per LC app,
the latency model: the board's surrogate from the knowledge base (``deepedge.profiling``: a
cap table of the upper quantile of p95 over intensity, request rate and background CPU)
anchored to the app's live reports (their level relative to the table's median, in log
space), or without one the line p95(u) = base + slope * u (a conservative default, then a
least-squares fit of observed (intensity, p95) pairs); each app's request-rate history and
forecast; plus the cap limits that feedback sets; its link (bandwidth and latency, as its
worker probed them when its group formed), its per-step overhead, and how long its worker
takes to start and to form a group. Cluster-wide: how close the all-reduces come to what the
links promise (:class:`CommModel`)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from deepedge.broker_schemas import Heartbeat, LatencyReport, Telemetry
from deepedge.coordinator.planner import MIN_RATE, LcAppModel
from deepedge.profiling import CapTable
from deepedge.profiling._forecast import RateForecast
from deepedge.profiling._table import conformal_quantile

__all__ = [
    "CURVE_POINTS",
    "FORECAST_EVERY_S",
    "FORECAST_HORIZON_S",
    "LINK_CONFIRM",
    "LINK_DROP",
    "LINK_PENDING_CONFIRM_S",
    "Anchor",
    "CommModel",
    "Ewma",
    "InterferenceModel",
    "LinkModel",
    "NodeLearning",
    "ThroughputModel",
    "anchored_upper_ms",
    "monotone_upper_ms",
    "ring_floor_bps",
]

CURVE_POINTS = 21  # intensities 0, 0.05, ... 1 at which a surrogate's upper p95 goes to the planner
FORECAST_HORIZON_S = 10.0  # caps hold for the forecast's upper quantile over this horizon
FORECAST_EVERY_S = 1.0  # a forecast is refitted at most this often per app


ANCHOR_OBS = 30  # the live observations a table is anchored to: ~15 s of reports every 0.5 s
ANCHOR_RANGE = (0.25, 4.0)  # the live level is believed within this factor of the table's median
# Online calibration of the upper bound (conformal PID control's quantile tracking, Angelopoulos
# et al. 2023): each steady report above the bound predicted for it widens the interval by
# WIDEN_STEP x (1 - (1 - q)), each one under it narrows it by WIDEN_STEP x (1 - q), so in the long
# run the bound is exceeded by a share 1 - q of the reports; at most a factor WIDEN_MAX.
WIDEN_STEP = 0.05
WIDEN_MAX = math.log(2.0)
# A surrogate's caps are planned for its upper bound at (1 - PLAN_HEADROOM) of the deadline, and the
# forecast re-plans when the bound at the current cap passes the deadline itself: hysteresis, so
# that each small move of the live anchor does not re-plan (the bound is the safety margin; this is
# only room to move).
PLAN_HEADROOM = 0.05
# Where the live reports were taken (their intensities), the anchor is a measurement and its own
# spread the interval; the table's interval (its cross-validated error) is for how far its shape
# carries the anchor elsewhere: in proportion to the distance from the nearest intensity reported
# at, all of it from TABLE_REACH away. Only once the reports are enough for the spread to be a
# conformal quantile (rank ceil((n + 1) q) <= n: 19 for q = 0.95); before, the table's interval.
TABLE_REACH = 0.5
MAX_LOG = 50.0  # a bound's exponent is clamped here (exp(50) ms is no deadline): no overflow


@dataclass(frozen=True)
class Anchor:
    """A cap table's correction from live reports, in log space: the app's p95 now is
    ``exp(c0 + c1 * u)`` times the table's median; ``spread`` is the live reports' own
    upper-quantile deviation from that (log); ``n`` the observations it is taken from."""

    c0: float = 0.0
    c1: float = 0.0
    spread: float = 0.0
    n: int = 0
    widen: float = 0.0  # log: added to the interval after live reports above its upper bound
    seen: tuple[float, ...] = ()  # the intensities the reports were taken at (distinct, to 0.01)


MAX_RATE = 1e6  # samples/s: no board trains faster; a higher claim is clamped (a lower one than
# the planner's MIN_RATE counts as MIN_RATE: a node's 5e-324 crashed every plan, a ZeroDivisionError)
MAX_STEP_UP = 10.0  # after the first, an observation counts at most this factor above the estimate


@dataclass
class ThroughputModel:
    prior: float  # samples/s at full intensity before any heartbeat
    alpha: float = 0.3
    estimate: float | None = None
    observations: int = 0

    def observe(self, samples_per_s: float, intensity: float) -> None:
        """Learn from a heartbeat. A node's claim is clamped to a plausible range: at most
        MAX_RATE, and at most MAX_STEP_UP times what was believed before (a board that lies
        about its speed can steer the shares, not blow up the planner)."""
        if not samples_per_s > 0 or not intensity >= 0.05:
            return
        full = min(max(samples_per_s / min(1.0, intensity), MIN_RATE), MAX_RATE)
        if self.estimate is not None:
            full = min(full, MAX_STEP_UP * self.estimate)
        self.estimate = full if self.estimate is None else (1 - self.alpha) * self.estimate + self.alpha * full
        self.observations += 1

    @property
    def rate(self) -> float:
        return self.estimate if self.estimate is not None else self.prior


@dataclass
class InterferenceModel:
    """p95(u) = base + slope * u, a least-squares fit of observed (intensity, p95) pairs. While
    the observations span less than 0.1 of intensity, the board's profile points (``deepedge
    profile``), if any, join the fit; without them: base = the lowest p95 seen, slope =
    ``default_slope_factor`` x base (conservative: latency triples at full intensity with the
    default 2.0)."""

    default_slope_factor: float = 2.0
    points: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=200))
    # for the surrogate's residual correction: (intensity, request rate, background CPU, p95)
    observed: deque[tuple[float, float, float, float]] = field(default_factory=lambda: deque(maxlen=200))
    rates: RateForecast = field(default_factory=RateForecast)
    forecast: float | None = None  # the rate's upper quantile over FORECAST_HORIZON_S
    forecast_at: float = -1e9
    table: CapTable | None = None  # the knowledge base's, when the last plan found one
    widen: float = 0.0  # the online calibration's widening (log), see WIDEN_STEP
    calibrated: list[int] = field(default_factory=lambda: [0, 0])  # steady reports [judged, over the bound]
    table_source: str = ""  # its key, in words
    _anchor: tuple[CapTable, object, tuple[int, float], Anchor] | None = field(default=None, repr=False, compare=False)

    def observe(self, intensity: float, p95_ms: float) -> None:
        self.points.append((max(0.0, min(1.0, intensity)), p95_ms))

    def observe_load(
        self, now: float, rate: float, intensity: float | None = None, cpu: float = 0.0, p95_ms: float = 0.0
    ) -> None:
        """A latency report: its request rate (for the forecast) and, when steady (``intensity``
        given), the observation the residual correction learns from."""
        self.rates.observe(now, rate)
        if intensity is not None and p95_ms > 0:
            u = max(0.0, min(1.0, intensity))
            if self.table is not None:  # judge the bound this report was planned under, then learn
                over = p95_ms > monotone_upper_ms(self.table, self.correction(self.table), u, rate, cpu)
                miss = 1.0 - self.table.q
                self.widen = min(WIDEN_MAX, max(0.0, self.widen + WIDEN_STEP * ((1.0 if over else 0.0) - miss)))
                self.calibrated[0] += 1
                self.calibrated[1] += over
            self.observed.append((u, rate, max(0.0, cpu), p95_ms))

    def planning_rate(self, current: float, now: float) -> float:
        """The request rate caps are set for: the forecast's upper quantile, bounded and held
        (:meth:`RateForecast.planning`), at least the rate reported now. The forecast is
        refitted when asked for (only apps with a cap table are: forecast jobs on boards the
        knowledge base knows), at most every FORECAST_EVERY_S (statsmodels is not free: ~0.1 s
        a fit)."""
        if now - self.forecast_at >= FORECAST_EVERY_S:
            self.forecast_at = now
            self.forecast = self.rates.planning(now, FORECAST_HORIZON_S)
        return max(current, self.forecast or 0.0)

    def correction(self, table: CapTable) -> Anchor:
        """The table anchored to what the app shows now: over the last ANCHOR_OBS steady
        observations, ``log(observed) - log(table median) = c0 + c1 * u`` (least squares, c1 >=
        0 so the corrected curve stays monotone; c0 bounded to ANCHOR_RANGE) and the live
        reports' own spread around that line (the table's quantile ``q`` of what the line leaves,
        conformal rank). No correction before 3 observations. Computed once per observation and
        table (a report's calibration, the forecast's check and a plan all ask for it)."""
        last = self.observed[-1] if self.observed else None
        stamp = (len(self.observed), self.widen)
        cached = self._anchor
        # the table and the newest observation are held and compared by identity: every
        # observation is a new tuple, so a new one is never the cached one
        if cached is not None and cached[0] is table and cached[1] is last and cached[2] == stamp:
            return cached[3]
        anchor = self._correction(table)
        self._anchor = (table, last, stamp, anchor)
        return anchor

    def _correction(self, table: CapTable) -> Anchor:
        obs = list(self.observed)[-ANCHOR_OBS:]
        if len(obs) < 3:
            return Anchor(widen=self.widen)
        # both clamped: a node's p95 of 5e-324 (a legal float) made log(0) raise for every job
        res = [(u, math.log(max(1e-3, p95) / max(1e-3, table.median_ms(u, rate, cpu)))) for u, rate, cpu, p95 in obs]
        us = [u for u, _ in res]
        mu, mr = sum(us) / len(us), sum(r for _, r in res) / len(res)
        sxx = sum((u - mu) ** 2 for u in us)
        slope = 0.0
        if sxx >= 0.01 * len(us):  # intensities far enough apart for a slope
            slope = max(0.0, sum((u - mu) * (r - mr) for u, r in res) / sxx)
        lo, hi = (math.log(f) for f in ANCHOR_RANGE)
        c0 = min(hi, max(lo, mr - slope * mu))
        spread = conformal_quantile([r - c0 - slope * u for u, r in res], table.q)
        seen = tuple(sorted({round(u, 2) for u in us}))
        return Anchor(c0, slope, max(0.0, spread), len(obs), self.widen, seen)

    def surrogate_model(self, app: str, deadline_ms: float, table: CapTable, rate: float, cpu: float) -> LcAppModel:
        """The planner's model from a cap table: its upper-quantile curve over intensity at the
        planning rate and background CPU, anchored to the live reports (:meth:`correction`)."""
        anchor = self.correction(table)
        curve = _monotone_bounds(table, anchor, [k / (CURVE_POINTS - 1) for k in range(CURVE_POINTS)], rate, cpu)
        curve = [round(v, 4) if math.isfinite(v) else 1e9 for v in curve]
        live = f"x{math.exp(anchor.c0):.2f} of its median by {anchor.n} live reports" if anchor.n else "no live reports"
        if anchor.widen > 0:
            judged, over = self.calibrated
            live += f", interval x{math.exp(anchor.widen):.2f} wider ({over} of {judged} reports were over it)"
        season = self.rates.season
        seasonal = f" (read from its last periods of {season * self.rates.step_s:g} s)" if season else ""
        basis = f"{table.kind} model at {rate:.1f} req/s{seasonal}, {cpu:.2f} background cores, {live}"
        span = curve[-1] - curve[0]
        return LcAppModel(app, deadline_ms, curve[0], span, curve=tuple(curve), margin=PLAN_HEADROOM, basis=basis)

    def at_risk(self, cap: float, deadline_ms: float, rate: float, cpu: float) -> float | None:
        """With a cap table: the upper-quantile p95 predicted at ``cap`` for ``rate`` (anchored);
        None without a table."""
        if self.table is None:
            return None
        return monotone_upper_ms(self.table, self.correction(self.table), cap, rate, cpu)

    def fit(self, profiled: Sequence[tuple[float, float]] = ()) -> tuple[float, float] | None:
        points = list(self.points)
        if _spread(points) < 0.1 and _spread(list(profiled)) >= 0.1:
            points += profiled
        if not points:
            return None
        us = [u for u, _ in points]
        ys = [y for _, y in points]
        if _spread(points) < 0.1:  # not enough spread to fit a slope
            base = min(ys) if min(us) < 0.05 else min(ys) / (1 + self.default_slope_factor * min(us))
            return base, self.default_slope_factor * base
        n = len(us)
        mu, my = sum(us) / n, sum(ys) / n
        sxx = sum((u - mu) ** 2 for u in us)
        slope = max(0.0, sum((u - mu) * (y - my) for u, y in zip(us, ys, strict=True)) / sxx)
        return max(0.0, my - slope * mu), slope

    def model(self, app: str, deadline_ms: float, profiled: Sequence[tuple[float, float]] = ()) -> LcAppModel:
        fitted = self.fit(profiled)
        base, slope = fitted if fitted is not None else (0.0, 0.0)
        return LcAppModel(app, deadline_ms, base, slope)


def anchored_upper_ms(table: CapTable, anchor: Anchor, u: float, rate: float, cpu: float) -> float:
    """The upper-quantile p95 at intensity ``u``: the table's median there, moved to the
    live level (``anchor``), times the larger of the live reports' spread and the table's own
    interval (the model's cross-validated error) in proportion to how far ``u`` is from the
    intensities reported at (TABLE_REACH), widened by the online calibration. Without live
    observations, the table's upper quantile as it is (widened)."""
    median = max(1e-3, table.median_ms(u, rate, cpu))
    width = math.log(max(median, table.upper_ms(u, rate, cpu)) / median)
    if anchor.seen and (anchor.n + 1) * table.q <= anchor.n + 1e-9:
        width *= min(1.0, min(abs(u - s) for s in anchor.seen) / TABLE_REACH)
    return median * math.exp(min(MAX_LOG, anchor.c0 + anchor.c1 * u + max(width, anchor.spread) + anchor.widen))


def _monotone_bounds(table: CapTable, anchor: Anchor, us: Sequence[float], rate: float, cpu: float) -> list[float]:
    """:func:`anchored_upper_ms` at the ascending intensities ``us``, each the highest so far (a
    wider interval at a lower u, or one narrowed where reports were taken, can break
    monotonicity)."""
    out: list[float] = []
    for u in us:
        bound = anchored_upper_ms(table, anchor, u, rate, cpu)
        out.append(max(bound, out[-1]) if out else bound)
    return out


def monotone_upper_ms(table: CapTable, anchor: Anchor, u: float, rate: float, cpu: float) -> float:
    """:func:`anchored_upper_ms` made non-decreasing in ``u`` as the planner's curve is (the
    highest bound at the curve's intensities up to ``u``), so the forecast's check and the
    calibration judge the bound the plan was made with."""
    below = [k / (CURVE_POINTS - 1) for k in range(CURVE_POINTS) if k / (CURVE_POINTS - 1) < u]
    return _monotone_bounds(table, anchor, [*below, u], rate, cpu)[-1]


def _spread(points: list[tuple[float, float]]) -> float:
    return max(u for u, _ in points) - min(u for u, _ in points) if points else 0.0


@dataclass
class Ewma:
    """An exponentially weighted mean, bounded to [low, high]; None until observed."""

    alpha: float = 0.3
    low: float = 0.0
    high: float = 1e6
    value: float | None = None
    observations: int = 0

    def observe(self, x: float) -> None:
        if math.isnan(x):
            return
        x = min(self.high, max(self.low, x))
        self.value = x if self.value is None else (1 - self.alpha) * self.value + self.alpha * x
        self.observations += 1

    def get(self, default: float) -> float:
        return self.value if self.value is not None else default


LINK_MIN_BPS = 1e3  # bytes/s: a probed link is never believed slower (or a division blows up)
LINK_MAX_BPS = 1e11
LINK_MEMORY_S = 600.0  # a board's link is probed again (it is planned as unknown) after this long
# A newly probed link under LINK_DROP of what was believed is a drop, re-planned at once — once
# LINK_CONFIRM of the node's own heartbeats since the probe measured all-reduces that the low
# link explains. Until then the link believed is the old one: the probe runs while the workers
# start, and a board short of CPU then (the demo's nano, a 0.4-CPU cgroup) probed 24 Mb/s of its
# 50 Mb/s; the re-plan it caused left nano out for the rest of the job (2026-12-05, run 1 of the
# first 20-run series), while its all-reduces went at full speed.
# Every participant's all-reduce pending for LINK_PENDING_CONFIRM_S (and two of the plan's
# predicted steps) confirms it at once: a link that collapsed (the links bench degrades one to
# 1 %) must not wait for three steps across it, each of which takes seconds. (Every one: a rank
# waits in its all-reduce while a peer still computes, e.g. a first step on a starved board.)
LINK_DROP = 0.5
LINK_CONFIRM = 3
LINK_PENDING_CONFIRM_S = 1.0
LINK_SOURCES = 8  # jobs whose last probe a node's link remembers (node.max_workers is usually 1)


def ring_floor_bps(world: int, nbytes: int, seconds: float) -> float:
    """The slowest link (bytes/s) that a ring all-reduce of ``nbytes`` over ``world`` ranks
    needs to have taken ``seconds`` (the planner's ring model without its latency term, so the
    link it gives is never more than the model needs): every link of the group is at least this
    fast. 0 when nothing can be told."""
    if world < 2 or nbytes <= 0 or not seconds > 0:
        return 0.0
    return 2 * (world - 1) / world * nbytes / seconds


@dataclass
class LinkModel:
    """A board's link: as its worker probed it when its group formed (the newest probe wins: a
    link changes when a radio degrades or a cable is moved) and when that was, raised by what
    the all-reduces measured since showed it to be at least (``floor``). A probe under
    LINK_DROP of what was believed is believed once LINK_CONFIRM of the node's heartbeats with
    measured all-reduces do not contradict it (``old`` holds the old probe and floor until then).

    A probe is new when its job's worker has not sent it before: a node in two jobs
    (``node.max_workers`` > 1) repeats two workers' probes in turn, and neither repeat is news.
    The planner is given :meth:`planned`: the probe corrected by the all-reduces' measured
    efficiency, never under the floor (which was measured, so needs no correction)."""

    bandwidth: float | None = None  # bytes/s, the newest probe
    latency: float | None = None  # s, one way
    at: float = -1e9  # monotonic time of the probe (each heartbeat repeats it)
    floor: float = 0.0  # bytes/s the all-reduces measured since the newest probe show at least
    measured: int = 0  # the node's heartbeats whose all-reduce could tell a drop, since the newest probe
    old: tuple[float, float] | None = None  # (probe, floor) before a probe that says it dropped, until confirmed
    # the last probe of each job's worker (each heartbeat repeats it), the oldest forgotten first
    sources: dict[str, float] = field(default_factory=dict)
    # (job, generation) of the heartbeat that first carried the newest probe: a re-formed group's
    # first heartbeats repeat the last group's probe until the new one is made
    fresh: tuple[str, int] = ("", -1)

    def observe(self, bandwidth: float, latency: float, now: float, job: str = "", generation: int = -1) -> None:
        """A heartbeat's probe, sent by ``job``'s worker in ``generation``."""
        if not bandwidth > 0:
            return
        bandwidth = min(LINK_MAX_BPS, max(LINK_MIN_BPS, bandwidth))
        if self.sources.get(job) != bandwidth:  # a new probe, not a repeat
            self.sources.pop(job, None)
            self.sources[job] = bandwidth
            while len(self.sources) > LINK_SOURCES:
                del self.sources[next(iter(self.sources))]
            before = self.believed if self.known(now) else None
            if before is not None and bandwidth < LINK_DROP * before:  # (a drop still pending keeps its old link)
                self.old = self.old if self.pending else (self.bandwidth or 0.0, self.floor)
            else:
                self.old = None
            self.floor, self.measured = 0.0, 0
            self.bandwidth = bandwidth
            self.latency = min(1.0, max(0.0, latency))
            self.fresh = (job, generation)
        self.at = now

    def bound(self, floor_bps: float, others_bps: float | None = None) -> None:
        """This node's heartbeat measured its all-reduce: its link is at least ``floor_bps``
        (:func:`ring_floor_bps`). ``others_bps``: the slowest link believed among its peers in
        the group. It counts towards confirming a drop only when it can tell one: when the
        peers' links are fast enough that a floor under LINK_DROP of the old link implicates
        this one, or when the all-reduce was slower than even the peers' slowest link explains.
        (The demo's xavier-nx, 1 Gb/s in a ring with a 50 Mb/s nano, probed low at a re-form and
        its all-reduces, paced by nano's link, 'confirmed' it: a needless re-plan.)"""
        if self.bandwidth is None or not floor_bps > 0:  # (one rank: nothing measured)
            return
        self.floor = max(self.floor, min(LINK_MAX_BPS, floor_bps))
        was = self.was
        if was is None or others_bps is None or others_bps >= LINK_DROP * was or floor_bps < LINK_DROP * others_bps:
            self.measured += 1

    def stalled(self) -> None:
        """An all-reduce of this node has been pending too long for the link believed: a drop
        its newest probe found is confirmed."""
        self.measured = max(self.measured, LINK_CONFIRM)

    @property
    def pending(self) -> bool:
        """A probe said the link dropped, and that is not confirmed yet."""
        return self.old is not None and self.measured < LINK_CONFIRM

    @property
    def was(self) -> float | None:
        """The link believed before a probe that says it dropped (until that is settled)."""
        return max(self.old) if self.old is not None else None

    def _base(self) -> tuple[float, float] | None:
        """(probe, floor) planned with: the old ones while a drop is pending."""
        if self.bandwidth is None:
            return None
        return self.old if self.pending and self.old is not None else (self.bandwidth, self.floor)

    @property
    def probed(self) -> float | None:
        """The probe planned with: the old one while a drop is pending."""
        base = self._base()
        return base[0] if base is not None else None

    @property
    def believed(self) -> float | None:
        """The bytes/s the link is believed to carry: the newest probe or what the all-reduces
        showed, whichever is more; the old link while a drop is not confirmed yet."""
        base = self._base()
        return max(base) if base is not None else None

    def planned(self, efficiency: float) -> float | None:
        """The bytes/s the planner is given: the probe (the old one while a drop is pending)
        divided by the all-reduces' measured efficiency against the probes (:class:`CommModel`),
        but never under the floor the node's own all-reduces measured (likewise)."""
        base = self._base()
        return max(base[0] / efficiency, base[1]) if base is not None else None

    def confirmed_drop(self) -> float | None:
        """The link believed before the newest probe, once that probe's drop is confirmed (said
        once); None when there is no drop, it is not confirmed yet, or the all-reduces measured
        since showed the probe wrong (the old link is then forgotten)."""
        was = self.was
        if was is None or self.pending:
            return None
        self.old = None
        return was if max(self.bandwidth or 0.0, self.floor) < LINK_DROP * was else None

    def known(self, now: float) -> bool:
        return self.bandwidth is not None and now - self.at <= LINK_MEMORY_S


def confirm_stalled_drops(links: Sequence[LinkModel]) -> None:
    """Every participant's all-reduce has been pending too long: the slowest link explains it, so
    the drops probed within 1/LINK_DROP of the group's lowest probe are confirmed. Not the others:
    a board that probed low while short of CPU is not made slow by another's collapse (nor later
    in the same stall, once that collapse is confirmed: the lowest is every participant's)."""
    probes = [lk.bandwidth for lk in links if lk.bandwidth is not None]
    if probes:
        lowest = min(probes)
        for lk in links:
            if lk.pending and (lk.bandwidth or 0.0) * LINK_DROP <= lowest:
                lk.stalled()


@dataclass
class CommModel:
    """How the all-reduces measured compare with the ring model on the probed links:
    ``efficiency`` = measured / modelled seconds (EWMA; above 1 when gloo does not reach the
    links' rate). The planner divides every link's bandwidth by it: a job's own once its
    all-reduces measured it COMM_OWN_AFTER times, else the cluster's (all jobs'). Until
    2026-12-06 only the cluster's: the fastest rank's time is each rank's own claim, and one
    participant reporting 1e-300 s drove it to its floor (0.2) within a few heartbeats, every
    job's links then planned 5x faster than probed (attacker review); now such a node moves its
    own jobs' and, through the cluster's, a new job's first plans, until that job measured its own."""

    efficiency: Ewma = field(default_factory=lambda: _efficiency())
    jobs: dict[str, Ewma] = field(default_factory=dict)  # per job, the most recent last

    def observe(self, job: str, ratio: float) -> None:
        self.efficiency.observe(ratio)
        own = self.jobs.pop(job, None) or _efficiency()
        own.observe(ratio)
        self.jobs[job] = own
        while len(self.jobs) > MAX_COMM_JOBS:
            del self.jobs[next(iter(self.jobs))]

    def factor(self, job: str | None = None) -> float:
        own = self.jobs.get(job) if job is not None else None
        if own is not None and own.observations >= COMM_OWN_AFTER:
            return own.get(1.0)
        return self.efficiency.get(1.0)


COMM_OWN_AFTER = 3  # a job's all-reduces measured this often: its own efficiency is planned with
MAX_COMM_JOBS = 256  # jobs whose efficiency is kept (the least recently measured forgotten first)


def _efficiency() -> Ewma:
    """An all-reduce efficiency (the cluster's or a job's): measured / modelled, within [0.2, 20]."""
    return Ewma(alpha=0.3, low=0.2, high=20.0)


MAX_WINDOW_S = 600.0  # a report's window is believed at most this long
# a node's per-step overhead, its worker's start-up and its group's forming are believed at most
# this long (s; the coordinator's memory keeps them within the same bounds)
OVERHEAD_MAX_S, STARTUP_MAX_S, FORMING_MAX_S = 60.0, 3600.0, 600.0
MAX_APPS = 64  # LC apps remembered per node (the least recently reported forgotten first)


@dataclass
class NodeLearning:
    throughput: ThroughputModel
    interference: dict[str, InterferenceModel] = field(default_factory=dict)
    cap_limit: float = 1.0
    good_reports: int = 0  # consecutive comfortable LC reports, for raising the cap again
    last_decrease: float = -1e9  # monotonic time the cap limit was last lowered
    training_since: tuple[int, float] | None = None  # (generation, since) of its steady training
    link: LinkModel = field(default_factory=LinkModel)
    # seconds of a step outside its compute and all-reduce; from a worker's start to its first
    # rendezvous; to form a group once every rank is there (process group, probe, state sync)
    overhead: Ewma = field(default_factory=lambda: Ewma(alpha=0.3, high=OVERHEAD_MAX_S))
    startup: Ewma = field(default_factory=lambda: Ewma(alpha=0.5, high=STARTUP_MAX_S))
    forming: Ewma = field(default_factory=lambda: Ewma(alpha=0.5, high=FORMING_MAX_S))
    seen: tuple[float, float] = (0.0, 0.0)  # the (startup_s, forming_s) last learned from, to learn each once
    checking: tuple[float, float | None] | None = None  # (since, until: None while it runs) of its last pre-flight
    window_s: float = 10.0  # the latency window of its LC reports (the last one's; the config's default before)
    steady_at: float = -1e9  # monotonic time of its last steady latency report while it trained
    seasons: bool = True  # its apps' forecasts look for a season (``coordinator.forecast_seasons``)

    def check_started(self, now: float) -> None:
        self.checking = (now, None)

    def check_done(self, now: float) -> None:
        if self.checking is not None:
            self.checking = (self.checking[0], now)

    def in_check(self, now: float, window_s: float) -> bool:
        """A latency report at ``now`` (monotonic) over ``window_s`` overlaps the board's last
        pre-flight check: the checker imports torch and runs the model on the board's CPU, which
        raised its LC apps' p95 by 1.5-2x on the 2-vCPU VM at any priority
        (scripts/exp_startup_burst.py). Such a report says what a job's start costs, not what the
        app shows at an intensity: not an observation for the models, nor a steady report."""
        if self.checking is None:
            return False
        since, until = self.checking
        return now >= since and (until is None or now - window_s < until)

    def observe(self, hb: Heartbeat, now: float) -> None:
        """Learn from a heartbeat of a current participant: its rate (training ones), its link
        (each carries its worker's last probe: a node in a group keeps its link known), its
        per-step overhead, and, once per new value, its worker's start-up and forming times."""
        if hb.link_bps > 0:
            self.link.observe(hb.link_bps, hb.link_latency_s, now, hb.job, hb.generation)
        if hb.state != "training":
            return
        self.throughput.observe(hb.samples_per_s, hb.intensity)
        if hb.step_s > 0:
            self.overhead.observe(max(0.0, hb.step_s - hb.compute_s - hb.allreduce_s))
        startup, forming = self.seen
        if hb.startup_s > 0 and hb.startup_s != startup:
            self.startup.observe(hb.startup_s)
        if hb.forming_s > 0 and hb.forming_s != forming:
            self.forming.observe(hb.forming_s)
        self.seen = (hb.startup_s, hb.forming_s)

    # cores busy with work other than its training and LC apps (telemetry), one per latency report
    background: deque[float] = field(default_factory=lambda: deque(maxlen=ANCHOR_OBS))

    @property
    def cpu_bg(self) -> float:
        """The node's background CPU (cores) models are asked at: the median of the last
        ANCHOR_OBS reports' (~15 s), so a few seconds' burst (its own pre-flight checks, a
        worker importing torch) does not set a plan's caps for the whole generation."""
        return statistics.median(self.background) if self.background else 0.0

    def observe_latency(
        self, report: LatencyReport, now: float, telemetry: Telemetry | None, cores: int, u: float, steady: bool
    ) -> None:
        """A latency report: each app's request rate (count / window) for its forecast, the
        node's background CPU, and, when ``steady``, the (intensity, p95) observations of the
        models. ``u``: the node's training intensity now."""
        window = max(1e-3, report.window_s)
        self.window_s = min(MAX_WINDOW_S, window)
        lc_cores = sum(a.count / window * a.p50_ms / 1000.0 for a in report.apps)
        if telemetry is not None and telemetry.cpu_percent > 0:
            busy = telemetry.cpu_percent / 100.0 * max(1, cores)
            self.background.append(round(max(0.0, busy - u - lc_cores), 4))
        # the background an observed p95 is paired with: the mean over about its window (reports
        # come every 0.5 s in the default config; a window is 5 s)
        recent = list(self.background)[-10:]
        seen = sum(recent) / len(recent) if recent else 0.0
        for a in report.apps:
            if a.count <= 0:
                continue
            model = self.app(a.app)
            if steady:
                model.observe(u, a.p95_ms)
            model.observe_load(now, a.count / window, u if steady else None, seen, a.p95_ms)

    def app(self, name: str) -> InterferenceModel:
        """The interference model of LC app ``name`` (bounded: MAX_APPS per node)."""
        model = self.interference.pop(name, None)
        if model is None:
            model = InterferenceModel()
            model.rates.seasons = self.seasons
        self.interference[name] = model  # most recent last
        while len(self.interference) > MAX_APPS:
            del self.interference[next(iter(self.interference))]
        return model
