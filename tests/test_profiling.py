"""Interference profiling without measuring: the design, the surrogates and their honesty, the
cap tables, the knowledge base, caps from the upper quantile, and the coordinator planning with
a stored model (its caps change)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deepedge.bench._interference import evaluate
from deepedge.broker_schemas import AppLatency, JobSpec, LatencyReport, NodeBirth, Telemetry
from deepedge.coordinator._jobs import JobRecord
from deepedge.coordinator._learning import (
    TABLE_REACH,
    InterferenceModel,
    NodeLearning,
    ThroughputModel,
    anchored_upper_ms,
)
from deepedge.coordinator._planner_io import lc_models, node_models
from deepedge.coordinator._policy import CLIMB_MIN, cap_rises, forecast_risk
from deepedge.coordinator._view import ClusterView
from deepedge.coordinator.planner import JobModel, LcAppModel, NodeModel, Planner, PlannerConfig, node_cap
from deepedge.coordinator.planner._caps import largest_within
from deepedge.profiling import CapTable, KnowledgeBase, Point, ProfileKey, Run, TableCache, versions_key
from deepedge.profiling._design import Space, adaptive_points, latin_hypercube
from deepedge.profiling._forecast import ENVELOPE_FACTOR, MAX_RATE, STABILIZE_S, TREND_MARGIN, RateForecast
from deepedge.profiling._session import ProfileSession, fit_runs
from deepedge.profiling._surrogate import choose, cross_validate, fit

SPACE = Space(rate_min=10, rate_max=40)


def truth(u: float, rate: float, cpu: float, cache: float, mem: float, io: float) -> float:
    """A synthetic LC app: latency grows with training, load and request rate."""
    return (
        8.0
        * (1 + 0.9 * u + 0.3 * cpu + 0.25 * mem + 0.15 * cache + 0.05 * io + 0.01 * (rate - 10))
        * (1 + 0.4 * u * mem)
    )


def synthetic(points: list[Point], noise: float = 0.03, seed: int = 0, phase: str = "design") -> list[Run]:
    rng = np.random.default_rng(seed)
    out = []
    for p in points:
        y = truth(p.intensity, p.rate, p.cpu, p.cache, p.mem, p.io) * math.exp(rng.normal(0, noise))
        out.append(
            Run(
                p,
                p.intensity,
                p.rate,
                p.cpu,
                p.cache,
                p.mem,
                p.io,
                round(y, 4),
                round(y * 0.7, 4),
                100,
                3.0,
                phase=phase,
            )
        )
    return out


def test_the_design_fills_the_space_with_small_mixes_and_reports_the_grid() -> None:
    pts = latin_hypercube(SPACE, 30, seed=3)
    assert len(pts) == 30 and SPACE.full_grid == 5 * 3 * 3**4
    assert all(sum(v > 0 for v in p.stressors().values()) <= SPACE.max_mix for p in pts)
    # Latin hypercube: every tenth of the intensity range holds exactly three of the 30 points
    bins = np.histogram([p.intensity for p in pts], bins=10, range=(0, 1.0001))[0]
    assert bins.min() >= 2 and bins.max() <= 4, bins
    assert {p.mix() for p in pts} >= {"none", "cpu", "cache", "mem", "io", "cpu+mem"}
    assert all(SPACE.rate_min <= p.rate <= SPACE.rate_max for p in pts)
    # the adaptive step picks where the uncertainty is largest, and not what was measured
    extra = adaptive_points(SPACE, lambda cands: [c.intensity + c.mem for c in cands], 3, pts)
    assert len(extra) == 3 and not set(extra) & set(pts)
    assert min(p.intensity + p.mem for p in extra) >= 1.0


def test_surrogates_are_cross_validated_monotone_and_their_intervals_cover() -> None:
    runs = synthetic(latin_hypercube(SPACE, 48, seed=1))
    for kind in ("linear", "loglinear", "gbm", "gp"):
        s = fit(kind, runs)
        assert s.cv.folds == 5 and len(s.residuals) == 48
        us = [[u / 10, 25, 0.3, 0.2, 0.5, 0.0, 0.0] for u in range(11)]
        upper, median = s.quantile_ms(us, 0.95), s.median_ms(us)
        assert np.all(upper >= median)
        if kind in ("loglinear", "gbm", "linear"):  # monotone by construction
            assert np.all(np.diff(median) >= -1e-9), (kind, median)
    best, candidates, table = fit_runs("det", runs, SPACE)
    assert best.kind != "linear" and {c.kind for c in candidates} == {"loglinear", "gbm", "gp", "linear"}
    assert best.cv.median_ape < 0.06, best.cv  # 3 % noise: the right model is close to it
    assert best.cv.median_ape < next(c for c in candidates if c.kind == "linear").median_ape
    held = synthetic(latin_hypercube(Space(10, 40, max_mix=4), 40, seed=9), seed=5)
    lo, hi = best.interval_ms([r.features() for r in held], 0.95)
    y = np.array([r.p95_ms for r in held])
    assert np.mean((y >= lo) & (y <= hi)) >= 0.85
    # the cap table is monotone along every axis, upper above median
    assert all(a <= b + 1e-9 for a, b in zip(table.curve(25, 0.3), table.curve(25, 0.3)[1:], strict=False))
    assert table.upper_ms(0.5, 20, 0.2) <= table.upper_ms(0.5, 30, 0.2) <= table.upper_ms(0.5, 30, 0.6)
    assert table.upper_ms(0.5, 50, 0.2) >= table.upper_ms(0.5, 40, 0.2)  # beyond the grid: never less
    assert all(u >= m for u, m in zip(table.upper, table.median, strict=True))


def test_held_out_error_is_computed_on_runs_the_model_never_saw() -> None:
    design = synthetic(latin_hypercube(SPACE, 24, seed=2))
    held = synthetic([Point(u / 3, 25, cpu=0.5, cache=0.5, mem=0.5) for u in range(4)], seed=8, phase="heldout")
    held = [Run.from_dict(r.to_dict() | {"scenario": "three"}) for r in held]
    kinds = ("loglinear", "gp")  # the bookkeeping is the same for every kind; gbm's CV is the slowest
    chosen, figures, _ = evaluate(design + held, SPACE, kinds)
    # a wildly wrong held-out measurement changes the held-out error, never the fit's own figures
    bad = [Run.from_dict(held[0].to_dict() | {"p95_ms": held[0].p95_ms * 3}), *held[1:]]
    chosen2, figures2, _ = evaluate(design + bad, SPACE, kinds)
    assert chosen == chosen2
    for f, g in zip(figures, figures2, strict=True):
        assert f.cv_median_ape == g.cv_median_ape and f.cv_coverage == g.cv_coverage
        s = fit(f.kind, design)
        y = np.array([r.p95_ms for r in held])
        ape = np.abs(s.median_ms([r.features() for r in held]) - y) / y
        assert f.median_ape == pytest.approx(float(np.median(ape)))
        assert f.per_scenario == {"three": pytest.approx(float(np.median(ape)))}
    # the CV figures are out-of-fold: the same as cross-validating again
    cv = cross_validate(chosen, design)
    assert next(f for f in figures if f.kind == chosen).cv_median_ape == pytest.approx(cv.median_ape)


def test_held_out_error_is_split_by_whether_the_design_had_the_stressor_set() -> None:
    three = Space(rate_min=10, rate_max=40, max_mix=3)
    design = synthetic(latin_hypercube(three, 32, seed=2))
    seen_mixes = {r.asked.mix() for r in design}
    assert "cpu+cache+mem" in seen_mixes and "cpu+cache+mem+io" not in seen_mixes
    held = synthetic(
        [Point(u / 3, 25, cpu=0.5, cache=0.5, mem=0.5) for u in range(4)]
        + [Point(u / 3, 25, cpu=0.5, cache=0.5, mem=0.5, io=0.5) for u in range(4)],
        seed=8,
        phase="heldout",
    )
    held = [Run.from_dict(r.to_dict() | {"scenario": r.asked.mix()}) for r in held]
    _, figures, _ = evaluate(design + held, three, ("loglinear",))  # the split is the same for every kind
    for f in figures:
        s = fit(f.kind, design)
        y = np.array([r.p95_ms for r in held])
        ape = np.abs(s.median_ms([r.features() for r in held]) - y) / y
        assert list(f.by_set) == ["seen set", "new set"]
        assert f.by_set["seen set"] == pytest.approx(float(np.median(ape[:4])))
        assert f.by_set["new set"] == pytest.approx(float(np.median(ape[4:])))
    # a design of at most two: every held-out set is new, nothing to split
    two = Space(rate_min=10, rate_max=40, max_mix=2)
    _, figures2, _ = evaluate(synthetic(latin_hypercube(two, 24, seed=2)) + held, two, ("loglinear",))
    assert all(f.by_set == {} for f in figures2)


def test_the_choice_is_made_on_each_stressor_mix_left_out_in_turn() -> None:
    runs = synthetic(latin_hypercube(SPACE, 30, seed=4))
    cv = cross_validate("loglinear", runs)
    # leave-one-mix-out by hand: each mix's runs predicted by the model fitted on the others
    errors = []
    for mix in sorted({r.asked.mix() for r in runs}):
        inside = [r for r in runs if r.asked.mix() == mix]
        s = fit("loglinear", [r for r in runs if r.asked.mix() != mix])
        y = np.array([r.p95_ms for r in inside])
        errors += list(np.abs(s.median_ms([r.features() for r in inside]) - y) / y)
    assert cv.mix_median_ape == pytest.approx(float(np.median(errors)))
    assert cv.choice_ape == cv.mix_median_ape and cv.to_dict()["mix_median_ape"] == cv.mix_median_ape
    # under three mixes there is nothing to leave out: the random folds' error decides
    few = [r for r in runs if r.asked.mix() in ("none", "cpu")]
    assert cross_validate("loglinear", few).mix_median_ape is None
    # the lower leave-one-mix-out error wins over the lower random-fold error
    a, b = fit("loglinear", runs), fit("gbm", runs)
    a.cv = replace(a.cv, median_ape=0.05, mix_median_ape=0.20)
    b.cv = replace(b.cv, median_ape=0.10, mix_median_ape=0.12)
    assert choose([a, b]) is b and choose([b, a]) is b
    b.cv = replace(b.cv, mix_median_ape=None, median_ape=0.25)  # no mix figure: its own error counts
    assert choose([a, b]) is a


def test_the_knowledge_base_round_trips(tmp_path: Path) -> None:
    kb = KnowledgeBase(tmp_path / "kb.db")
    key = ProfileKey("Jetson Orin NX", "det", versions_key({"deepedge": "0.1.0", "torch": "2.13.0", "os": "x"}))
    assert key.versions == "deepedge=0.1.0,torch=2.13.0"
    result = ProfileSession(key, SPACE, kb, source="test").run(lambda pts, ph: synthetic(pts, phase=ph), 16, 3)
    pid = result.profile_id
    assert pid is not None and len(kb.runs(pid)) == 16 and len(kb.runs(pid, "adaptive")) == 3
    [summary] = kb.profiles()
    assert summary.key == key and summary.runs == 16 and summary.kind == result.surrogate.kind
    table, found = kb.table("Jetson Orin NX", "det", "deepedge=0.2.0")  # other versions: the newest of the model
    assert found == key and table == result.table
    assert kb.table("Jetson Nano", "det", key.versions) is None
    doc = json.loads(json.dumps(kb.export()))
    other = KnowledgeBase(tmp_path / "other.db")
    assert other.import_(doc) == [1]
    a, b = kb.show(pid), other.show(1)
    assert a is not None and b is not None
    for k in ("device_model", "app", "versions", "design", "runs", "model", "space"):
        assert a[k] == b[k], k
    assert other.runs(1) == kb.runs(pid)
    other.import_(doc)  # the same key again replaces, not duplicates
    assert len(other.profiles()) == 1
    with pytest.raises(ValueError):
        other.import_({"format": "something else"})
    # a crafted export: checked whole before anything is replaced (the good profile stays)
    before = other.show(other.profiles()[0].id)
    for bad in (
        {"cap_table": {**doc["profiles"][0]["model"]["cap_table"], "upper": [float("nan")] * 1000}},
        {"cap_table": {**doc["profiles"][0]["model"]["cap_table"], "intensity": list(range(100))}},
        {"q": 1.5},
        {"cv": "not an object"},
        # (an attacker's review) extrapolated to inf at a higher rate: every forecast job failed
        {"cap_table": {**doc["profiles"][0]["model"]["cap_table"], "upper": [1e308] * 1000}},
        # NaN (json reads it) failed after the good profile was deleted: it was left without a model
        {"created": float("nan")},
    ):
        crafted = json.loads(json.dumps(doc))
        crafted["profiles"][0]["model"].update(bad)
        crafted["profiles"] = [doc["profiles"][0], crafted["profiles"][0]]
        with pytest.raises(ValueError, match="not valid"):
            other.import_(crafted)
        assert len(other.profiles()) == 1 and other.show(other.profiles()[0].id) == before
    run = json.loads(json.dumps(doc))
    run["profiles"][0]["runs"][0]["p95_ms"] = float("inf")
    with pytest.raises(ValueError, match="not a finite non-negative number"):
        other.import_(run)


def test_a_knowledge_base_is_only_a_file_that_is_one_and_reading_one_never_writes(tmp_path: Path) -> None:
    """`profile list --kb` named the coordinator's job store by mistake wrote the knowledge base's
    tables into it, and a folder or a text file gave a traceback: now a clear error, and reading
    opens the file read-only."""
    import sqlite3

    from deepedge.profiling import KnowledgeBaseError

    store = tmp_path / "coordinator.db"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE jobs (id TEXT)")
    for create in (False, True):
        with pytest.raises(KnowledgeBaseError, match=r"not a knowledge base \(its tables: jobs"):
            KnowledgeBase(store, create=create)
    with sqlite3.connect(store) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["jobs"]
    (tmp_path / "notes.txt").write_text("not a database, but long enough to have a header........" * 4)
    for path, why in (
        (tmp_path / "notes.txt", "not a knowledge base"),
        (tmp_path, "a folder"),
        (tmp_path / "none.db", "no knowledge base at"),
    ):
        with pytest.raises(KnowledgeBaseError, match=why):
            KnowledgeBase(path, create=False)
    assert not (tmp_path / "none.db").exists()
    kb = KnowledgeBase(tmp_path / "kb.db")
    kb.profile_id(ProfileKey("m", "det", "v"))
    mtime = (tmp_path / "kb.db").stat().st_mtime_ns
    reader = KnowledgeBase(tmp_path / "kb.db", create=False)
    assert [p.key.app for p in reader.profiles()] == ["det"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.profile_id(ProfileKey("m", "other", "v"))
    assert (tmp_path / "kb.db").stat().st_mtime_ns == mtime
    # a review's cases: the statistics tables ANALYZE leaves are SQLite's own, not foreign; a
    # writer killed mid-transaction leaves a hot journal only a writable connection rolls back
    with sqlite3.connect(tmp_path / "kb.db") as db:
        db.execute("ANALYZE")
    assert [p.key.app for p in KnowledgeBase(tmp_path / "kb.db", create=False).profiles()] == ["det"]
    import subprocess
    import sys

    killed = (
        "import os, sqlite3; db = sqlite3.connect(os.environ['KB'], isolation_level=None); "
        "db.execute('PRAGMA cache_size=1'); db.execute('BEGIN'); "
        "db.executemany('INSERT INTO runs VALUES (1, ?, \"design\", ?)', [(i, 'x' * 4000) for i in range(500)]); "
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", killed], env={"KB": str(tmp_path / "kb.db")}, check=True)
    assert (tmp_path / "kb.db-journal").exists()
    assert [p.key.app for p in KnowledgeBase(tmp_path / "kb.db", create=False).profiles()] == ["det"]


def test_a_table_never_predicts_more_than_its_bound_and_an_anchor_survives_any_reported_p95() -> None:
    """(an attacker's review) A node's p95 of 5e-324, a legal float, made log(0) raise in the
    anchor of every plan that read its app: every forecast job failed."""
    from deepedge.profiling._table import MAX_TABLE_VALUE

    table = _table()
    assert table.upper_ms(1.0, 1e300) == MAX_TABLE_VALUE  # far beyond the grid: bounded
    model = InterferenceModel()
    model.table = table
    for k in range(4):
        model.observe_load(float(k), 20.0, 0.5, 0.0, 5e-324)
    anchor = model.correction(table)
    assert all(math.isfinite(x) for x in (anchor.c0, anchor.c1, anchor.spread))


def _table(offset: float = 0.0) -> CapTable:
    """upper = median + 4 ms; p95 = 10 + 20 u (+ 5 per 10 req/s above 20)."""
    us, rates, cpus = (0.0, 0.5, 1.0), (10.0, 20.0, 40.0), (0.0, 1.0)
    med = [10 + 20 * u + 0.5 * max(0.0, r - 20) + 2 * c + offset for u in us for r in rates for c in cpus]
    return CapTable("det", "test", 0.95, us, rates, cpus, tuple(m + 4 for m in med), tuple(med))


def test_caps_come_from_the_upper_quantile_by_bisection() -> None:
    table = _table()
    learn = NodeLearning(ThroughputModel(100.0))
    model = learn.app("det").surrogate_model("det", 30.0, table, rate=20.0, cpu=0.0)
    assert model.curve and model.predict_ms(0.5) == pytest.approx(24.0)  # upper: 10 + 10 + 4
    node = NodeModel("n", 100.0, 64, lc_apps=(model,))
    # the upper quantile is the safety: the planner's margin is not taken again, only a 5 %
    # headroom below the deadline (hysteresis for the forecast's re-plans; budget 28.5 ms)
    assert model.margin == 0.05
    cap, _ = node_cap(node, margin=0.1)  # upper 14 + 20 u <= 28.5 -> u = 0.725
    assert cap == pytest.approx(0.725, abs=1e-6)
    median_cap = largest_within(lambda u: table.median_ms(u, 20.0, 0.0), 30.0)
    assert median_cap == pytest.approx(1.0) and cap < median_cap  # the median would allow more
    # a higher forecast rate lowers the cap
    busy = learn.app("det").surrogate_model("det", 30.0, table, rate=30.0, cpu=0.0)
    assert node_cap(NodeModel("n", 100.0, 64, lc_apps=(busy,)), 0.1)[0] == pytest.approx(0.475, abs=1e-6)
    # live reports 3 ms over the table's median: anchored to them, the cap is lower again; with 3
    # reports their spread is no 95 % quantile yet: the table's whole interval
    im = learn.app("det")
    for u in (0.2, 0.4, 0.6):
        im.observed.append((u, 20.0, 0.0, table.median_ms(u, 20.0, 0.0) + 3.0))
    corrected = im.surrogate_model("det", 30.0, table, rate=20.0, cpu=0.0)
    logs = [math.log((13 + 20 * u) / (10 + 20 * u)) for u in (0.2, 0.4, 0.6)]
    level = sum(logs) / 3  # log-space anchor (the ratio falls with u: no slope)
    whole = ((28.5 / math.exp(level)) - 14.0) / 20.0  # (14 + 20 u) * exp(level) <= 28.5
    assert node_cap(NodeModel("n", 100.0, 64, lc_apps=(corrected,)), 0.1)[0] == pytest.approx(whole, abs=0.01)
    assert whole < 0.8
    # 21 reports (enough for a conformal 95 % quantile): where they were taken the anchor is the
    # measurement (their own spread, not the table's 4 ms); beyond them the table's interval comes
    # back with the distance, all of it TABLE_REACH away
    for _ in range(6):
        for u in (0.2, 0.4, 0.6):
            im.observed.append((u, 20.0, 0.0, table.median_ms(u, 20.0, 0.0) + 3.0))
    corrected = im.surrogate_model("det", 30.0, table, rate=20.0, cpu=0.0)
    spread = max(r - level for r in logs)  # rank ceil(22 x 0.95) = 21 of 21: the largest
    assert corrected.predict_ms(0.4) == pytest.approx(18.0 * math.exp(level + spread), abs=1e-3)
    far = max(spread, math.log(34 / 30) * (1.0 - 0.6) / TABLE_REACH)
    assert corrected.predict_ms(1.0) == pytest.approx(30.0 * math.exp(level + far), abs=1e-3)
    cap = node_cap(NodeModel("n", 100.0, 64, lc_apps=(corrected,)), 0.1)[0]
    anchored = ((28.5 / math.exp(level + spread)) - 10.0) / 20.0  # the anchored median and spread alone
    assert whole < cap < anchored < 0.8
    # no room at all: the reason names the upper quantile
    hot = LcAppModel("det", 10.0, 0, 0, curve=(12.0, 20.0), margin=0.0)
    cap, why = node_cap(NodeModel("n", 100.0, 64, lc_apps=(hot,)), 0.1)
    assert cap == 0 and "upper quantile" in why


def test_a_cap_climbs_where_live_reports_at_it_show_room() -> None:
    """The first cap is where the table's whole interval meets the deadline; once steady reports
    at that cap show the app where the table's median says, the interval near it narrows and the
    planner's cap is higher: a re-plan that raises it by CLIMB_MIN or more is wanted, but only
    once every node whose cap rises has reported at its current cap."""
    table = _table()  # median 10 + 20 u at 20 req/s, upper + 4 ms; budget 28.5 ms of 30
    im = InterferenceModel()
    first = node_cap(NodeModel("n", 100.0, 64, lc_apps=(im.surrogate_model("det", 30.0, table, 20.0, 0.0),)), 0.1)[0]
    assert first == pytest.approx(0.725, abs=1e-6)
    for _ in range(30):  # a latency window and more of steady reports at that cap, as the table says
        im.observe_load(0.0, 20.0, first, 0.0, table.median_ms(first, 20.0, 0.0))
    model = im.surrogate_model("det", 30.0, table, 20.0, 0.0)
    climbed = node_cap(NodeModel("n", 100.0, 64, lc_apps=(model,)), 0.1)[0]
    # (10 + 20 u) x exp(log((14 + 20 u) / (10 + 20 u)) x (u - 0.725) / TABLE_REACH) <= 28.5
    assert climbed == pytest.approx(0.87, abs=0.01)
    assert climbed - first >= CLIMB_MIN
    assert model.predict_ms(climbed) <= 28.5 + 1e-6 and model.predict_ms(1.0) > 28.5  # not all the way
    previous = [("a", 1.0), ("n", first)]
    assert cap_rises(previous, {"a": 1.0, "n": climbed}, ["n"]) == [("n", first, climbed)]
    assert cap_rises(previous, {"a": 1.0, "n": climbed}, []) == []  # not yet reported at its cap
    assert cap_rises(previous, {"a": 1.0, "n": first + CLIMB_MIN / 2}, ["n"]) == []  # too small a move
    assert cap_rises(previous, {"a": 0.9, "n": first}, ["a", "n"]) == []  # lower caps are no climb


def test_a_table_is_anchored_to_what_the_app_shows_now_with_the_larger_interval() -> None:
    """The profile's machine was busier than the board is now (its median at no training is
    twice what the app reports): anchored to the live reports the curve comes down, keeping the
    table's interval; a noisy app keeps its own, wider spread; a live level is believed within
    4x of the table."""
    table = _table()  # median 10 + 20 u at 20 req/s, upper + 4 ms
    quiet = InterferenceModel()
    for _ in range(20):
        quiet.observe_load(0.0, 20.0, 0.0, 0.0, 5.0)  # half the table's 10 ms, no training
    anchor = quiet.correction(table)
    assert anchor.c0 == pytest.approx(math.log(0.5)) and anchor.c1 == 0 and anchor.spread == pytest.approx(0, abs=1e-9)
    model = quiet.surrogate_model("det", 15.0, table, rate=20.0, cpu=0.0)
    # (10 + 20 u + 4) / 2 <= 14.25: u <= 0.725; unanchored, (14 + 20 u) <= 14.25 -> 0.0125
    assert node_cap(NodeModel("n", 100.0, 64, lc_apps=(model,)), 0.1)[0] == pytest.approx(0.725, abs=0.01)
    unanchored = InterferenceModel().surrogate_model("det", 15.0, table, rate=20.0, cpu=0.0)
    assert node_cap(NodeModel("n", 100.0, 64, lc_apps=(unanchored,)), 0.1)[0] == pytest.approx(0.0125, abs=0.01)
    # reports of 3 and 9 ms: the live spread (log 9/5.2) is wider than the table's (log 1.4)
    noisy = InterferenceModel()
    for k in range(20):
        noisy.observe_load(0.0, 20.0, 0.0, 0.0, 3.0 if k % 2 else 9.0)
    a = noisy.correction(table)
    assert a.spread > math.log(1.4)
    noisy.table = table
    assert noisy.at_risk(0.0, 15.0, 20.0, 0.0) == pytest.approx(10 * math.exp(a.c0 + a.spread))
    assert noisy.at_risk(0.0, 15.0, 20.0, 0.0) == pytest.approx(9.0)  # not below what the app showed
    # a level 100x below the table's is not believed: at most 4x
    liar = InterferenceModel()
    for _ in range(5):
        liar.observe_load(0.0, 20.0, 0.0, 0.0, 0.1)
    assert liar.correction(table).c0 == pytest.approx(math.log(0.25))


def test_the_anchor_is_computed_once_per_observation_and_never_stale() -> None:
    """A report's calibration, the forecast's check and a plan share one anchor; a new
    observation (also one appended directly), a new widening or another table makes a new one,
    equal to what a fresh model computes from the same observations."""
    table, other = _table(), _table(offset=5.0)
    im = InterferenceModel()
    im.table = table
    for k in range(25):
        im.observe_load(k * 0.5, 20.0, 0.3 + 0.01 * (k % 5), 0.0, 12.0 + k % 3)
    first = im.correction(table)
    assert im.correction(table) is first  # reused
    im.observe_load(13.0, 20.0, 0.5, 0.0, 30.0)
    second = im.correction(table)
    assert second is not first and second.n == min(30, 26)
    im.observed.append((0.9, 20.0, 0.0, 40.0))  # not through observe_load
    assert im.correction(table) is not second
    im.widen += 0.1
    assert im.correction(table).widen == pytest.approx(im.widen)
    assert im.correction(other) != im.correction(table)
    fresh = InterferenceModel(widen=im.widen)
    fresh.observed.extend(im.observed)
    assert fresh.correction(table) == im.correction(table)
    # random sequences of reports, checks and table changes: always what a fresh computation gives
    rnd = random.Random(1)
    for _ in range(40):
        im = InterferenceModel()
        im.table = rnd.choice([table, other])
        for k in range(rnd.randint(0, 80)):
            if rnd.random() < 0.7:
                u = rnd.choice([None, rnd.random()])
                im.observe_load(k * 0.5, 20 + 30 * rnd.random(), u, rnd.random(), 8 + 10 * rnd.random())
            else:
                im.table = rnd.choice([table, other])
            asked = rnd.choice([table, other])
            assert im.correction(asked) == im._correction(asked)
            im.at_risk(rnd.random(), 30.0, 30.0, 0.2)


def _cluster(tmp_path: Path, with_kb: bool) -> tuple[ClusterView, dict[str, NodeLearning], JobRecord, TableCache]:
    software = {"deepedge": "0.1.0", "torch": "2.13.0", "python": "3.11.7"}
    view = ClusterView()
    for node in ("a", "b"):
        birth = NodeBirth(
            node=node,
            session="s",
            ts=1.0,
            device_model="Orin NX",
            software=software,
            memory_bytes=8 << 30,
            cpu_cores=2,
            training_address="10.0.0.1",
        )
        view.on_birth(birth, 0.0)
    report = LatencyReport(
        node="a",
        ts=1.0,
        window_s=5.0,
        apps=(AppLatency(app="det", count=100, p50_ms=8, p95_ms=12, p99_ms=13, deadline_ms=30.0),),
    )
    view.on_latency(report, 1.0)
    learning = {n: NodeLearning(ThroughputModel(100.0)) for n in ("a", "b")}
    learning["a"].observe_latency(report, 1.0, Telemetry(node="a", ts=1.0, cpu_percent=20.0), 2, 0.0, True)
    kb = KnowledgeBase(tmp_path / "knowledge.db")
    if with_kb:
        pid = kb.profile_id(ProfileKey("Orin NX", "det", versions_key(software)))
        kb.set_model(pid, "test", 0.95, {"median_ape": 0.05, "coverage": 0.95}, [], _table(offset=6.0))
    spec = JobSpec(model="cnn-small", dataset="/d", output="/o", epochs=1, global_batch=64, learning_rate=0.1)
    job = JobRecord(job="j", spec=spec, dataset_size=6400, model_bytes=1000)
    return view, learning, job, TableCache(tmp_path / "knowledge.db")


def test_the_coordinator_plans_with_a_stored_model_and_its_caps_change(tmp_path: Path) -> None:
    planner = Planner(PlannerConfig(margin=0.1))
    caps = {}
    for with_kb in (False, True):
        view, learning, job, tables = _cluster(tmp_path / str(with_kb), with_kb)
        nodes = node_models(view, learning, job, tables=tables)
        a = next(n for n in nodes if n.node == "a")
        assert bool(a.lc_apps[0].curve) == with_kb
        decision = planner.plan(nodes, JobModel(64, 6400, 1, 1000))
        assert decision.feasible
        caps[with_kb] = decision.caps["a"]
        if with_kb:
            assert learning["a"].interference["det"].table_source.startswith("Orin NX / det")
            # the reactive and LC-unaware controls ignore the knowledge base
            for control, curve in (("reactive", False), ("unaware", None)):
                other = JobRecord(
                    job="k",
                    spec=JobSpec(**{**_spec_fields(job.spec), "lc_control": control}),
                    dataset_size=6400,
                    model_bytes=1000,
                )
                apps = lc_models(view.nodes["a"], learning["a"], other, tables)
                assert (apps == ()) if curve is None else not apps[0].curve
    # without a model: the conservative linear default (latency triples at full intensity) -> cap
    # (27 - 12) / 24 = 0.625; with it: the table's upper quantile 20 + 20 u (+ 0.5 ms for the
    # background CPU) against the whole 30 ms deadline -> ~0.48
    assert caps[False] == pytest.approx(0.625, abs=0.01)
    assert caps[True] < caps[False] - 0.1, caps


def test_a_node_whose_lc_models_fail_is_unavailable_and_said_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose LC models raise is left out of this plan only (the others still plan), and
    the error is logged once a minute per node, not at every plan of every job."""
    from structlog.testing import capture_logs

    import deepedge.coordinator._planner_io as io

    view, learning, job, tables = _cluster(tmp_path, True)

    def broken(*args: object) -> tuple[LcAppModel, ...]:
        raise ValueError("a bug")

    monkeypatch.setattr(io, "lc_models", broken)
    monkeypatch.setattr(io, "_lc_errors", io.RateLimiter(1 / 60, 1))
    with capture_logs() as logs:
        for now in (0.0, 1.0, 30.0, 61.0):
            a = next(n for n in node_models(view, learning, job, now=now, tables=tables) if n.node == "a")
            assert a.unavailable == "its LC models could not be computed: ValueError"
    said = [e for e in logs if e["event"] == "lc_models.failed" and e["node"] == "a"]
    assert len(said) == 2 and said[0]["error"] == "ValueError: a bug", logs


