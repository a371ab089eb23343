"""The coordinator's side of issue #17, without a broker: the planner's link model (a slow-linked
board left out when its compute does not pay for its communication, and why; the proportional
baseline; float16 only where it pays), what is learned from heartbeats (links, overhead,
start-up, the all-reduce's efficiency), the policy's stall and link-drop rules and its cheaper
threshold for share-only plans, and the service end to end on the in-memory broker: a link
learned slow re-plans without it, a share-only change keeps the group, a stall forms a new one,
and a plan's predicted makespan counts start-up and the time since submission."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from deepedge.broker_schemas import CommandRequest, Heartbeat, JobSpec, NodeBirth, Plan, Topics
from deepedge.config import Config, CoordinatorConfig
from deepedge.coordinator import Coordinator, JobRecord, JobState, JobStore
from deepedge.coordinator import _policy as policy
from deepedge.coordinator._commands import handle_command
from deepedge.coordinator._learning import NodeLearning, ThroughputModel
from deepedge.coordinator._planner_io import allreduce_efficiency
from deepedge.coordinator.planner import (
    JobModel,
    NetworkModel,
    NodeModel,
    Planner,
    PlannerConfig,
    allreduce_s,
    proportional_plan,
    uniform_plan,
)
from deepedge.testing import FakeClock, answer_preflights
from deepedge.transport import FakeBroker, FakeTransport, Received

MB = 1e6 / 8  # bytes/s of one Mb/s
MOBILENET = JobModel(global_batch=64, dataset_size=1280, epochs=1, model_bytes=8_950_000)


def boards(nano_link: float = 50 * MB) -> list[NodeModel]:
    """The demo's four boards with the bench's MobileNetV2 rates and the demo's links."""
    return [
        NodeModel("orin-nx", rate=125, max_share=64, bandwidth_bps=1000 * MB),
        NodeModel("xavier-nx", rate=75, max_share=64, bandwidth_bps=1000 * MB),
        NodeModel("tx2", rate=50, max_share=64, bandwidth_bps=1000 * MB),
        NodeModel("nano", rate=31, max_share=64, bandwidth_bps=nano_link),
    ]


def test_a_slow_linked_board_is_left_out_and_the_plan_says_why() -> None:
    d = Planner().plan(boards(), MOBILENET, NetworkModel(latency_s=1e-3))
    assert "nano" not in d.participants and set(d.participants) == {"orin-nx", "xavier-nx", "tx2"}
    assert d.excluded["nano"].startswith("not worth its link: at 50 Mb/s every all-reduce would take")
    uniform = uniform_plan(boards(), MOBILENET, NetworkModel(latency_s=1e-3))
    proportional = proportional_plan(boards(), MOBILENET, NetworkModel(latency_s=1e-3))
    assert d.step_s * 1.5 <= uniform.step_s and d.step_s * 1.2 <= proportional.step_s
    # with nano on a fast link, it pays for itself
    fast = Planner().plan(boards(1000 * MB), MOBILENET, NetworkModel(latency_s=1e-3))
    assert "nano" in fast.participants


def test_the_proportional_baseline_keeps_every_board_with_shares_in_proportion() -> None:
    d = proportional_plan(boards(), MOBILENET)
    assert d.feasible and set(d.participants) == {"orin-nx", "xavier-nx", "tx2", "nano"}
    assert sum(d.shares.values()) == 64
    exact = {"orin-nx": 125, "xavier-nx": 75, "tx2": 50, "nano": 31}
    for n, r in exact.items():  # 125:75:50:31 of 64, rounded so that the slowest finishes first
        assert abs(d.shares[n] - 64 * r / 281) < 1.0, d.shares
    assert d.allreduce_s == pytest.approx(allreduce_s(4, MOBILENET.model_bytes, 50 * MB, NetworkModel().latency_s))


