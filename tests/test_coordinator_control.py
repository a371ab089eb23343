"""Regression tests of the control plane on the in-memory broker: each case of issue #14 that
once stopped or wedged the coordinator."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from deepedge.broker_schemas import (
    BEING_PROFILED,
    AppLatency,
    Assignment,
    CommandRequest,
    Heartbeat,
    JobSpec,
    JobState,
    LatencyReport,
    NodeBirth,
    NodeDeath,
    Plan,
    StatusResult,
    Telemetry,
    Topics,
    decode,
    encode,
    result_of,
)
from deepedge.config import Config, CoordinatorConfig
from deepedge.coordinator import Coordinator, JobRecord, JobStore
from deepedge.coordinator._commands import handle_command
from deepedge.coordinator.planner import MIN_RATE, PlanDecision
from deepedge.testing import FakeClock, answer_preflights
from deepedge.transport import CommandFailed, FakeBroker, FakeTransport, Received

T = Topics("default")
SPEC = JobSpec(model="cnn-small", dataset="/d", output="/o", epochs=1, global_batch=32, learning_rate=0.1)


@dataclasses.dataclass
class Emitted:
    event: str
    message: str
    node: str | None
    fields: dict[str, Any]


def named(events: list[Emitted]) -> list[str]:
    return [e.event for e in events]


class Cluster:
    """A coordinator (writer and feeders running) on an in-memory broker, and a client that
    plays the boards."""

    def __init__(self, db: Path, broker: FakeBroker | None = None, clock: FakeClock | None = None) -> None:
        self.db = db
        self.broker = broker or FakeBroker()
        self.clock = clock or FakeClock()
        self.tasks: list[asyncio.Task[Any]] = []
        self.refusals: dict[str, str] = {}  # node -> why its pre-flight refuses (none: it passes)
        self.asked: list[str] = []  # the nodes asked for a pre-flight, in order

    async def start(self, connect_after_s: float = 0.0, **cfg: Any) -> Coordinator:
        self.transport = FakeTransport(self.broker)
        await self.transport.__aenter__()
        config = Config(coordinator=CoordinatorConfig(db=str(self.db), node_interval_s=1.0, **cfg))
        self.c = Coordinator(config, self.transport, JobStore(self.db), clock=self.clock)
        self.tasks = [
            asyncio.create_task(self.c.writer_loop()),
            asyncio.create_task(self.c.ingest_loop()),
            asyncio.create_task(self.c.plan_watch_loop()),
            asyncio.create_task(answer_preflights(self.broker, T, self.verdict)),
        ]
        self.peer = FakeTransport(self.broker)
        await self.peer.__aenter__()
        await self.settle()
        self.clock.advance(connect_after_s)  # loading and connecting took this long
        await self.c.in_writer(self.c.reconcile)
        return self.c

    def verdict(self, node: str, _: CommandRequest) -> str:
        self.asked.append(node)
        return self.refusals.get(node, "")

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.transport.__aexit__(None, None, None)
        await self.peer.__aexit__(None, None, None)
        self.c.close()
        self.c.store.close()

    def record_events(self) -> list[Emitted]:
        """Every event the coordinator emits from now on."""
        events: list[Emitted] = []
        emit = self.c.emit

        async def recording(event: str, *args: Any, **kw: Any) -> None:
            events.append(Emitted(event, str(args[0]) if args else "", kw.get("node"), kw))
            await emit(event, *args, **kw)

        self.c.emit = recording  # type: ignore[method-assign]
        return events

    async def settle(self) -> None:
        for _ in range(3):
            for _ in range(20):
                await asyncio.sleep(0)
            await self.c.in_writer(_noop)

    async def board(self, node: str, session: str = "s1") -> None:
        birth = NodeBirth(node=node, session=session, ts=1.0, memory_bytes=8 << 30, training_address="127.0.0.1")
        await self.peer.publish(T.node_status(node), birth, qos=1, retain=True)
        await self.settle()

    async def alive(self, seconds: float, *nodes: str) -> None:
        """Let ``seconds`` pass while ``nodes`` keep sending telemetry, ticking each second."""
        for _ in range(int(seconds)):
            for n in nodes:
                await self.peer.publish(T.node_telemetry(n), Telemetry(node=n, ts=1.0))
            await self.settle()
            self.clock.advance(1.0)
            await self.c.in_writer(self.c.tick)
        await self.settle()

    async def boards(self, *nodes: str) -> None:
        for node in nodes:
            await self.board(node)

    def participants(self, job: str) -> set[str]:
        plan = self.c.jobs[job].plan
        return {a.node for a in plan.assignments} if plan is not None else set()

    async def drained(self, node: str, flag: bool) -> None:
        """What a node's drain (undrain) command publishes, then a tick."""
        birth = NodeBirth(node=node, session="s1", ts=1.0, memory_bytes=8 << 30, training_address="127.0.0.1",
                          drained=flag)  # fmt: skip
        await self.peer.publish(T.node_status(node), birth, qos=1, retain=True)
        await self.settle()
        await self.c.in_writer(self.c.tick)
        await self.settle()

    async def training(self, node: str, job: str, generation: int, world: int) -> None:
        """Two heartbeats of ``node`` training in ``job``: its rate is known (improvements are tried)."""
        for k in range(2):
            hb = Heartbeat(node=node, ts=1.0, job=job, generation=generation, rank=0, world_size=world, step=k + 1,
                           samples_per_s=10.0, intensity=1.0, step_s=0.3, compute_s=0.3)  # fmt: skip
            await self.peer.publish(T.node_heartbeat(node), hb)
        await self.settle()

    def back_and_faster(self, node: str, participants: set[str]) -> Callable[[JobRecord], Awaitable[PlanDecision]]:
        """``node`` undrained in the view without a re-plan, and every decision from now on one
        that puts it back and promises 10x shorter steps (an improvement in waiting); returns the
        real ``decide``, to put back."""
        c = self.c
        c.view.nodes[node].birth = msgspec.structs.replace(c.view.nodes[node].birth, drained=False)
        decide = c.decide

        async def faster(job: JobRecord, keep_out: Mapping[str, str] | None = None) -> PlanDecision:
            d = await decide(job, keep_out)
            assert d.feasible, d
            if set(d.participants) != participants:  # planned without it (kept out): as the planner says
                assert keep_out and node in keep_out, (d, keep_out)
                return d
            return dataclasses.replace(d, step_s=d.step_s / 10)

        c.decide = faster  # type: ignore[method-assign]
        return decide

    async def command(self, verb: str, **args: Any) -> Any:
        return await handle_command(self.c, verb, CommandRequest(request_id="r", reply_to="op", args=args))

    async def submit(self, job: str, **kw: Any) -> Any:
        args = {f: getattr(SPEC, f) for f in ("model", "dataset", "output", "epochs", "global_batch", "learning_rate")}
        return await self.command("submit", job=job, dataset_size=320, **(args | kw))

    def retained_plan(self, job: str) -> Plan | None:
        payload = self.broker.retained.get(T.job_plan(job))
        if payload is None:
            return None
        plan = decode(T.job_plan(job), payload).message
        assert isinstance(plan, Plan)
        return plan


async def _noop() -> None:
    return None


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cl = Cluster(tmp_path / "jobs.db")
    yield cl
    await cl.stop()


async def test_absurd_epochs_are_refused_at_submit_naming_the_bound(cluster: Cluster) -> None:
    await cluster.start()
    await cluster.board("n1")
    with pytest.raises(CommandFailed) as err:
        await cluster.submit("huge", epochs=10**12)
    assert err.value.code == "bad_args" and "coordinator.max_total_steps" in err.value.message
    with pytest.raises(CommandFailed) as err:
        await cluster.submit("worse", epochs=2**64)  # beyond what the wire carries
    assert err.value.code == "bad_args"
    assert "huge" not in cluster.c.jobs and cluster.retained_plan("huge") is None


async def test_a_retained_plan_with_an_impossible_generation_is_dropped_and_does_not_crash(cluster: Cluster) -> None:
    await cluster.start()
    raw = msgspec.to_builtins(
        Plan(
            job="evil",
            generation=1,
            ts=1.0,
            spec=SPEC,
            rendezvous_host="127.0.0.1",
            rendezvous_port=29500,
            backend="gloo",
            assignments=(),
            total_steps=1,
        )
    )
    raw["generation"] = 2**64 - 1
    with capture_logs() as logs:
        await cluster.peer.publish_raw(T.job_plan("evil"), msgspec.msgpack.encode(raw), qos=1, retain=True)
        await cluster.settle()
    assert any(e["event"] == "message.dropped" for e in logs)
    assert all(not t.done() for t in cluster.tasks)
    await cluster.board("n1")
    assert (await cluster.submit("j1")).ok  # still working


async def test_drain_of_the_only_participant_then_its_worker_finishes_completes_the_job(cluster: Cluster) -> None:
    c = await cluster.start()
    await cluster.board("n1")
    await cluster.submit("j1")
    plan = cluster.retained_plan("j1")
    assert plan is not None
    drained = NodeBirth(
        node="n1", session="s1", ts=2.0, memory_bytes=8 << 30, training_address="127.0.0.1", drained=True
    )
    await cluster.peer.publish(T.node_status("n1"), drained, qos=1, retain=True)
    await cluster.alive(4, "n1")
    assert c.jobs["j1"].state is JobState.RECOVERING  # no node may train: the current plan stays
    done = Heartbeat(node="n1", ts=3.0, job="j1", generation=plan.generation, rank=0, step=10, state="done")
    await cluster.peer.publish(T.node_heartbeat("n1"), done)
    await cluster.settle()
    assert c.jobs["j1"].state is JobState.COMPLETED  # RECOVERING -> COMPLETED (it raised before)
    assert cluster.retained_plan("j1") is None