def _spec_fields(spec: JobSpec) -> dict[str, object]:
    return {f: getattr(spec, f) for f in JobSpec.__struct_fields__}


def test_the_forecast_re_plans_before_a_cap_stops_being_safe(tmp_path: Path) -> None:
    view, learning, job, tables = _cluster(tmp_path, True)
    node_models(view, learning, job, tables=tables)  # caches the table
    learn, im = learning["a"], learning["a"].interference["det"]
    app = AppLatency(app="det", count=100, p50_ms=8, p95_ms=15, p99_ms=16, deadline_ms=30.0)
    for t in range(30):  # a steady 20 req/s: cap 0.4 is safe (upper 20 + 8 + ~background < 30)
        im.observe_load(float(t), 20.0)
    assert forecast_risk([app], learn, 0.4, now=30.0) == ""
    assert im.forecast == pytest.approx(20.0)  # refitted when asked for
    for t in range(30, 40):  # the load ramps up: the forecast reaches further than the reports
        im.observe_load(float(t), 20.0 + 3.0 * (t - 29))
    assert "req/s is predicted at" in forecast_risk([app], learn, 0.4, now=40.0)
    assert im.forecast is not None and im.forecast > im.rates.last  # type: ignore[operator]


def test_the_rate_forecast_sees_a_trend_and_bounds_its_history() -> None:
    f = RateForecast(step_s=1.0, maxlen=50)
    assert f.upper(10) is None
    for t in range(100):
        f.observe(t + 0.2, 10.0 + 0.5 * t)
        f.observe(t + 0.7, 10.0 + 0.5 * t)  # two reports a second: one bucket
    assert len(f.history()) == 50 and f.last == pytest.approx(59.5)
    up = f.upper(10.0)
    assert up is not None and up > 62  # the trend continues


