"""Barista-style forecast of an LC app's request rate: from its reported history, the rate an
upper quantile of the coming horizon may reach, with statsmodels' exponential smoothing (Holt's
damped additive trend; a seasonal term once two seasons of history exist). Caps are set for
that rate, and the coordinator re-plans before the forecast crosses the rate at which the
current cap stops being safe. statsmodels loads on the first forecast, not with the module; the
coordinator service loads it at its start (:func:`warm_up`), so that its first forecast job does
not spend a second of CPU importing it on the event loop while the job's workers start.

What the planner is given (:meth:`RateForecast.planning`) is that forecast made steady, as
measured on request-rate traces (``deepedge bench forecast``, docs/benchmarks/forecast.md): a
trend's extrapolation is believed at most ENVELOPE_FACTOR above the highest rate of the last
ENVELOPE_S (a ramp on a 30 s cycle was extrapolated to 1.75x its peak) and at most TREND_MARGIN
above the higher of that highest rate and the point forecast's peak over the horizon, the point
forecast counting only while the rate rises to new highs (RISING_BUCKETS rises in a row, the last
the highest; a steady load's report noise alone held the upper quantile at the envelope, 1.25x),
and the rate falls only
after STABILIZE_S below what was planned (Kubernetes' HPA scale-down stabilization window): the
raw forecast moved by 10 % or more from one second to the next 74 times in 150 s of a 30 s
diurnal cycle, and every such move was a re-plan that took capacity from the LC app or gave it
back."""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "ENVELOPE_FACTOR",
    "ENVELOPE_S",
    "STABILIZE_S",
    "TREND_MARGIN",
    "RateForecast",
    "forecast_bounds",
    "forecast_upper",
    "warm_up",
]

MIN_POINTS = 8  # steps of history before a model is fitted (before: the highest rate seen)
ENVELOPE_S = 60.0  # a forecast is believed at most ENVELOPE_FACTOR x the highest rate of this long
ENVELOPE_FACTOR = 1.25
# ... and at most this x the higher of that highest rate and the point forecast's peak: a steady
# load's report noise alone kept the upper quantile at the envelope (1.25x) for good
TREND_MARGIN = 1.05
RISING_BUCKETS = 3  # "rising to new highs": the last rate is the highest, after this many rises in a row
STABILIZE_S = 30.0  # the planning rate falls only after this long below what was planned
MAX_RATE = 1e6  # requests/s: a higher reported rate is clamped (a report is a node's word)


def forecast_upper(
    history: list[float], horizon: int, q: float = 0.95, season: int | None = None, seed: int = 0
) -> float:
    """The q-quantile, over simulated futures, of the highest rate in the next ``horizon``
    steps (at least the last observed rate)."""
    return forecast_bounds(history, horizon, q, season, seed)[0]


def forecast_bounds(
    history: list[float], horizon: int, q: float = 0.95, season: int | None = None, seed: int = 0
) -> tuple[float, float]:
    """:func:`forecast_upper` and the point forecast's peak: the highest rate the fitted model's
    point forecast reaches within the horizon (without a model: the rate the upper is)."""
    if not history:
        return 0.0, 0.0
    last = history[-1]
    if len(history) < MIN_POINTS or horizon < 1:
        highest = max(history[-MIN_POINTS:])
        return highest, highest
    import numpy as np
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y = np.asarray(history, dtype=float)
    seasonal = "add" if season and len(y) >= 2 * season else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on short, flat series
        if np.ptp(y) < 1e-9:
            return float(last), float(last)
        fitted = ExponentialSmoothing(
            y,
            trend="add",
            damped_trend=True,
            seasonal=seasonal,
            seasonal_periods=season if seasonal else None,
            initialization_method="estimated",
        ).fit()
        paths = fitted.simulate(horizon, repetitions=200, error="add", anchor="end", random_state=seed)
        point = float(np.max(fitted.forecast(horizon)))
    peaks = np.max(np.asarray(paths).reshape(horizon, -1), axis=0)
    upper = float(np.quantile(peaks, q))
    upper = max(float(last), upper) if math.isfinite(upper) else float(last)
    return upper, (min(point, upper) if math.isfinite(point) else upper)


