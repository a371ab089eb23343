"""The GPU stressor (issue #15: "GPU load where a GPU exists"): matrix multiplications on the
board's training GPU at a level in [0, 1], run by ``deepedge.profiling._gpu_stressor`` for the
interference runs where the board trains on CUDA (discrete or a Jetson's integrated GPU).

    python -m deepedge.training.gpu_stress --status FILE [--device cuda:0] [--level L]
        [--seconds S] [--serve --idle I]

It holds its own duty cycle, as stress-ng's ``--cpu-load`` does: in each PERIOD_S it runs
kernels for ``level`` x PERIOD_S, each one timed to its end (``torch.cuda.synchronize``), then
sleeps the rest of the period. The matrices are sized at the start so that one kernel takes at
most about KERNEL_S (a small board's GPU is 100x slower than a data-centre one). What it achieved
is its kernels' time: at the end of each period's kernels it replaces FILE with ``busy_s wall_s``
since it became ready, and its owner takes the kernel seconds since a run's mark over the wall
time since it (at most a period stale) as the level the run had.

``--serve``: it stays for a whole profiling session, as the training profiler does, so that its
torch import and CUDA start are paid once, not at every run: each line on stdin is a new level
(a number; anything else is ignored), 0 between runs; it exits when stdin closes (its owner is
gone, even killed), after ``--idle`` seconds at level 0, or at level 0 after ``--seconds`` (twice
that at most). Otherwise it runs at ``--level`` for ``--seconds``. It exits at SIGTERM.

It prints ``ready`` once the device answered and the matrices are sized (the status file is
written before). Without a CUDA device (``--device cuda``) it exits 3 at once with the reason on
stderr. ``--device cpu`` runs the same loop on the CPU, one thread: the tests' way to check the
loop on a machine without a GPU; it is not a GPU measurement.

Built, not measured on a GPU here (no GPU was lent when it was written): tests/test_cuda.py has
the check of its level against NVML's utilisation, for ``scripts/gpu_checks.sh``."""

from __future__ import annotations

import argparse
import math
import os
import select
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


def _level(text: object) -> float | None:
    """A level from a number or a line; None if it is not a finite number (clamped to [0, 1])."""
    try:
        x = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, x)) if math.isfinite(x) else None


def _read_levels(pending: bytes) -> tuple[bytes, list[float]] | None:
    """The levels of the whole lines stdin has now (without waiting), and what is left of a
    partial line; None when stdin is closed."""
    fd = sys.stdin.fileno()
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        pending = (pending + chunk)[-4096:]
    *lines, rest = pending.split(b"\n")
    return rest, [x for x in (_level(line.strip().decode(errors="replace")) for line in lines) if x is not None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepedge.training.gpu_stress")
    p.add_argument("--level", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--status", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--serve", action="store_true")
    p.add_argument("--idle", type=float, default=60.0)
    a = p.parse_args(argv)
    level = _level(a.level) or 0.0
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
    pending = b""
    told = start  # when the level was last set (--serve: idle since then at level 0)
    while True:
        period = time.monotonic()
        if a.serve:  # (read before the idle check: a level that came in time is not lost)
            got = _read_levels(pending)
            if got is None:  # stdin closed: the owner is gone
                break
            pending, levels = got
            if levels:
                level, told = levels[-1], period
        # --serve: its life ends only at level 0 (a run is never cut short), and at twice it anyway
        if (period >= end and (level == 0 or not a.serve)) or period >= end + max(0.0, a.seconds):
            break
        if a.serve and level == 0 and period - told > a.idle:
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
