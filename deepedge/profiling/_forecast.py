"""Barista-style forecast of an LC app's request rate: from its reported history, the rate an
upper quantile of the coming horizon may reach. Caps are set for that rate, and the coordinator
re-plans before the forecast crosses the rate at which the current cap stops being safe.

Two forecasts, chosen per refit (:meth:`RateForecast.planning`):

- **seasonal**, where the history repeats: its period is found by autocorrelation
  (:func:`find_season`: a local maximum of at least SEASON_ACF in the recent history, with two
  periods of it, made exact over the wider stretch where it holds), and the coming horizon's
  peak is read from the same stretch of the last SEASONS_KEPT periods, times the q-quantile of
  how far that reading fell short over the last two periods (a conformal margin,
  :func:`seasonal_upper`), at most ENVELOPE_FACTOR x the highest rate of the last two periods.
  It falls back to the trend when the last horizon broke that margin (the load left its
  pattern; with enough readings to tell, see :func:`seasonal_upper`). Until 2026-12-06 the
  history's season was never given to the model: a diurnal load was planned for as a trend,
  held at its peak through its troughs (docs/benchmarks/forecast.md).
- **trend** otherwise, with statsmodels' exponential smoothing (Holt's damped additive trend),
  made steady (:meth:`RateForecast.steady`), as measured on request-rate traces (``deepedge
  bench forecast``): its extrapolation is believed at most ENVELOPE_FACTOR above the highest rate
  of the last ENVELOPE_S (a ramp on a 30 s cycle was extrapolated to 1.75x its peak) and at most
  TREND_MARGIN above the higher of that highest rate and the point forecast's peak over the
  horizon, the point forecast counting only while the rate rises to new highs (RISING_BUCKETS
  rises in a row, the last the highest; a steady load's report noise alone held the upper
  quantile at the envelope, 1.25x), and the rate falls only after STABILIZE_S below what was
  planned (Kubernetes' HPA scale-down stabilization window): the raw forecast moved by 10 % or
  more from one second to the next 74 times in 150 s of a 30 s diurnal cycle, and every such
  move was a re-plan that took capacity from the LC app or gave it back.

statsmodels loads on the first trend forecast, not with the module; the coordinator service loads
it at its start (:func:`warm_up`), so that its first forecast job does not spend a second of CPU
importing it on the event loop while the job's workers start."""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from deepedge.profiling._table import conformal_quantile