def test_float16_communication_only_where_it_shortens_the_step() -> None:
    half = Planner(PlannerConfig(allow_half=True))
    slow = half.plan(boards(), MOBILENET)
    assert slow.grad_dtype == "float16"
    assert slow.allreduce_s < Planner().plan(boards(), MOBILENET).allreduce_s
    small = JobModel(global_batch=64, dataset_size=1280, epochs=1, model_bytes=40_000)
    assert half.plan(boards(), small).grad_dtype == "float32"  # its all-reduce is too small to matter
    assert Planner().plan(boards(), MOBILENET).grad_dtype == "float32"  # not allowed: never


def _hb(node: str, gen: int = 1, **kw: object) -> Heartbeat:
    base: dict[str, object] = {"node": node, "ts": 1.0, "job": "j", "generation": gen, "rank": 0}
    return Heartbeat(**(base | kw))  # type: ignore[arg-type]


def test_a_node_learns_its_link_overhead_and_start_up_from_heartbeats() -> None:
    learn = NodeLearning(ThroughputModel(prior=10.0))
    beat = _hb(
        "a",
        state="training",
        samples_per_s=100.0,
        intensity=1.0,
        compute_s=0.5,
        allreduce_s=0.2,
        step_s=0.75,
        link_bps=6e6,
        link_latency_s=0.002,
        startup_s=9.0,
        forming_s=1.5,
    )
    for _ in range(3):
        learn.observe(beat, now=10.0)
    assert learn.link.bandwidth == 6e6 and learn.link.latency == 0.002 and learn.link.known(10.0)
    assert not learn.link.known(10.0 + 601)  # forgotten: probed again when it trains in a group again
    assert learn.overhead.get(0) == pytest.approx(0.05)
    assert learn.startup.observations == 1 and learn.forming.observations == 1  # each value once
    learn.observe(_hb("a", state="training", samples_per_s=100.0, intensity=1.0, startup_s=9.0, forming_s=0.8), 11.0)
    assert learn.forming.get(0) == pytest.approx(0.5 * 1.5 + 0.5 * 0.8)  # a re-form, the same worker
    assert learn.startup.observations == 1


def test_the_all_reduce_efficiency_is_measured_over_modelled_on_the_probed_links() -> None:
    learning = {n: NodeLearning(ThroughputModel(prior=10.0)) for n in ("a", "b")}
    learning["a"].link.observe(100e6, 0.001, 0.0)
    learning["b"].link.observe(10e6, 0.001, 0.0)
    beats = [
        _hb("a", state="training", allreduce_s=0.9, comm_bytes=5_000_000),
        _hb("b", state="training", allreduce_s=0.6, comm_bytes=5_000_000),
    ]
    modelled = allreduce_s(2, 5_000_000, 10e6, 0.001)
    assert allreduce_efficiency(beats, learning) == pytest.approx(0.6 / modelled)
    assert allreduce_efficiency(beats[:1], learning) is None  # one rank: no all-reduce


def _job(plan_step: float = 0.5) -> JobRecord:
    spec = JobSpec(model="m", dataset="/d", output="/o", epochs=1, global_batch=32, learning_rate=0.1)
    job = JobRecord(job="j", spec=spec, dataset_size=3200, model_bytes=1, state=JobState.RUNNING, generation=1)
    from deepedge.testing.workers import make_plan

    job.plan = msgspec_replace(make_plan("j", 1, {"a": 16, "b": 16}, spec), predicted_step_s=plan_step)
    return job


def msgspec_replace(plan: Plan, **kw: object) -> Plan:
    import msgspec

    return msgspec.structs.replace(plan, **kw)


def test_a_stall_needs_every_participant_pending_and_fires_once_per_generation() -> None:
    job, rt = _job(0.5), policy.JobRuntime()
    a = _hb("a", state="training", pending_s=2.5)
    b = _hb("b", state="training", pending_s=0.0, rank=1)
    assert policy.on_heartbeat(a, job, rt, 10.0, beats={"a": a, "b": b}) == []  # b still computes: a straggler
    b = _hb("b", state="training", pending_s=2.1, rank=1)
    acts = policy.on_heartbeat(a, job, rt, 10.0, beats={"a": a, "b": b})
    assert len(acts) == 1 and isinstance(acts[0], policy.Reform)
    rt.stalled = 1
    assert policy.on_heartbeat(a, job, rt, 10.0, beats={"a": a, "b": b}) == []
    slow_plan = _job(1.0)  # pending must exceed 2.5 predicted steps
    assert policy.on_heartbeat(a, slow_plan, policy.JobRuntime(), 10.0, beats={"a": a, "b": b}) == []


