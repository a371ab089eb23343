"""The demo's LC side after issue #15: request-rate traces, the rate file an LC app follows, and
reports over the deadline during the workers' start counted as misses."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deepedge.broker_schemas import AppLatency, Heartbeat, LatencyReport, Topics
from deepedge.demo._boards import BoardProfile
from deepedge.demo._run import follow_trace
from deepedge.demo._watch import HEARTBEAT_SLACK_S, AppRecord, ClusterWatch
from deepedge.demo.lc_app import Trace, _read_rate
from deepedge.profiling._runner import rate_file_for, write_rate


def test_traces_parse_and_give_the_rate_at_each_time() -> None:
    assert Trace.parse("constant:25").rate_at(100) == 25
    step = Trace.parse("step:20,40,30")
    assert step.rate_at(29.9) == 20 and step.rate_at(30) == 40 and step.peak() == 40
    day = Trace.parse("diurnal:10,40,60")
    assert day.rate_at(0) == pytest.approx(10) and day.rate_at(30) == pytest.approx(40)
    assert day.rate_at(15) == pytest.approx(25) and day.rate_at(60) == pytest.approx(10)
    for bad in ("constant", "step:1,2", "diurnal:10,40,0", "weekly:1", "constant:-1", "step:a,b,c"):
        with pytest.raises(ValueError):
            Trace.parse(bad)


def test_the_rate_file_is_where_the_app_looks_and_bad_contents_are_ignored(tmp_path: Path) -> None:
    sock = tmp_path / "n1.sock"
    path = rate_file_for(sock, "det")
    assert path == tmp_path / "n1.sock.det.rate"  # lc_app's default --rate-file
    assert _read_rate(path) is None
    write_rate(path, 42.5)
    assert _read_rate(path) == 42.5
    for junk in ("", "fast", "-3", "nan", "0"):
        path.write_text(junk)
        assert _read_rate(path) is None, junk


def test_follow_trace_drives_every_lc_app_and_cleans_up(tmp_path: Path) -> None:
    boards = [BoardProfile("a", "x", 1.0, 1024, "det"), BoardProfile("b", "x", 1.0, 1024)]
    cluster = SimpleNamespace(boards=boards, socket=lambda node: tmp_path / f"{node}.sock")
    path = rate_file_for(tmp_path / "a.sock", "det")
    seen: list[float | None] = []

    async def drive() -> None:
        task = asyncio.create_task(follow_trace(cluster, "step:20,40,0.3"))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        seen.append(await asyncio.to_thread(_read_rate, path))
        await asyncio.sleep(0.5)
        seen.append(await asyncio.to_thread(_read_rate, path))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(drive())
    assert seen == [20, 40] and not list(tmp_path.glob("b.sock*"))
    assert not path.exists()  # the app goes back to its own rate


def test_a_report_over_the_deadline_during_the_start_is_a_miss() -> None:
    rec = AppRecord("n", "det")

    def report(p95: float) -> AppLatency:
        return AppLatency(app="det", count=50, p50_ms=5, p95_ms=p95, p99_ms=p95, deadline_ms=30.0)

    rec.observe(report(45.0), "idle")  # before the job: not counted
    rec.observe(report(40.0), "startup", 1.0)
    rec.observe(report(10.0), "startup", 1.5)
    rec.observe(report(35.0), "steady", 2.0)
    rec.observe(report(12.0), "steady", 2.5)
    assert (rec.reports, rec.violations) == (4, 2)
    assert (rec.startup_reports, rec.startup_violations) == (2, 1)
    assert rec.worst_p95_ms == 40.0 and [ts for ts, _ in rec.over] == [1.0, 2.0]


def test_a_miss_with_nothing_training_in_its_window_is_counted_apart() -> None:
    """Every report over the deadline is a miss; one whose window saw no worker of the job
    training on any board (heartbeats of state training, intensity > 0) is counted apart too."""
    watch = ClusterWatch(Topics("c"), job="j", counting_lc=True)

    def deliver(message: object) -> None:
        watch.on(SimpleNamespace(message=message))  # type: ignore[arg-type]

    def beat(ts: float, intensity: float = 0.5, node: str = "b") -> Heartbeat:
        return Heartbeat(node=node, ts=ts, job="j", generation=1, rank=0, step=1, intensity=intensity)

    def report(ts: float, p95: float) -> LatencyReport:
        app = AppLatency(app="det", count=50, p50_ms=5, p95_ms=p95, p99_ms=p95, deadline_ms=30.0)
        return LatencyReport(node="a", ts=ts, window_s=5.0, apps=(app,))

    for ts in (10.0, 10.5, 11.0):  # another board trains from 10 to 11 s
        deliver(beat(ts))
    deliver(beat(30.0, intensity=0.0))  # a worker idle (intensity 0): not training
    deliver(report(12.0, 40.0))  # its window 7..12 s saw training: a miss caused, maybe, by it
    deliver(report(11.0 + 5.0 + HEARTBEAT_SLACK_S - 0.1, 41.0))  # the last beat just within the slack
    deliver(report(25.0, 42.0))  # window 20..25 s: nothing trained
    deliver(report(31.0, 43.0))  # only the idle worker's beat
    deliver(report(26.0, 10.0))  # under the deadline: no miss at all
    rec = watch.apps["det"]
    assert (rec.reports, rec.violations, rec.untrained_violations) == (5, 4, 2)
    assert watch.trained_between(9.0, 10.0) and not watch.trained_between(11.1, 29.9)


def test_a_miss_whose_board_was_in_no_plan_of_the_job_is_counted_apart() -> None:
    """A report over the deadline whose app's own board was in none of the job's plans in
    effect during its window (from each plan's ts to the next's, with the heartbeats' slack) is
    counted apart: on separate boards the job could not have caused it."""
    from deepedge.broker_schemas import Assignment, JobSpec, Plan

    watch = ClusterWatch(Topics("c"), job="j", counting_lc=True)
    spec = JobSpec(model="cnn-small", dataset="/d", output="/o", epochs=1, global_batch=16, learning_rate=0.1)

    def deliver(message: object) -> None:
        watch.on(SimpleNamespace(message=message))  # type: ignore[arg-type]

    def plan(generation: int, ts: float, *nodes: str) -> Plan:
        assignments = tuple(
            Assignment(node=n, rank=r, share=8, batch_offset=8 * r, intensity_cap=0.5) for r, n in enumerate(nodes)
        )
        return Plan(
            job="j",
            generation=generation,
            ts=ts,
            spec=spec,
            rendezvous_host="127.0.0.1",
            rendezvous_port=29500,
            backend="gloo",
            assignments=assignments,
            total_steps=10,
        )

    def report(ts: float, p95: float = 40.0) -> LatencyReport:
        app = AppLatency(app="det", count=50, p50_ms=5, p95_ms=p95, p99_ms=p95, deadline_ms=30.0)
        return LatencyReport(node="a", ts=ts, window_s=5.0, apps=(app,))

    for message in (plan(1, 0.0, "b"), plan(2, 40.0, "a", "b"), plan(3, 60.0, "b")):
        deliver(message)
    deliver(report(20.0))  # plan 1 only: a out of the job
    deliver(report(38.0))  # window (with the slack) 31..38 s: plan 2 not yet
    deliver(report(42.0))  # plan 2: a in
    deliver(report(66.0))  # 59..66 s: plan 2 lasted to 60 s
    deliver(report(70.0))  # 63..70 s: plan 3 only
    deliver(report(80.0, 10.0))  # under the deadline: no miss at all
    rec = watch.apps["det"]
    assert (rec.reports, rec.violations, rec.offboard_violations) == (6, 5, 3)
    assert watch.planned_between(59.0, 66.0, "a") and not watch.planned_between(63.0, 70.0, "a")


def test_the_timeline_puts_each_report_plan_and_worker_state_at_its_time_from_submission() -> None:
    from deepedge.bench._lc_scenarios import timeline
    from deepedge.broker_schemas import Assignment, Event, JobSpec, Plan
    from deepedge.demo._run import JobRun

    watch = ClusterWatch(Topics("c"), job="j", counting_lc=True)
    run = JobRun(watch, submitted_ts=100.0, finished_ts=130.0)

    def deliver(message: object) -> None:
        watch.on(SimpleNamespace(message=message))  # type: ignore[arg-type]

    def report(ts: float, p95: float) -> LatencyReport:
        app = AppLatency(app="det", count=50, p50_ms=5, p95_ms=p95, p99_ms=p95, deadline_ms=30.0)
        return LatencyReport(node="a", ts=ts, window_s=5.0, apps=(app,))

    spec = JobSpec(model="cnn-small", dataset="/d", output="/o", epochs=1, global_batch=16, learning_rate=0.1)
    deliver(
        Plan(
            job="j",
            generation=1,
            ts=101.0,
            spec=spec,
            rendezvous_host="127.0.0.1",
            rendezvous_port=29500,
            backend="gloo",
            assignments=(Assignment(node="a", rank=0, share=16, batch_offset=0, intensity_cap=0.4),),
            total_steps=10,
        )
    )
    deliver(report(103.0, 35.0))  # over, before any worker trained
    for ts, step in ((104.0, 0), (105.0, 1), (106.0, 2)):
        deliver(Heartbeat(node="a", ts=ts, job="j", generation=1, rank=0, step=step, intensity=0.4))
    deliver(report(107.0, 12.0))
    said = "a/det: gbm model at 20.0 req/s, 0.00 background cores, x0.80 of its median by 12 live reports"
    deliver(Event(ts=101.0, source="coordinator", event="plan.published", fields={"generation": 1, "lc_models": said}))
    got = timeline(run)
    assert got["lc_models"] == {"1": said}  # why each plan's caps were what they were
    assert got["first_step_s"] == 5.0 and got["finished_s"] == 30.0
    assert got["apps"]["det"]["reports"] == [[3.0, 35.0, False], [7.0, 12.0, True]]  # type: ignore[index]
    assert got["plans"] == [[1, 1.0, {"a": [16, 0.4]}]]
    # a state is listed where it changed: training before the first step, then stepping
    assert got["worker_states"] == {"a": [[4.0, "training", 1, False], [5.0, "training", 1, True]]}
    json.dumps(got)  # what --timeline writes


def test_the_lc_bench_table_shows_misses_at_start_up_and_with_nothing_training() -> None:
    from deepedge.bench._lc_scenarios import LcRow, lc_markdown

    row = LcRow("tight", "deepedge", False, None, None, None, None, 40, 3, 1, 2.0, 2, ("lc.violation a",))
    row.untrained_misses, row.offboard_misses, row.alone_reports, row.alone_misses = 2, 3, 80, 2
    text = lc_markdown([row], "deepedge bench makespan --scenarios tight", 1.5, 2.0)
    assert "| misses (start-up; nothing training; board out of the job) | share missed | alone: missed |" in text
    assert "| 40 | 3 (1; 2; 3) | 7.5% | 2.5% of 80 |" in text and "| NO | - | - |" in text
    row.training_s, row.ideal_s = 25.94, 22.57  # the ratio's figures, so that a goal's edge can be read
    text = lc_markdown([row], "deepedge bench makespan --scenarios tight", 1.5, 2.0)
    assert "boards' rates pooled over the bench's runs): 22.57 s." in text and "| 1.15x |" in text


def test_the_lc_bench_runs_the_controllers_asked_for_in_their_order() -> None:
    """--controllers: known keys, each once (checked before any cluster starts); "trend" is
    deepedge with the coordinator's seasonal forecast off."""
    from typer.testing import CliRunner

    from deepedge.bench._lc_scenarios import CONTROLLERS, run_lc_scenarios
    from deepedge.cli import app

    assert CONTROLLERS["trend"][1:] == ("forecast", "forecast_seasons = false\n")
    for bad in (("forecast", "forecast"), ("bogus",), ()):
        with pytest.raises(ValueError, match="controllers"):
            run_lc_scenarios(("diurnal",), controllers=bad)
    for args in (
        ["--scenarios", "diurnal", "--controllers", "trend,trend"],
        ["--scenarios", "tight", "--controllers", "trend,forecast"],  # tight runs its own three
        ["--controllers", "trend"],  # no LC scenario at all
    ):
        got = CliRunner().invoke(app, ["bench", "makespan", *args])
        assert got.exit_code == 2 and "--controllers" in got.output, (args, got.output)


def _set_deadline_rpc(rec: AppRecord, watch: ClusterWatch, sent: list[dict[str, object]]) -> Any:
    """A node's set-deadline command, answered at once: the deadline reaches the app's record
    (as its next latency report would carry it) and each request's arguments are kept in
    ``sent``."""

    async def request(topic: str, args: dict[str, object]) -> SimpleNamespace:
        sent.append(args)
        rec.deadline_ms = float(args["deadline_ms"])  # type: ignore[arg-type]
        watch.changed.set()
        return SimpleNamespace(ok=True, error=None)

    return request


def test_with_a_trace_the_deadlines_are_set_from_the_p95_alone_at_its_peak_rate(tmp_path: Path) -> None:
    """``calibrate_lc`` with ``lc_trace``: the apps run at the trace's peak rate for a whole
    latency window before their p95 alone is taken (deadline = factor x that); the rate files are
    gone afterwards (the apps go back to their own rate until the job's trace starts)."""
    from deepedge.broker_schemas import Topics as _Topics
    from deepedge.demo._run import DemoOptions, JobRun, calibrate_lc

    boards = [BoardProfile("a", "x", 1.0, 1024, "det"), BoardProfile("b", "x", 1.0, 1024)]
    cluster = SimpleNamespace(
        boards=boards, socket=lambda node: tmp_path / f"{node}.sock", start_lc_apps=lambda: None, latency_window_s=0.3
    )
    path = rate_file_for(tmp_path / "a.sock", "det")
    watch = ClusterWatch(_Topics("c"))
    rec = watch.apps["det"] = AppRecord("a", "det")
    rec.latest = AppLatency(app="det", count=50, p50_ms=4, p95_ms=6.5, p99_ms=7)
    sent: list[dict[str, object]] = []
    request = _set_deadline_rpc(rec, watch, sent)

    opts = DemoOptions(kill_after_s=None, lc_trace="step:20,40,12")
    opts.deadline_factor, opts.calibrate_s = 2.0, 0.1
    run = JobRun(watch)
    seen: list[float | None] = []

    async def drive() -> None:
        async def poll() -> None:
            while True:
                seen.append(_read_rate(path))
                await asyncio.sleep(0.02)

        poller = asyncio.create_task(poll())
        rpc = SimpleNamespace(request=request)
        await calibrate_lc(cluster, watch, rpc, _Topics("c"), opts, run)  # type: ignore[arg-type]
        poller.cancel()

    asyncio.run(drive())
    assert 40.0 in seen and not path.exists()
    assert sent == [{"app": "det", "deadline_ms": 13.0}] and run.calibration == {"det": 6.5}


def test_the_apps_alone_are_counted_apart_under_the_jobs_trace_and_deadlines(tmp_path: Path) -> None:
    """``apps_alone`` (the benches' floor of misses): for ``alone_s`` the LC apps follow the job's
    trace with no job, every report counted as the job's would be; the records it returns are
    those, the watch's start afresh (the deadline kept) and the rate files are gone."""
    from deepedge.demo._run import DemoOptions, apps_alone

    boards = [BoardProfile("a", "x", 1.0, 1024, "det")]
    cluster = SimpleNamespace(boards=boards, socket=lambda node: tmp_path / f"{node}.sock", latency_window_s=0.05)
    path = rate_file_for(tmp_path / "a.sock", "det")
    watch = ClusterWatch(Topics("c"), job="j")
    opts = DemoOptions(kill_after_s=None, lc_trace="step:20,40,0.1")
    opts.alone_s = 0.4
    seen: list[float | None] = []

    def report(ts: float, p95: float) -> LatencyReport:
        app = AppLatency(app="det", count=50, p50_ms=5, p95_ms=p95, p99_ms=p95, deadline_ms=13.0)
        return LatencyReport(node="a", ts=ts, window_s=5.0, apps=(app,))

    async def drive() -> dict[str, AppRecord]:
        async def feed() -> None:
            await asyncio.sleep(0.05)
            for k, p95 in enumerate((9.0, 14.0, 12.0)):
                watch.on(SimpleNamespace(message=report(float(k), p95)))  # type: ignore[arg-type]
                seen.append(_read_rate(path))
                await asyncio.sleep(0.1)

        feeder = asyncio.create_task(feed())
        alone = await apps_alone(cluster, watch, opts)  # type: ignore[arg-type]
        await feeder
        return alone

    watch.on(SimpleNamespace(message=report(-1.0, 20.0)))  # type: ignore[arg-type]  # before: not counted
    alone = asyncio.run(drive())
    rec = alone["det"]
    assert (rec.reports, rec.violations, rec.untrained_violations) == (3, 1, 1)
    assert 40.0 in seen and not path.exists() and not watch.counting_lc
    fresh = watch.apps["det"]
    assert fresh is not rec and fresh.reports == 0 and fresh.deadline_ms == 13.0


def test_the_lc_boards_are_profiled_up_to_the_rates_the_forecast_may_plan_for() -> None:
    from deepedge.bench._lc_scenarios import DIURNAL, STEP, profile_rate_max
    from deepedge.profiling._forecast import ENVELOPE_FACTOR

    # the traces peak at 40 req/s; the coordinator may plan for its envelope over noisy reports
    assert profile_rate_max((STEP, DIURNAL)) >= ENVELOPE_FACTOR * 40.0 * 1.1
    assert profile_rate_max(()) == 45.0  # no trace (tight): the apps' own 20 req/s, as before


def test_the_bench_states_each_apps_model_and_the_cap_it_starts_from(tmp_path: Path) -> None:
    """The LC bench writes, per scenario, what the knowledge base gives the planner at the
    trace's peak rate: the model's CV figures, its upper bound's width and the table's cap (upper
    p95 under 95 % of the deadline), so that runs whose caps differ can be told apart."""
    from deepedge.bench._lc_scenarios import knowledge_line, knowledge_summary
    from deepedge.profiling import KnowledgeBase, ProfileKey
    from tests.test_profiling import _table  # median 10 + 20 u (+ 0.5 per req/s over 20), upper + 4

    kb = KnowledgeBase(tmp_path / "knowledge.db")
    pid = kb.profile_id(ProfileKey("Orin NX", "det", "deepedge=0.1.0"))
    kb.set_model(pid, "gbm", 0.95, {"median_ape": 0.05, "coverage": 0.9}, [], _table())
    got = knowledge_summary(tmp_path / "knowledge.db", {"det": 30.0, "other": 10.0}, rate=20.0)
    assert set(got) == {"det"}  # only the apps with a deadline and a model
    det = got["det"]
    assert det["median_ms_at_0.6"] == pytest.approx(22.0) and det["upper_ms_at_0.6"] == pytest.approx(26.0)
    assert det["width_at_0.6"] == pytest.approx(26 / 22, abs=1e-3)
    assert det["table_cap"] == pytest.approx(0.725, abs=1e-3)  # 14 + 20 u <= 28.5, as the planner bisects
    # a higher rate (0.5 ms per req/s over 20) lowers it; a deadline under the bound at u 0: 0
    higher = knowledge_summary(tmp_path / "knowledge.db", {"det": 30.0}, rate=30.0)["det"]
    assert higher["table_cap"] == pytest.approx(0.475, abs=1e-3)
    assert knowledge_summary(tmp_path / "knowledge.db", {"det": 12.0}, rate=20.0)["det"]["table_cap"] == 0.0
    line = knowledge_line("step", got)
    assert "det gbm" in line and "table cap 0.72 for 30.0 ms" in line and "1.18x" in line
    assert det["cv_mix_ape"] is None and "leaving each" not in line  # a profile from before the rule
    kb.set_model(pid, "gbm", 0.95, {"median_ape": 0.05, "coverage": 0.9, "mix_median_ape": 0.08}, [], _table())
    mixed = knowledge_summary(tmp_path / "knowledge.db", {"det": 30.0}, rate=20.0)
    assert "leaving each stressor mix out 8.0%" in knowledge_line("step", mixed)
    json.dumps(got)  # into the timeline
    from deepedge.bench._lc_scenarios import LcRow, lc_markdown

    row = LcRow("step", "deepedge (forecast)", True, 30.0, 25.0, None, None, 40, 0, 0, 0.0, 1, ())
    row.knowledge = got
    assert f"- {line}" in lc_markdown([row], "deepedge bench makespan", 1.5, 2.0)


def test_the_p95_alone_is_the_median_of_disjoint_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``calibrate_windows`` 3 the deadline is set from the median of the p95 alone in three
    reports a latency window apart, not the last one: one noisy window (20 ms here) moves it no
    more than the others allow."""
    from deepedge.broker_schemas import Topics as _Topics
    from deepedge.demo import _run
    from deepedge.demo._run import DemoOptions, JobRun, calibrate_lc

    boards = [BoardProfile("a", "x", 1.0, 1024, "det")]
    cluster = SimpleNamespace(
        boards=boards, socket=lambda node: tmp_path / f"{node}.sock", start_lc_apps=lambda: None, latency_window_s=5.0
    )
    watch = ClusterWatch(_Topics("c"))
    rec = watch.apps["det"] = AppRecord("a", "det")
    p95s = iter([7.0, 20.0, 8.0])  # what the app reports next, one per window slept
    rec.latest = AppLatency(app="det", count=50, p50_ms=4, p95_ms=next(p95s), p99_ms=30)
    sleep = asyncio.sleep

    async def next_window(s: float) -> None:
        if s == cluster.latency_window_s:
            rec.latest = AppLatency(app="det", count=50, p50_ms=4, p95_ms=next(p95s), p99_ms=30)
        await sleep(0)

    monkeypatch.setattr(_run.asyncio, "sleep", next_window)
    sent: list[dict[str, object]] = []
    request = _set_deadline_rpc(rec, watch, sent)

    opts = DemoOptions(kill_after_s=None)
    opts.deadline_factor, opts.calibrate_s, opts.calibrate_windows = 2.0, 0.1, 3
    run = JobRun(watch)
    rpc = SimpleNamespace(request=request)
    asyncio.run(calibrate_lc(cluster, watch, rpc, _Topics("c"), opts, run))  # type: ignore[arg-type]
    assert run.calibration == {"det": 8.0} and sent == [{"app": "det", "deadline_ms": 16.0}]


def test_a_watch_that_stops_on_an_error_fails_the_demos_wait_at_once() -> None:
    """A bug in the watch's handling of one message (2026-12-05: the board-out-of-the-job count
    raised on a report before any plan) stopped its pump, and the demo waited out its 90 s for
    nodes it could no longer see; now the wait fails at once, naming the error."""
    from deepedge.demo._run import _wait
    from deepedge.errors import DeepEdgeError
    from deepedge.transport._fake import FakeBroker, FakeTransport

    async def scenario() -> None:
        broker = FakeBroker()
        watch = ClusterWatch(Topics("c"))

        def broken(item: object) -> None:
            raise RuntimeError("bug in on()")

        watch.on = broken  # type: ignore[method-assign]
        async with FakeTransport(broker) as watching, FakeTransport(broker) as node:
            task = asyncio.create_task(watch.run(watching))
            await asyncio.sleep(0.05)
            report = LatencyReport(node="a", ts=1.0, window_s=5.0, apps=())
            await node.publish(Topics("c").node_latency("a"), report)
            started = time.monotonic()
            with pytest.raises(DeepEdgeError, match="watch of the cluster stopped: RuntimeError"):
                await _wait(lambda: False, watch, 90, "nothing")
            assert time.monotonic() - started < 5
            with pytest.raises(RuntimeError):
                await task

    asyncio.run(scenario())
