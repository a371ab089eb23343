"""The GPU stressor (issue #15: "GPU load where a GPU exists"): matrix multiplications on the
board's training GPU at a level in [0, 1], run by ``deepedge.profiling._stressors`` as the other
stressors are, where the board trains on CUDA (discrete or a Jetson's integrated GPU).

    python -m deepedge.training.gpu_stress --level L --seconds S --status FILE [--device cuda:0]

It holds its own duty cycle, as stress-ng's ``--cpu-load`` does: in each PERIOD_S it runs
kernels for ``level`` x PERIOD_S, each one timed to its end (``torch.cuda.synchronize``), then
sleeps the rest of the period. The matrices are sized at the start so that one kernel takes at
most about KERNEL_S (a small board's GPU is 100x slower than a data-centre one). What it achieved
is its kernels' time: at the end of each period's kernels it replaces FILE with ``busy_s wall_s``
since it became ready, and the stressors' ``achieved()`` takes the kernel seconds since its mark
over the wall time since it (at most a period stale) as the level the run had; a stressor that
died during the run has a lower level and a note. NVML's or tegrastats'
GPU utilisation is the same quantity seen from outside (the share of time a kernel ran).

It prints ``ready`` once the device answered and the matrices are sized, and exits after S
seconds, or at SIGTERM. Without a CUDA device (``--device cuda``) it exits 3 at once with the
reason on stderr. ``--device cpu`` runs the same loop on the CPU, one thread: the tests' way to
check the loop on a machine without a GPU; it is not a GPU measurement.

Built, not measured on a GPU here (no GPU was lent when it was written): tests/test_cuda.py has
the check of its level against NVML's utilisation, for ``scripts/gpu_checks.sh``."""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["KERNEL_S", "PERIOD_S", "main"]

PERIOD_S = 0.1  # the duty cycle's period, as the throttled stressors'
KERNEL_S = 0.004  # one kernel takes at most about this long (the matrices are sized for it)
MIN_N, MAX_N = 64, 2048  # matrix side (float32: 2048 is 16 MiB a matrix, three of them)


def _write_status(path: str, busy_s: float, wall_s: float) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{busy_s:.6f} {wall_s:.6f}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepedge.training.gpu_stress")
    p.add_argument("--level", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    level = min(1.0, max(0.0, a.level))
    import torch

    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"gpu stressor: this torch ({torch.__version__}) sees no CUDA device", file=sys.stderr)
            return 3
        device = torch.device(a.device)
    elif a.device == "cpu":
        torch.set_num_threads(1)
        device = torch.device("cpu")
    else:
        print(f"gpu stressor: unknown device {a.device!r} (cuda, cuda:N or cpu)", file=sys.stderr)
        return 2

    def sync() -> None:
        """Wait for the kernels to end (a CUDA launch returns at once)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # size the matrices: double the side while one kernel is well under KERNEL_S
    n = MIN_N
    while True:
        x = torch.rand(n, n, device=device)
        y = torch.rand(n, n, device=device)
        out = torch.empty(n, n, device=device)
        torch.mm(x, y, out=out)  # warm-up (CUDA context, cuBLAS handle)
        sync()
        t0 = time.perf_counter()
        torch.mm(x, y, out=out)
        sync()
        took = time.perf_counter() - t0
        if n >= MAX_N or took * 8 > KERNEL_S:  # the next size up would be about 8x as long
            break
        n *= 2
    _write_status(a.status, 0.0, 0.0)  # before "ready": whoever reads it from then on finds it
    print("ready", flush=True)
    start = time.monotonic()
    end = start + max(0.0, a.seconds)
    busy = 0.0
    while True:
        period = time.monotonic()
        if period >= end:
            break
        while time.monotonic() - period < level * PERIOD_S:
            t0 = time.perf_counter()
            torch.mm(x, y, out=out)
            sync()
            busy += time.perf_counter() - t0
        _write_status(a.status, busy, time.monotonic() - start)
        rest = period + PERIOD_S - time.monotonic()
        if rest > 0:
            time.sleep(rest)
    _write_status(a.status, busy, time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
