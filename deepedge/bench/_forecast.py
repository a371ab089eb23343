"""``deepedge bench forecast``: how well the rate an LC app's caps are planned for covers the load
that comes, on request-rate traces, for three choices measured in the same run: the last report
(what a reactive controller plans for), the raw forecast (the upper quantile of the horizon's peak,
:meth:`RateForecast.upper`) and what the coordinator plans for (:meth:`RateForecast.planning`:
bounded and held).

The reports are those a node sends: requests arrive as a Poisson process following the trace
(seeded), and every REPORT_S the rate is the count of the last WINDOW_S over WINDOW_S. Each second
(the coordinator refits at most that often) each choice names a rate; it *covers* when it is at
least the highest report of the next horizon. ``swings``: how often the rate fell or rose by 10 %
or more from one second to the next (each one a re-plan that moves caps)."""

from __future__ import annotations

import itertools
import math
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass

from deepedge.demo.lc_app import Trace
from deepedge.profiling._forecast import (
    ENVELOPE_FACTOR,
    ENVELOPE_S,
    RISING_BUCKETS,
    STABILIZE_S,
    TREND_MARGIN,
    RateForecast,
)

__all__ = ["ON_SEASON", "PLANNED", "TRACES", "TREND_ONLY", "ForecastRow", "forecast_markdown", "run_forecast_bench"]

REPORT_S = 0.5  # the nodes' default report interval and window
WINDOW_S = 5.0
SWING = 0.10
ENVELOPE_ONLY = "envelope only, held (until 2026-12-03)"  # the planned rate without TREND_MARGIN's bound
TREND_ONLY = "trend, bounded, held (until 2026-12-06)"  # the planned rate before seasons were looked for
PLANNED = "planned (seasonal where it repeats, else the trend)"
ON_SEASON = ": the seasonal seconds only"  # a row judged on the seconds the planned rate read from a season
TRACES = (
    ("step:20,40,12", 60.0),
    ("step:20,40,12", 240.0),  # minutes after the step: what the forecast keeps of it
    ("diurnal:10,40,30", 150.0),
    ("diurnal:10,40,30", 300.0),  # a season is found after two periods: most of this is seasonal
    ("diurnal:10,40,120", 300.0),
    ("diurnal:10,40,120", 600.0),
    ("constant:25", 60.0),
)


@dataclass
class ForecastRow:
    trace: str
    duration: float  # seconds of reports
    choice: str
    points: int  # seconds judged (those with a whole horizon after them)
    covered: float  # share of them whose rate was at least the horizon's highest report
    mean_ratio: float  # planned / the horizon's highest report
    max_ratio: float
    swings: int
    seasonal: int | None = None  # seconds judged whose rate was read from a season (the planned rate only)


def arrivals(trace: Trace, duration_s: float, rng: random.Random) -> list[float]:
    """Request times of a Poisson process whose rate follows ``trace`` (thinning)."""
    peak = max(trace.peak(), trace.rate_at(0.0))
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration_s:
            return out
        if rng.random() * peak <= trace.rate_at(t):
            out.append(t)


def reports(times: list[float], duration_s: float) -> list[tuple[float, float]]:
    """(t, rate) every REPORT_S: the requests of the last WINDOW_S over WINDOW_S."""
    out, lo, hi = [], 0, 0
    for k in range(1, int(duration_s / REPORT_S) + 1):
        t = k * REPORT_S
        while hi < len(times) and times[hi] <= t:
            hi += 1
        while lo < hi and times[lo] <= t - WINDOW_S:
            lo += 1
        out.append((t, (hi - lo) / WINDOW_S))
    return out


def _judge(
    trace: str,
    choice: str,
    planned: list[tuple[float, float]],
    seen: list[tuple[float, float]],
    horizon_s: float,
    duration_s: float,
) -> ForecastRow:
    ratios, covered = [], 0
    for t, rate in planned:
        ahead = [r for tt, r in seen if t < tt <= t + horizon_s]
        if t + horizon_s > duration_s or not ahead or max(ahead) <= 0:
            continue
        peak = max(ahead)
        covered += rate >= peak
        ratios.append(rate / peak)
    rates = [r for _, r in planned]
    swings = sum(1 for a, b in itertools.pairwise(rates) if b < (1 - SWING) * a or b > (1 + SWING) * a)
    n = max(1, len(ratios))
    return ForecastRow(
        trace, duration_s, choice, len(ratios), covered / n, sum(ratios) / n, max(ratios, default=math.nan), swings
    )