async def test_a_rank_0_done_from_earlier_in_the_same_group_completes_the_job(cluster: Cluster) -> None:
    """The wedge of the LC bench at 06:52 (2026-12-04): a same-group plan (new caps) was
    published while the last step ran; the worker finished it and reported done under the
    generation it trained in, which the coordinator, a generation ahead, took for a sign of life;
    the worker was gone, so no report of the new generation came and the job waited 600 s to be
    cancelled. Only the group's rank 0 is believed, for a generation of that group."""
    c = await cluster.start()
    for n in ("n1", "n2"):
        await cluster.board(n)
    await cluster.submit("j1")
    job = c.jobs["j1"]
    assert job.plan is not None and len(job.plan.assignments) == 2
    rank0 = next(a.node for a in job.plan.assignments if a.rank == 0)
    rank1 = next(a.node for a in job.plan.assignments if a.rank == 1)
    total, first = job.total_steps, job.generation

    async def next_plan(same_group: bool) -> int:
        """A new generation as publish_new_plan makes it: shares or caps only (same group) or not."""

        async def bump() -> None:
            assert job.plan is not None
            g = job.generation + 1
            group = (job.plan.group_generation if job.plan.same_group else job.generation) if same_group else g
            job.plan = msgspec.structs.replace(job.plan, generation=g, same_group=same_group, group_generation=group)
            job.generation = g

        await c.in_writer(bump)
        return job.generation

    async def heard(node: str, generation: int, step: int = total, rank: int = 0) -> JobState:
        hb = Heartbeat(node=node, ts=3.0, job="j1", generation=generation, rank=rank, step=step, state="done", loss=0.5)
        await cluster.peer.publish(T.node_heartbeat(node), hb)
        await cluster.settle()
        return c.jobs["j1"].state

    reformed = await next_plan(same_group=False)  # a new group: the first generation's done is not its
    assert await heard(rank0, first) is JobState.RUNNING
    await next_plan(same_group=True)  # caps only: the group formed at `reformed` goes on
    assert await heard(rank0, first) is JobState.RUNNING  # before the group was formed
    assert await heard(rank0, reformed, step=total - 1) is JobState.RUNNING  # not every step
    assert await heard(rank0, reformed, rank=1) is JobState.RUNNING  # not as rank 0
    assert await heard(rank1, reformed) is JobState.RUNNING  # rank 1 claiming rank 0
    assert await heard(rank0, job.generation + 1) is JobState.RUNNING  # a generation to come
    job.excluded[rank0] = "left out"
    assert await heard(rank0, reformed) is JobState.RUNNING  # excluded: not heard about the job
    del job.excluded[rank0]
    assert await heard(rank0, reformed) is JobState.COMPLETED
    assert job.step == total and job.samples_done == 320 and job.loss == 0.5
    assert f"done in generation {reformed}" in job.reason
    assert cluster.retained_plan("j1") is None


async def test_a_cancel_while_the_planner_runs_leaves_no_plan_behind(cluster: Cluster) -> None:
    c = await cluster.start()
    for n in ("n1", "n2"):
        await cluster.board(n)
    await cluster.submit("j1")
    slow_plan, entered = c.planner.plan, threading.Event()

    def slow(*args: Any) -> Any:
        entered.set()
        time.sleep(0.5)
        return slow_plan(*args)

    c.planner.plan = slow  # type: ignore[method-assign]
    await cluster.peer.publish(T.node_status("n2"), NodeDeath(node="n2", session="s1"), qos=1, retain=True)
    await cluster.settle()
    replanning = asyncio.create_task(c.in_writer(c.tick))
    await asyncio.to_thread(entered.wait, 5)
    cancelled = await cluster.command("cancel", job="j1")  # queued behind the re-plan, not inside it
    await replanning
    await cluster.settle()
    assert cancelled.result["state"] == "cancelled" and c.jobs["j1"].state is JobState.CANCELLED
    assert cluster.retained_plan("j1") is None


def _store_running(store: JobStore, nodes: tuple[str, ...]) -> Plan:
    """A job "running" at generation 3 on ``nodes`` (16 samples each), as a coordinator killed
    with -9 left it in its store; its plan."""
    plan = Plan(
        job="running",
        generation=3,
        ts=1.0,
        spec=SPEC,
        rendezvous_host="127.0.0.1",
        rendezvous_port=29500,
        backend="gloo",
        assignments=tuple(
            Assignment(node=n, rank=i, share=16, batch_offset=16 * i, intensity_cap=1.0) for i, n in enumerate(nodes)
        ),
        total_steps=10,
        session="old",
    )
    store.save(JobRecord(job="running", spec=SPEC, dataset_size=320, model_bytes=0, state=JobState.RUNNING,
                         generation=3, plan=plan))  # fmt: skip
    return plan


async def test_a_restart_republishes_unfinished_plans_and_clears_finished_ones(cluster: Cluster) -> None:
    """kill -9 between saving a plan and publishing it: the next coordinator publishes the
    stored one (under its own session); a finished job's retained plan is cleared, and so is a
    retained plan of a job the store does not know."""
    store = JobStore(cluster.db)
    plan = _store_running(store, ())
    store.save(JobRecord(job="done", spec=SPEC, dataset_size=320, model_bytes=0, state=JobState.COMPLETED))
    store.close()
    old = msgspec.structs.replace(plan, generation=2)  # the broker is one generation behind
    cluster.broker.retained[T.job_plan("running")] = encode(old)
    cluster.broker.retained[T.job_plan("done")] = encode(msgspec.structs.replace(plan, job="done"))
    cluster.broker.retained[T.job_plan("stranger")] = encode(msgspec.structs.replace(plan, job="stranger"))
    c = await cluster.start()
    await cluster.settle()
    now = cluster.retained_plan("running")
    assert now is not None and now.generation == 3 and now.session == c.session
    assert cluster.retained_plan("done") is None and cluster.retained_plan("stranger") is None


async def test_a_restart_judges_plans_a_detection_period_after_it_connected_not_after_it_started(
    cluster: Cluster,
) -> None:
    """A restarted coordinator whose start took longer than the failure-detection period
    (loading the forecast, connecting: a loaded CI machine) must still wait that period after it
    connected before it judges a running job's plan; judged before the boards' births and
    heartbeats arrived, it re-planned a healthy job."""
    store = JobStore(cluster.db)
    _store_running(store, ("b1", "b2"))
    store.close()
    c = await cluster.start(connect_after_s=10.0)  # > 3 intervals of 1 s
    await c.in_writer(c.tick)  # the first tick, before any board was heard of
    await cluster.settle()
    await cluster.board("b1")
    await cluster.board("b2")
    await cluster.alive(4, "b1", "b2")
    job = c.jobs["running"]
    assert job.state == JobState.RUNNING and job.generation == 3
    now = cluster.retained_plan("running")
    assert now is not None and now.generation == 3


async def test_a_restart_judges_nothing_before_its_first_connection(tmp_path: Path) -> None:
    """The detection period counts from the first connection: a tick before it (the forecast
    took 1.06 s to load, longer than the period, and the broker was not connected yet) judges no
    plan. It re-planned a healthy job on 2026-12-05 (test_coordinator_restart_resumes_jobs_from_sqlite)."""
    db = tmp_path / "jobs.db"
    store = JobStore(db)
    _store_running(store, ("b1", "b2"))
    store.close()
    clock = FakeClock()
    config = Config(coordinator=CoordinatorConfig(db=str(db), node_interval_s=1.0))
    c = Coordinator(config, FakeTransport(FakeBroker()), JobStore(db), clock=clock)
    try:
        clock.advance(10.0)
        await c.tick()
        job = c.jobs["running"]
        assert job.state == JobState.RUNNING and job.generation == 3 and not c.dirty
    finally:
        c.close()
        c.store.close()


async def test_an_unreadable_row_is_skipped_not_fatal(cluster: Cluster) -> None:
    store = JobStore(cluster.db)
    store.save(JobRecord(job="good", spec=SPEC, dataset_size=320, model_bytes=0))
    store.close()
    with sqlite3.connect(cluster.db) as db:
        db.execute("INSERT INTO jobs VALUES ('bad', 'running', '{not json', 0, 0)")
    with capture_logs() as logs:
        c = await cluster.start()
    assert "good" in c.jobs and "bad" not in c.jobs
    assert any(e["event"] == "store.unreadable_row" and e["job"] == "bad" for e in logs)


async def test_a_node_failing_the_job_is_left_out_and_the_job_goes_on(cluster: Cluster) -> None:
    c = await cluster.start()
    for n in ("n1", "n2"):
        await cluster.board(n)
    await cluster.submit("j1")
    plan = cluster.retained_plan("j1")
    assert plan is not None and len(plan.assignments) == 2
    rank = next(a.rank for a in plan.assignments if a.node == "n2")
    failed = Heartbeat(
        node="n2", ts=2.0, job="j1", generation=plan.generation, rank=rank, state="failed", message="crash loop: ..."
    )
    await cluster.peer.publish(T.node_heartbeat("n2"), failed)
    await cluster.alive(4, "n1", "n2")
    again = cluster.retained_plan("j1")
    assert again is not None and [a.node for a in again.assignments] == ["n1"]
    status = result_of((await cluster.command("status")).result, StatusResult)
    (job,) = status.jobs
    assert job.state == "running" and job.excluded == {"n2": "crash loop: ..."}
    # the last node fails too: nobody is left, the job fails saying who and why
    failed1 = msgspec.structs.replace(failed, node="n1", rank=0, generation=again.generation, message="disk full")
    await cluster.peer.publish(T.node_heartbeat("n1"), failed1)
    await cluster.alive(1, "n1", "n2")
    assert c.jobs["j1"].state is JobState.FAILED and "n1: disk full" in c.jobs["j1"].reason


