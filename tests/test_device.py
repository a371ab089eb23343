"""Where a board trains and what its torch can do, without a GPU: device resolution, the backend
choice, the memory arithmetic (deepedge/devices.py), the
torch probe (deepedge/training/probe.py) and its answer in the node's birth
(deepedge/node/_torch_probe.py), the coordinator's use of it (a board that cannot all-reduce is
excluded with the reason; the plan's backend), and that ``import deepedge.training`` leaves torch
unloaded."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import msgspec
import pytest

import deepedge.training
from deepedge.broker_schemas import JobSpec, NodeBirth, TorchInfo
from deepedge.config import TrainingConfig
from deepedge.devices import (
    BackendChoice,
    DeviceError,
    DeviceMemory,
    Participant,
    choose_backend,
    device_kind,
    fit_memory,
    jetson_memory,
    max_share,
    memory_fraction,
    read_meminfo,
    resolve_device,
)
from deepedge.node._torch_probe import probe_command, run_probe, torch_info
from deepedge.training.probe import l4t_release

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
    )


# --- the package does not load torch until a torch-using name is used -----------------------


def test_importing_the_package_does_not_import_torch() -> None:
    r = run_python("import deepedge.training, sys; assert 'torch' not in sys.modules")
    assert r.returncode == 0, r.stderr


def test_the_worker_module_and_the_accounting_names_do_not_import_torch() -> None:
    r = run_python(
        "import sys, deepedge.training.worker, deepedge.devices, deepedge.training.probe\n"
        "from deepedge.training import verify_accounting, step_timing, TrainingError, AccountingLog\n"
        "assert 'torch' not in sys.modules, 'torch loaded'"
    )
    assert r.returncode == 0, r.stderr


def test_a_lazy_name_loads_torch_after_omp_wait_policy_is_set() -> None:
    r = run_python(
        "import os, sys\n"
        "import deepedge.training as t\n"
        "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n"
        "assert 'torch' not in sys.modules\n"
        "f = t.build_model\n"
        "assert 'torch' in sys.modules and 'build_model' in vars(t)\n"
        "print(f.__module__)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "deepedge.training._models"


def test_an_operator_set_omp_wait_policy_is_kept() -> None:
    r = run_python("import os, deepedge.training; print(os.environ['OMP_WAIT_POLICY'])", {"OMP_WAIT_POLICY": "ACTIVE"})
    assert r.stdout.strip() == "ACTIVE", r.stderr


def test_every_public_name_resolves_and_dir_lists_it() -> None:
    for name in deepedge.training.__all__:
        assert getattr(deepedge.training, name) is not None
    assert set(deepedge.training.__all__) <= set(dir(deepedge.training))
    with pytest.raises(AttributeError, match="no_such_name"):
        deepedge.training.no_such_name  # noqa: B018


# --- training.device --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "cuda", "count", "expected"),
    [
        ("auto", False, 0, "cpu"),
        ("auto", True, 0, "cpu"),  # is_available() true but no device: nothing to train on
        ("auto", True, 2, "cuda:0"),
        ("cpu", True, 2, "cpu"),
        ("cuda", True, 1, "cuda:0"),
        ("cuda:1", True, 2, "cuda:1"),
        (" CUDA:0 ", True, 1, "cuda:0"),
        ("Auto", True, 1, "cuda:0"),
    ],
)
def test_resolve_device(setting: str, cuda: bool, count: int, expected: str) -> None:
    assert resolve_device(setting, cuda, count) == expected


@pytest.mark.parametrize(
    ("setting", "cuda", "count", "message"),
    [
        ("cuda", False, 0, "sees no CUDA device"),
        ("cuda:0", False, 4, "sees no CUDA device"),  # devices counted, but CUDA unusable
        ("cuda:1", True, 1, r"has 1 CUDA device\(s\): cuda:0$"),
        ("cuda:2", True, 2, r"has 2 CUDA device\(s\): cuda:0 to cuda:1"),
        ("gpu", True, 1, "must be auto, cpu, cuda or cuda:N"),
        ("cuda:-1", True, 1, "must be auto, cpu, cuda or cuda:N"),
        ("cuda:x", True, 1, "must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_resolve_device_refuses_what_the_board_cannot_do(setting: str, cuda: bool, count: int, message: str) -> None:
    with pytest.raises(DeviceError, match=message) as info:
        resolve_device(setting, cuda, count)
    assert "training.device" in str(info.value)
    assert info.value.setting == "training.device"
    assert info.value.exit_code == 78  # a configuration error: systemd must not restart in a loop


def test_device_kind() -> None:
    assert device_kind("cpu", integrated=True) == "cpu"
    assert device_kind("cuda:0", integrated=False) == "cuda"
    assert device_kind("cuda:0", integrated=True) == "jetson"


# --- training.backend -------------------------------------------------------------------------

GPU = Participant("a", "cuda", nccl=True)
GPU2 = Participant("b", "cuda", nccl=True)
GPU_NO_NCCL = Participant("c", "cuda", nccl=False)
JETSON = Participant("orin", "jetson", nccl=True)
CPU = Participant("pi", "cpu", nccl=False)


def test_auto_picks_nccl_only_when_every_participant_has_a_discrete_gpu_with_nccl() -> None:
    assert choose_backend("auto", [GPU, GPU2]) == BackendChoice(
        "nccl", "auto: nccl, every participant trains on a discrete GPU with NCCL", host_staged=False
    )
    assert choose_backend("auto", [GPU]).backend == "nccl"


@pytest.mark.parametrize(
    ("others", "reason"),
    [
        ([CPU], "node 'pi' trains on its CPU"),
        ([JETSON], "node 'orin' trains on a Jetson's integrated GPU"),
        ([GPU_NO_NCCL], "node 'c' has a torch without NCCL"),
        ([CPU, JETSON], "node 'pi' trains on its CPU (and 1 more)"),
    ],
)
def test_auto_falls_back_to_host_staged_gloo_and_says_why(others: list[Participant], reason: str) -> None:
    choice = choose_backend("auto", [GPU, *others])
    assert choice.backend == "gloo"
    assert choice.host_staged
    assert reason in choice.reason


def test_an_all_cpu_job_uses_gloo_without_staging() -> None:
    assert choose_backend("auto", [CPU, Participant("pi2", "cpu", nccl=False)]) == BackendChoice(
        "gloo", "auto: gloo, node 'pi' trains on its CPU (and 1 more)", host_staged=False
    )


def test_gloo_forced_stays_gloo() -> None:
    assert choose_backend("gloo", [GPU, GPU2]) == BackendChoice("gloo", "training.backend = gloo", host_staged=True)
    assert not choose_backend("GLOO", [CPU]).host_staged


def test_nccl_forced_where_possible() -> None:
    assert choose_backend("nccl", [GPU, GPU2]).backend == "nccl"


@pytest.mark.parametrize(("bad", "node"), [(CPU, "pi"), (JETSON, "orin"), (GPU_NO_NCCL, "c")])
def test_nccl_forced_but_impossible_names_the_node(bad: Participant, node: str) -> None:
    with pytest.raises(DeviceError, match=rf"training\.backend = nccl, but node '{node}'") as info:
        choose_backend("nccl", [GPU, bad])
    assert info.value.node == node
    assert info.value.setting == "training.backend"


def test_an_unknown_backend_or_no_participant_is_refused() -> None:
    with pytest.raises(DeviceError, match=r"training\.backend must be auto, gloo, nccl, not 'mpi'"):
        choose_backend("mpi", [GPU])
    with pytest.raises(ValueError, match="at least one participant"):
        choose_backend("auto", [])


# --- memory -------------------------------------------------------------------------------------


def test_memory_fraction_leaves_the_reserve() -> None:
    # a 24 GiB GPU, 20 GiB free, LC apps keep 4 GiB: the allocator may hold 16 GiB
    f = memory_fraction(DeviceMemory(total=24 * GiB, free=20 * GiB), reserve=4 * GiB)
    assert type(f) is float  # torch refuses anything but a float
    assert f == pytest.approx(16 / 24)
    # what the worker's allocator holds already counts as its own
    assert memory_fraction(DeviceMemory(24 * GiB, 18 * GiB), 4 * GiB, held=2 * GiB) == pytest.approx(16 / 24)
    # never above the whole device
    assert memory_fraction(DeviceMemory(8 * GiB, 8 * GiB), 0, held=1 * GiB) == 1.0


def test_memory_fraction_with_nothing_above_the_reserve_is_an_error() -> None:
    with pytest.raises(DeviceError, match="no GPU memory for training: 1024 MiB free, 2048 MiB reserved"):
        memory_fraction(DeviceMemory(8 * GiB, 1 * GiB), reserve=2 * GiB)
    with pytest.raises(ValueError):
        memory_fraction(DeviceMemory(0, 0), reserve=0)


def test_max_share() -> None:
    # 6 GiB free, 1 GiB reserve, 1 GiB fixed: 4 GiB at 40 MiB per sample
    assert max_share(6 * GiB, 1 * GiB, 1 * GiB, 40 * 2**20) == 102
    assert max_share(1 * GiB, 1 * GiB, 1 * GiB, 1) == 0
    with pytest.raises(ValueError):
        max_share(GiB, 0, 0, 0)


def test_fit_memory_recovers_fixed_and_per_sample_bytes() -> None:
    fixed, per = 500 * 2**20, 3 * 2**20
    assert fit_memory([(8, fixed + 8 * per), (32, fixed + 32 * per)]) == (fixed, per)
    assert fit_memory([(8, fixed + 8 * per), (16, fixed + 16 * per), (32, fixed + 32 * per + 7)])[1] == per + 1
    with pytest.raises(ValueError):
        fit_memory([(8, 1), (8, 2)])


MEMINFO = """MemTotal:        7990480 kB
MemFree:          812344 kB
MemAvailable:    5021212 kB
Buffers:           61204 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def test_read_meminfo_and_jetson_memory(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO)
    info = read_meminfo(path)
    assert info["MemTotal"] == 7990480 * 1024
    assert info["HugePages_Total"] == 0  # a count, not kB
    assert jetson_memory(info) == DeviceMemory(total=7990480 * 1024, free=5021212 * 1024)
    assert jetson_memory(info, total=7 * GiB).total == 7 * GiB
    with pytest.raises(ValueError, match="MemAvailable"):
        jetson_memory({"MemTotal": 1})


