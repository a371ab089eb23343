"""On a real CUDA device: the nets train there, device resolution agrees with torch, the memory
fraction binds torch's allocator, the probe sees the device. Marked ``cuda`` and skipped where
torch sees no CUDA device (this project's CI and development VM have none). The trainer's own
CUDA tests live with the trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deepedge.training import build_model
from deepedge.training._device import DeviceError, DeviceMemory, fit_memory, memory_fraction, resolve_device

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason=f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) "
        "reports torch.cuda.is_available() == False",
    ),
]


def test_device_resolution_agrees_with_this_torch() -> None:
    count = torch.cuda.device_count()
    assert resolve_device("auto", True, count) == "cuda:0"
    assert torch.device(resolve_device("cuda", True, count)).index == 0
    with pytest.raises(DeviceError, match=r"training\.device"):
        resolve_device(f"cuda:{count}", True, count)


@pytest.mark.parametrize("name", ["resnet18", "resnet18-gn", "mobilenet_v2", "mobilenet_v2-gn"])
def test_the_nets_train_on_the_gpu_and_match_the_cpu(name: str) -> None:
    torch.manual_seed(0)
    cpu = build_model(name, 10)
    gpu = build_model(name, 10)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda:0")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 10, (8,), generator=g)

    # eval: the same function on both devices (TF32 off: full float32 on the GPU)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out_cpu = cpu.eval()(x)
            out_gpu = gpu.eval()(x.cuda()).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert torch.allclose(out_cpu, out_gpu, rtol=1e-3, atol=1e-4), (out_cpu - out_gpu).abs().max()

    # train: a few SGD steps on the GPU lower the loss, gradients finite
    opt = torch.optim.SGD(gpu.parameters(), lr=0.01, momentum=0.9)
    gpu.train()
    xg, yg = x.cuda(), y.cuda()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(gpu(xg), yg)
        loss.backward()  # type: ignore[no-untyped-call]
        assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses[1:]) < losses[0], losses


def test_the_memory_fraction_binds_torchs_allocator() -> None:
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    free, _ = torch.cuda.mem_get_info(0)
    held = torch.cuda.memory_reserved(0)
    # leave this process 256 MiB above what it holds: everything else is the "LC apps' reserve"
    fraction = memory_fraction(DeviceMemory(total=total, free=free), reserve=free - 256 * MiB, held=held)
    assert fraction == pytest.approx((held + 256 * MiB) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    try:
        small = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda:0")
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(512 * MiB, dtype=torch.uint8, device="cuda:0")
        del small
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def test_fit_memory_predicts_a_larger_batch_from_two_small_ones() -> None:
    model = build_model("resnet18", 10).cuda().train()

    def peak(batch: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(0)
        x = torch.randn(batch, 3, 64, 64, device="cuda:0")
        y = torch.randint(0, 10, (batch,), device="cuda:0")
        model.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated(0))

    peak(8)  # warm-up: gradients exist from here on, cuDNN picked its algorithms
    fixed, per_sample = fit_memory([(8, peak(8)), (32, peak(32))])
    predicted, measured = fixed + 128 * per_sample, peak(128)
    assert per_sample > 0
    assert abs(predicted - measured) <= 0.25 * measured, (predicted, measured, fixed, per_sample)


def test_the_probe_sees_the_devices() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "deepedge.training.probe"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["cuda"] is True
    assert info["device_count"] == torch.cuda.device_count() == len(info["devices"])
    d0, p0 = info["devices"][0], torch.cuda.get_device_properties(0)
    assert d0["name"] == p0.name
    assert d0["total_memory"] == p0.total_memory
    assert d0["capability"] == [p0.major, p0.minor]
    assert d0["bf16"] is ((p0.major, p0.minor) >= (8, 0))
    assert info["nccl"] is torch.distributed.is_nccl_available()
