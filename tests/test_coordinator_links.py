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
from deepedge.coordinator._learning import (
    LINK_CONFIRM,
    LINK_SOURCES,
    LinkModel,
    NodeLearning,
    ThroughputModel,
    confirm_stalled_drops,
    ring_floor_bps,
)
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


def test_a_confirmed_link_drop_re_plans_at_once() -> None:
    job = _job()
    beat = _hb("a", state="training", link_bps=1e6)
    acts = policy.on_heartbeat(beat, job, policy.JobRuntime(), 1.0, link_drop=(1e6, 50e6))
    assert len(acts) == 1 and isinstance(acts[0], policy.Replan)
    assert acts[0].why == "link.changed a (8.0 Mb/s, was 400.0)"
    assert policy.on_heartbeat(beat, job, policy.JobRuntime(), 1.0) == []


def test_a_probe_under_half_the_link_is_believed_once_the_all_reduces_confirm_it() -> None:
    """The workers probe their links while they start; a board short of CPU then (the demo's
    nano) probed 24 Mb/s of its 50 Mb/s and was re-planned out of the job at once, while its
    all-reduces went at full speed. A drop is now believed after LINK_CONFIRM heartbeats whose
    all-reduces the low link explains; an all-reduce faster than a probe allows raises the link."""
    link = LinkModel()
    link.observe(6.25e6, 0.001, 0.0)  # 50 Mb/s
    assert link.believed == 6.25e6 and link.confirmed_drop() is None
    link.observe(3.0e6, 0.001, 1.0)  # 24 Mb/s, probed while the board was short of CPU
    fast = ring_floor_bps(3, 40_000, 0.009)  # a 40 kB all-reduce over 3 ranks in 9 ms
    assert fast == pytest.approx(2 * 2 / 3 * 40_000 / 0.009)
    for _ in range(LINK_CONFIRM):
        assert link.believed == 6.25e6  # the old link until confirmed
        assert link.confirmed_drop() is None
        link.bound(fast)
    assert link.confirmed_drop() is None  # the all-reduces contradict the probe: no drop
    assert link.believed == pytest.approx(fast) and link.was is None
    link.observe(3.0e6, 0.001, 2.0)  # each heartbeat repeats the probe: not a new one
    assert link.believed == pytest.approx(fast)
    # a real drop: the all-reduces take as long as the new probe says
    link.observe(1.0e6, 0.001, 3.0)
    slow = ring_floor_bps(3, 40_000, 0.1)
    for _ in range(LINK_CONFIRM):
        assert link.confirmed_drop() is None
        link.bound(slow)
    assert link.confirmed_drop() == pytest.approx(fast)  # said once
    assert link.confirmed_drop() is None and link.believed == 1.0e6
    link.observe(0.01e6, 0.001, 4.0)  # collapsed: an all-reduce pending too long confirms it at once
    assert link.believed == 1.0e6
    link.stalled()
    assert link.believed == 0.01e6 and link.confirmed_drop() == 1.0e6
    assert ring_floor_bps(1, 40_000, 0.1) == 0.0 and ring_floor_bps(3, 40_000, 0.0) == 0.0


def test_a_node_in_two_jobs_keeps_what_its_all_reduces_measured() -> None:
    """With node.max_workers 2, its heartbeats carry two workers' probes in turn: neither repeat
    is a new probe, so the floor its all-reduces measured stays (it was reset at every beat)."""
    link = LinkModel()
    link.observe(3.0e6, 0.001, 0.0, "a")
    link.observe(6.0e6, 0.001, 0.1, "b")  # a new probe: b's worker formed its group
    link.bound(9.0e6)
    for t in range(1, 5):
        link.observe(3.0e6, 0.001, t, "a")  # repeats of each worker's last probe
        link.observe(6.0e6, 0.001, t + 0.5, "b")
    assert link.bandwidth == 6.0e6 and link.floor == 9.0e6 and link.believed == 9.0e6 and link.was is None
    link.observe(2.0e6, 0.001, 6.0, "a")  # a's worker probed again, and lower: news
    assert link.bandwidth == 2.0e6 and link.floor == 0.0 and link.was == 9.0e6
    for j in range(20):  # the jobs a link remembers are bounded
        link.observe(1e6 + j, 0.001, 7.0, f"job{j}")
    assert len(link.sources) == LINK_SOURCES


