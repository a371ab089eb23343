"""The board profiler process: ``python -m deepedge.training.profile``, started by the node
daemon for ``deepedge profile``. It trains a model alone on generated inputs, at each intensity
asked for, with the worker's own step code (pacing of an emulated board, intensity throttle),
and prints one JSON line per level: ``{"intensity", "samples_per_s", "duty", "t0", "t1"}``
(``t0``/``t1``: wall clock, so the daemon can take its LC apps' latency over the level) and
``"device"``. One JSON request on stdin: ``{"model", "levels", "seconds", "image_size", "classes",
"emulated_sample_s", "device", "precision", "lc_memory_reserve_mb"}`` (``device``: a
``training.device`` setting, default ``auto``: the GPU where torch sees one, as the worker;
``precision`` default ``fp32``). On a GPU each micro-batch is timed to the end of its kernels,
as in training. A bad request or an unknown model prints ``{"error": ...}`` and exits 2.

With ``"interactive": true`` (interference profiling: one training process for many runs, so a
run does not pay torch's import) it prints ``{"ready": true}`` after its warm-up, then runs one
level per JSON line ``{"level": u, "seconds": s}`` read from stdin, until end of input."""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any

__all__ = ["main"]

STEP_SAMPLES = 128  # samples per optimizer step, as a typical share of a global batch
SYNTHETIC = 1024  # generated samples it cycles through
IDLE_EXIT_S = 60.0  # interactive mode: no order for this long ends the process


def profile(req: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    from deepedge.training._compute import compute_share
    from deepedge.training._cuda import training_device
    from deepedge.training._data import TensorDataset
    from deepedge.training._models import build_model
    from deepedge.training._precision import Precision, check_precision

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    device = training_device(str(req.get("device", "auto")), int(req.get("lc_memory_reserve_mb", 1024)) << 20)
    precision = Precision(str(req.get("precision", "fp32")), device)
    check_precision(precision.name, device)
    size, classes = int(req.get("image_size", 32)), int(req.get("classes", 10))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randint(0, 256, (SYNTHETIC, 3, size, size), dtype=torch.uint8, generator=g),
        torch.randint(0, classes, (SYNTHETIC,), generator=g),
        [str(c) for c in range(classes)],
    )
    model = build_model(str(req["model"]), classes).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    emulated = float(req.get("emulated_sample_s", 0.0))
    seconds = float(req.get("seconds", 2.0))

    def step(k: int, cap: float) -> float:
        index = torch.arange(k * STEP_SAMPLES, (k + 1) * STEP_SAMPLES) % SYNTHETIC
        opt.zero_grad()
        _, busy = compute_share(model, data, index, cap, emulated, device=device, precision=precision)
        if precision.scaler is not None:  # fp16: as training does (an overflowing step is not taken)
            precision.unscale(opt)
            precision.scaler.step(opt)
            precision.update()
        else:
            opt.step()
        return busy

    step(0, 1.0)  # warm-up: first-call allocations are not the board's speed
    out = []

    def run(cap: float, seconds: float) -> None:
        t0, busy, k = time.time(), 0.0, 0
        while time.time() - t0 < seconds or k == 0:
            busy += step(k, cap)
            k += 1
        t1 = time.time()
        wall = max(1e-9, t1 - t0)
        rate = k * STEP_SAMPLES / wall
        out.append(
            {"intensity": cap, "samples_per_s": rate, "duty": busy / wall, "t0": t0, "t1": t1, "device": str(device)}
        )
        print(json.dumps(out[-1]), flush=True)

    if req.get("interactive"):
        print(json.dumps({"ready": True}), flush=True)
        while select.select([sys.stdin], [], [], IDLE_EXIT_S)[0]:  # a runner gone quiet: leave
            line = sys.stdin.readline()
            if not line:
                break
            order = json.loads(line)
            run(max(0.01, min(1.0, float(order["level"]))), float(order.get("seconds", seconds)))
        return out
    for level in req["levels"]:
        run(float(level), seconds)
    return out


def main() -> int:
    try:
        req = json.loads(sys.stdin.readline() or "null")
        if not isinstance(req, dict) or (
            not req.get("interactive") and (not isinstance(req.get("levels"), list) or not req["levels"])
        ):
            raise ValueError("expected a JSON object with a non-empty list 'levels'")
        profile(req)
    except Exception as exc:  # the daemon reads the reason from this line
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
