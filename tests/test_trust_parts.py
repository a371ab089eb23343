"""Trust rules without processes: which plans a node acts on, what a job may name on a board,
what the coordinator takes from a node, and numbers on the wire."""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec
import pytest

from deepedge.broker_schemas import (
    MESSAGE_TYPES,
    Assignment,
    CoordinatorStatus,
    Heartbeat,
    JobSpec,
    Plan,
    SchemaError,
    Topics,
    decode,
    encode,
)
from deepedge.config import TrainingConfig
from deepedge.coordinator._jobs import JobRecord, JobState
from deepedge.coordinator._learning import MAX_RATE, ThroughputModel
from deepedge.coordinator._planner_io import rendezvous_port
from deepedge.job_policy import JobRefused, check_job, check_model
from deepedge.node._plans import PlanGate
from tests.strategies import sample, topic_for

T = Topics("lab")


def plan(job: str = "j", generation: int = 1, session: str = "s1") -> Plan:
    spec = JobSpec(model="cnn-small", dataset="/d", output="/o", epochs=1, global_batch=4, learning_rate=0.1)
    a = Assignment(node="n1", rank=0, share=4, batch_offset=0, intensity_cap=1.0)
    return Plan(
        job=job,
        generation=generation,
        ts=1.0,
        spec=spec,
        rendezvous_host="10.0.0.1",
        rendezvous_port=29500,
        backend="gloo",
        assignments=(a,),
        total_steps=10,
        session=session,
    )


def online(session: str) -> CoordinatorStatus:
    return CoordinatorStatus(state="online", session=session)


# ---- the node's plan gate ----------------------------------------------------------------------


def test_plans_of_a_session_that_is_not_online_are_held_then_taken_when_it_comes_online() -> None:
    gate = PlanGate()
    assert gate.offer(plan(session="s1")) is None  # no coordinator seen yet
    assert [p.generation for p in gate.on_coordinator(online("s1"))] == [1]
    assert gate.offer(plan(generation=2, session="forged")) is None  # another session: never acted on
    assert gate.on_coordinator(online("s1")) == []
    assert gate.offer(plan(generation=2, session="s1")) is not None


def test_a_replayed_older_plan_never_restarts_a_job_and_the_same_generation_is_adopted_as_is() -> None:
    gate = PlanGate()
    gate.on_coordinator(online("s1"))
    assert gate.offer(plan(generation=3)) is not None
    assert gate.offer(plan(generation=2)) is None  # replayed older generation
    assert gate.offer(plan(generation=3)) is None  # repeated (retained) generation
    gate.on_coordinator(CoordinatorStatus(state="offline", session="s1"))
    assert gate.offer(plan(generation=4)) is None  # nothing new while the coordinator is away
    assert gate.on_coordinator(online("s2")) == []  # its own session's plans only
    assert gate.offer(plan(generation=3, session="s2")) is None  # republished by a new session: adopted
    assert gate.offer(plan(generation=4, session="s2")) is not None


def test_the_gate_is_bounded() -> None:
    gate = PlanGate(max_jobs=10)
    gate.on_coordinator(online("s1"))
    for i in range(100):
        gate.offer(plan(job=f"j{i}"))
        gate.offer(plan(job=f"h{i}", session="other"))
    assert len(gate._seen) == 10 and len(gate._held) == 10


# ---- what a job may name on a board --------------------------------------------------------------


def policy(tmp: Path, **kw: object) -> TrainingConfig:
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "out").mkdir(exist_ok=True)
    return TrainingConfig(data_roots=(str(tmp / "data"),), output_root=str(tmp / "out"), **kw)  # type: ignore[arg-type]


def test_models_come_from_the_boards_allow_list(tmp_path: Path) -> None:
    p = policy(tmp_path, model_modules=("acme.vision",))
    check_model("cnn-small", p)
    check_model("acme.vision.nets:build", p)
    for bad, key in [
        ("evil", "training.models"),
        ("os:system", "training.model_modules"),
        ("acme.visionx:build", "training.model_modules"),
        ("acme:build", "training.model_modules"),
    ]:
        with pytest.raises(JobRefused, match=key):
            check_model(bad, p)


