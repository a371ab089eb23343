"""Pre-flight at submit (issue #14): the checks of ``deepedge.training.preflight`` for a good job
and each bad one, the checker as a process, the daemon's runner (timeout, one per job), and the
``preflight`` command of real node daemons against a real Mosquitto (4 boards at once)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from deepedge.broker_schemas import JobSpec, NodeBirth, Topics
from deepedge.config import NodeConfig, TrainingConfig
from deepedge.node._preflight import PreflightAnswer, PreflightBusy, Preflights
from deepedge.node._standby import StandbyWorker
from deepedge.training import preflight as pf
from deepedge.transport import MqttTransport, Requester
from tests.conftest import MosquittoBroker
from tests.helpers.node_proc import NodeProc, start_node
from tests.helpers.wait import node_answers, wait_for

ROOT = Path(__file__).resolve().parent.parent
SLOW_MODEL = "tests.helpers.stand_in_worker:slow_model"


def image_folder(root: Path, classes: int = 4, per_class: int = 10, size: tuple[int, int] = (20, 16)) -> Path:
    from PIL import Image

    rng = random.Random(7)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = (rng.randrange(256), 60 * c, 10 * i)
            Image.new("RGB", size, colour).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def make_board(tmp_path: Path) -> dict[str, Path]:
    """A data root with a 40-image folder, and an output root."""
    data, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    image_folder(data / "imgs")
    return {"data": data, "out": out, "imgs": data / "imgs"}


@pytest.fixture
def board(tmp_path: Path) -> dict[str, Path]:
    return make_board(tmp_path)


def policy(board: dict[str, Path], **kw: Any) -> TrainingConfig:
    return TrainingConfig(data_roots=(str(board["data"]),), output_root=str(board["out"]), **kw)


def request(board: dict[str, Path], pol: TrainingConfig | None = None, **spec: Any) -> bytes:
    fields: dict[str, Any] = {
        "model": "cnn-small",
        "dataset": str(board["imgs"]),
        "output": str(board["out"] / "job"),
        "epochs": 2,
        "global_batch": 8,
        "learning_rate": 0.1,
    }
    fields.update(spec)
    return msgspec.json.encode({"node": "n1", "job": "j1", "spec": JobSpec(**fields), "policy": pol or policy(board)})


def refused(raw: bytes) -> tuple[str, str]:
    result, code = pf.answer(raw)
    assert code == 2 and result["ok"] is False, result
    assert result["reason"].startswith(f"node n1: {result['check']}: "), result
    return result["check"], result["reason"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mount a small tmpfs (as root); skip where this machine does not allow it."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


# ---- the checks ------------------------------------------------------------------------------------


def test_a_good_job_passes_with_its_figures(board: dict[str, Path]) -> None:
    result, code = pf.answer(request(board))
    assert code == 0 and result["ok"] is True, result
    assert (result["samples"], result["classes"]) == (40, 4)
    assert result["params"] > 1000 and result["checkpoint_bytes"] >= 8 * result["params"]  # weights + momentum
    assert result["needed_bytes"] > 3 * result["checkpoint_bytes"]  # keep_checkpoints (2) + 1, and a margin
    assert result["free_bytes"] >= result["needed_bytes"] and 0 < result["seconds"] < 60
    assert (board["out"] / "job").is_dir() and not list((board["out"] / "job").iterdir())  # the probe is gone
    msgspec.convert(result, PreflightAnswer)  # what the daemon reads


def test_a_tensor_file_dataset_and_a_fitting_base_checkpoint(board: dict[str, Path]) -> None:
    import torch

    from deepedge.training import build_model

    data = board["data"] / "t.pt"
    torch.save({"x": torch.randint(0, 255, (24, 3, 8, 8), dtype=torch.uint8), "y": torch.arange(24) % 3}, data)
    base = board["data"] / "base.pt"
    torch.save(build_model("cnn-small", 3).state_dict(), base)
    result, code = pf.answer(request(board, dataset=str(data), base_checkpoint=str(base)))
    assert code == 0 and (result["samples"], result["classes"]) == (24, 3), result
    # one channel where the model takes three: the sample check says so before any worker starts
    torch.save({"x": torch.zeros(24, 1, 8, 8), "y": torch.arange(24) % 3}, data)
    check, reason = refused(request(board, dataset=str(data)))
    assert check == "sample" and "does not take" in reason


@pytest.mark.parametrize(
    ("spec", "pol", "check", "needle"),
    [
        ({"model": "vgg16"}, {}, "policy", "training.models"),
        ({"model": "evil.nets:build"}, {}, "policy", "training.model_modules"),
        ({"model": "no-such-net"}, {"models": ("cnn-small", "no-such-net")}, "model", "unknown model 'no-such-net'"),
        ({"dataset": "/etc"}, {}, "policy", "training.data_roots"),
        ({"output": "/var/tmp/elsewhere"}, {}, "policy", "training.output_root"),
        ({"base_checkpoint": "/etc/passwd"}, {}, "policy", "training.data_roots / training.output_root"),
    ],
)
def test_what_the_board_does_not_allow_is_refused_naming_the_key(
    board: dict[str, Path], spec: dict[str, Any], pol: dict[str, Any], check: str, needle: str
) -> None:
    got, reason = refused(request(board, policy(board, **pol), **spec))
    assert got == check and needle in reason, reason


def test_an_output_or_dataset_inside_the_boards_decoded_cache_is_refused(board: dict[str, Path]) -> None:
    cache = board["out"] / "data-cache"
    pol = policy(board, data_cache_dir=str(cache))
    got, reason = refused(request(board, pol, output=str(cache / "job")))
    assert got == "policy" and "overlaps training.data_cache_dir" in reason, reason
    pol = policy(board, data_cache_dir=str(board["data"]))
    got, reason = refused(request(board, pol, dataset=str(board["data"])))
    assert got == "policy" and "dataset" in reason and "overlaps training.data_cache_dir" in reason, reason


def test_dataset_problems(board: dict[str, Path]) -> None:
    check, reason = refused(request(board, dataset=str(board["data"] / "missing")))
    assert check == "dataset" and "no such file or folder" in reason
    check, reason = refused(request(board, global_batch=64))
    assert check == "dataset" and "has 40 samples, fewer than the global batch 64" in reason
    (board["imgs"] / "class2" / "000.png").write_bytes(b"not a png at all")
    check, reason = refused(request(board))
    assert check == "dataset" and "unreadable image" in reason and "class2/000.png" in reason
    empty = board["data"] / "empty"
    (empty / "a").mkdir(parents=True)
    check, reason = refused(request(board, dataset=str(empty)))
    assert check == "dataset" and "no images" in reason


def test_output_problems(board: dict[str, Path], tmpfs: Callable[[str, str], Path]) -> None:
    (board["out"] / "file").write_text("a file where the folder should be")
    check, reason = refused(request(board, output=str(board["out"] / "file")))
    assert check == "output" and "File exists" in reason
    check, reason = refused(request(board, output=str(board["out"] / "file" / "job")))
    assert check == "output" and "Not a directory" in reason
    in_proc = TrainingConfig(data_roots=(str(board["data"]),), output_root="/proc")
    check, reason = refused(request(board, in_proc, output="/proc/deepedge-preflight"))
    assert check == "output" and "/proc/deepedge-preflight" in reason
    read_only = tmpfs("ro", "ro,size=1m")  # the tests run as root: chmod would not stop them
    on_ro = TrainingConfig(data_roots=(str(board["data"]),), output_root=str(read_only))
    check, reason = refused(request(board, on_ro, output=str(read_only / "job")))
    assert check == "output" and "Read-only file system" in reason


def test_base_checkpoint_problems(board: dict[str, Path]) -> None:
    import torch

    from deepedge.training import build_model

    base = board["data"] / "base.pt"
    base.write_bytes(os.urandom(4096))
    check, reason = refused(request(board, base_checkpoint=str(base)))
    assert check == "base_checkpoint" and "corrupt or not a weights file" in reason
    torch.save(build_model("cnn-small", 10).state_dict(), base)  # 10 classes; the dataset has 4
    check, reason = refused(request(board, base_checkpoint=str(base)))
    assert check == "base_checkpoint" and "does not fit the model" in reason
    check, reason = refused(request(board, base_checkpoint=str(board["data"] / "none.pt")))
    assert check == "base_checkpoint" and "no such file" in reason


def test_not_enough_disk(board: dict[str, Path], tmpfs: Callable[[str, str], Path]) -> None:
    small = tmpfs("small", "size=1m")
    pol = TrainingConfig(data_roots=(str(board["data"]),), output_root=str(small))
    check, reason = refused(request(board, pol, model="resnet18", output=str(small / "job")))
    assert check == "disk" and "needs 296.3 MB free at" in reason and "has 1.0 MB" in reason, reason


def test_not_enough_disk_without_a_tmpfs(board: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pf, "free_bytes", lambda path: 1000)
    check, reason = refused(request(board))
    assert check == "disk" and "has 0.0 MB" in reason and "2 + 1 checkpoints" in reason


def test_needed_bytes() -> None:
    # 3 checkpoints of 1 MB, 2 epochs of 1000 ids (3 digits + 2) and 2 * 32 steps of 200 bytes, +10 %, +1 MiB
    assert pf.needed_bytes(10**6, 2, 1000, 2, 32) == math.ceil((3 * 10**6 + 2 * 1000 * 5 + 64 * 200) * 1.1) + (1 << 20)


def test_a_request_that_is_not_one_is_refused() -> None:
    result, code = pf.answer(b'{"node": "n1"}')
    assert code == 2 and result["check"] == "request" and result["reason"].startswith("node ?: request: ")


def test_the_checker_is_a_process_of_one_line_in_one_line_out(board: dict[str, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "deepedge.training.preflight"]
    good = subprocess.run(cmd, input=request(board) + b"\n", capture_output=True, env=env, timeout=60)
    assert good.returncode == 0 and json.loads(good.stdout)["ok"] is True, good.stderr
    bad = subprocess.run(cmd, input=request(board, global_batch=999), capture_output=True, env=env, timeout=60)
    assert bad.returncode == 2 and len(bad.stdout.splitlines()) == 1 and json.loads(bad.stdout)["check"] == "dataset"


def test_the_checker_imports_nothing_of_the_daemon_or_the_transport() -> None:
    code = (
        "import sys, deepedge.training.preflight;"
        "bad = [m for m in sys.modules if m.startswith(('deepedge.node', 'deepedge.transport', 'aiomqtt', 'paho'))"
        " or m == 'torch'];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr  # and not torch either, until the checks need it


@pytest.mark.parametrize("link", ["class", "image"])
def test_a_symbolic_link_in_an_image_folder_is_refused_by_the_check_and_the_worker(
    board: dict[str, Path], tmp_path: Path, link: str
) -> None:
    """A dataset under an allowed data root cannot reach files outside it through a link."""
    from deepedge.training import TrainingError
    from deepedge.training._data import load_dataset

    outside = image_folder(tmp_path / "secret", classes=1)
    if link == "class":
        (board["imgs"] / "class9").symlink_to(outside / "class0", target_is_directory=True)
        named = "class9 is a symbolic link"
    else:
        (board["imgs"] / "class1" / "zz.png").symlink_to(outside / "class0" / "000.png")
        named = "class1/zz.png is a symbolic link"
    check, reason = refused(request(board))
    assert check == "dataset" and named in reason, reason
    with pytest.raises(TrainingError, match=named):
        load_dataset(str(board["imgs"]))


# ---- the daemon's runner ---------------------------------------------------------------------------


def spec(board: dict[str, Path], **kw: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "model": "cnn-small",
        "dataset": str(board["imgs"]),
        "output": str(board["out"] / "job"),
        "epochs": 1,
        "global_batch": 8,
        "learning_rate": 0.1,
    }
    fields.update(kw)
    return JobSpec(**fields)


async def test_the_runner_times_out_and_refuses_a_second_preflight_of_the_same_job(
    board: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the checker imports the slow factory from tests/
    runner = Preflights(
        "n1",
        NodeConfig(preflight_timeout_s=1.5, preflight_cache_path=""),
        policy(board, model_modules=("tests.helpers.stand_in_worker",)),
    )
    slow = asyncio.create_task(runner.run("j1", spec(board, model=SLOW_MODEL)))
    await asyncio.sleep(0.2)
    with pytest.raises(PreflightBusy, match="already running"):
        await runner.run("j1", spec(board))
    other = await runner.run("j2", spec(board, dataset="/etc"))  # another job: answered (a policy refusal)
    assert other["ok"] is False and other["check"] == "policy" and other["wall_s"] < 0.5
    t0 = time.monotonic()
    result = await slow
    assert result == {**result, "ok": False, "node": "n1", "check": "timeout"}
    assert "did not answer within 1.5 s (node.preflight_timeout_s)" in result["reason"]
    assert time.monotonic() - t0 < 3 and runner.running == {}
    assert (await runner.run("j1", spec(board, dataset="/etc")))["check"] == "policy"  # the job may ask again


async def test_at_most_two_checker_processes_run_at_once_and_the_rest_wait_their_turn(
    board: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepedge.node import _preflight

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    runner = Preflights(
        "n1",
        NodeConfig(preflight_timeout_s=1.0, preflight_cache_path=""),
        policy(board, model_modules=("tests.helpers.stand_in_worker",)),
    )
    jobs = [asyncio.create_task(runner.run(f"j{i}", spec(board, model=SLOW_MODEL))) for i in range(4)]
    peak = 0
    while not all(j.done() for j in jobs):
        peak = max(peak, runner.checkers)
        await asyncio.sleep(0.02)
    assert peak == _preflight.MAX_CHECKERS == 2
    assert [j.result()["check"] for j in jobs] == ["timeout"] * 4  # every one answered, none refused as busy
    assert runner.checkers == 0 and runner.running == {}


# ---- through real node daemons ---------------------------------------------------------------------


async def boot(
    tmp: Path, broker: MosquittoBroker, cluster: str, names: list[str], nodes: list[NodeProc], node_extra: str = ""
) -> None:
    async with MqttTransport(broker.config()) as w:
        subs = [await w.subscribe(Topics(cluster).node_status(n)) for n in names]
        for n in names:
            nodes.append(start_node(tmp, broker.url, cluster, n, interval=1.0, node_extra=node_extra))
        for s in subs:
            await wait_for(s, lambda m: isinstance(m, NodeBirth), 30)


def job_args(tmp: Path, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "job": "j1",
        "model": "cnn-small",
        "dataset": str(tmp / "imgs"),
        "output": str(tmp / "out-j1"),
        "epochs": 2,
        "global_batch": 32,
        "learning_rate": 0.1,
    }
    args.update(kw)
    return args


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="leaving the idle class needs root or RLIMIT_NICE")
async def test_a_ready_standby_checker_answers_at_the_workers_priority_without_importing_again(
    board: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standby checker (``--standby``: torch imported in the idle class, then one request) is
    taken by the next check, every thread of it moved to the worker's priority, and answers with
    no import of its own; the next check, with none ready, starts a process as before."""
    cfg = NodeConfig(worker_nice=10, preflight_timeout_s=60, preflight_cache_path="")
    runner = Preflights("n1", cfg, policy(board))
    # (not pinned to one CPU: in the idle class, on a loaded machine, the import would starve)
    runner.standby = StandbyWorker(runner.command(), nice=10, kind="preflight")
    await runner.standby.arm()
    pid = runner.standby.pid
    assert pid is not None and os.sched_getscheduler(pid) == os.SCHED_IDLE
    try:
        await runner.standby.wait_ready(120)
        assert runner.standby.ready
        seen: list[tuple[int, int, int]] = []
        real = os.sched_setscheduler

        def moved(who: int, policy: int, param: Any) -> None:  # each thread as the request reaches it
            real(who, policy, param)
            seen.append((who, os.sched_getscheduler(who), os.getpriority(os.PRIO_PROCESS, who)))

        monkeypatch.setattr(os, "sched_setscheduler", moved)
        result = await runner.run("j1", spec(board))
        monkeypatch.undo()
        assert result["ok"] is True and result["import_s"] < 0.05, result  # torch was imported ahead
        assert (pid, os.SCHED_OTHER, 10) in seen and {s[1:] for s in seen} == {(os.SCHED_OTHER, 10)}
        assert runner.standby.taken == 1 and runner.standby.pid is None and not runner.standby.disabled
        again = await runner.run("j2", spec(board))  # none ready: a process of its own, importing torch
        assert again["ok"] is True and again["import_s"] > result["import_s"]
    finally:
        await runner.standby.close()


