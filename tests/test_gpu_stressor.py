"""The GPU stressor (issue #15: "GPU load where a GPU exists") where there is no GPU: its duty
cycle loop, run on the CPU (``--device cpu``: the same code, one thread), holds its level and says
what it achieved as the operating system counts it; asked for CUDA here it fails at its start
with the reason; a board that trains on a GPU is designed for with it, any other board without
it. Its level against NVML's utilisation on a real GPU is tests/test_cuda.py's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from deepedge.profiling._design import Space, latin_hypercube
from deepedge.profiling._gpu_stressor import GpuStressor
from deepedge.profiling._remote import board_space
from deepedge.profiling._space import FEATURES, Point
from deepedge.profiling._stressors import GPU_MODULE, StressorError, Stressors
from deepedge.profiling._surrogate import point_features

pytestmark = pytest.mark.slow  # each starts a process that imports torch


def _gpu_stressors() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if GPU_MODULE in " ".join(p.info["cmdline"] or ())]


def test_the_gpu_stressors_loop_holds_its_level_and_says_what_it_achieved(tmp_path: Path) -> None:
    with Stressors({"gpu": 0.4}, tmp_path, device="cpu", timeout_s=30) as stress:
        assert stress._gpu is not None and stress._gpu.proc is not None
        proc = psutil.Process(stress._gpu.proc.pid)
        assert GPU_MODULE in " ".join(proc.cmdline())
        stress.mark()
        cpu0 = sum(proc.cpu_times()[:2])
        time.sleep(2.5)
        achieved, _disk, notes = stress.achieved()
        cpu1 = sum(proc.cpu_times()[:2])
        wall = time.monotonic() - stress._t0
        assert not notes
        # killed during a run: what it achieved stops with it, and the run says so
        proc.kill()
        proc.wait(5)
        time.sleep(0.5)
        after, _disk, died = stress.achieved()
    # what it says it achieved is its kernels' share of the time, and the OS counts about that
    # much CPU for it (on the CPU its "kernels" are the process's only work)
    assert 0.3 <= achieved["gpu"] <= 0.55, achieved
    assert abs((cpu1 - cpu0) / wall - achieved["gpu"]) < 0.15, (cpu1 - cpu0, wall, achieved)
    assert after["gpu"] < achieved["gpu"] and any("gpu stressor exited" in n for n in died), (after, died)
    assert not _gpu_stressors(), "the gpu stressor was left running"
    assert not list(tmp_path.rglob("gpu-stress.*")), "its status files were left behind"


def test_a_kept_gpu_stressor_serves_run_after_run_idles_between_and_leaves_with_its_owner(tmp_path: Path) -> None:
    gpu = GpuStressor(tmp_path / "gpu", "cpu", idle_s=4.0)
    try:
        pids, levels = [], []
        for level in (0.5, 0.2):  # two runs: one process, its torch import paid once
            with Stressors({"gpu": level}, tmp_path / "stress", gpu=gpu) as stress:
                assert gpu.proc is not None
                pids.append(gpu.proc.pid)
                time.sleep(2.5)
                levels.append(stress.achieved()[0]["gpu"])
            time.sleep(0.15)  # (the period under way when the 0 came ends its kernels)
            between = gpu.busy()
            time.sleep(0.5)  # set to 0 at the run's end: no kernels until the next run
            assert gpu.busy() - between < 0.05 and gpu.alive
        assert pids[0] == pids[1], pids
        assert 0.35 <= levels[0] <= 0.65 and 0.1 <= levels[1] <= 0.35, levels
        # idle longer than its idle time: it leaves, and the next run starts it again
        first = gpu.proc
        assert first is not None
        first.wait(10)
        with Stressors({"gpu": 0.3}, tmp_path / "stress", gpu=gpu):
            assert gpu.alive and gpu.proc is not None and gpu.proc.pid != pids[0]
    finally:
        gpu.close()
    assert not _gpu_stressors()
    # its owner killed (SIGKILL: nothing closes it on purpose): its stdin closes and it leaves
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from deepedge.profiling._gpu_stressor import GpuStressor\n"
            "g = GpuStressor(Path(sys.argv[1]), 'cpu'); g.set_level(0.3)\n"
            "print(g.proc.pid, flush=True); time.sleep(120)",
            str(tmp_path / "owned"),
        ],
        stdout=subprocess.PIPE,
    )
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    owner.stdout.close()
    owner.kill()
    owner.wait(10)
    deadline = time.monotonic() + 5
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, "the gpu stressor outlived its owner"
        time.sleep(0.1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_a_gpu_the_gpu_stressor_fails_at_its_start_with_the_reason(tmp_path: Path) -> None:
    with (
        pytest.raises(StressorError, match=r"the gpu stressor did not start: .*sees no CUDA device"),
        Stressors({"gpu": 0.5}, tmp_path, timeout_s=30),
    ):
        pass
    assert not _gpu_stressors()


def test_a_board_that_trains_on_a_gpu_is_designed_for_with_the_gpu_stressor() -> None:
    space = Space(rate_min=10, rate_max=40)
    cpu_board = {"profile": {"stressors": ["cpu", "cache", "mem", "io"]}}
    gpu_board = {"profile": {"stressors": ["cpu", "cache", "mem", "io", "gpu"]}}
    # a node of before the GPU stressor lists none (and would refuse the argument); a hostile
    # reply's shape changes nothing
    for status in (cpu_board, {"profile": {}}, {}, None, {"profile": "gpu"}, {"profile": {"stressors": "gpu"}}):
        assert board_space(space, status) == space, status
    gpu = board_space(space, gpu_board)
    assert gpu.stressors == ("cpu", "cache", "mem", "io", "gpu") and board_space(gpu, gpu_board) == gpu
    assert space.full_grid == 5 * 3 * 3**4 and gpu.full_grid == 5 * 3 * 3**5
    plain, with_gpu = latin_hypercube(space, 40, seed=1), latin_hypercube(gpu, 40, seed=1)
    assert all(p.gpu == 0 for p in plain)
    assert sum(p.gpu > 0 for p in with_gpu) >= 10, with_gpu
    assert all(sum(v > 0 for v in p.stressors().values()) <= gpu.max_mix for p in with_gpu)
    assert {"gpu", "cpu+gpu"} <= {p.mix() for p in with_gpu}
    # the adaptive step's candidates carry their GPU level into the model's features
    assert point_features(Point(intensity=0.5, gpu=0.3))[FEATURES.index("gpu")] == 0.3
    # a stored space (JSON) comes back the same; a stressor the code does not know is refused
    assert Space(**{"rate_min": 10, "rate_max": 40, "stressors": ["cpu", "cache", "mem", "io", "gpu"]}) == gpu
    with pytest.raises(ValueError, match="distinct names"):
        Space(stressors=("cpu", "fan"))