def test_a_stall_confirms_the_lowest_probes_drop_not_every_participants() -> None:
    """Every rank pending in its all-reduce: the collapsed link explains it; a board that
    probed low while short of CPU (24 of 50 Mb/s) is not made slow by it."""
    starved, collapsed, steady = LinkModel(), LinkModel(), LinkModel()
    for link in (starved, collapsed, steady):
        link.observe(6.25e6, 0.001, 0.0)
    starved.observe(3.0e6, 0.001, 1.0)
    collapsed.observe(0.06e6, 0.001, 1.0)
    confirm_stalled_drops([starved, collapsed, steady])
    assert collapsed.believed == 0.06e6 and collapsed.confirmed_drop() == 6.25e6
    assert starved.believed == 6.25e6 and starved.confirmed_drop() is None
    assert steady.believed == 6.25e6
    twin = LinkModel()  # two links that collapsed together are both confirmed
    twin.observe(6.25e6, 0.001, 0.0)
    twin.observe(0.1e6, 0.001, 1.0)
    other = LinkModel()
    other.observe(6.25e6, 0.001, 0.0)
    other.observe(0.08e6, 0.001, 1.0)
    confirm_stalled_drops([twin, other])
    assert twin.believed == 0.1e6 and other.believed == 0.08e6
    # the same stall, heard again once the collapse is confirmed: the starved board is still
    # compared with the group's lowest probe, not only with the drops still pending
    starved2, collapsed2 = LinkModel(), LinkModel()
    for link in (starved2, collapsed2):
        link.observe(6.25e6, 0.001, 0.0)
    starved2.observe(3.0e6, 0.001, 1.0)
    collapsed2.observe(0.06e6, 0.001, 1.0)
    confirm_stalled_drops([starved2, collapsed2])
    assert collapsed2.confirmed_drop() == 6.25e6
    confirm_stalled_drops([starved2, collapsed2])
    assert starved2.pending and starved2.believed == 6.25e6


def test_an_all_reduce_paced_by_a_slower_peer_does_not_confirm_a_drop() -> None:
    """The demo's xavier-nx (1 Gb/s) probed low at a re-form in a ring with nano's 50 Mb/s link:
    its all-reduces take as long as nano's link makes them, which says nothing of its own link,
    and they 'confirmed' the drop (a needless re-plan in 2 of 20 demo runs, 2026-12-05)."""
    fast, nano = 125e6, 6.25e6  # 1 Gb/s and 50 Mb/s
    link = LinkModel()
    link.observe(fast, 0.0002, 0.0)
    link.observe(20e6, 0.0002, 1.0)  # 160 Mb/s, probed while short of CPU
    paced = ring_floor_bps(3, 4_000_000, allreduce_s(3, 4_000_000, nano, 0.003))  # about nano's link
    for _ in range(2 * LINK_CONFIRM):
        link.bound(paced, nano)
    assert link.pending and link.believed == fast and link.confirmed_drop() is None
    # slower than even nano's link explains: someone's link is worse; the drop counts
    for _ in range(LINK_CONFIRM):
        link.bound(0.3 * nano, nano)
    assert not link.pending and link.confirmed_drop() == fast
    # peers fast enough that a slow all-reduce implicates this link: counted as before
    other = LinkModel()
    other.observe(fast, 0.0002, 0.0)
    other.observe(20e6, 0.0002, 1.0)
    for _ in range(LINK_CONFIRM):
        other.bound(20e6, fast)
    assert other.confirmed_drop() == fast