def test_read_meminfo_reads_this_machine() -> None:
    info = read_meminfo()
    assert 0 < info["MemAvailable"] <= info["MemTotal"]


# --- the probe ----------------------------------------------------------------------------------


def test_probe_prints_one_json_line_with_what_this_torch_can_do() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "deepedge.training.probe"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    import torch  # the test's own view of the same torch

    assert info["probe"] == 1
    assert info["torch"] == torch.__version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["distributed"] is torch.distributed.is_available()
    assert info["gloo"] is True  # this machine trains with gloo
    assert info["nccl"] is torch.distributed.is_nccl_available()
    assert info["cuda"] is torch.cuda.is_available()
    assert info["device_count"] == len(info["devices"]) == (torch.cuda.device_count() if info["cuda"] else 0)
    assert info["cuda_version"] == torch.version.cuda
    for d in info["devices"]:
        assert set(d) == {"name", "total_memory", "capability", "integrated", "bf16", "fp16"}
    assert isinstance(info["jetson"], bool)
    assert "error" not in info


def test_probe_without_a_torch_says_so_and_exits_2() -> None:
    r = run_python("import sys\nsys.modules['torch'] = None\nimport deepedge.training.probe as p\nsys.exit(p.main())")
    assert r.returncode == 2, r.stderr
    info = json.loads(r.stdout)
    assert info["error"].startswith("ModuleNotFoundError: import of torch")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan 8\n", "R36.4.3"),
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n", "R35.4.1"),
        ("garbage", None),
        ("", None),
    ],
)
def test_l4t_release(text: str, expected: str | None) -> None:
    assert l4t_release(text) == expected