def test_the_planned_rate_is_bounded_by_the_last_minute_and_held_before_it_falls() -> None:
    """What caps are planned for: the forecast, at most ENVELOPE_FACTOR x the highest rate of the
    last ENVELOPE_S, at least the last rate; when the forecast falls, the planned rate holds for
    STABILIZE_S (no re-plan per swing), then follows; a clock that goes back starts again."""
    f = RateForecast(step_s=1.0)
    for t in range(20):
        f.observe(float(t), 10.0 + 3.0 * t)  # up to 67 req/s
    raw = f.upper(10.0)
    assert raw is not None and raw > ENVELOPE_FACTOR * 67.0 + 1.0  # the trend alone goes further
    planned = f.planning(19.0, 10.0)
    assert planned == pytest.approx(ENVELOPE_FACTOR * 67.0)
    assert f.steady(19.5, 5.0) == pytest.approx(planned)  # a forecast under the last rate: held
    for t in range(20, 20 + int(STABILIZE_S) - 2):  # the load drops to 10 req/s, the forecast to 12
        f.observe(float(t), 10.0)
        assert f.steady(float(t), 12.0) == pytest.approx(planned)  # held
    for t in range(20 + int(STABILIZE_S) - 2, 20 + int(STABILIZE_S) + 2):
        f.observe(float(t), 10.0)
        held = f.steady(float(t), 12.0)
    assert held == pytest.approx(12.0)  # then it follows the forecast down
    # the envelope counts buckets of the last ENVELOPE_S, not the last n buckets: after a gap in
    # the reports, 67 req/s is out of it
    f.observe(200.0, 10.0)
    assert f.steady(200.0, 500.0) == pytest.approx(ENVELOPE_FACTOR * 10.0)
    assert f.steady(100.0, 11.0) == pytest.approx(11.0)  # the clock went back: no hold from the future
    assert f.steady(math.nan, 11.0) == pytest.approx(11.0) and not f.planned
    f.observe(201.0, 1e300)  # a report's rate is clamped
    assert f.last == MAX_RATE