async def test_a_node_refusing_the_preflight_is_left_out_and_all_refusing_refuses_the_job(tmp_path: Path) -> None:
    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    cl.tasks[-1].cancel()
    cl.tasks[-1] = asyncio.create_task(
        answer_preflights(cl.broker, T, lambda node, req: "model 'x' is not in training.models" if node == "n2" else "")
    )
    try:
        for n in ("n1", "n2"):
            await cl.board(n)
        reply = await cl.submit("j1")
        assert reply.result["excluded"] == {"n2": "model 'x' is not in training.models"}
        assert list(reply.result["participants"]) == ["n1"]
        await cl.command("cancel", job="j1")
        await cl.peer.publish(T.node_status("n1"), NodeDeath(node="n1", session="s1"), qos=1, retain=True)
        await cl.settle()
        with pytest.raises(CommandFailed) as err:
            await cl.submit("j2")
        assert err.value.code == "conflict" and "refused by every node" in err.value.message
        failed = c.jobs["j2"]  # stored as failed, with the reasons (status and logs show them)
        assert failed.state is JobState.FAILED and failed.excluded == {"n2": "model 'x' is not in training.models"}
        assert (await cl.command("rm", job="j2")).result == {"removed": ["j2"]}
    finally:
        await cl.stop()


async def test_status_pages_fit_a_reply_and_rm_frees_an_id(cluster: Cluster) -> None:
    c = await cluster.start(max_nodes=2000)
    for i in range(600):
        birth = NodeBirth(
            node=f"node-{i:04d}",
            session="s",
            ts=1.0,
            memory_bytes=8 << 30,
            training_address="127.0.0.1",
            device_model="x" * 200,
        )
        await c.in_writer(lambda b=birth: c.ingest(Received(None, b, False, "")))  # type: ignore[arg-type]
    status = result_of((await cluster.command("status")).result, StatusResult)
    assert status.nodes_total == 600 and status.truncated and 0 < len(status.nodes) < 600
    page2 = result_of((await cluster.command("status", offset=len(status.nodes))).result, StatusResult)
    assert page2.nodes[0].node > status.nodes[-1].node
    await cluster.submit("j1")
    with pytest.raises(CommandFailed) as err:
        await cluster.command("rm", job="j1")
    assert err.value.code == "conflict"  # running: cancel first
    await cluster.command("cancel", job="j1")
    assert (await cluster.command("rm", job="j1")).result == {"removed": ["j1"]}
    assert "j1" not in c.jobs and not c.store.exists("j1")
    assert (await cluster.submit("j1")).ok  # the id is free again


async def test_a_heartbeat_from_a_non_participant_or_at_another_rank_changes_nothing(cluster: Cluster) -> None:
    """Before: a forged `failed` heartbeat of a node not in the job failed the job."""
    c = await cluster.start()
    for n in ("n1", "n2", "n3"):
        await cluster.board(n)
    await cluster.submit("j1", global_batch=32)
    plan = cluster.retained_plan("j1")
    assert plan is not None and {a.node for a in plan.assignments} == {"n1", "n2", "n3"}
    await cluster.command("cancel", job="j1")
    await cluster.submit("j2", global_batch=32)
    plan = cluster.retained_plan("j2")
    assert plan is not None
    ranks = {a.node: a.rank for a in plan.assignments}
    outsider = Heartbeat(node="n9", ts=1.0, job="j2", generation=plan.generation, rank=0, state="failed")
    wrong_rank = Heartbeat(
        node="n1", ts=1.0, job="j2", generation=plan.generation, rank=(ranks["n1"] + 1) % 3, state="failed"
    )
    replayed = Heartbeat(node="n1", ts=1.0, job="j2", generation=plan.generation - 1, rank=ranks["n1"], state="failed")
    for hb in (outsider, wrong_rank, replayed):
        await cluster.peer.publish(T.node_heartbeat(hb.node), hb)
    await cluster.settle()
    job = c.jobs["j2"]
    assert job.state is JobState.RUNNING and job.excluded == {} and job.generation == plan.generation
    assert all("j2" not in s.heartbeats for s in c.view.nodes.values())  # none of them was kept
    for i in range(200):  # invented job ids do not grow the coordinator's memory
        await cluster.peer.publish(T.node_heartbeat("n1"), msgspec.structs.replace(outsider, node="n1", job=f"x{i}"))
    await cluster.settle()
    assert len(c.view.nodes["n1"].heartbeats) <= 1


async def test_a_node_declared_dead_by_silence_comes_back_when_it_speaks_again(cluster: Cluster) -> None:
    """A stall of the coordinator (or a flood, or a healed partition) longer than the failure
    detector's 3 s made it declare healthy boards dead for good: their telemetry was ignored
    until a new birth, which a running daemon never sends. Now its own topic speaking again
    brings it back, under the birth it has; a node gone by its will still has to say hello."""
    c = await cluster.start()
    for n in ("n1", "n2"):
        await cluster.board(n)
    cluster.clock.advance(5.0)  # nothing heard for 5 s
    await c.in_writer(c.tick)
    assert not c.view.nodes["n1"].alive and "silent" in c.view.nodes["n1"].death_reason
    await cluster.peer.publish(T.node_telemetry("n1"), Telemetry(node="n1", ts=2.0))
    await cluster.settle()
    assert c.view.nodes["n1"].alive and not c.view.nodes["n2"].alive
    await cluster.peer.publish(T.node_status("n2"), NodeDeath(node="n2", session="s1"), qos=1, retain=True)
    await cluster.settle()
    await cluster.peer.publish(T.node_telemetry("n2"), Telemetry(node="n2", ts=3.0))
    await cluster.settle()
    assert not c.view.nodes["n2"].alive  # its will said its connection is gone: a birth brings it back
    assert (await cluster.submit("j1")).result["participants"].keys() == {"n1"}


async def test_silence_is_judged_by_arrival_and_a_flooding_node_cannot_starve_the_others(cluster: Cluster) -> None:
    c = await cluster.start()
    for n in ("n1", "n3"):
        await cluster.board(n)
    # a message that arrived at t0 but reached the writer 5 s later still counts from t0
    t0 = cluster.clock.monotonic()
    cluster.clock.advance(5.0)
    await c.in_writer(lambda: c.ingest(Received(None, Telemetry(node="n1", ts=1.0), False, ""), t0))  # type: ignore[arg-type]
    assert c.view.nodes["n1"].last_seen <= t0 + 1e-9
    # n3 floods its telemetry: beyond its budget the coordinator drops it before the writer
    for _ in range(2000):
        await cluster.peer.publish(T.node_telemetry("n3"), Telemetry(node="n3", ts=1.0))
    await cluster.settle()
    assert c.dropped >= 1000
    await cluster.peer.publish(T.node_telemetry("n1"), Telemetry(node="n1", ts=2.0))
    await cluster.settle()
    assert c.view.nodes["n1"].last_seen == cluster.clock.monotonic()  # n1 still got through


async def test_a_job_that_keeps_re_forming_without_progress_is_failed_not_replanned_for_ever(cluster: Cluster) -> None:
    """A participant whose worker keeps breaking the group (a hostile rank sending impossible
    state made a job re-plan 19 times in 30 s, for ever): after 10 plans in a row with no step
    completed the job fails, saying so."""
    c = await cluster.start()
    for n in ("n1", "n2"):
        await cluster.board(n)
    await cluster.submit("j1")
    for _ in range(12):
        plan = cluster.retained_plan("j1")
        if plan is None or c.jobs["j1"].terminal:
            break
        lost = Heartbeat(node="n1", ts=1.0, job="j1", generation=plan.generation, rank=0, state="recovering")
        lost = msgspec.structs.replace(lost, rank=next(a.rank for a in plan.assignments if a.node == "n1"))
        await cluster.peer.publish(T.node_heartbeat("n1"), lost)
        await cluster.alive(2, "n1", "n2")
    job = c.jobs["j1"]
    assert job.state is JobState.FAILED and "10 plans in a row without a step completed" in job.reason, job.reason
    assert job.generation == 10


async def test_latency_reports_feed_each_apps_request_rate_forecast_and_the_background_cpu(cluster: Cluster) -> None:
    """The coordinator learns an LC app's request rate from every report (count / window: what
    its forecast is fitted on) and the node's background CPU from its telemetry, also while no
    job runs there."""
    await cluster.start()
    await cluster.board("n1")
    telemetry = Telemetry(node="n1", ts=1.0, cpu_percent=75.0)
    await cluster.peer.publish(T.node_telemetry("n1"), telemetry)
    for k in range(5):
        app = AppLatency(app="det", count=40 + 10 * k, p50_ms=5.0, p95_ms=9.0, p99_ms=10.0, deadline_ms=30.0)
        report = LatencyReport(node="n1", ts=1.0 + k, window_s=2.0, apps=(app,))
        await cluster.peer.publish(T.node_latency("n1"), report)
        await cluster.settle()
        cluster.clock.advance(1.0)
    learn = cluster.c.learning["n1"]
    model = learn.interference["det"]
    assert [round(r, 3) for r in model.rates.history()] == [20.0, 25.0, 30.0, 35.0, 40.0]
    assert model.points  # no job there: every report is an observation of p95 at intensity 0
    assert learn.cpu_bg > 0  # 75 % of its cores busy, little of it the app's
    # a report whose window overlaps the node's own profiling (stressors, a driven request
    # rate) is shown but not learned from
    seen = (list(model.rates.history()), len(model.points), len(model.observed))
    app = AppLatency(app="det", count=400, p50_ms=50.0, p95_ms=90.0, p99_ms=99.0, deadline_ms=30.0)
    await cluster.peer.publish(
        T.node_latency("n1"), LatencyReport(node="n1", ts=9.0, window_s=2.0, apps=(app,), profiling=True)
    )
    await cluster.settle()
    assert (list(model.rates.history()), len(model.points), len(model.observed)) == seen
    assert cluster.c.view.nodes["n1"].latency["det"].p95_ms == 90.0  # shown in status