# --- the probe in the birth (the node daemon; no torch imported there) --------------------------

CPU_ANSWER = {
    "probe": 1, "torch": "2.13.0+cpu", "python": "3.11.7", "machine": "x86_64", "distributed": True,
    "gloo": True, "nccl": False, "cuda_version": None, "cuda": False, "device_count": 0, "devices": [],
    "l4t": None, "jetson": False,
}  # fmt: skip
RTX = {"name": "NVIDIA RTX A4000", "total_memory": 16 << 30, "capability": [8, 6], "integrated": False,
       "bf16": True, "fp16": True}  # fmt: skip
ORIN = {"name": "Orin", "total_memory": 7990000000, "capability": [8, 7], "integrated": True, "bf16": True,
        "fp16": True}  # fmt: skip
GPU_ANSWER = {**CPU_ANSWER, "torch": "2.8.0", "nccl": True, "cuda": True, "device_count": 2, "devices": [RTX, RTX]}
JETSON_ANSWER = {**CPU_ANSWER, "torch": "2.8.0", "cuda": True, "device_count": 1, "devices": [ORIN], "jetson": True}


def board(**kw: object) -> TrainingConfig:
    return TrainingConfig(**kw)  # type: ignore[arg-type]


def test_the_birth_says_where_a_cpu_board_trains() -> None:
    info = torch_info(CPU_ANSWER, board())
    assert info == TorchInfo(version="2.13.0+cpu", distributed=True, gloo=True, device="cpu", kind="cpu",
                             bf16=True, fp16=True)  # fmt: skip