def run_forecast_bench(
    horizon_s: float = 10.0,
    seed: int = 1,
    traces: tuple[tuple[str, float], ...] = TRACES,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[ForecastRow]:
    rows: list[ForecastRow] = []
    for spec, duration in traces:
        progress(f"{spec}: {duration:g} s of reports ...")
        seen = reports(arrivals(Trace.parse(spec), duration, random.Random(seed)), duration)
        # each its own hold: f the trend made steady, before with the envelope alone bounding it,
        # now what the coordinator plans for (RateForecast.planning)
        f, before, now = RateForecast(), RateForecast(), RateForecast()
        last: list[tuple[float, float]] = []
        raw: list[tuple[float, float]] = []
        trend: list[tuple[float, float]] = []
        enveloped: list[tuple[float, float]] = []
        planning: list[tuple[float, float]] = []
        seasonal: set[float] = set()
        for t, rate in seen:
            for g in (f, before, now):
                g.observe(t, rate)
            if abs(t - round(t)) > 1e-9:  # refitted once a second, as the coordinator does
                continue
            up, point = f.bounds(horizon_s) or (0.0, 0.0)  # fitted once: the trend's rates are this, made steady
            last.append((t, rate))
            raw.append((t, max(rate, up)))
            trend.append((t, max(rate, f.steady(t, up, point))))
            enveloped.append((t, max(rate, before.steady(t, up))))
            planning.append((t, max(rate, now.planning(t, horizon_s) or 0.0)))
            if now.season is not None:
                seasonal.add(t)
        for choice, planned in (
            ("last report", last),
            ("raw forecast", raw),
            (ENVELOPE_ONLY, enveloped),
            (TREND_ONLY, trend),
            (PLANNED, planning),
        ):
            row = _judge(spec, choice, planned, seen, horizon_s, duration)
            if choice == PLANNED:
                row.seasonal = sum(1 for t, _ in planned if t in seasonal and t + horizon_s <= duration)
            rows.append(row)
        if seasonal:  # the seconds read from a season, judged apart for the trend and the planned rate
            for choice, planned in ((TREND_ONLY, trend), (PLANNED, planning)):
                rows.append(
                    _judge(
                        spec,
                        f"{choice}{ON_SEASON}",
                        [p for p in planned if p[0] in seasonal],
                        seen,
                        horizon_s,
                        duration,
                    )
                )
    return rows


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def forecast_markdown(rows: list[ForecastRow], command: str, horizon_s: float) -> str:
    lines = [
        f"Command: `{command}`. Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"statsmodels {_version('statsmodels')}, numpy {_version('numpy')} (the forecasts are computed, "
        "not timed: the figures depend on these versions and the seed, not on the machine's load).",
        "",
        f"Reports as a node sends them (Poisson arrivals following the trace, seeded; every {REPORT_S:g} s "
        f"the count of the last {WINDOW_S:g} s over {WINDOW_S:g} s); each second each choice names the rate "
        f"caps are planned for. *Covered*: at least the highest report of the next {horizon_s:g} s (the "
        "forecast horizon). *Planned / peak*: that rate over the highest report. *Swings*: seconds where "
        f"the rate moved by {SWING:.0%} or more (each one a re-plan that moves caps). *Trend*: the raw "
        f"forecast bounded to {ENVELOPE_FACTOR:g}x the highest rate of the last {ENVELOPE_S:g} s and to "
        f"{TREND_MARGIN:g}x the higher of that rate and the point forecast's peak over the horizon, and held "
        f"{STABILIZE_S:g} s before it falls; the point forecast counts only while the rate rises to new highs "
        f"({RISING_BUCKETS} rises in a row). *{ENVELOPE_ONLY}*: the same without that second bound. "
        "*Planned*: where the history repeats (a period found by autocorrelation, two periods of it), the "
        "coming horizon as the last two periods had it, times a conformal margin (the quantile of how far "
        "that reading fell short over the last two periods); the trend otherwise. *Seasonal*: the seconds "
        "judged that the planned rate read from a season.",
        "",
        "| trace | seconds of reports | rate planned for | seconds judged | covered | planned / peak: mean | max "
        "| swings | seasonal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r.trace}` | {r.duration:g} | {r.choice} | {r.points} | {r.covered:.1%} | {r.mean_ratio:.2f} "
            f"| {r.max_ratio:.2f} | {r.swings} | {'-' if r.seasonal is None else r.seasonal} |"
        )
    return "\n".join(lines) + "\n"