def test_a_burst_of_background_cpu_does_not_set_the_planning_background() -> None:
    """A few seconds of the board's own pre-flight checks (both cores busy) between steady
    reports: the planning background is the median of the last ~15 s, not the latest value."""
    learn = NodeLearning(ThroughputModel(100.0))
    app = AppLatency(app="det", count=100, p50_ms=5.0, p95_ms=8.0, p99_ms=9.0, deadline_ms=12.0)
    report = LatencyReport(node="n", ts=1.0, window_s=5.0, apps=(app,))
    for k in range(20):
        learn.observe_latency(report, float(k), Telemetry(node="n", ts=1.0, cpu_percent=15.0), 2, 0.0, True)
    quiet = learn.cpu_bg
    assert quiet == pytest.approx(0.3 - 0.1)  # 15 % of 2 cores, less the app's 100 / 5 s x 5 ms
    for k in range(4):
        learn.observe_latency(report, 20.0 + k, Telemetry(node="n", ts=1.0, cpu_percent=100.0), 2, 0.0, True)
    assert learn.cpu_bg == pytest.approx(quiet)
    # a lasting change is followed within the window
    for k in range(30):
        learn.observe_latency(report, 30.0 + k, Telemetry(node="n", ts=1.0, cpu_percent=60.0), 2, 0.0, True)
    assert learn.cpu_bg == pytest.approx(1.2 - 0.1)