def test_the_birth_resolves_training_device_on_a_gpu_board() -> None:
    info = torch_info(GPU_ANSWER, board(device="cuda:1", backend="nccl", precision="bf16"))
    assert (info.device, info.kind, info.cuda_devices, info.device_name) == ("cuda:1", "cuda", 2, "NVIDIA RTX A4000")
    assert (info.device_memory, info.nccl, info.backend, info.precision, info.error) == (
        16 << 30,
        True,
        "nccl",
        "bf16",
        "",
    )
    assert torch_info(GPU_ANSWER, board(device="cpu")).kind == "cpu"
    jetson = torch_info(JETSON_ANSWER, board())
    assert (jetson.device, jetson.kind) == ("cuda:0", "jetson")


@pytest.mark.parametrize(
    ("answer", "cfg", "error"),
    [
        ({"probe": 1, "error": "ModuleNotFoundError: No module named 'torch'"}, {}, "No module named 'torch'"),
        (CPU_ANSWER, {"device": "cuda"}, "training.device = 'cuda', but this board's torch sees no CUDA device"),
        (GPU_ANSWER, {"device": "cuda:2"}, "has 2 CUDA device(s)"),
        ({**GPU_ANSWER, "devices": [{**RTX, "capability": [7, 5], "bf16": False}]}, {"precision": "bf16"},
         "has no bfloat16"),
        ({**GPU_ANSWER, "devices": [{**RTX, "total_memory": "lots"}]}, {}, "malformed"),
        ({}, {}, "no answer"),
    ],
)  # fmt: skip
def test_a_probe_that_failed_or_a_board_that_cannot_train_as_configured_sets_error(
    answer: dict[str, object], cfg: dict[str, object], error: str
) -> None:
    info = torch_info(answer, board(**cfg))
    assert error in info.error
    assert len(info.error) <= 256  # bounded like the rest of the schema


def test_the_probe_runs_with_the_workers_interpreter_or_not_at_all() -> None:
    assert probe_command([]) is None  # (the daemon passes its default worker command, never [])
    assert probe_command(["/opt/venv/bin/python", "-m", "deepedge.training.worker"]) == [
        "/opt/venv/bin/python", "-m", "deepedge.training.probe"
    ]  # fmt: skip
    assert probe_command(["nice", "python3", "-m", "deepedge.training.worker"])[-1] == "deepedge.training.probe"  # type: ignore[index]
    assert probe_command([sys.executable, "tests/helpers/test_worker.py"]) is None  # a stand-in: not probed