def warm_up() -> float:
    """Import statsmodels and fit once (a short synthetic series), so that the first real
    forecast costs what every later one does (~15 ms, against ~1 s of CPU for the first, measured
    on the 2-vCPU VM). Returns the CPU seconds it took."""
    import time

    t0 = time.process_time()
    forecast_upper([10.0 + (k % 3) for k in range(MIN_POINTS + 4)], horizon=5)
    return time.process_time() - t0


@dataclass
class RateForecast:
    """One app's request-rate history in ``step_s`` buckets (a bounded deque)."""

    step_s: float = 1.0
    season_s: float | None = None
    maxlen: int = 600
    buckets: deque[tuple[int, float, int]] = field(default_factory=deque)  # (bucket, sum, n)
    planned: deque[tuple[float, float]] = field(default_factory=deque)  # (time, bounded forecast)

    def observe(self, t: float, rate: float) -> None:
        if not (math.isfinite(rate) and rate >= 0 and math.isfinite(t)):
            return
        rate = min(rate, MAX_RATE)
        b = int(t // self.step_s)
        if self.buckets and self.buckets[-1][0] == b:
            _, s, n = self.buckets[-1]
            self.buckets[-1] = (b, s + rate, n + 1)
        elif not self.buckets or b > self.buckets[-1][0]:
            self.buckets.append((b, rate, 1))
            while len(self.buckets) > self.maxlen:
                self.buckets.popleft()

    def history(self) -> list[float]:
        return [s / n for _, s, n in self.buckets]

    @property
    def last(self) -> float | None:
        return self.history()[-1] if self.buckets else None

    def upper(self, horizon_s: float, q: float = 0.95) -> float | None:
        """The rate to plan for over the next ``horizon_s``; None without history."""
        bounds = self.bounds(horizon_s, q)
        return None if bounds is None else bounds[0]

    def bounds(self, horizon_s: float, q: float = 0.95) -> tuple[float, float] | None:
        """:func:`forecast_bounds` of this history: (upper, point peak); None without history."""
        h = self.history()
        if not h:
            return None
        season = round(self.season_s / self.step_s) if self.season_s else None
        return forecast_bounds(h, max(1, round(horizon_s / self.step_s)), q, season)

    def planning(self, now: float, horizon_s: float, q: float = 0.95) -> float | None:
        """The rate caps are planned for: :meth:`upper` made steady (:meth:`steady`), its
        point forecast's peak bounding it. None without history."""
        bounds = self.bounds(horizon_s, q)
        return None if bounds is None else self.steady(now, *bounds)

    def steady(self, now: float, up: float, point: float | None = None) -> float:
        """A forecast ``up`` bounded to ENVELOPE_FACTOR x the highest rate of the last
        ENVELOPE_S and, given the point forecast's peak ``point``, to TREND_MARGIN x the higher
        of that peak (only while the rate rises to new highs) and that highest rate (at least
        the last rate), held at the highest such
        value of the last STABILIZE_S. A clock that goes back (or is not finite) starts the hold
        again."""
        if not self.buckets:
            return up
        last_b = self.buckets[-1][0]
        recent = [s / n for b, s, n in self.buckets if b > last_b - ENVELOPE_S / self.step_s]
        bound = ENVELOPE_FACTOR * max(recent)
        if point is not None and math.isfinite(point):
            # a point forecast above the last minute's highest rate is believed only while the
            # rate rises to new highs (RISING_BUCKETS rises in a row, the last the highest): not on
            # the way back up to a peak the minute saw, nor on a steady rate's noise
            rising = (
                len(recent) > RISING_BUCKETS
                and recent[-1] >= max(recent)
                and all(a < b for a, b in zip(recent[-RISING_BUCKETS - 1 :], recent[-RISING_BUCKETS:], strict=False))
            )
            bound = min(bound, TREND_MARGIN * max(max(recent), point if rising else 0.0))
        bounded = max(recent[-1], min(up, bound))
        if not math.isfinite(now):
            self.planned.clear()
            return bounded
        if self.planned and now < self.planned[-1][0]:
            self.planned.clear()
        self.planned.append((now, bounded))
        while self.planned[0][0] < now - STABILIZE_S:
            self.planned.popleft()
        return max(v for _, v in self.planned)
