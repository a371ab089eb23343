"""The coordinator (its writer, policy and planner) driven by hypothesis through random
sequences of what happens to a cluster — births, deaths, drains, submits, cancels, heartbeats
(forged, replayed and out of range among them), worker failures and completions, LC reports,
time passing, coordinator restarts, removals — on the in-memory broker and a fake clock.

After every step: nothing escaped (the writer and its feeders are alive, no unit or action
failed), no retained plan exists for a finished or unknown job, every retained plan is the
stored one (the store is never behind the broker), no job is left recovering past the recovery
timeout, and every bounded structure is within its bound. ``DEEPEDGE_MACHINE_EXAMPLES`` runs
more (a nightly-style run); the default keeps CI in seconds."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from structlog.testing import capture_logs

from deepedge.broker_schemas import (
    AppLatency,
    CommandRequest,
    Heartbeat,
    JobState,
    LatencyReport,
    NodeBirth,
    NodeDeath,
    Plan,
    Telemetry,
    Topics,
    decode,
    encode,
)
from deepedge.config import Config, CoordinatorConfig
from deepedge.coordinator import Coordinator, JobStore
from deepedge.coordinator._commands import handle_command
from deepedge.coordinator._learning import MAX_APPS
from deepedge.coordinator._service import MAX_FINISHED_IN_MEMORY
from deepedge.testing import FakeClock, answer_preflights
from deepedge.transport import CommandFailed, FakeBroker, FakeTransport

NODES = [f"n{i}" for i in range(5)]
JOBS = [f"j{i}" for i in range(4)]
T = Topics("default")
RECOVERY_TIMEOUT_S = 30.0
EXAMPLES = int(os.environ.get("DEEPEDGE_MACHINE_EXAMPLES", "200"))


class CoordinatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="machine-"))
        self.broker = FakeBroker()
        self.clock = FakeClock()
        self.sessions: dict[str, str] = {}  # node -> its live session
        self.drained: set[str] = set()
        self.restarts = 0
        self.logs = capture_logs()
        self.captured = self.logs.__enter__()
        self.peer = FakeTransport(self.broker, client_id="nodes")
        self.run(self.peer.__aenter__())
        self.tasks: list[asyncio.Task[Any]] = []
        self.boards = self.loop.create_task(answer_preflights(self.broker, T, self.verdict))
        self.start_coordinator()

    # ---- plumbing ---------------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def verdict(self, node: str, req: CommandRequest) -> str:
        return "dataset /data/x: no such file" if node == "n4" else ""

    def start_coordinator(self) -> None:
        config = Config(
            coordinator=CoordinatorConfig(
                db=str(self.dir / "jobs.db"),
                node_interval_s=1.0,
                recovery_timeout_s=RECOVERY_TIMEOUT_S,
                preflight_timeout_s=1.0,
                max_nodes=4,
            )
        )
        self.transport = FakeTransport(self.broker, client_id=f"coordinator-{self.restarts}")
        self.run(self.transport.__aenter__())
        self.c = Coordinator(config, self.transport, JobStore(self.dir / "jobs.db"), clock=self.clock)
        self.tasks = [
            self.loop.create_task(self.c.writer_loop()),
            self.loop.create_task(self.c.ingest_loop()),
            self.loop.create_task(self.c.plan_watch_loop()),
        ]
        self.settle()
        self.run(self.transport.publish(T.coordinator_status(), self.c.status_message(), qos=1, retain=True))
        self.run(self.c.in_writer(self.c.reconcile))
        self.settle()

    def stop_coordinator(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.run(asyncio.gather(*self.tasks, return_exceptions=True))
        self.run(self.transport.__aexit__(None, None, None))
        self.c.close()
        self.c.store.close()

    def settle(self) -> None:
        """Let every queued message reach the coordinator and every unit run."""

        async def drain() -> None:
            for _ in range(3):
                for _ in range(20):
                    await asyncio.sleep(0)
                await self.c.in_writer(_noop)

        self.run(drain())

    def publish(self, topic: str, payload: bytes) -> None:
        self.run(self.peer.publish_raw(topic, payload))
        self.settle()

    def command(self, verb: str, args: dict[str, Any]) -> Any:
        req = CommandRequest(request_id="r1", reply_to="op", args=args)
        try:
            return self.run(handle_command(self.c, verb, req))
        except CommandFailed as exc:
            return exc
        finally:
            self.settle()

    def tick(self) -> None:
        self.run(self.c.in_writer(self.c.tick))
        self.settle()

    def teardown(self) -> None:
        self.stop_coordinator()
        self.boards.cancel()
        self.run(asyncio.gather(self.boards, return_exceptions=True))
        self.run(self.peer.__aexit__(None, None, None))
        self.loop.close()
        self.logs.__exit__(None, None, None)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- what happens to a cluster ----------------------------------------------------------

    @rule(node=st.sampled_from(NODES), new_session=st.booleans())
    def birth(self, node: str, new_session: bool) -> None:
        if new_session or node not in self.sessions:
            self.sessions[node] = f"s{len(self.sessions)}{node}{self.clock.monotonic():.0f}"
        birth = NodeBirth(
            node=node,
            session=self.sessions[node],
            ts=self.clock.time(),
            memory_bytes=8 << 30,
            training_address="127.0.0.1",
            drained=node in self.drained,
        )
        self.publish(T.node_status(node), encode(birth))

    @rule(node=st.sampled_from(NODES), stale=st.booleans())
    def death(self, node: str, stale: bool) -> None:
        session = "stale" if stale or node not in self.sessions else self.sessions.pop(node)
        self.publish(T.node_status(node), encode(NodeDeath(node=node, session=session, reason="lost")))

    @rule(node=st.sampled_from(NODES))
    def telemetry(self, node: str) -> None:
        self.publish(T.node_telemetry(node), encode(Telemetry(node=node, ts=self.clock.time())))

    @rule(node=st.sampled_from(NODES), drain=st.booleans())
    def drain(self, node: str, drain: bool) -> None:
        (self.drained.add if drain else self.drained.discard)(node)
        if node in self.sessions:
            self.birth(node, new_session=False)

    @initialize()
    def boards_come_up(self) -> None:
        for node in NODES[:3]:
            self.birth(node, new_session=True)

    @rule(
        job=st.sampled_from(JOBS),
        epochs=st.sampled_from([1, 2, 3]),
        batch=st.sampled_from([8, 64]),
        size=st.sampled_from([256, 1000]),
        split=st.sampled_from(["planned", "planned", "uniform"]),
    )
    def submit(self, job: str, epochs: int, batch: int, size: int, split: str) -> None:
        self._submit(job, epochs, batch, size, split)

    @rule(
        job=st.sampled_from(JOBS),
        epochs=st.sampled_from([10**6, 2**40, 2**53]),
        batch=st.sampled_from([1, 100_000]),
        size=st.sampled_from([64, 10**9]),
    )
    def submit_absurd(self, job: str, epochs: int, batch: int, size: int) -> None:
        self._submit(job, epochs, batch, size, "planned")

    def _submit(self, job: str, epochs: int, batch: int, size: int, split: str) -> None:
        args = {
            "job": job,
            "model": "cnn-small",
            "dataset": "/data/x",
            "output": "/out/x",
            "epochs": epochs,
            "global_batch": batch,
            "learning_rate": 0.1,
            "dataset_size": size,
            "split": split,
        }
        self.command("submit", args)

    @rule(job=st.sampled_from(JOBS))
    def cancel(self, job: str) -> None:
        self.command("cancel", {"job": job})

    @rule(job=st.sampled_from(JOBS))
    def remove(self, job: str) -> None:
        self.command("rm", {"job": job})

    @rule(
        job=st.sampled_from(JOBS),
        node=st.sampled_from(NODES),
        kind=st.sampled_from(["training", "done", "failed", "recovering", "forged", "replayed", "garbage"]),
        step=st.integers(0, 2**53),
    )
    def heartbeat(self, job: str, node: str, kind: str, step: int) -> None:
        record = self.c.jobs.get(job)
        plan = record.plan if record is not None else None
        mine = next((a for a in plan.assignments if a.node == node), None) if plan else None
        rank = mine.rank if mine else 0
        generation = plan.generation if plan else 1
        if kind == "forged":  # a node that is not in the plan, or at the wrong rank
            rank += 1
        if kind == "replayed":
            generation = max(0, generation - 1)
        state = kind if kind in ("training", "done", "failed", "recovering") else "training"
        beat = Heartbeat(
            node=node,
            ts=self.clock.time(),
            job=job,
            generation=generation,
            rank=rank,
            step=step,
            samples_per_s=50.0,
            intensity=1.0,
            state=state,  # type: ignore[arg-type]
            message="its worker failed" if state == "failed" else "",
        )
        payload = encode(beat)
        if kind == "garbage":  # out of range: refused by the codec, never reaches the coordinator
            raw = msgspec.msgpack.decode(payload)
            raw["samples_per_s"] = float("nan")
            payload = msgspec.msgpack.encode(raw)
        self.publish(T.node_heartbeat(node), payload)

    def _everyone(self, job: str, state: str, step: int) -> None:
        record = self.c.jobs.get(job)
        if record is None or record.plan is None or record.terminal:
            return
        for a in record.plan.assignments:
            beat = Heartbeat(
                node=a.node,
                ts=self.clock.time(),
                job=job,
                generation=record.generation,
                rank=a.rank,
                step=step,
                samples_per_s=40.0 + a.rank,
                intensity=a.intensity_cap,
                state=state,  # type: ignore[arg-type]
            )
            self.run(self.peer.publish_raw(T.node_heartbeat(a.node), encode(beat)))
        self.settle()

    @rule(job=st.sampled_from(JOBS), fraction=st.sampled_from([0.1, 0.5, 0.9]))
    def participants_train(self, job: str, fraction: float) -> None:
        record = self.c.jobs.get(job)
        if record is not None:
            self._everyone(job, "training", int(record.total_steps * fraction))

    @rule(job=st.sampled_from(JOBS))
    def participants_finish(self, job: str) -> None:
        record = self.c.jobs.get(job)
        if record is not None:
            self._everyone(job, "done", record.total_steps)

    @rule(node=st.sampled_from(NODES), p95=st.sampled_from([5.0, 45.0, 200.0]))
    def latency(self, node: str, p95: float) -> None:
        app = AppLatency(app="det", count=20, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 1.2, deadline_ms=50.0)
        report = LatencyReport(node=node, ts=self.clock.time(), window_s=2.0, apps=(app,))
        self.publish(T.node_latency(node), encode(report))

    @rule(seconds=st.sampled_from([0.3, 1.0, 4.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        for node in self.sessions:  # live nodes keep talking
            self.run(self.peer.publish_raw(T.node_telemetry(node), encode(Telemetry(node=node, ts=self.clock.time()))))
        self.settle()
        self.clock.advance(seconds)
        self.tick()

    @precondition(lambda self: self.restarts < 3)
    @rule()
    def coordinator_restarts(self) -> None:
        self.stop_coordinator()
        self.restarts += 1
        self.start_coordinator()

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def nothing_escaped(self) -> None:
        for t in self.tasks:
            assert not t.done(), t
        failures = [e for e in self.captured if e["event"] in ("writer.unit_failed", "action.failed", "replan.failed")]
        assert failures == []

    @invariant()
    def the_broker_follows_the_store(self) -> None:
        stored = {j.job: j for j in self.c.store.load_all()[0]}
        for topic, payload in self.broker.retained.items():
            if "/job/" not in topic or not topic.endswith("/plan"):
                continue
            plan = decode(topic, payload).message
            assert isinstance(plan, Plan)
            record = stored.get(plan.job)
            assert record is not None and not record.terminal, f"retained plan of {plan.job}: {record}"
            assert record.plan is not None and record.generation == plan.generation, (record.generation, plan)

    @invariant()
    def no_job_recovers_forever(self) -> None:
        now = self.clock.monotonic()
        for job in self.c.jobs.values():
            if job.state == JobState.RECOVERING:
                since = self.c.runtime_of(job).state_since
                assert now - since <= RECOVERY_TIMEOUT_S, (job.job, now - since)

    @invariant()
    def bounded(self) -> None:
        c = self.c
        assert len(c.view.nodes) <= c.cfg.max_nodes
        live_pairs = {(a.node, j.job) for j in c.jobs.values() if not j.terminal and j.plan for a in j.plan.assignments}
        for state in c.view.nodes.values():
            assert {(state.node, job) for job in state.heartbeats} <= live_pairs
        assert all(len(learn.interference) <= MAX_APPS for learn in c.learning.values())
        # what was learned of the nodes in the view, and of those a restart recalled (bounded too)
        assert len(c.learning) <= c.cfg.max_nodes
        assert sum(j.terminal for j in c.jobs.values()) <= MAX_FINISHED_IN_MEMORY
        assert set(c.runtime) <= {j.job for j in c.jobs.values() if not j.terminal} | set(c.jobs)


async def _noop() -> None:
    return None


CoordinatorMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCoordinatorMachine = CoordinatorMachine.TestCase