def test_the_planner_gets_the_probe_corrected_by_the_efficiency_but_never_under_the_floor() -> None:
    """The efficiency is measured against the probes, so it corrects the probes only: a floor
    (measured) divided by it would count the correction twice."""
    link = LinkModel()
    assert link.planned(2.0) is None
    link.observe(4.0e6, 0.001, 0.0)
    assert link.planned(2.0) == 2.0e6 and link.planned(0.5) == 8.0e6
    link.bound(5.0e6)
    assert link.planned(2.0) == 5.0e6 and link.planned(0.5) == 8.0e6
    link.observe(1.0e6, 0.001, 1.0)  # a drop not confirmed yet: the old probe corrected, the old floor not
    assert link.pending and link.planned(2.0) == 5.0e6 and link.planned(0.5) == 8.0e6 and link.probed == 4.0e6
    learning = {n: NodeLearning(ThroughputModel(prior=10.0)) for n in ("a", "b")}
    learning["a"].link.observe(100e6, 0.001, 0.0)
    learning["b"].link.observe(10e6, 0.001, 0.0)
    learning["b"].link.bound(8e6)  # a floor under b's probe does not change the efficiency
    beats = [
        _hb("a", state="training", allreduce_s=0.9, comm_bytes=5_000_000),
        _hb("b", state="training", allreduce_s=0.6, comm_bytes=5_000_000, rank=1),
    ]
    assert allreduce_efficiency(beats, learning) == pytest.approx(0.6 / allreduce_s(2, 5_000_000, 10e6, 0.001))
    learning["b"].link.bound(50e6)  # one above it shows the probe wrong: nothing is measured against it
    assert allreduce_efficiency(beats, learning) is None


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


async def _cluster(model_bytes: int = 8_000_000) -> tuple[Coordinator, FakeClock, asyncio.Queue[Received]]:
    broker, clock = FakeBroker(), FakeClock()
    t = FakeTransport(broker)
    await t.__aenter__()
    config = Config(coordinator=CoordinatorConfig(db=":memory:", node_interval_s=1.0, default_rate=100.0))
    c = Coordinator(config, t, JobStore(":memory:"), clock=clock)
    _tasks.append(asyncio.create_task(c.writer_loop()))
    _tasks.append(asyncio.create_task(answer_preflights(broker, Topics("default"))))
    await c.reconcile()  # what its connection does: the failure-detection period starts
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
        "model_bytes": model_bytes,
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

    # rates move (background load on tx2): a share-only plan continues the group, once every check
    # has predicted its gain for SHARE_PERSIST_S (not at the first: a noisy rate's swing)
    async def beats() -> None:
        for _ in range(4):
            await _beat(c, second, "orin", step=5, samples_per_s=125.0, link_bps=125e6, link_latency_s=0.001)
            await _beat(c, second, "tx2", step=5, samples_per_s=30.0, link_bps=125e6, link_latency_s=0.001)

    await beats()
    clock.advance(2)
    await c.tick()
    assert c.jobs["j"].generation == second.generation and c.runtime["j"].improving is not None
    for _ in range(2):
        clock.advance(policy.SHARE_PERSIST_S / 2)
        await beats()
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