__all__ = [
    "ENVELOPE_FACTOR",
    "ENVELOPE_S",
    "HISTORY_STEPS",
    "SEASONS_KEPT",
    "SEASON_ACF",
    "SEASON_MIN_S",
    "SEASON_WINDOWS",
    "STABILIZE_S",
    "TREND_MARGIN",
    "RateForecast",
    "detect_season",
    "find_season",
    "forecast_bounds",
    "forecast_upper",
    "seasonal_upper",
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
# Seasons (docs/benchmarks/forecast.md): a period is looked for from SEASON_MIN_S up to half the
# history (two periods of it), as the first lag whose autocorrelation is a local maximum of at
# least SEASON_ACF (a step or a steady rate has none: its autocorrelation only falls, or is noise)
SEASON_MIN_S = 8.0
SEASON_ACF = 0.5
# the recent windows a period is looked for in first, in SEASON_MIN_S steps (8 s: 64, 128, 256 s)
SEASON_WINDOWS = (8, 16, 32)
SEASONS_KEPT = 2  # the coming horizon is read from the same stretch of this many past periods
SEASON_MIN_RESIDUALS = 5  # past readings its margin is the quantile of (fewer: the trend is used)
HISTORY_STEPS = 600  # steps of history a forecast keeps (10 minutes of 1 s)


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


def detect_season(history: Sequence[float], min_lag: int) -> int | None:
    """The recent history's period in steps (:func:`find_season`); None where it has none."""
    found = find_season(history, min_lag)
    return None if found is None else found[0]


def find_season(history: Sequence[float], min_lag: int) -> tuple[int, int] | None:
    """(period, extent) of the recent history: the period the first found by :func:`_season_in`
    in its last SEASON_WINDOWS x ``min_lag`` steps (each window twice the last, the whole history
    last), made exact over the wider windows as far back as the pattern holds
    (:func:`_lag_near`); the extent the widest such window (steps back from the last). The
    shortest window that holds two periods finds them: over the whole history a load that began
    to repeat only lately (after a steady rate, a step or profiling) was found a minute or more
    after its second period (the LC scenarios bench, 2026-12-06); a short window alone put a 30 s
    period at 29 s. None where there is none."""
    n = len(history)
    windows = [f * max(1, min_lag) for f in SEASON_WINDOWS if f * max(1, min_lag) < n] + [n]
    for i, window in enumerate(windows):
        found = _season_in(history[-window:], min_lag)
        if found is None:
            continue
        extent = window
        for wider in windows[i + 1 :]:
            exact = _lag_near(history[-wider:], found)
            if exact is None:
                break
            found, extent = exact, wider
        return found, extent
    return None


def _acf(history: Sequence[float], lags: range) -> dict[int, float] | None:
    """The autocorrelation of ``history`` at ``lags`` (each under its length); None for a flat one."""
    import numpy as np

    y = np.asarray(history, dtype=float)
    y = y - y.mean()
    energy = float(y @ y)
    if not (math.isfinite(energy) and energy > 1e-9 * max(1, len(y))):
        return None
    return {k: (1.0 if k == 0 else float(y[:-k] @ y[k:]) / energy) for k in lags if 0 <= k < len(y)}


def _season_in(history: Sequence[float], min_lag: int) -> int | None:
    """The first lag from ``min_lag`` up to half the history at which its autocorrelation is a
    local maximum of at least SEASON_ACF; None where there is none (a step, a steady rate, noise)
    or the history is too short for two periods."""
    n = len(history)
    min_lag = max(1, min_lag)
    if n < 2 * (min_lag + 1):
        return None
    acf = _acf(history, range(min_lag - 1, n // 2 + 1))
    if acf is None:
        return None
    for k in range(min_lag, n // 2):
        if acf[k] >= SEASON_ACF and acf[k] >= acf[k - 1] and acf[k] >= acf[k + 1]:
            return k
    return None


def _lag_near(history: Sequence[float], lag: int, reach: int = 2) -> int | None:
    """The lag within ``reach`` of ``lag`` with the highest autocorrelation over ``history``,
    where that is at least SEASON_ACF (the pattern holds that far back); None otherwise."""
    acf = _acf(history, range(max(1, lag - reach), min(len(history) // 2, lag + reach) + 1))
    if not acf:
        return None
    best = max(acf, key=lambda k: acf[k])
    return best if acf[best] >= SEASON_ACF else None


def _seasonal_reading(history: Sequence[float], at: int, period: int, horizon: int) -> float | None:
    """The highest rate of the ``horizon`` steps from step ``at`` as the last SEASONS_KEPT
    periods had them (only steps before ``at``); None without one period of history before it."""
    seen = []
    for j in range(1, SEASONS_KEPT + 1):
        start = at - j * period
        if start < 0:
            break
        window = history[start : min(start + horizon, at)]
        if window:
            seen.append(max(window))
    return max(seen) if seen else None


def seasonal_upper(history: Sequence[float], period: int, horizon: int, q: float = 0.95) -> float | None:
    """The q-upper bound of the highest rate over the next ``horizon`` steps of a history with
    this ``period``: :func:`_seasonal_reading` times the q-quantile (conformal, at least 1) of
    actual / read over the last two periods' horizons. None with fewer than
    SEASON_MIN_RESIDUALS such readings, or when the last whole horizon broke the margin (the
    load left its pattern: the trend's forecast is then the safer one). That break is seen only
    with 39 readings or more at q 0.95 (a period of 24 steps or more at a 10-step horizon, with
    three periods of pattern): with fewer, rank ceil((n + 1) q) is the highest ratio, the last
    one's included, and the margin covers it instead. At most ENVELOPE_FACTOR x the highest rate
    of the last two periods."""
    n = len(history)
    reading = _seasonal_reading(history, n, period, horizon)
    if reading is None or not reading > 0:
        return None
    ratios = []
    for m in range(max(period, n - 2 * period), n - horizon + 1):
        past = _seasonal_reading(history, m, period, horizon)
        if past is not None and past > 0:
            ratios.append(max(history[m : m + horizon]) / past)
    if len(ratios) < SEASON_MIN_RESIDUALS:
        return None
    margin = max(1.0, conformal_quantile(ratios, q))
    if ratios[-1] > margin:  # (never true while the quantile is the sample's maximum)
        return None
    # believed at most ENVELOPE_FACTOR x the highest rate of the last two periods, as the trend is
    upper = min(reading * margin, ENVELOPE_FACTOR * max(history[-2 * period :]))
    return upper if math.isfinite(upper) else None


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
    season_s: float | None = None  # the load's period where it is known; None: found in the history
    maxlen: int = HISTORY_STEPS
    buckets: deque[tuple[int, float, int]] = field(default_factory=deque)  # (bucket, sum, n)
    planned: deque[tuple[float, float]] = field(default_factory=deque)  # (time, bounded forecast)
    season: int | None = None  # the period (steps) the last planning rate was read with; None: the trend
    # False: no season is looked for, every forecast is the trend's (``coordinator.forecast_seasons``;
    # the LC bench's A/B of the seasonal forecast against the held trend)
    seasons: bool = True

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
        """The rate of each step (``step_s``) up to the last one reported, at most ``maxlen`` of
        them; a step without a report carries the rate before it (reports further apart than a
        step, or missed), so that a period and a horizon are counted in steps of time, not in
        reports: a 30 s cycle reported every 2 s was found as a period of 15 (review)."""
        if not self.buckets:
            return []
        first = max(self.buckets[0][0], self.buckets[-1][0] - self.maxlen + 1)
        out: list[float] = []
        prev: float | None = None
        at: int | None = None  # the step the next rate is for
        for b, s, n in self.buckets:
            if b < first:
                prev = s / n
                continue
            if at is None:
                at = first if prev is not None else b
            while at < b and prev is not None:
                out.append(prev)
                at += 1
            prev = s / n
            out.append(prev)
            at = b + 1
        return out

    def snapshot(self) -> tuple[float, list[float]] | None:
        """(the start time of the last step reported, :meth:`history`): what a restarted
        coordinator needs to forecast from where this one left off (deepedge.coordinator._memory);
        None without history."""
        if not self.buckets:
            return None
        return self.buckets[-1][0] * self.step_s, self.history()

    def restore(self, last_at: float, rates: Sequence[float], now: float) -> bool:
        """Put a :meth:`snapshot` back into an empty forecast: ``rates`` one per step, the last
        starting at ``last_at`` (on this process's clock; a time after ``now``, from a wall
        clock set back since, counts as ``now``). Nothing is restored when the last step is more
        than ``maxlen`` steps before ``now`` (the history would have left the window by now), or
        when a rate is out of bounds (not finite, negative: a row is not trusted). True when
        restored."""
        last_at = min(last_at, now)
        if self.buckets or not rates or not math.isfinite(last_at) or now - last_at > self.maxlen * self.step_s:
            return False
        if not all(math.isfinite(r) and r >= 0 for r in rates):
            return False
        kept = list(rates)[-self.maxlen :]
        last = int(last_at // self.step_s)
        first = last - len(kept) + 1
        self.buckets.extend((first + i, min(float(r), MAX_RATE), 1) for i, r in enumerate(kept))
        return True

    @property
    def last(self) -> float | None:
        if not self.buckets:
            return None
        _, s, n = self.buckets[-1]
        return s / n

    def upper(self, horizon_s: float, q: float = 0.95) -> float | None:
        """The rate to plan for over the next ``horizon_s``; None without history."""
        bounds = self.bounds(horizon_s, q)
        return None if bounds is None else bounds[0]

    def bounds(self, horizon_s: float, q: float = 0.95) -> tuple[float, float] | None:
        """:func:`forecast_bounds` of this history: (upper, point peak); None without history."""
        h = self.history()
        if not h:
            return None
        return forecast_bounds(h, max(1, round(horizon_s / self.step_s)), q)

    def period(self, history: Sequence[float] | None = None) -> tuple[int, int] | None:
        """(period, extent) in steps of ``history`` (this forecast's when not given):
        ``season_s`` over the whole history where given, else :func:`find_season`; None when
        ``seasons`` is off."""
        if not self.seasons:
            return None
        h = self.history() if history is None else history
        if self.season_s:
            return max(1, round(self.season_s / self.step_s)), len(h)
        return find_season(h, math.ceil(SEASON_MIN_S / self.step_s))

    def planning(self, now: float, horizon_s: float, q: float = 0.95) -> float | None:
        """The rate caps are planned for, at least the last rate: where the history repeats, its
        :func:`seasonal_upper` (``season`` says the period); otherwise :meth:`upper` made steady
        (:meth:`steady`), its point forecast's peak bounding it. None without history. The
        history is built once per call (it fills the steps without a report)."""
        h = self.history()
        if not h:
            return None
        horizon = max(1, round(horizon_s / self.step_s))
        found = self.period(h)
        # read only from the stretch where the pattern holds: readings of the steady rate before
        # it began widened the margin (75.7 req/s planned for a cycle of 10-40: the LC bench)
        upper = seasonal_upper(h[-found[1] :], found[0], horizon, q) if found else None
        if found and upper is not None:
            self.season = found[0]
            self.planned.clear()  # the trend's hold starts again if the season is lost
            return max(h[-1], upper)
        self.season = None
        return self.steady(now, *forecast_bounds(h, horizon, q))

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