def test_reports_over_the_predicted_bound_widen_it_until_it_holds() -> None:
    """Online calibration: steady reports above the upper bound predicted for them widen the
    interval (lowering the cap); reports under it narrow it again, slowly (a target of 5 %
    over); the planner's reason says so."""
    table = _table()  # median 10 + 20 u at 20 req/s, upper + 4 ms
    im = InterferenceModel()
    im.table = table
    for _ in range(10):  # alone, as the table says: judged, within the bound
        im.observe_load(0.0, 20.0, 0.0, 0.0, 10.0)
    assert im.widen == 0 and im.calibrated == [10, 0]
    before = node_cap(NodeModel("n", 100.0, 64, lc_apps=(im.surrogate_model("det", 30.0, table, 20.0, 0.0),)), 0.1)[0]
    for _ in range(6):  # training at 0.5 hurts more than the bound (24 ms, anchored) allows
        im.observe_load(0.0, 20.0, 0.5, 0.0, 40.0)
    over = im.calibrated[1]
    assert over >= 1 and im.widen == pytest.approx(0.05 * 0.95 * over - 0.05 * 0.05 * (6 - over))
    model = im.surrogate_model("det", 30.0, table, 20.0, 0.0)
    assert "wider" in model.basis
    after = node_cap(NodeModel("n", 100.0, 64, lc_apps=(model,)), 0.1)[0]
    assert after < before
    widened = im.widen
    for _ in range(10):  # back to what the table says: the widening decays, slowly
        im.observe_load(0.0, 20.0, 0.0, 0.0, 10.0)
    assert 0 < im.widen < widened


