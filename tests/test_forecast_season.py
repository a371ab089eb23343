"""The request-rate forecast's seasons (deepedge.profiling._forecast): a period is found only
where the load repeats, the coming horizon is read from the last periods with a conformal
margin, and a load that leaves its pattern goes back to the trend's forecast."""

from __future__ import annotations

import math
import random

import pytest

from deepedge.bench._forecast import ON_SEASON, PLANNED, TREND_ONLY, arrivals, reports, run_forecast_bench
from deepedge.coordinator._learning import InterferenceModel
from deepedge.demo.lc_app import Trace
from deepedge.profiling import CapTable
from deepedge.profiling._forecast import ENVELOPE_FACTOR, SEASON_MIN_S, RateForecast, detect_season, seasonal_upper


def _noisy(values: list[float], seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [v * (1 + rng.gauss(0, 0.05)) for v in values]


def test_a_season_is_found_where_the_load_repeats_and_nowhere_else() -> None:
    lag = math.ceil(SEASON_MIN_S)
    for period in (12, 30, 120):
        cycle = _noisy([25 + 15 * math.sin(2 * math.pi * t / period) for t in range(max(300, 3 * period))])
        found = detect_season(cycle, lag)
        assert found is not None and abs(found - period) <= max(1, period // 20), (period, found)
        assert detect_season(cycle[: 2 * period - 2], lag) is None  # under two periods of history
    step = _noisy([20.0] * 60 + [40.0] * 240)
    steady = _noisy([25.0] * 300)
    assert detect_season(step, lag) is None  # its autocorrelation only falls
    assert detect_season(steady, lag) is None  # noise
    assert detect_season([25.0] * 300, lag) is None  # flat
    assert detect_season([], lag) is None


def test_the_seasonal_reading_covers_the_coming_peak_with_its_margin() -> None:
    period, horizon = 30, 10
    history = _noisy([25 + 15 * math.sin(2 * math.pi * t / period) for t in range(150)], seed=1)
    upper = seasonal_upper(history, period, horizon, 0.95)
    assert upper is not None
    coming = [25 + 15 * math.sin(2 * math.pi * t / period) for t in range(150, 150 + horizon)]
    assert max(coming) <= upper <= 1.25 * max(coming)  # the coming peak, by the noise's margin
    assert seasonal_upper(history[:35], period, horizon, 0.95) is None  # too few past readings


def test_the_planned_rate_reads_a_season_for_less_over_the_peak_than_the_held_trend() -> None:
    """``deepedge bench forecast`` on the 30 s diurnal cycle: after two periods the rate is read
    from the season (the planned rate moves with the load instead of holding its peak through
    the troughs), for less over the coming peak at about the same coverage; a step is no season."""
    rows = run_forecast_bench(traces=(("diurnal:10,40,30", 180.0), ("step:20,40,12", 90.0)))
    by = {(r.trace, r.choice): r for r in rows}
    assert (by[("diurnal:10,40,30", PLANNED)].seasonal or 0) >= 90  # all but the first two periods
    new, old = by[("diurnal:10,40,30", PLANNED + ON_SEASON)], by[("diurnal:10,40,30", TREND_ONLY + ON_SEASON)]
    assert new.points >= 90 and new.points == old.points
    assert new.mean_ratio < 0.85 * old.mean_ratio  # the trend held the peak through the troughs
    assert new.covered >= old.covered - 0.06
    assert new.max_ratio < old.max_ratio
    step_new, step_old = by[("step:20,40,12", PLANNED)], by[("step:20,40,12", TREND_ONLY)]
    assert step_new.seasonal == 0 and step_new.mean_ratio == pytest.approx(step_old.mean_ratio)
    assert ("step:20,40,12", PLANNED + ON_SEASON) not in by


def test_a_load_that_leaves_its_season_goes_back_to_the_trend() -> None:
    """The season is still found, but the last horizon was the worst surprise of two periods:
    the trend's forecast plans (held, at least the last rate), and the season comes back."""
    period, horizon = 30, 10
    cycle = _noisy([25 + 15 * math.sin(2 * math.pi * t / period) for t in range(150)], seed=4)
    assert seasonal_upper([*cycle, 25.0], period, horizon) is not None  # the next step, as the pattern has it
    spiked = [*cycle, 80.0]  # twice the season's peak, one step
    assert detect_season(spiked, math.ceil(SEASON_MIN_S)) == detect_season(cycle, math.ceil(SEASON_MIN_S))
    assert seasonal_upper(spiked, period, horizon) is None
    f = RateForecast(step_s=1.0)
    for t, rate in enumerate(cycle):
        f.observe(float(t), rate)
    before = f.planning(149.0, 10.0)
    assert f.season is not None and abs(f.season - period) <= 1 and before is not None and before < 50.0
    f.observe(150.0, 80.0)
    after = f.planning(150.0, 10.0)
    assert f.season is None and after is not None and after >= 80.0
    for t in range(151, 151 + 2 * period):  # the pattern again: the season returns
        f.observe(float(t), 25 + 15 * math.sin(2 * math.pi * t / period))
    f.planning(151.0 + 2 * period, 10.0)
    assert f.season is not None


def test_the_planners_basis_says_the_rate_was_read_from_a_season() -> None:
    table = CapTable("det", "test", 0.95, (0.0, 1.0), (10.0, 40.0), (0.0, 1.0), (14.0,) * 8, (10.0,) * 8)
    im = InterferenceModel()
    for t, rate in reports(arrivals(Trace.parse("diurnal:10,40,30"), 120.0, random.Random(3)), 120.0):
        im.observe_load(t, rate)
    rate = im.planning_rate(im.rates.last or 0.0, 120.0)
    model = im.surrogate_model("det", 30.0, table, rate, 0.0)
    assert im.rates.season is not None
    assert f"read from its last periods of {im.rates.season:g} s" in model.basis


def test_a_load_that_begins_to_repeat_lately_is_found_after_two_periods() -> None:
    """Ten minutes of a steady rate with noise, then a 30 s cycle: the season is found from the
    recent history once two periods of it are there, not when they outweigh the steady past."""
    lag = math.ceil(SEASON_MIN_S)
    steady = _noisy([30.0] * 540, seed=5)
    cycle = _noisy([25 + 15 * math.sin(2 * math.pi * t / 30) for t in range(70)], seed=6)
    assert detect_season((steady + cycle)[-600:], lag) == pytest.approx(30, abs=1)
    assert detect_season((steady + cycle[:50])[-600:], lag) is None  # under two periods


def test_a_season_just_begun_is_planned_for_at_most_the_envelope() -> None:
    """Five minutes of a steady 20 req/s, then 70 s of the 30 s cycle (the LC bench's lead):
    the readings from the steady past are far under what came, which widened the margin to
    plan for 75.7 req/s for a cycle of 10-40 (the LC bench, 2026-12-06); the seasonal forecast
    is believed at most ENVELOPE_FACTOR x the highest rate of its last two periods, as the
    trend's is."""
    f = RateForecast(step_s=1.0)
    steady = reports(arrivals(Trace.parse("constant:20"), 300.0, random.Random(7)), 300.0)
    cycle = reports(arrivals(Trace.parse("diurnal:10,40,30"), 70.0, random.Random(8)), 70.0)
    for t, rate in steady + [(300.0 + t, rate) for t, rate in cycle]:
        f.observe(t, rate)
    planned = f.planning(370.0, 10.0)
    assert f.season is not None and abs(f.season - 30) <= 1
    highest = max(f.history()[-2 * f.season :])
    assert planned is not None and highest <= planned <= ENVELOPE_FACTOR * highest + 1e-9


def test_a_cycle_reported_every_two_seconds_is_counted_in_seconds() -> None:
    """Steps without a report carry the rate before them: a 30 s cycle reported every 2 s (a
    node's longer report interval) is a period of 30 steps of 1 s, not of 15 reports."""
    f = RateForecast(step_s=1.0, maxlen=100)
    for t in range(0, 240, 2):
        f.observe(float(t), 25 + 15 * math.sin(2 * math.pi * t / 30))
    h = f.history()
    assert len(h) == 100 and h[-1] == f.last and h[-2] == h[-3]  # the last 100 s; step 237 carries 236's rate
    planned = f.planning(239.0, 10.0)
    assert f.season is not None and abs(f.season - 30) <= 1 and planned is not None


def test_with_seasons_off_the_coordinator_plans_a_repeating_load_as_the_held_trend() -> None:
    """``coordinator.forecast_seasons = false`` (the LC bench's --controllers trend): the same diurnal
    history that the default reads a season from is planned for by the held trend, at its peak
    through the trough; every app model a node's learning makes carries the setting."""
    from deepedge.config import Config, load_config
    from deepedge.coordinator._learning import NodeLearning, ThroughputModel

    assert Config().coordinator.forecast_seasons is True
    off = load_config(environ={}, overrides={"coordinator.forecast_seasons": False}).config
    assert off.coordinator.forecast_seasons is False
    planned: dict[bool, list[float]] = {}
    for seasons in (True, False):
        node = NodeLearning(ThroughputModel(prior=10.0), seasons=seasons)
        im = node.app("det")
        assert im.rates.seasons is seasons
        rates = []
        for t, rate in reports(arrivals(Trace.parse("diurnal:10,40,30"), 150.0, random.Random(3)), 150.0):
            node.app("det").observe_load(t, rate)
            im.forecast_at = -1e9  # refit at every report, as a plan would every FORECAST_EVERY_S
            planning = im.planning_rate(im.rates.last or 0.0, t)
            if t >= 120.0:  # the last period: from a trough to the peak and back
                rates.append(planning)
        assert (im.rates.season is not None) is seasons
        planned[seasons] = rates
    # the held trend stays near the peak (40 req/s) through the trough; the season follows the load
    assert min(planned[False]) >= 35.0
    assert min(planned[True]) < 0.8 * min(planned[False])