async def test_a_board_that_probes_its_link_low_while_it_starts_stays_in_the_job() -> None:
    """The demo's run of 2026-12-05 01:58: the group re-formed after a board died, nano (a
    0.4-CPU cgroup) probed 24.2 Mb/s of its 50 Mb/s while the workers started, and the
    coordinator re-planned at once without it, while its all-reduces took 7 ms. The drop now
    waits for the all-reduces: fast ones keep nano in and raise its link; slow ones re-plan."""
    c, _, sub = await _cluster(model_bytes=40_000)
    first = await _next_plan(sub)
    assert {a.node for a in first.assignments} == {"orin", "nano", "tx2"}
    links = {"orin": 125e6, "nano": 6.25e6, "tx2": 125e6}

    async def beats(nano_link: float, allreduce_s: float, pending_s: float = 0.0) -> None:
        for n, link in links.items():
            link = nano_link if n == "nano" else link
            await _beat(c, first, n, step=3, samples_per_s=100.0, link_bps=link, link_latency_s=2e-4,
                        allreduce_s=allreduce_s, comm_bytes=40_000, pending_s=pending_s)  # fmt: skip

    await beats(6.25e6, 0.009)
    await beats(3.0e6, 0.009)  # a new probe at 24 Mb/s; the all-reduce still takes 9 ms
    nano = c.learning["nano"].link
    assert nano.believed == 6.25e6 and nano.was == 6.25e6
    for _ in range(LINK_CONFIRM):
        await beats(3.0e6, 0.009)
    assert c.jobs["j"].generation == first.generation  # no re-plan: the link is what it was
    assert nano.was is None and nano.believed == pytest.approx(ring_floor_bps(3, 40_000, 0.009))
    # a link that collapsed: a new probe at 2 Mb/s, and every rank's all-reduce pending 1.5 s (the
    # 40 kB take 9 ms at what was believed) confirms it at once: no three steps across it first
    events = []
    emit = c.emit

    async def recording(event: str, *args: object, **kw: object) -> None:
        events.append((event, args[0] if args else ""))
        await emit(event, *args, **kw)  # type: ignore[arg-type]

    c.emit = recording  # type: ignore[method-assign]
    await beats(0.25e6, 0.0)
    assert c.jobs["j"].generation == first.generation
    for _ in range(2):  # (the last heartbeat of a round finds every rank waiting; nano's next says so)
        await beats(0.25e6, 0.0, pending_s=1.5)
    await c.tick()  # (a re-plan goes out at the next tick)
    plan = await _next_plan(sub)
    assert plan.generation > first.generation and nano.believed == 0.25e6
    assert ("link.changed", "(2.0 Mb/s, was 47.4)") in events, events


async def test_a_link_that_collapsed_re_plans_from_the_probes_of_the_group_formed_after_the_stall() -> None:
    """The links bench (2026-12-05): tx2's link degraded to 1 %, every all-reduce stalled, the
    group re-formed to probe every link again, and tx2 probed 2.7 Mb/s of the 1 Gb/s believed.
    The drop waited for an all-reduce across it to be pending (after an 8 s state sync over that
    link): resumed 15 s after the fault. The group formed after a stall now believes its lowest
    probe as soon as every rank's is in (sent before the sync), and re-plans."""
    c, _, sub = await _cluster(model_bytes=8_000_000)
    first = await _next_plan(sub)
    links = {"orin": 125e6, "nano": 125e6, "tx2": 125e6}
    for _ in range(2):
        for n, link in links.items():
            await _beat(c, first, n, step=2, samples_per_s=100.0, link_bps=link, link_latency_s=2e-4)
    for n, link in links.items():  # every rank's all-reduce pending far past the predicted step
        await _beat(c, first, n, step=3, samples_per_s=100.0, link_bps=link, link_latency_s=2e-4, pending_s=30.0)
    await c.tick()
    second = await _next_plan(sub)
    assert not second.same_group and {a.node for a in second.assignments} == set(links)
    assert c.runtime["j"].stall_probe == second.generation
    for n, link in links.items():  # the new group's first heartbeats repeat the last group's probes
        await _beat(c, second, n, state="starting", step=3, link_bps=link, link_latency_s=2e-4)
    await _beat(c, second, "orin", state="starting", step=3, link_bps=50e6, link_latency_s=2e-4)
    await _beat(c, second, "tx2", state="starting", step=3, link_bps=125e6, link_latency_s=2e-4)
    assert c.learning["orin"].link.pending  # orin's new probe is the lowest so far, but tx2's is not in yet
    probes = links | {"orin": 50e6, "tx2": 0.34e6, "nano": 40e6}  # tx2 collapsed; nano probed low, short of CPU
    for n, link in probes.items():  # starting: probed, not yet synced, no all-reduce pending
        await _beat(c, second, n, state="starting", step=3, link_bps=link, link_latency_s=2e-4)
    await _beat(c, second, "tx2", state="starting", step=3, link_bps=0.34e6, link_latency_s=2e-4)
    await c.tick()
    third = await _next_plan(sub)
    assert "tx2" not in {a.node for a in third.assignments}
    assert c.learning["tx2"].link.believed == 0.34e6
    assert c.learning["nano"].link.pending and c.learning["nano"].link.believed == 125e6  # not made slow by it
    assert c.learning["orin"].link.pending
    # an ordinary re-form (no stall) does not believe its probes at once
    assert c.runtime["j"].stall_probe == -1