def test_the_forecast_bench_judges_each_choice_against_the_coming_peak() -> None:
    """The arrivals follow the trace; a rate is covered only when it is at least the next
    horizon's highest report; the planned rate swings less than the raw forecast."""
    from deepedge.bench._forecast import (
        ENVELOPE_ONLY,
        TREND_ONLY,
        arrivals,
        forecast_markdown,
        reports,
        run_forecast_bench,
    )
    from deepedge.demo.lc_app import Trace

    times = arrivals(Trace.parse("step:20,40,30"), 60.0, random.Random(3))
    assert 0.9 * 20 * 30 < sum(t < 30 for t in times) < 1.1 * 20 * 30  # ~20 req/s, then ~40
    assert 0.9 * 40 * 30 < sum(t >= 30 for t in times) < 1.1 * 40 * 30
    seen = reports(times, 60.0)
    assert len(seen) == 120 and seen[-1][1] == pytest.approx(sum(t > 55 for t in times) / 5.0)
    rows = run_forecast_bench(traces=(("diurnal:10,40,30", 90.0),))
    by = {r.choice: r for r in rows}
    assert by["last report"].covered < 0.5  # a rising load is always above the last report
    assert by[TREND_ONLY].swings < by["raw forecast"].swings
    # the envelope alone held a 40 req/s peak at ~1.25x it; TREND_MARGIN plans less over it
    assert by[TREND_ONLY].mean_ratio < by[ENVELOPE_ONLY].mean_ratio
    whole = [r for r in rows if r.points == 80]  # (the rest: the seconds read from a season, apart)
    assert len(whole) == 5 and all(0 < r.mean_ratio <= r.max_ratio for r in rows)
    assert f"| `diurnal:10,40,30` | 90 | {TREND_ONLY} | 80 |" in forecast_markdown(rows, "cmd", 10.0)