async def test_run_probe_reads_the_real_probe_and_bounds_a_hung_or_silent_one(tmp_path: Path) -> None:
    env_python = [sys.executable, "-c"]
    answer = await run_probe([sys.executable, "-m", "deepedge.training.probe"], 60)
    assert answer["gloo"] is True and "error" not in answer
    assert torch_info(answer, board()).device == "cpu"
    hung = await run_probe([*env_python, "import time; time.sleep(30)"], 0.5)
    assert hung == {"error": "the torch probe did not answer within 0.5 s"}
    silent = await run_probe([*env_python, "import sys; sys.stderr.write('boom'); sys.exit(3)"], 10)
    assert silent["error"] == "the torch probe exited 3 without an answer: boom"
    missing = await run_probe([str(tmp_path / "no-python")], 10)
    assert missing["error"].startswith("cannot start the torch probe")


async def test_the_daemon_puts_the_probe_in_its_birth_and_sends_it_again_when_it_was_late() -> None:
    from deepedge.broker_schemas import Topics
    from deepedge.config import Config, NodeConfig
    from deepedge.node import NodeDaemon
    from deepedge.transport import FakeBroker, FakeTransport

    slow = [sys.executable, "-c", f"import time, json; time.sleep(1.0); print(json.dumps({CPU_ANSWER!r}))"]
    config = Config(node=NodeConfig(worker_command=(*slow[:2], "-m", "deepedge.training.worker")))
    fake = FakeBroker()
    async with FakeTransport(fake, client_id="n") as t:
        daemon = NodeDaemon(config, t, node="n", session="s", collectors=[])
        assert daemon.birth().torch is None  # not probed until started
        daemon.torch_probe.start(slow, config.training)
        daemon._background(daemon._birth_after_probe(), "torch-probe-birth")
        with patch("deepedge.node._daemon.BIRTH_WAITS_FOR_PROBE_S", 0.05):
            await daemon.publish_birth()  # too early: sent without
        first = fake.retained[Topics("default").node_status("n")]
        await asyncio.wait_for(daemon.torch_probe.task, 30)  # type: ignore[arg-type]
        for _ in range(100):
            await asyncio.sleep(0.02)
            if fake.retained[Topics("default").node_status("n")] != first:
                break
        await daemon.torch_probe.stop()
    births = [decode_birth(first), decode_birth(fake.retained[Topics("default").node_status("n")])]
    assert births[0].torch is None
    assert births[1].torch is not None and births[1].torch.device == "cpu" and births[1].torch.gloo


def decode_birth(payload: bytes) -> NodeBirth:
    from deepedge.broker_schemas import Topics, decode

    msg = decode(Topics("default").node_status("n"), payload).message
    assert isinstance(msg, NodeBirth)
    return msg


# --- the coordinator: who can train, on which backend --------------------------------------------


def node_birth(node: str, info: TorchInfo | None) -> NodeBirth:
    return NodeBirth(node=node, session="s", ts=1.0, memory_bytes=8 << 30, training_address="127.0.0.1", torch=info)


CUDA_NODE = TorchInfo(version="2.8.0", distributed=True, gloo=True, nccl=True, cuda=True, device="cuda:0", kind="cuda")
CPU_NODE = TorchInfo(version="2.13.0", distributed=True, gloo=True, device="cpu", kind="cpu")
JETSON_NODE = TorchInfo(version="2.8.0", distributed=True, gloo=True, cuda=True, device="cuda:0", kind="jetson")