async def test_a_share_only_improvement_waits_until_every_check_for_share_persist_s_predicts_it() -> None:
    """A plan that keeps the group is published once every check for SHARE_PERSIST_S has
    predicted its gain: a rate that swings back and forth between checks (a contended CPU) moves
    no shares; one that stays moves them, SHARE_PERSIST_S after the first check that saw it."""
    c, clock, sub = await _cluster(model_bytes=80_000)
    first = await _next_plan(sub)
    plans = [first]

    async def check(tx2: float) -> None:
        """Heartbeats until the learned rates have settled (tx2's at ``tx2``), then a check."""
        for _ in range(12):
            for n, rate in (("orin", 120.0), ("nano", 60.0), ("tx2", tx2)):
                await _beat(c, plans[-1], n, step=2, samples_per_s=rate, link_bps=125e6, link_latency_s=0.001)
        clock.advance(policy.SHARE_PERSIST_S / 2)
        await c.tick()
        if c.jobs["j"].generation != plans[-1].generation:
            plans.append(await _next_plan(sub))

    for _ in range(3):  # learned rates far from the first plan's priors, every check: published at the third
        await check(60.0)
    assert len(plans) == 2 and plans[1].same_group and c.runtime["j"].improving is None
    before = {a.node: a.share for a in plans[1].assignments}
    for tx2 in (30.0, 60.0, 30.0, 60.0, 30.0, 60.0):  # tx2's rate swings: each gain is gone at the next check
        await check(tx2)
    assert len(plans) == 2
    for _ in range(2):  # it stays slow: not yet at the check that first saw it, nor one second later
        await check(30.0)
        assert len(plans) == 2 and c.runtime["j"].improving is not None
    await check(30.0)
    assert len(plans) == 3 and plans[2].same_group
    after = {a.node: a.share for a in plans[2].assignments}
    assert after["tx2"] < before["tx2"] and after["orin"] > before["orin"]


def test_one_jobs_all_reduce_claims_move_its_own_efficiency_not_another_jobs() -> None:
    """(attacker review, 2026-12-06) The all-reduce efficiency takes the fastest rank's time, each
    rank's own claim: a participant reporting 1e-300 s drove the cluster's to its floor and every
    job planned its links 5x faster than probed. A job measured COMM_OWN_AFTER times is now
    planned with its own; a new job's first plans take the cluster's until it has measured."""
    from deepedge.coordinator._learning import COMM_OWN_AFTER, CommModel

    comm = CommModel()
    for _ in range(COMM_OWN_AFTER):
        comm.observe("honest", 1.85)
    for _ in range(8):
        comm.observe("evil", 1e-300)
    assert comm.factor("evil") == pytest.approx(0.2, abs=0.01)
    assert comm.factor("honest") == pytest.approx(1.85)  # before: the cluster's, about 0.2 by now
    assert comm.factor("new") == comm.factor() < 0.3
    for _ in range(COMM_OWN_AFTER):
        comm.observe("new", 1.85)
    assert comm.factor("new") == pytest.approx(1.85)