def test_paths_must_lie_inside_the_roots_after_symlinks(tmp_path: Path) -> None:
    p = policy(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, tmp_path / "data" / "link")

    def spec(**kw: str) -> JobSpec:
        args = {"dataset": str(tmp_path / "data" / "set"), "output": str(tmp_path / "out" / "j1")} | kw
        return JobSpec(model="cnn-small", epochs=1, global_batch=4, learning_rate=0.1, **args)  # type: ignore[arg-type]

    checked = check_job(spec(), p)
    assert checked.output == tmp_path / "out" / "j1"
    for bad, key in [
        (spec(dataset="/etc"), "training.data_roots"),
        (spec(dataset=str(tmp_path / "data" / ".." / "elsewhere")), "training.data_roots"),
        (spec(dataset=str(tmp_path / "data" / "link" / "x")), "training.data_roots"),  # a symlink out
        (spec(output="/root/out"), "training.output_root"),
        (spec(output="relative/out"), "absolute"),
        (spec(base_checkpoint="/etc/shadow"), "training.data_roots"),
    ]:
        with pytest.raises(JobRefused, match=key):
            check_job(bad, p)


# ---- what the coordinator takes from a node ------------------------------------------------------


def test_a_nodes_rate_claim_is_clamped() -> None:
    m = ThroughputModel(prior=10.0)
    m.observe(1e300, 1.0)
    assert m.rate == MAX_RATE
    m = ThroughputModel(prior=10.0)
    m.observe(100.0, 1.0)
    m.observe(1e9, 1.0)
    assert m.rate <= 0.7 * 100 + 0.3 * 1000 + 1e-9  # one claim counts at most 10x the estimate
    m.observe(math.nan, 1.0)
    m.observe(5.0, math.nan)
    assert math.isfinite(m.rate)


def test_rendezvous_ports_never_collide_between_running_jobs_and_move_on_each_generation() -> None:
    spec = JobSpec(model="cnn-small", dataset="/d", output="/o", epochs=1, global_batch=4, learning_rate=0.1)
    jobs = [JobRecord(job=f"j{i}", spec=spec, dataset_size=8, model_bytes=0, state=JobState.RUNNING) for i in range(3)]
    for job in jobs:
        port = rendezvous_port(job, jobs, 29500, 4)
        job.plan = msgspec.structs.replace(plan(job.job), rendezvous_port=port)
    ports = [j.plan.rendezvous_port for j in jobs if j.plan]
    assert len(set(ports)) == 3 and all(29500 <= p < 29504 for p in ports)
    nxt = rendezvous_port(jobs[0], jobs, 29500, 4)
    assert nxt not in ports  # a new generation never takes its predecessor's (or another job's) port
    jobs[2].state = JobState.COMPLETED
    assert rendezvous_port(jobs[0], jobs, 29500, 3) == ports[2]  # a finished job's port is free again
    jobs[2].state = JobState.RUNNING
    jobs[0].plan = None  # a new job, while the other two hold both ports of a range of 2
    jobs[1].plan = msgspec.structs.replace(plan("j1"), rendezvous_port=29500)
    jobs[2].plan = msgspec.structs.replace(plan("j2"), rendezvous_port=29501)
    with pytest.raises(ValueError, match="rendezvous_ports"):
        rendezvous_port(jobs[0], jobs, 29500, 2)


# ---- numbers on the wire ---------------------------------------------------------------------


