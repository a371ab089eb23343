"""Coordinator parts without a broker: job lifecycle, cluster view and failure detector (fake
clock), learned models, the SQLite store, and the service against the in-memory transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from deepedge.broker_schemas import (
    AppLatency,
    Heartbeat,
    JobSpec,
    LatencyReport,
    NodeBirth,
    NodeDeath,
    Plan,
    Telemetry,
    Topics,
)
from deepedge.config import Config, CoordinatorConfig
from deepedge.coordinator import TRANSITIONS, ClusterView, Coordinator, IllegalTransition, JobRecord, JobState, JobStore
from deepedge.coordinator._commands import handle_command
from deepedge.coordinator._learning import InterferenceModel, ThroughputModel
from deepedge.testing import FakeClock, answer_preflights
from deepedge.transport import FakeBroker, FakeTransport, Received

SPEC = JobSpec(model="cnn", dataset="/d", output="/o", epochs=1, global_batch=32, learning_rate=0.1)


def birth(node: str, session: str = "s1", drained: bool = False) -> NodeBirth:
    return NodeBirth(
        node=node, session=session, ts=1.0, memory_bytes=8 << 30, drained=drained, training_address="127.0.0.1"
    )


def test_every_transition_outside_the_table_raises() -> None:
    for src in JobState:
        for dst in JobState:
            job = JobRecord(job="j", spec=SPEC, dataset_size=320, model_bytes=0, state=src)
            if dst in TRANSITIONS[src]:
                job.move(dst)
                assert job.state is dst
            else:
                with pytest.raises(IllegalTransition):
                    job.move(dst)


def test_failure_detector_last_will_silence_and_new_sessions() -> None:
    clock = FakeClock()
    view = ClusterView(interval_s=1.0, missed=3)
    assert view.on_birth(birth("n1"), clock.monotonic()) == "joined"
    assert view.on_birth(birth("n2"), clock.monotonic()) == "joined"
    clock.advance(2.5)
    view.on_telemetry(Telemetry(node="n1", ts=1.0), clock.monotonic())
    assert view.check(clock.monotonic()) == []
    clock.advance(1.0)  # n2 silent for 3.5 s > 3 missed intervals
    assert view.check(clock.monotonic()) == ["n2"]
    assert "missed" in view.nodes["n2"].death_reason
    assert not view.on_death(NodeDeath(node="n1", session="old"), clock.monotonic())  # a stale will: ignored
    assert view.on_death(NodeDeath(node="n1", session="s1"), clock.monotonic())
    assert view.alive() == []
    assert view.on_birth(birth("n1", "s2"), clock.monotonic()) == "joined"  # new session: a new member
    view.on_telemetry(Telemetry(node="ghost", ts=1.0), clock.monotonic())  # no birth: not a member
    assert "ghost" not in view.nodes


def test_throughput_and_interference_models_learn() -> None:
    tp = ThroughputModel(prior=10.0)
    assert tp.rate == 10.0
    for _ in range(20):
        tp.observe(samples_per_s=25.0, intensity=0.5)
    assert tp.rate == pytest.approx(50.0)
    im = InterferenceModel()
    im.observe(0.0, 10.0)
    base, slope = im.fit() or (0, 0)
    assert (base, slope) == (10.0, 20.0)  # conservative default: triples at full intensity
    for u in (0.2, 0.4, 0.6, 0.8):
        im.observe(u, 10.0 + 5.0 * u)
    base, slope = im.fit() or (0, 0)
    assert base == pytest.approx(10.0, abs=0.5) and slope == pytest.approx(5.0, abs=1.0)


def test_store_round_trip(tmp_path: object) -> None:
    store = JobStore(":memory:")
    job = JobRecord(job="j1", spec=SPEC, dataset_size=320, model_bytes=10, state=JobState.RUNNING, generation=3)
    store.save(job)
    job.step = 7
    store.save(job)
    (back,), skipped = store.load_all()
    assert skipped == []
    assert back.job == "j1" and back.step == 7 and back.state is JobState.RUNNING and back.generation == 3


async def _coordinator(broker: FakeBroker, clock: FakeClock) -> tuple[Coordinator, FakeTransport]:
    """A coordinator on the in-memory broker, its writer running, and boards that answer a
    pre-flight with "ok" (``deepedge.testing.fake_boards``)."""
    t = FakeTransport(broker)
    await t.__aenter__()
    config = Config(coordinator=CoordinatorConfig(db=":memory:", node_interval_s=1.0))
    c = Coordinator(config, t, JobStore(":memory:"), clock=clock)
    _tasks.append(asyncio.create_task(c.writer_loop()))
    _tasks.append(asyncio.create_task(answer_preflights(broker, Topics("default"))))
    await c.reconcile()  # what its connection does: the failure-detection period starts
    return c, t


_tasks: list[asyncio.Task[None]] = []


@pytest.fixture(autouse=True)
async def _stop_tasks() -> AsyncIterator[None]:
    yield
    for task in _tasks:
        task.cancel()
    await asyncio.gather(*_tasks, return_exceptions=True)
    _tasks.clear()


def hb(plan: Plan, node: str, **kw: object) -> Received:
    """A heartbeat of ``node`` at its rank in ``plan``."""
    rank = next(a.rank for a in plan.assignments if a.node == node)
    beat = Heartbeat(node=node, ts=1.0, job=plan.job, generation=plan.generation, rank=rank, **kw)  # type: ignore[arg-type]
    return Received(None, beat, False, "")  # type: ignore[arg-type]


async def test_service_plans_replans_on_death_and_feedback() -> None:
    from deepedge.broker_schemas import CommandRequest

    broker, clock = FakeBroker(), FakeClock()
    c, t = await _coordinator(broker, clock)
    topics = Topics("default")
    plans = await t.subscribe(topics.all_jobs("plan"))
    clock.advance(4)  # past the start-up grace period
    await c.tick()
    for n in ("n1", "n2", "n3"):
        await c.ingest(Received(None, birth(n), False, ""))  # type: ignore[arg-type]
    req = CommandRequest(
        request_id="r1",
        reply_to="cli",
        args={
            "job": "j1",
            "model": "cnn",
            "dataset": "/d",
            "output": "/o",
            "epochs": 1,
            "global_batch": 32,
            "learning_rate": 0.1,
            "dataset_size": 320,
        },
    )
    reply = await handle_command(c, "submit", req)
    assert reply.ok and reply.result["state"] == "running"
    plan = (await plans.get(1)).message
    assert isinstance(plan, Plan) and plan.generation == 1 and len(plan.assignments) == 3
    # a heartbeat makes the throughput estimate move; progress is tracked
    for n in ("n1", "n2", "n3"):
        await c.ingest(hb(plan, n, step=4, samples_per_s=30.0, intensity=1.0))
    assert c.jobs["j1"].step == 4 and c.learning["n1"].throughput.rate > 10.0
    # a death: recovering, then a new generation without it
    await c.ingest(Received(None, NodeDeath(node="n2", session="s1"), False, ""))  # type: ignore[arg-type]
    assert c.jobs["j1"].state is JobState.RECOVERING
    await c.tick()
    plan2 = (await plans.get(1)).message
    assert plan2.generation == 2 and {a.node for a in plan2.assignments} == {"n1", "n3"}
    assert plan2.resume_step == 4
    # LC latency over deadline on n1: its cap drops in the next plan, once n1 has trained in this
    # generation for a whole latency window (before, the window mixes in the worker's start)
    report = LatencyReport(
        node="n1",
        ts=1.0,
        window_s=2,
        apps=(AppLatency(app="det", count=20, p50_ms=70, p95_ms=90, p99_ms=95, deadline_ms=50),),
    )
    for n in ("n1", "n3"):
        await c.ingest(hb(plan2, n, step=5, samples_per_s=30.0, intensity=1.0))
    await c.ingest(Received(None, report, False, ""))  # type: ignore[arg-type]
    await c.tick()
    with pytest.raises(TimeoutError):  # not steady yet: ignored
        await plans.get(0.05)
    clock.advance(2)
    for n in ("n1", "n3"):  # still alive and training
        await c.ingest(hb(plan2, n, step=7, samples_per_s=30.0, intensity=1.0))
    await c.ingest(Received(None, report, False, ""))  # type: ignore[arg-type]
    await c.tick()
    plan3 = (await plans.get(1)).message
    caps = {a.node: a.intensity_cap for a in plan3.assignments}
    assert plan3.generation == 3 and caps.get("n1", 0.0) < 1.0 and caps["n3"] == 1.0
    assert c.learning["n1"].cap_limit == pytest.approx(0.8)
    # hysteresis: another bad report within the cooldown does not re-plan again
    await c.ingest(Received(None, report, False, ""))  # type: ignore[arg-type]
    await c.tick()
    with pytest.raises(TimeoutError):
        await plans.get(0.05)


def test_a_board_profile_is_the_prior_until_heartbeats_and_reports_say_otherwise() -> None:
    """``deepedge profile`` results in the birth: the node's rate for that model and its LC
    app's p95(u) points seed the planner's inputs; learned values take over once they exist."""
    from deepedge.broker_schemas import AppLatency, JobSpec, LatencyReport, LcPoint, ModelProfile
    from deepedge.coordinator._learning import NodeLearning
    from deepedge.coordinator._planner_io import node_models

    profile = ModelProfile(
        samples_per_s=500.0,
        lc=(
            LcPoint(app="det", intensity=0.0, p95_ms=10.0),
            LcPoint(app="det", intensity=0.5, p95_ms=15.0),
            LcPoint(app="det", intensity=1.0, p95_ms=20.0),
        ),
    )
    view = ClusterView()
    view.on_birth(msgspec.structs.replace(birth("a"), profiles={"cnn-small": profile}), 0.0)
    view.on_birth(birth("b"), 0.0)
    det_now = AppLatency(app="det", count=9, p50_ms=9, p95_ms=10, p99_ms=11, deadline_ms=30)
    view.on_latency(LatencyReport(node="a", ts=1.0, window_s=5, apps=(det_now,)), 1.0)
    spec = JobSpec(model="cnn-small", dataset="d", output="o", epochs=1, global_batch=64, learning_rate=0.1)
    job = JobRecord(job="j", spec=spec, dataset_size=640, model_bytes=1000)
    learning = {n: NodeLearning(ThroughputModel(prior=10.0)) for n in ("a", "b")}
    models = {m.node: m for m in node_models(view, learning, job)}
    assert models["a"].rate == 500.0 and models["b"].rate == 10.0  # profiled vs the configured prior
    (det,) = models["a"].lc_apps
    assert (round(det.base_ms, 6), round(det.slope_ms, 6)) == (10.0, 10.0)  # the profile's line
    other = msgspec.structs.replace(job, spec=msgspec.structs.replace(spec, model="resnet18"))
    assert {m.node: m for m in node_models(view, learning, other)}["a"].rate == 10.0  # not profiled for it
    learning["a"].throughput.observe(200.0, 1.0)  # heartbeats win
    assert {m.node: m for m in node_models(view, learning, job)}["a"].rate == 200.0


def test_samples_done_counts_each_epochs_partial_last_batch() -> None:
    from deepedge.broker_schemas import JobSpec

    spec = JobSpec(model="m", dataset="d", output="o", epochs=3, global_batch=128, learning_rate=0.1)
    job = JobRecord(job="j", spec=spec, dataset_size=1000, model_bytes=1)  # 8 steps an epoch, the last of 104
    assert job.total_steps == 24
    assert [job.samples_after(s) for s in (0, 1, 7, 8, 9, 24, 30)] == [0, 128, 896, 1000, 1128, 3000, 3000]