def test_the_table_interval_returns_with_the_distance_from_the_nearest_reported_intensity() -> None:
    """Reports at u = 0 and u = 0.8 (a board left out of a plan, then training): at u = 0.4,
    0.4 from both, the table's interval is 0.4 / TABLE_REACH of itself, not dropped because 0.4
    lies between them; the forecast's check and the calibration judge the planner's monotone
    curve; absurd reports do not overflow."""
    table = _table()  # median 10 + 20 u at 20 req/s, upper + 4 ms
    im = InterferenceModel()
    im.table = table
    for _ in range(10):
        for u in (0.0, 0.8):
            im.observed.append((u, 20.0, 0.0, table.median_ms(u, 20.0, 0.0)))  # exactly the median
    anchor = im.correction(table)
    assert anchor.seen == (0.0, 0.8) and anchor.n == 20 and anchor.spread == pytest.approx(0.0, abs=1e-9)
    mid = anchored_upper_ms(table, anchor, 0.4, 20.0, 0.0)
    assert mid == pytest.approx(18.0 * math.exp(math.log(22 / 18) * 0.4 / TABLE_REACH), rel=1e-6)
    assert anchored_upper_ms(table, anchor, 0.8, 20.0, 0.0) == pytest.approx(26.0, rel=1e-6)  # measured there
    # on a table flat in u the bound dips where it was measured: the planner's curve is the
    # highest bound at or below u, and so is what the forecast's check and the calibration ask
    flat = CapTable("det", "test", 0.95, (0.0, 1.0), (10.0, 40.0), (0.0, 1.0), (14.0,) * 8, (10.0,) * 8)
    im = InterferenceModel()
    im.table = flat
    for _ in range(10):
        for u in (0.0, 0.8):
            im.observed.append((u, 20.0, 0.0, 10.0))
    dip = anchored_upper_ms(flat, im.correction(flat), 0.8, 20.0, 0.0)
    highest = anchored_upper_ms(flat, im.correction(flat), 0.4, 20.0, 0.0)  # 0.4 from both
    assert dip == pytest.approx(10.0) and highest == pytest.approx(10.0 * 1.4 ** (0.4 / TABLE_REACH))
    model = im.surrogate_model("det", 40.0, flat, 20.0, 0.0)
    assert model.predict_ms(0.8) == pytest.approx(highest, abs=1e-3)
    assert im.at_risk(0.8, 40.0, 20.0, 0.0) == pytest.approx(highest, rel=1e-6)
    before = im.widen
    im.observe_load(1.0, 20.0, 0.8, 0.0, 0.5 * (dip + highest))  # over the dip, under the plan's bound
    assert im.widen == pytest.approx(max(0.0, before - 0.05 * 0.05)) and im.calibrated[1] == 0
    for p95 in (1e300, 1e-300, 1e300):
        im.observe_load(1.0, 20.0, 1.0, 0.0, p95)
    assert math.isfinite(im.at_risk(1.0, 40.0, 20.0, 0.0) or math.nan)


def test_the_pressure_sampler_reads_psi_and_runnable_tasks(tmp_path: Path) -> None:
    """Over its window: the share of time PSI says some task waited (from the cumulative "some"
    total) and the mean runnable tasks less the sampler itself; zeros where the kernel has
    neither file."""
    import time

    from deepedge.profiling._pressure import PressureSampler

    psi, stat = tmp_path / "cpu", tmp_path / "stat"
    line = "some avg10=1.00 avg60=1.00 avg300=1.00 total={}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    psi.write_text(line.format(5_000_000))
    stat.write_text("cpu  1 2 3 4\nprocs_running 4\nprocs_blocked 0\n")
    with PressureSampler(psi, stat) as s:
        time.sleep(0.2)
        psi.write_text(line.format(5_000_000 + 100_000))  # 0.1 s of waiting in a ~0.2 s window
    assert 0.3 < s.result.psi < 0.55 and s.result.runnable == 3.0
    with PressureSampler(tmp_path / "none", tmp_path / "none") as s:
        time.sleep(0.05)
    assert (s.result.psi, s.result.runnable) == (0.0, 0.0)