async def test_lc_reports_whose_window_saw_a_preflight_check_are_not_observations(tmp_path: Path) -> None:
    """A board's pre-flight check (torch imported, the model run, on the board's CPU) raised its
    LC apps' p95 1.5-2x on the 2-vCPU VM (scripts/exp_startup_burst.py); reports over that time
    taught the coordinator's anchor a spread that refused the next job. The coordinator marks
    each board it asks, and a report whose window overlaps the check is not an observation."""
    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await cl.board("n1")
        assert (await cl.submit("j1")).ok
        learn = c.learning_of("n1")
        assert learn.checking is not None and learn.checking[1] is not None  # asked, and answered
        await cl.command("cancel", job="j1")
        await cl.settle()

        def report(p95: float) -> LatencyReport:
            app = AppLatency(app="det", count=100, p50_ms=5.0, p95_ms=p95, p99_ms=p95, deadline_ms=30.0)
            return LatencyReport(node="n1", ts=1.0, window_s=5.0, apps=(app,))

        now = cl.clock.monotonic()
        learn.check_started(now)
        await c.on_latency(report(25.0), now + 1.0)  # during the check
        learn.check_done(now + 2.0)
        await c.on_latency(report(24.0), now + 6.5)  # its window (1.5 .. 6.5 s) still saw it
        await c.on_latency(report(9.0), now + 7.5)  # after: an observation at no training
        model = learn.interference["det"]
        assert [p for _, p in model.points] == [9.0]
        assert [o[3] for o in model.observed] == [9.0]
        assert model.rates.history()  # every report still feeds the request-rate forecast
    finally:
        await cl.stop()


async def test_a_node_put_back_into_a_plan_is_not_steady_on_its_old_generations_training(tmp_path: Path) -> None:
    """A node left out of a plan keeps the training_since of the generation it last trained in
    (a non-participant's heartbeats are not read). Put back into a later plan, its new worker's
    start once passed for steady training at once (the LC bench's diurnal runs re-planned 0.5 s
    after such a re-add): its reports then are not observations and lower no cap until it trains
    a window in the current generation."""
    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await cl.board("n1")
        assert (await cl.submit("j1", epochs=100)).ok
        plan = cl.retained_plan("j1")
        assert plan is not None and [a.node for a in plan.assignments] == ["n1"]
        learn = c.learning_of("n1")
        now = cl.clock.monotonic() + 10.0  # after the window that saw its pre-flight check
        learn.training_since = (plan.generation - 1, now - 100.0)  # trained in an older generation
        limit = learn.cap_limit

        def report(p95: float) -> LatencyReport:
            app = AppLatency(app="det", count=100, p50_ms=5.0, p95_ms=p95, p99_ms=p95, deadline_ms=30.0)
            return LatencyReport(node="n1", ts=1.0, window_s=5.0, apps=(app,))

        await c.on_latency(report(45.0), now)  # its new worker starting: over the deadline
        model = learn.interference["det"]
        assert not model.points and not model.observed and learn.cap_limit == limit
        hb = Heartbeat(node="n1", ts=1.0, job="j1", generation=plan.generation, rank=0, world_size=1, step=1,
                       samples_per_s=10.0, intensity=1.0, step_s=0.3, compute_s=0.3)  # fmt: skip
        await cl.peer.publish(T.node_heartbeat("n1"), hb)
        await cl.settle()
        assert learn.training_since is not None and learn.training_since[0] == plan.generation
        await c.on_latency(report(12.0), learn.training_since[1] + 5.0)  # a window of training in this generation
        assert [p for _, p in model.points] == [12.0]
    finally:
        await cl.stop()


def test_an_lc_hold_doubles_with_each_drop_in_a_row_and_stops_only_improvements() -> None:
    from deepedge.coordinator import _policy as policy

    first = policy.lc_hold(None, 100.0)
    assert first == (100.0 + policy.LC_HOLD_S, 1)
    second = policy.lc_hold(first, 130.0)  # dropped again soon after: twice as long
    assert second == (130.0 + 2 * policy.LC_HOLD_S, 2)
    long = (0.0, 6)
    assert policy.lc_hold(long, 1.0)[0] == 1.0 + policy.LC_HOLD_MAX_S  # at most the maximum
    # (attacker review, 2026-12-06) 1,024 drops in a row, or a remembered count of 2**40, overflowed
    for strikes in (1023, 1024, 2**40):
        until, count = policy.lc_hold((0.0, strikes), 1.0)
        assert until == 1.0 + policy.LC_HOLD_MAX_S and count == policy.MAX_STRIKES
    later = policy.lc_hold(second, second[0] + policy.LC_HOLD_MAX_S + 1.0)  # it stayed in: back to the start
    assert later[1] == 1
    holds = {"n1": (120.0, 1), "n3": (50.0, 1)}
    # an improvement that puts n1 back while it is held; n2 stays in; n3's hold is over
    assert policy.held_back(["n2"], ["n1", "n2", "n3"], holds, 100.0) == ["n1"]
    assert policy.held_back(["n1", "n2"], ["n1", "n2"], holds, 100.0) == []  # kept, not put back
    assert policy.held_back(["n2"], ["n1", "n2"], holds, 120.0) == []


async def test_a_node_left_out_for_its_lc_app_is_not_put_back_by_an_improvement_while_held(tmp_path: Path) -> None:
    """A participant the plan leaves out right after its LC app re-planned the job (lc.violation,
    lc.forecast) is held: an improvement that would put it back waits LC_HOLD_S, twice that after
    a second drop in a row (the LC bench's diurnal runs swapped the job between two boards 39
    times, each re-add undone by the next report); a forced re-plan is not held."""

    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()

    def nodes() -> set[str]:
        return cl.participants("j1")

    try:
        await cl.boards("n1", "n2")
        await cl.alive(4, "n1", "n2")  # past the failure-detection period: ticks act
        assert (await cl.submit("j1", epochs=100)).ok
        assert nodes() == {"n1", "n2"}
        job = c.jobs["j1"]
        events = cl.record_events()
        await c.apply([policy.Replan("j1", "lc.violation n1")])  # n1's app missed: re-plan ...
        await cl.drained("n1", True)  # ... and the plan leaves n1 out
        assert nodes() == {"n2"} and any(e.event == "lc.hold" and e.node == "n1" for e in events)
        until, strikes = c.runtime_of(job).holds["n1"]
        assert strikes == 1 and until == pytest.approx(cl.clock.monotonic() + policy.LC_HOLD_S)
        assert job.plan is not None
        only_n2 = job.plan
        await cl.training("n2", "j1", only_n2.generation, 1)
        decide = cl.back_and_faster("n1", {"n1", "n2"})
        await cl.alive(int(policy.LC_HOLD_S) - 2, "n1", "n2")  # a tick each second: improvements tried
        assert job.plan is only_n2  # held: no improvement
        await cl.alive(3, "n1", "n2")
        assert nodes() == {"n1", "n2"}
        assert any(e.event == "plan.improving" and e.node is None for e in events)
        c.decide = decide  # type: ignore[method-assign,assignment]
        await c.apply([policy.Replan("j1", "lc.forecast n1: det at risk")])  # dropped again, soon after
        await cl.drained("n1", True)
        assert nodes() == {"n2"}
        until, strikes = c.runtime_of(job).holds["n1"]
        assert strikes == 2 and until == pytest.approx(cl.clock.monotonic() + 2 * policy.LC_HOLD_S)
    finally:
        await cl.stop()


