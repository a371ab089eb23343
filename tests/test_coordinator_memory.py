"""What a restarted coordinator remembers (deepedge.coordinator._memory): the rows' round trip,
their bounds, their age, and the store's table."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from deepedge.coordinator import JobStore
from deepedge.coordinator import _memory as memory
from deepedge.coordinator._jobs import JobRecord, JobState
from deepedge.coordinator._learning import ANCHOR_OBS, NodeLearning, ThroughputModel
from deepedge.coordinator._policy import JobRuntime
from deepedge.profiling._forecast import HISTORY_STEPS
from tests.test_coordinator_control import SPEC


def _learned() -> NodeLearning:
    learn = NodeLearning(ThroughputModel(prior=10.0))
    learn.cap_limit, learn.good_reports, learn.last_decrease = 0.64, 3, 90.0
    det = learn.app("det")
    for k in range(200):
        det.observe(k / 200, 10.0 + k / 10)
        det.observed.append((k / 200, 20.0, 0.3, 12.0 + k / 50))
    det.widen, det.calibrated = 0.2, [40, 7]
    learn.app("tracker").observe(0.5, float("nan"))  # a value no row may hold
    return learn


def test_a_nodes_caps_observations_and_calibration_round_trip_across_clocks() -> None:
    """Saved at monotonic 100 (wall 1e9 + 100), restored by a process whose monotonic clock
    reads 7 at wall 1e9 + 130: the cap lowered 10 s before the save was lowered 40 s before now."""
    mem = memory.node_memory(_learned(), 100.0, 1e9 + 100.0)
    text = msgspec.json.encode(mem)
    back = NodeLearning(ThroughputModel(prior=10.0))
    memory.restore_node(back, memory.decode_node(text), 7.0, 1e9 + 130.0)
    assert (back.cap_limit, back.good_reports) == (0.64, 3)
    assert back.last_decrease == pytest.approx(7.0 - 40.0)
    det = back.interference["det"]
    assert len(det.observed) == ANCHOR_OBS and det.observed[-1] == pytest.approx((0.995, 20.0, 0.3, 15.98))
    assert len(det.points) == memory.KEEP_POINTS and det.points[-1] == pytest.approx((0.995, 29.9))
    assert (det.widen, det.calibrated) == (0.2, [40, 7])
    assert list(back.interference["tracker"].points) == []  # the NaN was not kept


def test_a_node_that_learned_nothing_has_no_row_and_a_finished_job_none() -> None:
    assert memory.node_row(NodeLearning(ThroughputModel(prior=10.0)), 100.0, 1e9) is None
    assert memory.node_row(_learned(), 100.0, 1e9) is not None
    done = JobRecord(job="done", spec=SPEC, dataset_size=320, model_bytes=0, state=JobState.COMPLETED)
    running = JobRecord(job="run", spec=SPEC, dataset_size=320, model_bytes=0, state=JobState.RUNNING)
    held = JobRuntime(holds={"busy": (130.0, 2)}, lc_risk={"busy": 99.0})
    runtime = {"done": held, "run": held, "idle": JobRuntime()}
    rows = memory.job_rows(runtime, {"done": done, "run": running}, 100.0, 1e9)
    assert set(rows) == {"job:run"}
    holds, profiled, risk = memory.restore_job(memory.decode_job(rows["job:run"]), 100.0, 1e9)
    assert holds == {"busy": (pytest.approx(130.0), 2)} and profiled == {} and risk == {"busy": pytest.approx(99.0)}


def test_what_a_report_may_carry_and_a_row_may_not_is_left_out_so_every_row_loads() -> None:
    """The wire admits a p95 of 1e300 ms and a rate of 1e19/s; a row does not. Such a point is
    not kept, and the row still loads (before, the whole node's row failed to, its cap with it)."""
    learn = _learned()
    det = learn.interference["det"]
    det.observe(0.5, 2e7)
    det.observed.append((0.5, 1e19, 0.3, 12.0))
    det.observed.append((0.5, 20.0, 0.3, 1e300))
    back = memory.decode_node(memory.node_row(learn, 0.0, 1e9) or "")
    assert back.cap_limit == 0.64
    assert all(p <= memory.MAX_MS for _, p in back.apps["det"].points)
    assert back.apps["det"].observed[-1] == pytest.approx((0.995, 20.0, 0.3, 15.98))


def test_times_restored_after_the_wall_clock_went_back_are_not_in_the_future() -> None:
    """A board without a real-time clock may start before NTP has set it: a cap lowered 'in the
    future' would hold off the LC feedback's next decrease for as long; a hold would outlast
    its longest."""
    from deepedge.coordinator._policy import LC_HOLD_MAX_S, PROFILE_HOLD_S

    learn = _learned()
    row = memory.node_row(learn, 100.0, 2e9) or ""  # saved at wall 2e9 ...
    back = NodeLearning(ThroughputModel(prior=10.0))
    memory.restore_node(back, memory.decode_node(row), 5.0, 1e9)  # ... restored at wall 1e9
    assert back.last_decrease <= 5.0
    mem = memory.job_memory({"n": (130.0, 1)}, {"n": (110.0, 1)}, {"n": 99.0}, 100.0, 2e9)
    holds, profiled, risk = memory.restore_job(mem, 5.0, 1e9)
    assert holds["n"][0] <= 5.0 + LC_HOLD_MAX_S and profiled["n"][0] <= 5.0 + PROFILE_HOLD_S and risk["n"] <= 5.0


@pytest.mark.parametrize(
    "row",
    [
        '{"cap_limit": 2.0}',  # above 1
        '{"cap_limit": -0.1}',
        '{"apps": {"det": {"widen": 5.0}}}',  # wider than WIDEN_MAX allows
        '{"apps": {"det": {"observed": [[0.5, 20.0, 0.3, 1e300]]}}}',  # a p95 of 1e300 ms
        '{"apps": {"det": {"points": [[0.5, null]]}}}',
        '{"cap_limit": 0.5, "evil": "__import__"}',  # a field this build does not know
        '{"apps": {"": {}}}',
        "[1, 2",
    ],
)
def test_a_row_out_of_its_bounds_is_refused(row: str) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        memory.decode_node(row)


def test_recall_skips_bad_rows_and_keeps_the_good_ones_within_max_nodes() -> None:
    learning: dict[str, NodeLearning] = {}

    def learning_of(node: str) -> NodeLearning:
        return learning.setdefault(node, NodeLearning(ThroughputModel(prior=10.0)))

    rows = [
        ("node:a", '{"cap_limit": 0.5}'),
        ("node:b", '{"cap_limit": 9}'),
        ("node:" + "x" * 300, '{"cap_limit": 0.5}'),
        ("job:gone", '{"holds": {"a": [1e9, 1]}}'),  # a job this coordinator does not run
        ("node:c", '{"cap_limit": 0.7}'),
        ("node:d", '{"cap_limit": 0.9}'),  # over max_nodes: the oldest rows come last
    ]
    nodes, jobs, skipped = memory.recall(rows, learning_of, {}, 2, 0.0, 1e9)
    assert (nodes, jobs) == (2, 0)
    assert {n: learn.cap_limit for n, learn in learning.items()} == {"a": 0.5, "c": 0.7}
    assert [k[:6] for k, _ in skipped] == ["node:b", "node:x"]


def test_the_store_keeps_changed_rows_forgets_gone_ones_and_nothing_after_a_long_stop(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.remember({"node:a": '{"cap_limit": 0.5}', "job:j": "{}"}, [], now=1000.0)
    store.remember({"node:b": '{"cap_limit": 0.6}'}, ["job:j"], now=5000.0)
    # the age counts from the last save, not from each row's: node:a is an hour old, still kept
    assert store.recall(since=5000.0 - memory.MEMORY_TTL_S) == [
        ("node:b", '{"cap_limit": 0.6}'),
        ("node:a", '{"cap_limit": 0.5}'),
    ]
    assert store.recall(since=5001.0) == []  # stopped too long ago: nothing, and the table emptied
    assert store.recall(since=0.0) == []
    store.close()


def _cycle(t: float) -> float:
    """A 30 s cycle of 10-40 req/s."""
    return 25.0 + 15.0 * math.sin(2 * math.pi * t / 30.0)


def test_a_restarted_coordinator_forecasts_a_repeating_load_from_its_season_at_once() -> None:
    """Each LC app's request-rate history is kept (since 2026-12-06): a coordinator restarted 5 s
    after the save, its monotonic clock started elsewhere, reads the 30 s season from the first
    report on; a fresh history (before: the memory kept none) has no season for two periods."""
    learn = NodeLearning(ThroughputModel(prior=10.0))
    det = learn.app("det")
    for k in range(2 * 120):  # 120 s of reports every 0.5 s, monotonic 1000-1120
        det.observe_load(1000.0 + k / 2, _cycle(k / 2))
    before = det.rates.history()
    row = memory.node_row(learn, 1120.0, 1e9 + 1120.0) or ""
    back = NodeLearning(ThroughputModel(prior=10.0))
    memory.restore_node(back, memory.decode_node(row), 7.0, 1e9 + 1125.0)  # 5 s later
    again = back.interference["det"]
    assert again.rates.history() == pytest.approx(before, abs=1e-3)
    again.observe_load(7.0, _cycle(125.0))  # the first report after the restart
    h = again.rates.history()
    # the last step saved began at 1119: the 5 s from 1120 carry its rate, then the new report's
    assert len(h) == len(before) + 6 and h[-6:-1] == pytest.approx([before[-1]] * 5, abs=1e-3)
    assert h[: len(before)] == pytest.approx(before, abs=1e-3)
    assert again.planning_rate(_cycle(125.0), 7.0) > 0 and again.rates.season == 30
    fresh = NodeLearning(ThroughputModel(prior=10.0)).app("det")
    fresh.observe_load(7.0, _cycle(125.0))
    fresh.planning_rate(_cycle(125.0), 7.0)
    assert fresh.rates.season is None


def test_a_rate_history_too_old_or_out_of_bounds_is_not_restored() -> None:
    learn = NodeLearning(ThroughputModel(prior=10.0))
    det = learn.app("det")
    for k in range(60):
        det.observe_load(float(k), 20.0)
    row = memory.node_row(learn, 60.0, 1e9 + 60.0) or ""
    later = NodeLearning(ThroughputModel(prior=10.0))  # down for longer than the history spans
    memory.restore_node(later, memory.decode_node(row), 0.0, 1e9 + 60.0 + HISTORY_STEPS + 5)
    assert later.interference["det"].rates.history() == []
    future = NodeLearning(ThroughputModel(prior=10.0))  # saved 'in the future' (a clock set back)
    memory.restore_node(future, memory.decode_node(row), 5.0, 1e9)
    assert future.interference["det"].rates.buckets[-1][0] <= 5  # not after now
    assert len(future.interference["det"].rates.history()) == 60
    for bad in ('{"apps": {"det": {"rates": [1.0, -2.0], "rates_at": 1e9}}}', '{"apps": {"det": {"rates": [1e300]}}}'):
        with pytest.raises(msgspec.ValidationError):
            memory.decode_node(bad)
    too_long = msgspec.json.encode({"apps": {"det": {"rates": [1.0] * (HISTORY_STEPS + 1), "rates_at": 1e9}}})
    with pytest.raises(msgspec.ValidationError):
        memory.decode_node(too_long)


def test_a_nodes_throughput_and_start_up_are_remembered_within_their_bounds() -> None:
    """(since 2026-12-06) A re-plan soon after a restart split the batch by the default_rate
    prior until two heartbeats of each board came; now by what was learned."""
    learn = NodeLearning(ThroughputModel(prior=10.0))
    learn.throughput.observe(120.0, 0.5)  # 240 samples/s at full intensity
    learn.startup.observe(12.0)
    learn.forming.observe(1.5)
    learn.overhead.observe(0.02)
    row = memory.node_row(learn, 100.0, 1e9) or ""
    back = NodeLearning(ThroughputModel(prior=10.0))
    memory.restore_node(back, memory.decode_node(row), 5.0, 1e9 + 3.0)
    assert back.throughput.rate == pytest.approx(240.0) and back.throughput.observations == 1
    assert (back.startup.get(0.0), back.forming.get(0.0), back.overhead.get(0.0)) == pytest.approx((12.0, 1.5, 0.02))
    assert memory.node_row(NodeLearning(ThroughputModel(prior=10.0)), 100.0, 1e9) is None  # nothing learned
    for bad in ('{"rate": 0.0}', '{"rate": 1e300}', '{"startup": -1.0}', '{"overhead": 61.0}'):
        with pytest.raises(msgspec.ValidationError):
            memory.decode_node(bad)


def test_a_rows_points_are_the_last_in_bounds_and_its_rates_rounded_or_dropped_whole() -> None:
    """The row keeps the last KEEP_POINTS in-bound points and ANCHOR_OBS in-bound observations, in
    order, with out-of-bound ones skipped (read from the end since 2026-12-06, for speed); its
    rate history rounded to 0.001 req/s, or none when one rate is out of bounds."""
    import math

    from deepedge.coordinator._learning import ANCHOR_OBS, NodeLearning, ThroughputModel
    from deepedge.coordinator._memory import KEEP_POINTS, node_memory

    node = NodeLearning(ThroughputModel(prior=10.0))
    model = node.app("det")
    for i in range(200):
        model.observe(0.5, 1e300 if i % 3 == 0 else float(i))  # every third out of bounds
        model.observed.append((0.5, 20.0, 0.1, math.nan if i % 4 == 0 else float(i)))
    for t in range(20):
        model.rates.observe(float(t), 10.0 + 1 / 3)
    app = node_memory(node, 100.0, 1.8e9).apps["det"]
    assert [p for _, p in app.points] == [float(i) for i in range(200) if i % 3][-KEEP_POINTS:]
    assert [o[3] for o in app.observed] == [float(i) for i in range(200) if i % 4][-ANCHOR_OBS:]
    assert app.rates == [10.333] * 20
    model.rates.buckets[5] = (model.rates.buckets[5][0], math.inf, 1)  # not through observe: bounds hold anyway
    assert node_memory(node, 100.0, 1.8e9).apps["det"].rates == []