async def test_a_standby_checker_that_cannot_leave_the_idle_class_is_ended_and_not_started_again(
    board: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon whose RLIMIT_NICE does not allow the worker's priority: the standby it took is
    killed, not counted as taken, no standby checker is started again, and the check is made by a
    process of its own (the job is not refused for it)."""
    runner = Preflights(
        "n1", NodeConfig(worker_nice=10, preflight_timeout_s=60, preflight_cache_path=""), policy(board)
    )
    runner.standby = StandbyWorker(runner.command(), nice=10, kind="preflight")
    await runner.standby.arm()
    pid = runner.standby.pid
    assert pid is not None
    try:
        await runner.standby.wait_ready(120)
        assert runner.standby.ready

        def refused(who: int, policy: int, param: Any) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "sched_setscheduler", refused)
        result = await runner.run("j1", spec(board))
        monkeypatch.undo()
        assert result["ok"] is True and result["import_s"] > 0  # checked by a process of its own
        assert runner.standby.disabled and runner.standby.taken == 0 and runner.standby.pid is None
        assert _gone(pid)  # killed and reaped
        await runner.standby.arm()
        assert runner.standby.pid is None and runner.standby.started == 1  # disabled: none again
    finally:
        await runner.standby.close()


@pytest.mark.mosquitto
async def test_the_preflight_command_of_a_node(
    mosquitto: MosquittoBroker, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    image_folder(tmp_path / "imgs", per_class=10)
    await boot(tmp_path, mosquitto, cluster, ["n1"], nodes)
    t = Topics(cluster)
    async with MqttTransport(mosquitto.config()) as w, Requester(w, t, timeout_s=15) as rpc:
        topic = t.node_command("n1", "preflight")
        r = await rpc.request(topic, job_args(tmp_path))
        assert r.ok and r.result["ok"] is True and r.result["node"] == "n1", r
        assert (r.result["samples"], r.result["classes"]) == (40, 4) and r.result["wall_s"] < 8
        assert r.result["cache"] == "stored" and r.result["import_s"] > 0
        again = await rpc.request(topic, job_args(tmp_path))  # the same job again: torch is not run
        assert again.result == {
            **r.result,
            "cache": "hit",
            "import_s": 0,
            "seconds": again.result["seconds"],
            "wall_s": again.result["wall_s"],
            "free_bytes": again.result["free_bytes"],
        }
        assert (tmp_path / "n1-preflight-cache.json").is_file()
        r = await rpc.request(topic, job_args(tmp_path, global_batch=64))
        assert r.ok and r.result["ok"] is False and r.result["check"] == "dataset"
        assert (
            r.result["reason"]
            == f"node n1: dataset: dataset {tmp_path / 'imgs'} has 40 samples, fewer than the global batch 64"
        )
        r = await rpc.request(topic, job_args(tmp_path, model="evil:x"))
        assert r.result["check"] == "policy" and "training.model_modules" in r.result["reason"]
        assert r.result["wall_s"] < 1  # the policy is checked in the daemon: no process
        for args, needle in [
            (job_args(tmp_path, job="bad job"), "must be an id ([A-Za-z0-9_.-]{1,64}) (job)"),
            (job_args(tmp_path, epochs=0), "Expected `int` >= 1 (epochs)"),
            (job_args(tmp_path, colour="red"), "unknown argument `colour`"),
            ({k: v for k, v in job_args(tmp_path).items() if k != "model"}, "missing argument `model`"),
        ]:
            r = await rpc.request(topic, args)
            assert not r.ok and r.error is not None and r.error.code == "bad_args" and needle in r.error.message
        r = await rpc.request(t.node_command("n1", "status"))
        assert r.result["preflights"] == {"running": [], "done": 4}
        assert (await rpc.request(t.node_command("n1", "drain"))).ok
        r = await rpc.request(topic, job_args(tmp_path))
        assert r.result == {**r.result, "ok": False, "check": "drained"}, r.result


@pytest.mark.mosquitto
@pytest.mark.slow
async def test_four_boards_answer_a_preflight_at_once_within_5_s_or_3x_one_alone(
    mosquitto: MosquittoBroker, nodes: list[NodeProc], tmp_path: Path, cluster: str
) -> None:
    """Issue #14's goal: 4 emulated boards on this machine (2 cores here), each answering a
    preflight at the same time, for a small and a bigger model, ~200 PNGs, within 5 s. On a
    slower machine, within 3x one board's check alone (measured first, with another seed: the
    pre-flight cache keys on it): four checks sharing 2 cores take 2x one at best, and a daemon
    that ran them one after another 4x. A fresh VM of 2026-12-05 imported torch in 2.6 s of CPU
    (0.9 s where the goal was set) and took 6.5-7.1 s for four at once."""
    image_folder(tmp_path / "imgs", per_class=50, size=(64, 48))
    names = [f"b{i}" for i in range(4)]
    # the checker's own timeout (8 s) is not what is measured: four at once took 8.3 s on the VM of
    # 2026-12-05, under 3x one alone (3.7 s), and one checker was cut off at 8 s
    await boot(tmp_path, mosquitto, cluster, names, nodes, node_extra="preflight_timeout_s = 60")
    t = Topics(cluster)
    async with MqttTransport(mosquitto.config()) as w, Requester(w, t, timeout_s=90) as rpc:
        for name in names:
            await node_answers(w, t, name)
        for model in ("cnn-small", "resnet18"):

            async def one(node: str, model: str = model, **kw: Any) -> tuple[float, Any]:
                t0 = time.monotonic()
                args = job_args(tmp_path, job=f"j-{model}", model=model, output=str(tmp_path / f"out-{node}"), **kw)
                reply = await rpc.request(t.node_command(node, "preflight"), args)
                return time.monotonic() - t0, reply

            alone, reply = await one(names[0], seed=4242)
            assert reply.ok and reply.result["ok"] and reply.result.get("cache") != "hit", reply
            answers = await asyncio.gather(*(one(n) for n in names))
            took = [round(dt, 2) for dt, _ in answers]
            print(
                model,
                "alone:",
                round(alone, 2),
                "seconds:",
                took,
                "checker:",
                [r.result.get("seconds") for _, r in answers],
            )
            assert all(r.ok and r.result["ok"] and r.result["samples"] == 200 for _, r in answers), answers
            assert max(took) < max(5.0, 3 * alone), f"{model}: {took}, one alone {alone:.2f} s"