def test_a_link_probed_at_half_what_was_known_re_plans_at_once() -> None:
    job = _job()
    beat = _hb("a", state="training", link_bps=1e6)
    acts = policy.on_heartbeat(beat, job, policy.JobRuntime(), 1.0, known_link=50e6)
    assert len(acts) == 1 and isinstance(acts[0], policy.Replan) and acts[0].why.startswith("link.changed a")
    assert policy.on_heartbeat(beat, job, policy.JobRuntime(), 1.0, known_link=1.5e6) == []


def test_a_board_left_out_for_its_start_up_is_not_blamed_on_its_link() -> None:
    """A board whose worker must start first, with few steps left, is left out for that start,
    and the plan says so (it once read "not worth its link ... all-reduce 0.00 s")."""
    nodes = [*boards(1000 * MB)[:3], NodeModel("nano", rate=31, max_share=64, bandwidth_bps=500 * MB, startup_s=30.0)]
    job = dataclasses.replace(MOBILENET, remaining_steps=5)
    d = Planner().plan(nodes, job, NetworkModel(latency_s=1e-3))
    assert "nano" not in d.participants
    assert d.excluded["nano"].startswith("not worth its start-up: 30.0 s before it trains, over the 5 steps left")


def test_share_only_plans_need_a_smaller_gain() -> None:
    assert not policy.should_improve(100, 1.0, 0.9, same_group=False)
    assert policy.should_improve(100, 1.0, 0.9, same_group=True)
    assert not policy.should_improve(100, 1.0, 0.95, same_group=True)
    assert not policy.should_improve(3, 1.0, 0.85, same_group=True)  # 0.45 s left to gain


def test_an_improvement_that_re_forms_the_group_must_gain_more_than_the_re_form_costs() -> None:
    # 100 steps 0.11 s shorter: 11 s saved
    assert policy.should_improve(100, 0.5, 0.39, reform_s=4.0)  # 7 s net >= REPLAN_MIN_GAIN_S
    assert not policy.should_improve(100, 0.5, 0.39, reform_s=7.0)  # 4 s net: the start eats the gain
    assert policy.should_improve(100, 0.5, 0.39, same_group=True, reform_s=60.0)  # no re-form: no cost


# ---- the service on the in-memory broker --------------------------------------------------


_tasks: list[asyncio.Task[None]] = []


@pytest.fixture(autouse=True)
async def _stop_tasks() -> AsyncIterator[None]:
    yield
    for task in _tasks:
        task.cancel()
    await asyncio.gather(*_tasks, return_exceptions=True)
    _tasks.clear()


def _birth(node: str) -> NodeBirth:
    return NodeBirth(node=node, session="s1", ts=1.0, memory_bytes=8 << 30, training_address="10.0.0.1")


async def _cluster() -> tuple[Coordinator, FakeClock, asyncio.Queue[Received]]:
    broker, clock = FakeBroker(), FakeClock()
    t = FakeTransport(broker)
    await t.__aenter__()
    config = Config(coordinator=CoordinatorConfig(db=":memory:", node_interval_s=1.0, default_rate=100.0))
    c = Coordinator(config, t, JobStore(":memory:"), clock=clock)
    _tasks.append(asyncio.create_task(c.writer_loop()))
    _tasks.append(asyncio.create_task(answer_preflights(broker, Topics("default"))))
    sub = await t.subscribe(Topics("default").all_jobs("plan"))
    clock.advance(4)
    await c.tick()
    for n in ("orin", "nano", "tx2"):
        await c.ingest(Received(None, _birth(n), False, ""))  # type: ignore[arg-type]
    args = {
        "job": "j",
        "model": "m",
        "dataset": "/d",
        "output": "/o",
        "epochs": 10,
        "global_batch": 64,
        "learning_rate": 0.1,
        "dataset_size": 6400,
        "model_bytes": 8_000_000,
    }
    reply = await handle_command(c, "submit", CommandRequest(request_id="r", reply_to="cli", args=args))
    assert reply.ok, reply.error
    return c, clock, sub  # type: ignore[return-value]