def test_a_board_whose_torch_cannot_all_reduce_is_excluded_with_the_reason() -> None:
    from deepedge.coordinator import ClusterView, JobRecord
    from deepedge.coordinator._learning import NodeLearning, ThroughputModel
    from deepedge.coordinator._planner_io import job_model, node_models, to_plan
    from deepedge.coordinator.planner import Planner

    boards = {
        "ok": CPU_NODE,
        "old": None,  # an older node says nothing: planned as before
        "nodist": TorchInfo(version="2.1.0a0+nv23.06", distributed=False),
        "nogloo": TorchInfo(version="2.8.0", distributed=True, gloo=False, nccl=True),
        "broken": TorchInfo(error="ImportError: libcudnn.so.9: cannot open shared object file"),
    }
    view = ClusterView()
    for node, info in boards.items():
        view.on_birth(node_birth(node, info), 0.0)
    spec = JobSpec(model="cnn-small", dataset="/d", output="/o", epochs=1, global_batch=16, learning_rate=0.1)
    job = JobRecord(job="j", spec=spec, dataset_size=160, model_bytes=0)
    learning = {n: NodeLearning(ThroughputModel(prior=10.0)) for n in boards}
    decision = Planner().plan(node_models(view, learning, job), job_model(job))
    assert set(decision.participants) == {"ok", "old"}
    assert "has no torch.distributed (built with USE_DISTRIBUTED=0)" in decision.excluded["nodist"]
    assert "2.1.0a0+nv23.06" in decision.excluded["nodist"]
    assert "has no gloo backend" in decision.excluded["nogloo"]
    assert (
        decision.excluded["broken"]
        == "its torch cannot train here: ImportError: libcudnn.so.9: cannot open shared object file"
    )
    plan = to_plan(job, decision, view, 1, 29500, 1.0, "sess")
    assert plan.backend == "gloo"
    assert {a.node: a.device for a in plan.assignments} == {"ok": "cpu", "old": ""}


@pytest.mark.parametrize(
    ("infos", "backend", "why"),
    [
        ([CUDA_NODE, CUDA_NODE], "nccl", "every participant trains on a discrete GPU"),
        ([CUDA_NODE, CPU_NODE], "gloo", "trains on its CPU"),
        ([CUDA_NODE, JETSON_NODE], "gloo", "Jetson's integrated GPU"),
        ([CUDA_NODE, None], "gloo", "trains on its CPU"),  # no probe: not assumed to have a GPU
        ([CUDA_NODE, msgspec.structs.replace(CUDA_NODE, nccl=False)], "gloo", "torch without NCCL"),
        ([CUDA_NODE, msgspec.structs.replace(CUDA_NODE, backend="gloo")], "gloo", "training.backend = gloo"),
        ([msgspec.structs.replace(CUDA_NODE, backend="nccl"), CUDA_NODE], "nccl", "training.backend = nccl"),
        ([msgspec.structs.replace(CUDA_NODE, backend="nccl"), CPU_NODE], "gloo",
         "training.backend = nccl, but node 'n1' trains on its CPU: gloo"),
    ],
)  # fmt: skip
def test_the_plans_backend_for_mixed_clusters(infos: list[TorchInfo | None], backend: str, why: str) -> None:
    from deepedge.coordinator._planner_io import backend_choice

    choice = backend_choice([node_birth(f"n{i}", info) for i, info in enumerate(infos)])
    assert choice.backend == backend
    assert why in choice.reason
    assert choice.host_staged == (backend == "gloo" and any(i is not None and i.kind != "cpu" for i in infos))


def test_a_cuda_accelerator_alone_no_longer_makes_a_plan_nccl() -> None:
    """Before: NCCL whenever every participant had a CUDA accelerator in its birth, though the
    worker always formed a gloo group. Now only the probe's device counts."""
    from deepedge.broker_schemas import Accelerator
    from deepedge.coordinator._planner_io import backend_choice

    births = [msgspec.structs.replace(node_birth(n, None), accelerators=(Accelerator(kind="cuda"),)) for n in "ab"]
    assert backend_choice(births).backend == "gloo"


def test_the_coordinator_and_the_daemon_do_not_import_the_training_package() -> None:
    r = run_python(
        "import sys, deepedge.coordinator, deepedge.coordinator._planner_io, deepedge.node, deepedge.devices\n"
        "assert not [m for m in sys.modules if m.startswith('deepedge.training')], 'deepedge.training loaded'\n"
        "assert 'torch' not in sys.modules"
    )
    assert r.returncode == 0, r.stderr