async def test_a_restarted_coordinator_remembers_a_nodes_lc_hold_and_cap_limit(tmp_path: Path) -> None:
    """What the LC feedback learned outlives the coordinator (deepedge.coordinator._memory): a
    cap limit lowered for a miss and an LC hold are saved, and the next coordinator — a new
    process, its monotonic clock started elsewhere — holds the node out of improvements for
    what is left of the hold, then plans it at the lowered limit."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await cl.boards("n1", "n2")
        await cl.alive(4, "n1", "n2")
        assert (await cl.submit("j1", epochs=100)).ok
        miss = policy.SetCap("n1", 0.4, 0, cl.clock.monotonic(), "det p95 31 ms > 30 ms; cap lowered to 0.40")
        await c.apply([miss, policy.Replan("j1", "lc.violation n1")])
        await cl.drained("n1", True)  # the plan leaves n1 out: held
        assert cl.participants("j1") == {"n2"}
        until, strikes = c.runtime_of(c.jobs["j1"]).holds["n1"]
        left = until - cl.clock.monotonic()
        assert c.remember_soon  # saved at the next tick: here, now
        await c.remember()
    finally:
        await cl.stop()  # nothing more is saved on the way out: as after a kill -9
    clock = FakeClock(start=50.0, wall_offset=cl.clock.time() + 2.0 - 50.0)  # 2 s later
    again = Cluster(tmp_path / "jobs.db", broker=cl.broker, clock=clock)
    c = await again.start()
    try:
        assert c.learning["n1"].cap_limit == 0.4
        until, strikes = c.runtime["j1"].holds["n1"]
        assert strikes == 1 and until - clock.monotonic() == pytest.approx(left - 2.0, abs=0.2)
        await again.alive(4, "n1", "n2")  # past the restart's detection period
        job = c.jobs["j1"]
        assert job.plan is not None
        await again.training("n2", "j1", job.plan.generation, 1)
        again.back_and_faster("n1", {"n1", "n2"})
        await again.alive(int(left) - 8, "n1", "n2")  # improvements tried each second: held
        assert again.participants("j1") == {"n2"}
        await again.alive(4, "n1", "n2")
        assert again.participants("j1") == {"n1", "n2"}
        assert job.plan is not None
        assert next(a.intensity_cap for a in job.plan.assignments if a.node == "n1") <= 0.4
    finally:
        await again.stop()


async def test_an_improvement_does_not_put_a_node_back_while_its_lc_app_has_no_room_for_a_start(tmp_path: Path) -> None:
    """A plan that puts a node back into a running job starts a worker there, which raised the
    node's LC app a median 1.42x (90 % under START_RISE) in the stored LC-bench runs, 30 of 62
    times over its deadline. So an improvement waits while one of that node's apps reports a p95
    over deadline / START_RISE (said once, lc.no_room), and goes ahead once it is under."""

    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()

    async def report(node: str, p95: float) -> None:  # its app, with a 30 ms deadline
        app = AppLatency(app="det", count=100, p50_ms=5.0, p95_ms=p95, p99_ms=p95, deadline_ms=30.0)
        await cl.peer.publish(T.node_latency(node), LatencyReport(node=node, ts=1.0, window_s=2.0, apps=(app,)))
        await cl.settle()

    def nodes() -> set[str]:
        return cl.participants("j1")

    try:
        await cl.boards("n1", "n2")
        await cl.alive(4, "n1", "n2")
        await cl.drained("n1", True)  # out before the job (no LC hold)
        assert (await cl.submit("j1", epochs=100)).ok
        job = c.jobs["j1"]
        assert nodes() == {"n2"} and job.plan is not None
        only_n2 = job.plan
        events = cl.record_events()
        await cl.training("n2", "j1", only_n2.generation, 1)
        cl.back_and_faster("n1", {"n1", "n2"})
        crowded = 30.0 / policy.START_RISE + 0.5  # a start would take it over 30 ms
        await report("n1", crowded)
        await cl.alive(5, "n1", "n2")  # a tick each second: improvements tried, and held back
        assert job.plan is only_n2
        said = [e.message for e in events if e.event == "lc.no_room"]
        assert len(said) == 1 and f"n1: det at {crowded:.1f} ms of 30.0 ms" in said[0], events
        await report("n1", 30.0 / policy.START_RISE - 0.5)  # room for a start now
        await cl.alive(2, "n1", "n2")
        assert nodes() == {"n1", "n2"}
        assert "plan.improving" in named(events)
    finally:
        await cl.stop()


async def lc_report(cl: Cluster, node: str, p95: float, deadline: float = 30.0, profiling: bool = False) -> None:
    """One latency report of ``node``'s app ``det``."""
    app = AppLatency(app="det", count=100, p50_ms=5.0, p95_ms=p95, p99_ms=p95, deadline_ms=deadline)
    report = LatencyReport(node=node, ts=1.0, window_s=2.0, apps=(app,), profiling=profiling)
    await cl.peer.publish(T.node_latency(node), report)
    await cl.settle()