@pytest.mark.skipif(not Path("/proc/pressure/cpu").exists(), reason="no PSI in this kernel")
def test_the_pressure_sampler_sees_tasks_queued_on_one_cpu() -> None:
    """Real kernel: three spinning processes on one CPU: some task waits nearly all the time and
    at least two are runnable."""
    import os
    import subprocess
    import sys
    import time

    from deepedge.profiling._pressure import PressureSampler

    cpu = sorted(os.sched_getaffinity(0))[-1]
    spin = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 3: pass\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", spin], preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        for _ in range(3)
    ]
    try:
        time.sleep(0.5)
        with PressureSampler() as s:
            time.sleep(1.0)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert s.result.psi > 0.5 and s.result.runnable >= 2.0


def test_feature_sets_compare_features_that_do_not_name_the_stressors() -> None:
    """The bench's comparison of other features: where the latency follows the number of runnable
    tasks (here: the stressors on), a model of it carries to 3-4-stressor mixes the design never
    had better than one of the stressors' levels; no comparison without the pressure measured."""
    from deepedge.bench._interference import FEATURE_SETS, feature_sets

    def with_pressure(runs: list[Run]) -> list[Run]:
        out = []
        for r in runs:
            on = sum(v > 0 for v in r.asked.stressors().values())
            p95 = 6.0 * math.exp(0.4 * r.intensity + 0.2 * on)
            out.append(Run.from_dict(r.to_dict() | {"bg_runnable": on, "bg_psi": 0.1 * on, "p95_ms": p95}))
        return out

    design = with_pressure(synthetic(latin_hypercube(SPACE, 30, seed=4)))
    held = with_pressure(
        synthetic([Point(u / 3, 25, cpu=0.4, cache=0.4, mem=0.4, io=0.4) for u in range(4)], phase="heldout")
    )
    held = [Run.from_dict(r.to_dict() | {"scenario": "all four"}) for r in held]
    rows = feature_sets(design + held, ("loglinear", "gp"))  # gbm's CV is the slowest: its rows are alike
    assert len(rows) == 2 * len(FEATURE_SETS)
    by = {(f.features, f.kind): f for f in rows}
    assert by[("u, rate, runnable tasks", "loglinear")].median_ape < 0.05
    assert (
        by[("u, rate, runnable tasks", "loglinear")].median_ape < by[(next(iter(FEATURE_SETS)), "loglinear")].median_ape
    )
    assert feature_sets(synthetic(latin_hypercube(SPACE, 12, seed=4)) + held) == []  # nothing measured before training


def test_the_bench_repeats_its_reference_point_through_the_session_and_reports_the_span() -> None:
    from deepedge.bench._interference import REFERENCE, repeat_due, repeat_noise

    # 72 runs planned, 5 repeats: before runs 0, 18, 36 and 54; the fifth after the last run
    order: list[str] = []
    taken = 0
    for n in range(72):
        while repeat_due(n, taken, 5, 72):
            order.append("R")
            taken += 1
        order.append("x")
    assert [i - k for k, i in enumerate(i for i, o in enumerate(order) if o == "R")] == [0, 18, 36, 54]
    assert taken == 4  # the run loop takes the last one at the end
    assert not any(repeat_due(n, 0, 1, 72) for n in range(72))  # a single repeat: at the end only

    def rep(p95: float, ts: float) -> Run:
        return Run(REFERENCE, 0.5, 40.0, 0.3, 0.0, 0.3, 0.0, p95, p95 / 2, 400, 10.0, phase="repeat", ts=ts)

    noise, span = repeat_noise([rep(10.0, 100.0), rep(11.0, 400.0), rep(9.0, 700.0), rep(10.0, 1000.0)])
    assert noise == pytest.approx(0.05) and span == 900.0
    assert repeat_noise([rep(10.0, 1.0), rep(11.0, 2.0)]) == (None, 1.0)


def test_above_the_last_minute_the_planned_rate_follows_the_trend_not_the_noise() -> None:
    """A steady 40 req/s as a node reports it (Poisson arrivals, 5 s windows every 0.5 s): the
    noise alone kept the upper quantile at the envelope (1.25x the last minute's highest rate);
    bounded by the trend's rise + TREND_MARGIN, the planned rate stays near the load. A ramp's
    rise is still planned for ahead of the reports."""
    from deepedge.bench._forecast import arrivals, reports
    from deepedge.demo.lc_app import Trace

    seen = reports(arrivals(Trace.parse("constant:40"), 150.0, random.Random(1)), 150.0)
    new, old = RateForecast(step_s=1.0), RateForecast(step_s=1.0)
    planned_new, planned_old = [], []
    for t, rate in seen:
        new.observe(t, rate)
        old.observe(t, rate)
        if t >= 90 and t == int(t):
            up, rise = new.bounds(10.0) or (0.0, 0.0)
            planned_new.append(new.steady(t, up, rise))
            planned_old.append(old.steady(t, up))  # the envelope alone (before TREND_MARGIN)
    highest = max(r for _, r in seen)
    assert sum(planned_old) / len(planned_old) > 1.2 * 40  # the envelope binds: ~1.25x the load
    assert min(planned_new) >= 40 and max(planned_new) <= TREND_MARGIN * highest + 2.0
    assert sum(planned_new) / len(planned_new) < 0.92 * sum(planned_old) / len(planned_old)
    ramp = RateForecast(step_s=1.0)
    for t in range(40):
        ramp.observe(float(t), 10.0 + 1.0 * t)  # +1 req/s every second, up to 49
    up, rise = ramp.bounds(10.0) or (0.0, 0.0)
    assert rise > 5.0  # the damped trend still climbs over the horizon
    planned = ramp.planning(40.0, 10.0)
    assert planned is not None and planned >= 49.0 + 5.0  # ahead of the reports, by the trend
