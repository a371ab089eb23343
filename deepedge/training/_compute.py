"""One node's share of a step: forward and backward over micro-batches, paced for an emulated
board and throttled to an intensity cap. Shared by the trainer and the board profiler, so a
profile measures exactly what training does."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from deepedge.training._data import TensorDataset

__all__ = ["MICRO_BATCH", "RAMP_FLOOR", "RAMP_S", "Pacer", "compute_share", "ramp"]

MICRO_BATCH = 32  # samples per forward/backward; the intensity throttle sleeps between them
# Slow start: a worker's first seconds of each plan generation run at a fraction of its cap,
# rising linearly from RAMP_FLOOR x cap to the cap over RAMP_S, and its data loading is paced at
# RAMP_FLOOR x cap. A worker's start (data decoding, the first steps while its peers still
# arrive) no longer hits its board's LC apps harder than its planned cap does.
RAMP_S = 2.0
RAMP_FLOOR = 0.25


def ramp(elapsed_s: float, cap: float) -> float:
    """The cap in force ``elapsed_s`` after a generation started training."""
    if elapsed_s >= RAMP_S:
        return cap
    return cap * (RAMP_FLOOR + (1.0 - RAMP_FLOOR) * max(0.0, elapsed_s) / RAMP_S)


class Pacer:
    """Hold a loop's duty cycle at ``cap``: call it after each unit of work; it sleeps
    ``t (1/cap - 1)`` for the ``t`` seconds worked since the last call (as the step throttle)."""

    def __init__(self, cap: float) -> None:
        self.cap = max(0.01, min(1.0, cap))
        self._since = time.perf_counter()

    def __call__(self) -> None:
        if self.cap >= 1.0:
            return
        worked = time.perf_counter() - self._since
        if worked >= 0.005:  # in slices of at least 5 ms: fewer, longer sleeps
            time.sleep(worked * (1.0 / self.cap - 1.0))
            self._since = time.perf_counter()


def compute_share(
    model: nn.Module, data: TensorDataset, indices: torch.Tensor, cap: float, emulated_sample_s: float = 0.0
) -> tuple[torch.Tensor, float]:
    """Accumulate the gradients of the summed loss over ``indices`` into ``.grad``; returns
    (summed loss, seconds busy). After each micro-batch that took ``t`` seconds (at least
    ``len x emulated_sample_s`` on an emulated slower board) it sleeps ``t (1/cap - 1)``, so the
    duty cycle stays at or under ``cap``."""
    cap = max(0.01, min(1.0, cap))
    loss_sum, busy = torch.zeros(1), 0.0
    for start in range(0, len(indices), MICRO_BATCH):
        t0 = time.perf_counter()
        micro = indices[start : start + MICRO_BATCH]
        x, y = data.batch(micro)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        loss.backward()  # type: ignore[no-untyped-call]
        loss_sum += loss.detach()
        spent = time.perf_counter() - t0
        emulated = len(micro) * emulated_sample_s - spent  # an emulated slower board
        if emulated > 0:
            time.sleep(emulated)
            spent += emulated
        busy += spent
        pause = spent * (1.0 / cap - 1.0)
        if pause > 0:
            time.sleep(pause)
    return loss_sum, busy