def _float_paths(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    match value:
        case float():
            return [path]
        case dict():
            return [p for k, v in value.items() for p in _float_paths(v, (*path, k))]
        case list():
            return [p for i, v in enumerate(value) for p in _float_paths(v, (*path, i))]
    return []


def _set(tree: object, path: tuple[object, ...], value: float) -> None:
    for key in path[:-1]:
        tree = tree[key]  # type: ignore[index]
    tree[path[-1]] = value  # type: ignore[index]


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_no_float_field_of_any_message_takes_nan_or_infinity(cls: type[msgspec.Struct]) -> None:
    import random

    rng = random.Random(7)
    checked = 0
    for _ in range(40):
        msg = sample(cls, rng)
        tree = msgspec.to_builtins(msg)
        topic = topic_for(T, msg)
        for path in _float_paths(tree):
            if path and path[0] == "result":  # a reply's free-form result (decoded by its requester)
                continue
            for bad in (math.nan, math.inf, -math.inf):
                tampered = msgspec.msgpack.decode(msgspec.msgpack.encode(tree))
                _set(tampered, path, bad)
                with pytest.raises(SchemaError):
                    decode(topic, msgspec.msgpack.encode(tampered))
                checked += 1
        decode(topic, encode(msg))
    if cls.__name__ in ("Telemetry", "Heartbeat", "Plan", "Progress", "LatencyReport"):
        assert checked > 0


def test_integers_beyond_2_53_are_refused() -> None:
    hb = msgspec.to_builtins(Heartbeat(node="n1", ts=1.0, job="j", generation=1, rank=0))
    for field in ("generation", "rank", "step", "world_size"):
        tampered = dict(hb, **{field: 2**64 - 1})
        with pytest.raises(SchemaError):
            decode(T.node_heartbeat("n1"), msgspec.msgpack.encode(tampered))
    p = msgspec.to_builtins(plan())
    p["spec"]["seed"] = 2**40  # beyond what torch.Generator seeds derive from
    with pytest.raises(SchemaError):
        decode(T.job_plan("j"), msgspec.msgpack.encode(p))


def test_the_default_model_allow_list_is_the_registry() -> None:
    from deepedge.config import BUILTIN_MODELS
    from deepedge.training._models import _REGISTRY

    assert set(BUILTIN_MODELS) == set(_REGISTRY)


def test_an_event_speaks_only_for_the_source_its_topic_names() -> None:
    from deepedge.broker_schemas import Event

    ev = Event(ts=1.0, source="node/n2", event="job.refused", node="n2")
    with pytest.raises(SchemaError) as err:
        decode(T.events("n1"), encode(ev))  # n1's topic, n2's name
    assert err.value.reason.value == "id_mismatch"
    with pytest.raises(SchemaError):
        decode(T.events(), encode(ev))  # the coordinator's topic
    assert decode(T.events("n2"), encode(ev)).message == ev


def test_the_rendezvous_is_rank_0s_own_training_address_and_a_node_without_one_cannot_train() -> None:
    from deepedge.broker_schemas import NodeBirth
    from deepedge.coordinator import ClusterView
    from deepedge.coordinator._learning import NodeLearning
    from deepedge.coordinator._planner_io import node_models, to_plan
    from deepedge.coordinator.planner import Planner

    view = ClusterView()
    for node, addr in (("a", "10.0.0.7"), ("b", "evil.example.com"), ("c", "")):
        view.on_birth(
            NodeBirth(node=node, session="s", ts=1.0, memory_bytes=8 << 30, hostname="attacker.example",
                      training_address=addr),
            0.0,
        )  # fmt: skip
    spec = JobSpec(model="cnn-small", dataset="/d", output="/o", epochs=1, global_batch=8, learning_rate=0.1)
    job = JobRecord(job="j", spec=spec, dataset_size=80, model_bytes=0)
    learning = {n: NodeLearning(ThroughputModel(prior=10.0)) for n in "abc"}
    models = {m.node: m for m in node_models(view, learning, job)}
    assert not models["a"].unavailable
    assert "training address" in models["b"].unavailable and "training address" in models["c"].unavailable
    decision = Planner().plan(list(models.values()), job_model_of(job))
    assert decision.participants == ("a",) and "training address" in decision.excluded["b"]
    plan = to_plan(job, decision, view, 1, 29500, 1.0, "sess")
    assert plan.rendezvous_host == "10.0.0.7" and plan.session == "sess"


def job_model_of(job: JobRecord) -> object:
    from deepedge.coordinator._planner_io import job_model

    return job_model(job)


def test_checkpoints_are_loaded_only_on_a_torch_whose_weights_only_loader_is_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from deepedge.training import TrainingError
    from deepedge.training._files import load_weights, safe_torch

    assert not safe_torch("2.5.1") and not safe_torch("2.3.0+cu121") and not safe_torch("1.13.0")
    assert safe_torch("2.6.0") and safe_torch("2.13.0+cpu") and safe_torch("3.0.0a0")
    path = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(2)}, path)
    assert torch.equal(load_weights(path, "checkpoint")["x"], torch.zeros(2))
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(TrainingError, match="CVE-2025-32434"):
        load_weights(path, "checkpoint")