async def _next_plan(sub: object) -> Plan:
    item = await sub.get(1)  # type: ignore[attr-defined]
    assert isinstance(item.message, Plan)
    return item.message


async def _beat(c: Coordinator, plan: Plan, node: str, **kw: object) -> None:
    rank = next(a.rank for a in plan.assignments if a.node == node)
    base: dict[str, object] = {
        "node": node,
        "ts": 1.0,
        "job": plan.job,
        "generation": plan.generation,
        "rank": rank,
        "state": "training",
        "intensity": 1.0,
    }
    await c.ingest(Received(None, Heartbeat(**(base | kw)), False, ""))  # type: ignore[arg-type]


async def test_a_link_learned_slow_is_left_out_a_share_change_keeps_the_group_and_a_stall_reforms() -> None:
    c, clock, sub = await _cluster()
    first = await _next_plan(sub)
    assert {a.node for a in first.assignments} == {"orin", "nano", "tx2"}  # links unknown: assumed fast
    assert not first.same_group and first.group_generation == first.generation
    assert first.predicted_startup_s == pytest.approx(6.0)  # nothing learned yet: default start-up and forming
    rates = {"orin": 125.0, "nano": 31.0, "tx2": 50.0}
    links = {"orin": 125e6, "nano": 6.25e6, "tx2": 125e6}
    share = {a.node: a.share for a in first.assignments}
    for _ in range(3):
        for n in rates:
            await _beat(
                c,
                first,
                n,
                step=2,
                samples_per_s=rates[n],
                link_bps=links[n],
                link_latency_s=0.001,
                compute_s=share[n] / rates[n],
                step_s=share[n] / rates[n] + 1.85,
                allreduce_s=1.75,
                comm_bytes=8_000_000,
                startup_s=12.0,
            )
    clock.advance(2)
    await c.tick()  # TryImprove: the learned links promise a much shorter step without nano
    second = await _next_plan(sub)
    assert {a.node for a in second.assignments} == {"orin", "tx2"}
    assert not second.same_group  # the participants changed: a new group
    assert second.predicted_startup_s == pytest.approx(1.0)  # running workers re-form (the default)
    assert c.runtime["j"].left_out == ("nano",)
    assert abs(c.comm.factor() - 1.0) < 0.05  # the measured all-reduce matched the ring model
    # rates move (background load on tx2): a share-only plan continues the group
    for _ in range(4):
        await _beat(c, second, "orin", step=5, samples_per_s=125.0, link_bps=125e6, link_latency_s=0.001)
        await _beat(c, second, "tx2", step=5, samples_per_s=30.0, link_bps=125e6, link_latency_s=0.001)
    clock.advance(2)
    await c.tick()
    third = await _next_plan(sub)
    assert third.same_group and third.group_generation == second.generation
    assert third.rendezvous_port == second.rendezvous_port and third.predicted_startup_s == 0.0
    shares = {a.node: a.share for a in third.assignments}
    assert shares["tx2"] < {a.node: a.share for a in second.assignments}["tx2"]
    # every participant's all-reduce pending far past the predicted step: a new group is formed
    for n in ("orin", "tx2"):
        await _beat(c, third, n, step=6, samples_per_s=50.0, pending_s=30.0, link_bps=links[n])
    await c.tick()
    fourth = await _next_plan(sub)
    assert not fourth.same_group and fourth.group_generation == fourth.generation
    assert {a.node for a in fourth.assignments} == {"orin", "tx2"}
    # the prediction: time since submission + start-up + the remaining steps at the step time
    assert fourth.predicted_makespan_s == pytest.approx(
        (fourth.ts - c.jobs["j"].created) + fourth.predicted_startup_s + (1000 - 5) * fourth.predicted_step_s, rel=0.01
    )