async def test_a_forecast_job_starts_no_worker_beside_an_lc_app_without_room_for_it(tmp_path: Path) -> None:
    """Not only an improvement: a forecast job's first plan and a forced re-plan (a death) leave
    out a node whose LC app has no room for a worker's start (lc.no_room), and the submit does
    not ask it for a pre-flight (the check imports torch beside the app). Under the LC bench's
    tight deadlines (1.5x alone) the first plan's and a forced re-plan's starts were 25 of
    deepedge's 75 misses (2026-12-04 20:07). The node joins once its app has room."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await cl.boards("n1", "n2", "n3")
        await cl.alive(4, "n1", "n2", "n3")
        crowded = 30.0 / policy.START_RISE + 0.5
        await lc_report(cl, "n1", crowded)
        events = cl.record_events()
        assert (await cl.submit("j1", epochs=100)).ok
        assert cl.participants("j1") == {"n2", "n3"}
        assert sorted(cl.asked) == ["n2", "n3"]  # n1 was not asked for a pre-flight
        said = [e.message for e in events if e.event == "lc.no_room"]
        assert len(said) == 1 and f"n1: det at {crowded:.1f} ms of 30.0 ms" in said[0], events
        job = c.jobs["j1"]
        assert job.plan is not None
        await cl.training("n2", "j1", job.plan.generation, 2)
        await cl.training("n3", "j1", job.plan.generation, 2)
        await cl.peer.publish(T.node_status("n3"), NodeDeath(node="n3", session="s1"), qos=1, retain=True)
        await cl.alive(2, "n1", "n2")  # the forced re-plan: without n3, still without n1
        assert cl.participants("j1") == {"n2"}
        await cl.training("n2", "j1", job.plan.generation, 1)
        await lc_report(cl, "n1", 30.0 / policy.START_RISE - 0.5)  # room now: an improvement adds it
        await cl.alive(3, "n1", "n2")
        assert cl.participants("j1") == {"n1", "n2"}
    finally:
        await cl.stop()


async def test_a_report_that_saw_a_check_or_a_profile_does_not_take_a_nodes_room(tmp_path: Path) -> None:
    """The rule reads each node's last LC report; one whose window saw the node's own pre-flight
    check (a submit's: the check raises the apps 1.5-2x) or its profiling (stressors) says what
    those cost, not the app's room: otherwise the checks a submit asks for would leave the
    checked boards out of the job's first plan (found by a review)."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await cl.boards("n1", "n2")
        await cl.alive(2, "n1", "n2")
        crowded = 30.0 / policy.START_RISE + 0.5
        learn = c.learning_of("n1")
        learn.check_started(cl.clock.monotonic())
        await lc_report(cl, "n1", crowded)
        learn.check_done(cl.clock.monotonic())
        assert c.crowded((), ["n1"]) == {}  # its window saw the check
        cl.clock.advance(learn.window_s + 1.0)
        await lc_report(cl, "n1", crowded)
        assert set(c.crowded((), ["n1"])) == {"n1"}  # a window after it: the app's own
        await lc_report(cl, "n2", crowded, profiling=True)
        assert c.crowded((), ["n2"]) == {}
        await lc_report(cl, "n2", crowded)
        assert set(c.crowded((), ["n2"])) == {"n2"}
    finally:
        await cl.stop()


async def test_a_submit_whose_nodes_with_room_all_refuse_asks_the_others(tmp_path: Path) -> None:
    """The submit skips the pre-flight of nodes without room; if every node it asked refuses,
    it asks those too rather than fail a job other nodes could run (found by a review)."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    await cl.start()
    try:
        await cl.boards("n1", "n2")
        await cl.alive(2, "n1", "n2")
        await lc_report(cl, "n1", 30.0 / policy.START_RISE + 0.5)
        cl.refusals["n2"] = "model 'x' is not in training.models"
        assert (await cl.submit("j1", epochs=100)).ok
        assert cl.asked == ["n2", "n1"] and cl.participants("j1") == {"n1"}
    finally:
        await cl.stop()


async def test_a_job_with_no_room_anywhere_still_starts_and_an_unaware_one_ignores_room(tmp_path: Path) -> None:
    """Where every candidate's LC app lacks room for a start, a forecast job is planned on them
    as before (it must train somewhere; caps still bound each board), and asks them all for a
    pre-flight; the rule is the forecast controller's: a reactive or LC-unaware job asks and
    plans every node whatever its room. The forecast job says it (lc.crowded_start, a warning:
    their apps' reports may go over in the start; it was silent until 2026-12-06)."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    await cl.start()
    try:
        await cl.boards("n1", "n2", "n3")
        await cl.alive(4, "n1", "n2", "n3")
        for node in ("n1", "n2"):
            await lc_report(cl, node, 30.0 / policy.START_RISE + 0.5)
        await cl.drained("n3", True)
        events = cl.record_events()
        assert (await cl.submit("j1", epochs=100)).ok
        assert cl.participants("j1") == {"n1", "n2"} and sorted(cl.asked) == ["n1", "n2"]
        said = [e.message for e in events if e.event == "lc.crowded_start"]
        assert len(said) == 1 and "n1: det at" in said[0] and "n2: det at" in said[0], said
        assert "lc.no_room" not in named(events)  # nothing was left out
        await cl.command("cancel", job="j1")
        await cl.drained("n3", False)
        cl.asked.clear()
        events.clear()
        assert (await cl.submit("j2", epochs=100, lc_control="reactive")).ok
        assert cl.participants("j2") == {"n1", "n2", "n3"} and sorted(cl.asked) == ["n1", "n2", "n3"]
        assert "lc.crowded_start" not in named(events)
    finally:
        await cl.stop()


async def test_a_forced_replan_with_no_plan_but_on_crowded_nodes_starts_on_them_and_says_so(tmp_path: Path) -> None:
    """A forced re-plan (a death) whose only feasible plans bring in nodes whose LC apps lack room
    for a worker's start goes ahead on them (the job must train somewhere) and says so
    (lc.crowded_start, a warning), once for that set of nodes."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await cl.boards("n1", "n2", "n3")
        await cl.alive(4, "n1", "n2", "n3")
        for node in ("n1", "n2"):
            await cl.drained(node, True)
        assert (await cl.submit("j1", epochs=100)).ok
        job = c.jobs["j1"]
        assert cl.participants("j1") == {"n3"} and job.plan is not None
        await cl.training("n3", "j1", job.plan.generation, 1)
        for node in ("n1", "n2"):
            await lc_report(cl, node, 30.0 / policy.START_RISE + 0.5)
            await cl.drained(node, False)
        events = cl.record_events()
        await cl.peer.publish(T.node_status("n3"), NodeDeath(node="n3", session="s1"), qos=1, retain=True)
        await cl.alive(2, "n1", "n2")
        assert cl.participants("j1") == {"n1", "n2"}
        said = [e for e in events if e.event == "lc.crowded_start"]
        assert len(said) == 1 and said[0].fields.get("level") == "warning", events
        assert "n1: det at" in said[0].message and "n2: det at" in said[0].message
    finally:
        await cl.stop()


async def n2_training_then_n1_n3_back(
    cl: Cluster, c: Coordinator, n3_only_without_n1: bool = False, lc_control: str = "forecast"
) -> None:
    """Job j1 planned on n2 alone (n1 and n3 drained), n2 training, then n1 and n3 undrained in
    the view without a re-plan, and every plan of more than one node 10x faster: an improvement
    would put them in. ``n3_only_without_n1``: the planner passes n3 over unless n1 is kept out."""
    await cl.boards("n1", "n2", "n3")
    await cl.alive(4, "n1", "n2", "n3")
    await cl.drained("n1", True)
    await cl.drained("n3", True)
    assert (await cl.submit("j1", epochs=100, lc_control=lc_control)).ok
    job = c.jobs["j1"]
    assert cl.participants("j1") == {"n2"} and job.plan is not None
    await cl.training("n2", "j1", job.plan.generation, 1)
    for node in ("n1", "n3"):
        c.view.nodes[node].birth = msgspec.structs.replace(c.view.nodes[node].birth, drained=False)
    decide = c.decide

    async def faster(j: JobRecord, keep_out: Mapping[str, str] | None = None) -> PlanDecision:
        out = dict(keep_out or {})
        if n3_only_without_n1 and "n1" not in out:
            out["n3"] = "passed over"
        d = await decide(j, out)  # more nodes: much shorter steps
        return dataclasses.replace(d, step_s=d.step_s / 10) if len(d.participants) > 1 else d

    c.decide = faster  # type: ignore[method-assign]


async def test_a_node_without_room_for_a_start_does_not_keep_another_node_out(tmp_path: Path) -> None:
    """The improvement that would add a crowded node is planned again without it: another node
    that has room still joins (one node's LC reports, honest or not, must not hold every
    improvement of the job)."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await n2_training_then_n1_n3_back(cl, c)
        events = cl.record_events()
        crowded = 30.0 / policy.START_RISE + 0.5  # a start would take it over 30 ms
        app = AppLatency(app="det", count=100, p50_ms=5.0, p95_ms=crowded, p99_ms=crowded, deadline_ms=30.0)
        await cl.peer.publish(T.node_latency("n1"), LatencyReport(node="n1", ts=1.0, window_s=2.0, apps=(app,)))
        await cl.alive(2, "n1", "n2", "n3")
        assert "lc.no_room" in named(events)  # the first plan wanted n1
        assert cl.participants("j1") == {"n2", "n3"}
    finally:
        await cl.stop()


async def test_the_improvement_of_a_reactive_job_ignores_room_for_a_start(tmp_path: Path) -> None:
    """The room rule is the forecast controller's: a reactive job's improvement (the LC bench's
    miss-then-back-off baseline) puts a crowded node in, and says no lc.no_room (found by a
    review of the loops' merge, which had applied it to every job)."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await n2_training_then_n1_n3_back(cl, c, lc_control="reactive")
        await lc_report(cl, "n1", 30.0 / policy.START_RISE + 0.5)
        events = cl.record_events()
        await cl.alive(2, "n1", "n2", "n3")
        assert cl.participants("j1") == {"n1", "n2", "n3"}
        assert "lc.no_room" not in named(events) and "plan.improving" in named(events)
    finally:
        await cl.stop()


async def test_an_improvement_planned_without_a_crowded_node_does_not_bring_in_another(tmp_path: Path) -> None:
    """Planned again without one node whose LC app has no room for a start, the improvement may
    choose another node it had passed over; that one's room is checked too (found by a review)."""
    from deepedge.coordinator import _policy as policy

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await n2_training_then_n1_n3_back(cl, c, n3_only_without_n1=True)
        for node in ("n1", "n3"):
            await lc_report(cl, node, 30.0 / policy.START_RISE + 0.5)
        events = cl.record_events()
        await cl.alive(3, "n1", "n2", "n3")
        assert cl.participants("j1") == {"n2"}
        assert "plan.improving" not in named(events)
        await lc_report(cl, "n3", 30.0 / policy.START_RISE - 0.5)  # n3 has room now: it joins
        await cl.alive(2, "n1", "n2", "n3")
        assert cl.participants("j1") == {"n2", "n3"}
    finally:
        await cl.stop()


async def test_an_improvement_that_re_forms_the_group_waits_while_its_start_up_would_eat_the_gain(
    tmp_path: Path,
) -> None:
    """Putting a node back re-forms the group and starts a worker: the new plan's predicted
    start-up (learned from the workers) is a cost the shorter steps must pay back first (a group
    change took 4-12 s on the demo's cluster, where the rule had assumed ~1 s)."""
    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await cl.boards("n1", "n2")
        await cl.alive(4, "n1", "n2")
        await cl.drained("n1", True)
        assert (await cl.submit("j1", epochs=2)).ok  # 20 steps of 3.2 s
        job = c.jobs["j1"]
        assert cl.participants("j1") == {"n2"} and job.plan is not None
        only_n2 = job.plan
        await cl.training("n2", "j1", only_n2.generation, 1)
        cl.back_and_faster("n1", {"n1", "n2"})  # 10x shorter steps: about 57 s saved over the 20
        faster = c.decide
        start_up = 1e6  # counted as REFORM_MAX_S (60 s): more than the shorter steps save

        async def costly(j: JobRecord, keep_out: Mapping[str, str] | None = None) -> PlanDecision:
            return dataclasses.replace(await faster(j, keep_out), startup_s=start_up)

        c.decide = costly  # type: ignore[method-assign]
        await cl.alive(3, "n1", "n2")  # a tick each second: improvements tried
        assert job.plan is only_n2
        start_up = 2.0
        await cl.alive(2, "n1", "n2")
        assert cl.participants("j1") == {"n1", "n2"}
    finally:
        await cl.stop()


async def test_with_no_room_for_lc_apps_the_group_pauses_in_place_instead_of_training_at_an_unsafe_cap(
    tmp_path: Path,
) -> None:
    """A re-plan that finds no feasible plan because LC apps leave no room (an lc.forecast or
    lc.violation re-plan) once left the plan in effect training at the cap just found unsafe
    (the LC bench's diurnal run missed 10 reports in a row so). Now the participants left out for
    their LC app go on at PAUSE_CAP in the same group (no worker restarts) and the job stays
    running, so improvements look for room each second; another cause waits as before."""
    from deepedge.coordinator import _policy as policy
    from deepedge.coordinator.planner import PlanDecision

    assert policy.paused_caps([("a", 0.6), ("b", 0.3)], {"a": "LC app det leaves no room"}) == (
        {"a": policy.PAUSE_CAP, "b": 0.3},
        True,
    )
    assert policy.paused_caps([("a", 0.04)], {"a": "LC app det leaves no room"}) == ({"a": 0.04}, False)
    assert policy.paused_caps([("a", 0.6)], {"a": "drained"}) is None

    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        await cl.board("n1")
        await cl.board("n2")
        assert (await cl.submit("j1", epochs=100)).ok
        job = c.jobs["j1"]
        plan = job.plan
        assert plan is not None and job.state == JobState.RUNNING
        for a in plan.assignments:  # the group trains
            u = a.intensity_cap
            hb = Heartbeat(node=a.node, ts=1.0, job="j1", generation=plan.generation, rank=a.rank, world_size=2,
                           step=1, samples_per_s=10.0, intensity=u, step_s=0.3, compute_s=0.3)  # fmt: skip
            await cl.peer.publish(T.node_heartbeat(a.node), hb)
        await cl.settle()
        events = cl.record_events()
        why = "LC app det is predicted at 21.7 ms p95 (upper quantile) with no training, over 20.3 ms"
        no_room = PlanDecision(feasible=False, reason=f"no node can train (n1: {why})", excluded={"n1": why})
        await c.in_writer(lambda: c.replan(job, no_room))
        paused = cl.retained_plan("j1")
        assert paused is not None and paused.generation == plan.generation + 1 and paused.same_group
        caps = {a.node: a.intensity_cap for a in paused.assignments}
        before = {a.node: a.intensity_cap for a in plan.assignments}
        assert caps == {"n1": policy.PAUSE_CAP, "n2": before["n2"]}
        assert [(a.node, a.share) for a in paused.assignments] == [(a.node, a.share) for a in plan.assignments]
        assert job.state == JobState.RUNNING and "plan.paused" in named(events)
        assert "plan.infeasible" not in named(events)
        await c.in_writer(lambda: c.replan(job, no_room))  # paused already: nothing new, still running
        assert job.plan is not None and job.plan.generation == paused.generation and job.state == JobState.RUNNING
        other = PlanDecision(feasible=False, reason="no node can train (n1: drained)", excluded={"n1": "drained"})
        await c.in_writer(lambda: c.replan(job, other))  # not an LC cause: waits as before
        assert job.state == JobState.RECOVERING and "plan.infeasible" in named(events)
    finally:
        await cl.stop()


async def test_a_surrogate_capped_node_climbs_once_it_reported_at_its_cap(tmp_path: Path) -> None:
    """A board whose LC app has a knowledge-base cap table starts at the cap where the table's
    whole interval meets the deadline; once it has trained there for a latency window and its
    reports show the app where the table's median says, the coordinator publishes a higher cap in
    the same group (``plan.climbing``), not before."""
    from deepedge.profiling import KnowledgeBase, ProfileKey, versions_key
    from tests.test_profiling import _table  # median 10 + 20 u at 20 req/s, upper + 4 ms

    software = {"deepedge": "0.1.0", "torch": "2.13.0", "python": "3.11.7"}
    kb = KnowledgeBase(tmp_path / "knowledge.db")
    pid = kb.profile_id(ProfileKey("Orin NX", "det", versions_key(software)))
    kb.set_model(pid, "test", 0.95, {"median_ape": 0.05, "coverage": 0.95}, [], _table())
    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()
    try:
        for n in ("n1", "n2", "n3"):  # two boards without LC apps: n1's share is small (< 8 % to gain)
            birth = NodeBirth(
                node=n,
                session="s1",
                ts=1.0,
                memory_bytes=8 << 30,
                training_address="127.0.0.1",
                device_model="Orin NX",
                software=software,
                cpu_cores=2,
            )
            await cl.peer.publish(T.node_status(n), birth, qos=1, retain=True)
        await cl.settle()

        async def report(p95: float) -> None:  # 100 requests in a 5 s window: 20 req/s
            app = AppLatency(app="det", count=100, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95, deadline_ms=30.0)
            await cl.peer.publish(T.node_latency("n1"), LatencyReport(node="n1", ts=1.0, window_s=5.0, apps=(app,)))

        for _ in range(20):  # the app alone, where the table's median says (10 ms)
            await report(10.0)
            await cl.settle()
            cl.clock.advance(0.5)
        assert (await cl.submit("j1", epochs=100)).ok
        plan = cl.retained_plan("j1")
        assert plan is not None
        first = {a.node: a.intensity_cap for a in plan.assignments}
        # n1: (14 + 20 u) <= 28.5
        assert first["n2"] == first["n3"] == 1.0 and first["n1"] == pytest.approx(0.725, abs=0.01)
        events = cl.record_events()
        for k in range(16):  # 8 s of training at the caps, reports every 0.5 s, a tick each second
            for a in plan.assignments:
                u = a.intensity_cap
                hb = Heartbeat(
                    node=a.node,
                    ts=1.0,
                    job="j1",
                    generation=plan.generation,
                    rank=a.rank,
                    world_size=3,
                    step=k + 1,
                    samples_per_s=10.0 * u,
                    intensity=u,
                    step_s=0.3,
                    compute_s=0.3,
                )  # fmt: skip  (the rate the coordinator's prior says, 10 samples/s: no plan.improving)
                await cl.peer.publish(T.node_heartbeat(a.node), hb)
            await report(10.0 + 20.0 * first["n1"])  # the table's median at the cap
            await cl.settle()
            cl.clock.advance(0.5)
            if k % 2:
                await c.in_writer(c.tick)
                await cl.settle()
            if k < 10:  # not before a latency window (5 s) of training at the cap: no report there yet
                assert "plan.climbing" not in named(events), (k, named(events))
        assert "plan.climbing" in named(events), named(events)
        climbed = cl.retained_plan("j1")
        assert climbed is not None and climbed.generation > plan.generation and climbed.same_group
        caps = {a.node: a.intensity_cap for a in climbed.assignments}
        assert caps["n1"] >= first["n1"] + 0.05 and caps["n1"] < 1.0 and caps["n2"] == caps["n3"] == 1.0
        assert "plan.improving" not in named(events)  # the step is less than 8 % shorter: the climb's own rule
        # the plan says what its caps were planned from: the table, its rate and the live anchor
        said = [e.fields for e in events if e.event == "plan.published"][-1]["lc_models"]
        assert said.startswith("n1/det: test model at 20.0 req/s") and "live reports" in said, said
    finally:
        await cl.stop()


async def test_a_node_settles_for_a_climb_after_a_window_and_a_steady_report_at_its_cap(cluster: Cluster) -> None:
    """``settled``: trained in the plan's generation for a latency window and CLIMB_SETTLE_S (1 s)
    more, with a steady report at its cap since; ``surrogate_capped``: only with a cap table."""
    c = await cluster.start()
    learn = c.learning_of("n1")
    learn.window_s = 5.0
    assert not c.settled("n1", 2, 100.0)  # never trained
    learn.training_since = (2, 100.0)
    learn.steady_at = 105.0
    assert not c.settled("n1", 3, 200.0)  # another generation
    assert not c.settled("n1", 2, 105.9)  # a window and 1 s: not yet
    assert c.settled("n1", 2, 106.0)
    learn.steady_at = 104.9  # no report since a window after its start (that one mixed the start in)
    assert not c.settled("n1", 2, 120.0)
    assert not c.surrogate_capped("n1") and not c.surrogate_capped("nobody")


async def test_a_node_claiming_a_vanishing_rate_or_latency_fails_no_other_job(cluster: Cluster) -> None:
    """(an attacker's review) A node in no job claimed a profile of 5e-324 samples/s (a legal
    float) and pinned its own cap at 0.3 with an LC report: rate x cap underflowed to 0 and every
    plan of every job raised ZeroDivisionError; a p95 of 5e-324 made log(0) raise the same way.
    Now such a rate counts as MIN_RATE, the p95 is clamped, a node whose LC models fail is only
    unavailable itself, and a submit whose first plan raises fails that job with the reason
    (it stayed `planning` for ever)."""
    from deepedge.broker_schemas import ModelProfile

    c = await cluster.start()
    await cluster.board("n1")
    await cluster.submit("j1")
    await cluster.training("n1", "j1", c.jobs["j1"].generation, 1)
    evil = NodeBirth(node="evil", session="s1", ts=1.0, memory_bytes=8 << 30, training_address="127.0.0.2",
                     profiles={"cnn-small": ModelProfile(samples_per_s=5e-324)})  # fmt: skip
    await cluster.peer.publish(T.node_status("evil"), evil, qos=1, retain=True)
    for p95 in (56.25, 5e-324, 5e-324, 5e-324, 5e-324):
        app = AppLatency(app="x", count=10, p50_ms=50, p95_ms=p95, p99_ms=60, deadline_ms=100.0)
        await cluster.peer.publish(
            T.node_latency("evil"), LatencyReport(node="evil", ts=1.0, window_s=5.0, apps=(app,))
        )
    await cluster.alive(3, "n1", "evil")
    assert c.jobs["j1"].state == JobState.RUNNING, c.jobs["j1"].reason
    await cluster.peer.publish(T.node_status("evil"), NodeDeath(node="evil", session="s1", reason="x"), retain=True)
    await cluster.settle()

    async def broken(job: JobRecord, decision: Any = None) -> None:
        raise KeyError("a bug")

    c.replan = broken  # type: ignore[method-assign]
    with pytest.raises(CommandFailed, match="internal error while planning: KeyError"):
        await cluster.submit("j2")
    assert c.jobs["j2"].state == JobState.FAILED


async def test_a_jobs_progress_counts_the_lc_misses_of_its_own_boards_within_the_wire_bound(cluster: Cluster) -> None:
    """(an attacker's review) Progress summed every live node's LC misses: a node in no job
    reporting 2**53 on two apps made every job's progress undecodable (and with enough nodes the
    sum passed 2**64, encoding raised and the tick loop died). Now only the job's own boards
    count, capped at the wire bound, and a message out of bounds is dropped, never a loop."""
    from deepedge.broker_schemas import MAX_INT, Progress

    c = await cluster.start()
    await cluster.boards("n1", "evil")
    await cluster.drained("evil", True)
    await cluster.submit("j")
    assert cluster.participants("j") == {"n1"}
    for node, n in (("n1", 3), ("evil", 2**53)):
        apps = tuple(
            AppLatency(app=a, count=1, p50_ms=1, p95_ms=1, p99_ms=1, deadline_ms=30.0, violations=n) for a in ("a", "b")
        )
        await cluster.peer.publish(T.node_latency(node), LatencyReport(node=node, ts=1.0, window_s=2.0, apps=apps))
    await cluster.settle()
    await c.in_writer(lambda: c.publish_progress(c.jobs["j"]))
    await cluster.settle()
    progress = decode(T.job_progress("j"), cluster.broker.retained[T.job_progress("j")]).message
    assert isinstance(progress, Progress) and progress.deadline_violations == 6
    c.view.nodes["n1"].latency["a"] = msgspec.structs.replace(c.view.nodes["n1"].latency["a"], violations=MAX_INT)
    await c.in_writer(lambda: c.publish_progress(c.jobs["j"]))
    await cluster.settle()
    progress = decode(T.job_progress("j"), cluster.broker.retained[T.job_progress("j")]).message
    assert isinstance(progress, Progress) and progress.deadline_violations == MAX_INT


async def test_a_jobs_progress_stays_within_the_wire_bounds_whatever_its_participants_report(cluster: Cluster) -> None:
    """(attacker review, 2026-12-06) A participant's 1e-300 samples/s, the only rate reported,
    made the eta 3e304 s and ten losses of 1e300 a mean over 1e300: the coordinator published a
    retained progress no reader could decode. A rate under MIN_RATE is none now, the eta and
    the loss are bounded."""
    from deepedge.broker_schemas import MAX_FLOAT, Progress

    c = await cluster.start()
    await cluster.boards("n1")
    await cluster.submit("j")
    job = c.jobs["j"]
    assert job.plan is not None
    hb = Heartbeat(node="n1", ts=1.0, job="j", generation=job.plan.generation, rank=0, world_size=1, step=1,
                   samples_per_s=1e-300, loss=1e300, intensity=1.0)  # fmt: skip
    await cluster.peer.publish(T.node_heartbeat("n1"), hb)
    await cluster.settle()
    await c.in_writer(lambda: c.publish_progress(job))
    await cluster.settle()
    progress = decode(T.job_progress("j"), cluster.broker.retained[T.job_progress("j")]).message
    assert isinstance(progress, Progress) and progress.eta_s is None
    c.view.nodes["n1"].heartbeats["j"] = msgspec.structs.replace(hb, samples_per_s=MIN_RATE * 1.0001)
    await c.in_writer(lambda: c.publish_progress(job))
    await cluster.settle()
    progress = decode(T.job_progress("j"), cluster.broker.retained[T.job_progress("j")]).message
    assert isinstance(progress, Progress) and progress.eta_s is not None and progress.eta_s <= MAX_FLOAT


async def test_submit_and_status_predict_the_makespan_with_the_workers_start(cluster: Cluster) -> None:
    """A new operator's review: `submit` said "predicted makespan 7 s" where the plan's event
    said 18.2 s (the workers' start-up) and the job took 15.4 s: before a plan's first step the
    summary now counts what the plan predicted, start-up included."""
    c = await cluster.start()
    await cluster.boards("n1", "n2")
    reply = await cluster.submit("j")
    plan = c.jobs["j"].plan
    assert plan is not None and plan.predicted_startup_s > 0
    assert reply.result["predicted_makespan_s"] == pytest.approx(plan.predicted_makespan_s, abs=0.01)


async def test_an_improvement_leaves_out_a_board_whose_reports_say_it_is_being_profiled(tmp_path: Path) -> None:
    """A board being profiled refuses a plan (tests/test_node_supervisor.py), and a refusal keeps
    it out of the job for good (a review: an improvement could add it, the job re-formed twice
    and lost the board). An improvement leaves it out while its LC reports say `profiling`, and
    takes it once one does not."""
    cl = Cluster(tmp_path / "jobs.db")
    c = await cl.start()

    async def report(node: str, profiling: bool) -> None:
        app = AppLatency(app="det", count=100, p50_ms=5.0, p95_ms=6.0, p99_ms=7.0, deadline_ms=30.0)
        msg = LatencyReport(node=node, ts=1.0, window_s=2.0, apps=(app,), profiling=profiling)
        await cl.peer.publish(T.node_latency(node), msg)
        await cl.settle()

    try:
        await cl.boards("n1", "n2")
        await cl.alive(4, "n1", "n2")
        await cl.drained("n1", True)
        assert (await cl.submit("j1", epochs=100)).ok
        job = c.jobs["j1"]
        only_n2 = job.plan
        assert cl.participants("j1") == {"n2"} and only_n2 is not None
        await cl.training("n2", "j1", only_n2.generation, 1)
        cl.back_and_faster("n1", {"n1", "n2"})
        await report("n1", True)
        await cl.alive(5, "n1", "n2")  # improvements tried each second: n1 left out
        assert job.plan is only_n2
        await report("n1", False)
        await cl.alive(2, "n1", "n2")
        assert cl.participants("j1") == {"n1", "n2"}
    finally:
        await cl.stop()


async def test_a_board_that_refuses_a_job_while_being_profiled_is_left_out_for_a_while(cluster: Cluster) -> None:
    """A board being profiled refuses a job's pre-flight and plan. Busy is not unfit: it used to
    be excluded from the job for good (a review: a forced re-plan or a submit during a profile
    lost the board for the whole job). It is now left out for PROFILE_HOLD_S, then asked again;
    its third such refusal in the job excludes it like any other."""
    from deepedge.coordinator._policy import PROFILE_HOLD_S

    c = await cluster.start()
    events = cluster.record_events()
    await cluster.boards("n1", "n2", "n3")
    await cluster.alive(4, "n1", "n2", "n3")
    cluster.refusals["n3"] = f"node n3: profiling: {BEING_PROFILED}"  # as PreflightRunner.refusal words it
    assert (await cluster.submit("j1", epochs=100)).ok
    job = c.jobs["j1"]
    assert cluster.participants("j1") == {"n1", "n2"} and not job.excluded  # n3: held, not excluded
    await cluster.drained("n3", True)  # (out of the way: the rest is about n1)
    decide = c.decide

    async def faster(job: JobRecord, keep_out: Mapping[str, str] | None = None) -> PlanDecision:
        d = await decide(job, keep_out)  # every plan with n1 promises 10x shorter steps
        return dataclasses.replace(d, step_s=d.step_s / 10) if "n1" in d.participants else d

    c.decide = faster  # type: ignore[method-assign]

    async def refuse(plan: Plan | None) -> None:
        assert plan is not None
        rank = next(a.rank for a in plan.assignments if a.node == "n1")
        why = f"n1 refused: {BEING_PROFILED}"
        hb = Heartbeat(node="n1", ts=1.0, job="j1", generation=plan.generation, rank=rank,
                       world_size=len(plan.assignments), state="failed", message=why)  # fmt: skip
        await cluster.peer.publish(T.node_heartbeat("n1"), hb, qos=1)
        await cluster.settle()
        await c.in_writer(c.tick)
        await cluster.settle()

    for strike in (1, 2):
        refused = job.plan
        await refuse(refused)
        await refuse(refused)  # the same refusal again (QoS 1 redelivery, a plan replayed): one strike
        assert "n1" not in cluster.participants("j1") and "n1" not in job.excluded
        held = [e.message for e in events if e.event == "node.held" and e.node == "n1"]
        assert held[-1].startswith("being profiled: left out of this job for 30 s, then asked again")
        assert f"(refusal {strike} of 3 before it is excluded for good)" in held[-1]
        await cluster.training("n2", "j1", job.generation, 1)
        await cluster.alive(PROFILE_HOLD_S - 5, "n1", "n2", "n3")
        assert "n1" not in cluster.participants("j1")  # improvements tried each second: n1 held
        await cluster.alive(10, "n1", "n2", "n3")
        assert "n1" in cluster.participants("j1")  # then an improvement takes it back
    await refuse(job.plan)
    assert job.excluded["n1"] == f"n1 refused: {BEING_PROFILED}" and "n1" not in cluster.participants("j1")
    assert [e.node for e in events if e.event == "node.held"] == ["n3", "n1", "n1"]


async def _one_board_job(cluster: Cluster) -> tuple[JobRecord, Plan]:
    """Job j1 planned on its only board, n1."""
    c = await cluster.start()
    await cluster.boards("n1")
    await cluster.alive(4, "n1")
    assert (await cluster.submit("j1", epochs=100)).ok
    job = c.jobs["j1"]
    assert job.plan is not None
    return job, job.plan


async def _refuse_while_profiled(cluster: Cluster, plan: Plan) -> None:
    """n1 refuses ``plan`` because it is being profiled (the node's own wording)."""
    hb = Heartbeat(node="n1", ts=1.0, job=plan.job, generation=plan.generation, rank=0, world_size=1,
                   state="failed", message=f"n1 refused: {BEING_PROFILED}")  # fmt: skip
    await cluster.peer.publish(T.node_heartbeat("n1"), hb, qos=1)


async def test_a_job_waiting_for_its_only_board_plans_it_again_when_its_profile_hold_ends(cluster: Cluster) -> None:
    """A job whose only board refused it while being profiled waits (recovering) with that board
    held; when the hold ends the job is planned again at once, not after the recovery timeout."""
    from deepedge.coordinator._policy import PROFILE_HOLD_S

    job, first = await _one_board_job(cluster)
    assert cluster.participants("j1") == {"n1"}
    await _refuse_while_profiled(cluster, first)
    await cluster.alive(2, "n1")
    assert job.state == JobState.RECOVERING and job.generation == first.generation and "n1" not in job.excluded
    await cluster.alive(PROFILE_HOLD_S, "n1")
    assert job.generation > first.generation and cluster.participants("j1") == {"n1"}


async def test_a_job_whose_held_board_is_still_profiling_plans_it_when_its_profile_ends(cluster: Cluster) -> None:
    """The hold ends while the board's LC reports still say it is being profiled: no plan takes it
    then; the first report after its profile plans the job again at once, not at the recovery
    timeout (600 s by default)."""
    from deepedge.coordinator._policy import PROFILE_HOLD_S

    def report(profiling: bool) -> LatencyReport:
        app = AppLatency(app="det", count=100, p50_ms=5.0, p95_ms=9.0, p99_ms=9.0, deadline_ms=30.0)
        return LatencyReport(node="n1", ts=1.0, window_s=2.0, apps=(app,), profiling=profiling)

    job, first = await _one_board_job(cluster)
    await cluster.peer.publish(T.node_latency("n1"), report(True))
    await _refuse_while_profiled(cluster, first)
    await cluster.alive(PROFILE_HOLD_S + 5, "n1")
    assert job.state == JobState.RECOVERING and job.generation == first.generation  # still profiling
    await cluster.peer.publish(T.node_latency("n1"), report(False))
    await cluster.alive(1, "n1")
    assert job.state == JobState.RUNNING and cluster.participants("j1") == {"n1"}
    assert job.generation > first.generation
