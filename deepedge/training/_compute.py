"""One node's share of a step: forward and backward over micro-batches on the training device,
paced for an emulated board and throttled to an intensity cap; and the step's all-reduce, redone
by every rank when one of them overflowed in fp16 (``_precision``), its buffer carrying the
ranks' control slots (``Trainer.train_step``) and sent as float16 when the plan says so.
``compute_share`` is shared by the trainer and the board profiler, so a profile measures exactly
what training does.

On a GPU the throttle measures GPU time: each micro-batch ends with
``torch.cuda.synchronize(device)`` before its time is taken, so the pause after it (the LC apps'
share of the GPU) starts when its kernels are done, not when they were queued.

A BatchNorm model never gets a one-sample micro-batch (its statistics over one sample are
undefined at 1x1 feature maps: torch raises "Expected more than 1 value per channel when
training"): a lone last sample joins the micro-batch before it. A share of one sample in all is
normalised by the running statistics (BatchNorm in eval mode for that pass; the running
statistics are not updated from it).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from deepedge.training._data import TensorDataset
from deepedge.training._precision import MAX_TRIES, Precision, too_many_tries
from deepedge.training._rendezvous import ABANDON_POLL_S

__all__ = [
    "MICRO_BATCH",
    "RAMP_FLOOR",
    "RAMP_S",
    "RAMP_WARM_S",
    "InconsistentStep",
    "Pacer",
    "Reduced",
    "compute_share",
    "decode_slots",
    "encode_slots",
    "has_batchnorm",
    "micro_batches",
    "ramp",
    "ramp_head_start",
    "reduce_step",
]

MICRO_BATCH = 32  # samples per forward/backward; the intensity throttle sleeps between them
_DIGIT = 2048  # float16 holds every integer up to 2048 exactly: a control slot goes as two digits
# Slow start: a worker's first seconds of each plan generation run at a fraction of its cap,
# rising linearly from RAMP_FLOOR x cap to the cap over RAMP_S, and its data loading is paced at
# RAMP_FLOOR x cap. A worker's start (data decoding, the first steps while its peers still
# arrive) no longer hits its board's LC apps harder than its planned cap does. A worker that
# trained within RAMP_WARM_S before the generation (a re-form: a failover, a new link) goes on
# from the intensity it trained at instead of from the floor: its board saw no start, and the
# floor's first step (4x as long) was a third of a degraded link's failover.
RAMP_S = 2.0
RAMP_FLOOR = 0.25
RAMP_WARM_S = 10.0


def ramp(elapsed_s: float, cap: float) -> float:
    """The cap in force ``elapsed_s`` after a generation started training."""
    if elapsed_s >= RAMP_S:
        return cap
    return cap * (RAMP_FLOOR + (1.0 - RAMP_FLOOR) * max(0.0, elapsed_s) / RAMP_S)


def ramp_head_start(cap: float, last: tuple[float, float] | None, now: float) -> float:
    """Seconds of the slow start a generation at ``cap`` skips: ``last`` is (when, intensity) of
    this worker's last step in an earlier generation; trained within RAMP_WARM_S, the ramp goes on
    from that intensity (at most the new cap), else it starts at the floor (0 s skipped)."""
    if last is None or now - last[0] > RAMP_WARM_S or cap <= 0:
        return 0.0
    fraction = min(1.0, last[1] / cap)
    return max(0.0, min(RAMP_S, RAMP_S * (fraction - RAMP_FLOOR) / (1.0 - RAMP_FLOOR)))


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


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def micro_batches(n: int, size: int = MICRO_BATCH, *, no_single: bool = False) -> list[tuple[int, int]]:
    """[start, end) of each micro-batch of ``n`` samples: ``size`` each, the last one shorter.
    ``no_single``: a last micro-batch of one sample joins the one before (``size + 1``)."""
    bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    if no_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
        bounds[-1] = (bounds[-1][0], n)
    return bounds


@contextlib.contextmanager
def _running_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in eval mode (normalise by the running statistics, leave them as they
    are) for one forward pass; everything else as it was."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.train(False)
    try:
        yield
    finally:
        for m in norms:
            m.train(True)


def compute_share(
    model: nn.Module,
    data: TensorDataset,
    indices: torch.Tensor,
    cap: float,
    emulated_sample_s: float = 0.0,
    *,
    device: torch.device | None = None,
    precision: Precision | None = None,
    interrupt: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, float]:
    """Accumulate the gradients of the summed loss over ``indices`` into ``.grad``; returns
    (summed loss, on the device; seconds busy). After each micro-batch that took ``t`` seconds
    (at least ``len x emulated_sample_s`` on an emulated slower board) it sleeps ``t (1/cap - 1)``,
    so the duty cycle stays at or under ``cap``. Under fp16 the gradients are scaled by the
    precision's loss scale (``Precision.unscale`` undoes it).

    ``interrupt`` is called after each micro-batch and every ABANDON_POLL_S of its sleeps (as a
    pending rendezvous or all-reduce looks for a newer plan); what it raises ends the share (the
    worker leaves for a newer plan: a share throttled by the slow start took up to 9 s, and the
    worker left its group only once it was computed)."""
    device = device or torch.device("cpu")
    on_gpu = device.type == "cuda"
    cap = max(0.01, min(1.0, cap))
    loss_sum, busy = torch.zeros(1, device=device), 0.0
    batchnorm = has_batchnorm(model)
    for start, end in micro_batches(len(indices), no_single=batchnorm):
        t0 = time.perf_counter()
        x, y = data.batch(indices[start:end])
        if device.type != "cpu":
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lone = batchnorm and end - start == 1 and model.training
        with _running_statistics(model) if lone else contextlib.nullcontext():
            if precision is None:
                loss = F.cross_entropy(model(x), y, reduction="sum")
                loss.backward()  # type: ignore[no-untyped-call]
            else:
                with precision.autocast():
                    loss = F.cross_entropy(model(x), y, reduction="sum")
                precision.backward(loss)
        loss_sum += loss.detach().float()
        if on_gpu:
            torch.cuda.synchronize(device)  # the micro-batch's kernels are done: its time is GPU time
        spent = time.perf_counter() - t0
        if interrupt is not None:
            interrupt()
        emulated = (end - start) * emulated_sample_s - spent  # an emulated slower board
        if emulated > 0:
            _sleep(emulated, interrupt)
            spent += emulated
        busy += spent
        pause = spent * (1.0 / cap - 1.0)
        if pause > 0:
            _sleep(pause, interrupt)
    return loss_sum, busy


def _sleep(seconds: float, interrupt: Callable[[], None] | None) -> None:
    """Sleep ``seconds``, calling ``interrupt`` every ABANDON_POLL_S (it may raise)."""
    if interrupt is None:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while (left := end - time.perf_counter()) > 0:
        time.sleep(min(left, ABANDON_POLL_S))
        interrupt()


def encode_slots(values: Sequence[int], half: bool, device: torch.device | None = None) -> torch.Tensor:
    """Non-negative integers as control slots of the all-reduce: float32 as they are (exact
    below 2**24), float16 as two base-2048 digits each (exact below 2**22)."""
    if not half:
        return torch.tensor(list(values), dtype=torch.float32, device=device)
    digits = [d for v in values for d in (v // _DIGIT, v % _DIGIT)]
    return torch.tensor(digits, dtype=torch.float16, device=device)


class InconsistentStep(RuntimeError):
    """The ranks of a step disagree (different plan generations, impossible control slots, a
    non-finite sum): the step is not applied and the generation fails like a broken
    collective — never the job (one hostile rank must not get the honest ones excluded)."""


def decode_slots(slots: torch.Tensor, half: bool) -> list[int]:
    """The summed control slots; InconsistentStep for values no honest ranks can sum to
    (non-finite, negative, not integers, past what float32 or two float16 digits hold)."""
    raw = slots.tolist()
    if not all(math.isfinite(x) and 0 <= x < 2**24 and x == int(x) for x in raw):
        raise InconsistentStep("impossible control slots in the all-reduce")
    xs = [int(x) for x in raw]
    if not half:
        return xs
    return [hi * _DIGIT + lo for hi, lo in zip(xs[::2], xs[1::2], strict=True)]


@dataclass(frozen=True, slots=True)
class Reduced:
    """A step's all-reduce, summed over the ranks."""

    grads: list[torch.Tensor]  # this rank's gradients in the optimizer's order (not yet copied back)
    summed: torch.Tensor  # float32 [gradients..., loss] (already divided by ``mean_over`` when given)
    control: list[int]  # the control slots, summed
    busy_s: float
    reduce_s: float
    comm_bytes: int  # bytes of the buffer all-reduced (its last try)


def reduce_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: TensorDataset,
    indices: torch.Tensor,
    cap: float,
    all_reduce: Callable[[torch.Tensor], None],
    *,
    emulated_sample_s: float = 0.0,
    device: torch.device | None = None,
    precision: Precision | None = None,
    step: int = 0,
    control: Sequence[int] = (),
    half_over: int = 0,
    interrupt: Callable[[], None] | None = None,
) -> Reduced:
    """This rank's share of one step, all-reduced (SUM). The buffer is ``[gradients..., loss,
    control..., overflows]``: ``control`` are integers every rank contributes to (each writes
    its own slots), carried exactly (``encode_slots``). ``half_over``: the wire is float16, the
    gradients and loss divided by this (the global batch) before the cast, so that the float16
    sum of means cannot overflow; 0: float32, summed as they are.

    The last slot counts the ranks whose fp16 *training* (``training.precision``) gradients
    overflowed; all ranks see the same count, so when it is not 0 every rank computes the step
    again (its own scale lowered where it overflowed): no rank steps alone. Raises
    ``TrainingError`` after ``MAX_TRIES``, and whatever ``all_reduce`` or ``interrupt`` (called
    while the share is computed, ``compute_share``) raises."""
    device = device or torch.device("cpu")
    half = half_over > 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    params = [p for group in opt.param_groups for p in group["params"]]
    busy = reduce_s = 0.0
    mine_every_try = True  # this rank's own gradients overflowed on every try so far
    for _ in range(MAX_TRIES):
        for p in params:
            p.grad = torch.zeros_like(p)
        loss_sum, spent = compute_share(
            model, data, indices, cap, emulated_sample_s, device=device, precision=precision, interrupt=interrupt
        )
        busy += spent
        if precision is not None:
            precision.unscale(opt)
        grads = [p.grad for p in params if p.grad is not None]
        body = torch.cat([g.view(-1) for g in grads] + [loss_sum])
        overflowed = precision is not None and precision.overflowed(body)
        if half:
            body = body.div_(half_over).half()
        flat = torch.cat([body, encode_slots([*control, int(overflowed)], half, device)])
        t0 = time.perf_counter()
        all_reduce(flat)
        reduce_s += time.perf_counter() - t0
        if precision is not None:
            precision.update()
        *seen, overflows = decode_slots(flat[body.numel() :], half)
        if overflows > world:
            raise InconsistentStep(f"step {step}: {overflows} ranks of {world} say their gradients overflowed")
        mine_every_try = mine_every_try and bool(overflowed)
        if overflows == 0:
            summed = flat[: body.numel()].float()
            if not bool(torch.isfinite(summed).all()):  # no honest rank sends one (overflow is said apart)
                raise InconsistentStep(f"step {step}: the summed gradients are not finite")
            return Reduced(grads, summed, seen, busy, reduce_s, flat.numel() * flat.element_size())
    if not mine_every_try:  # another rank kept saying so: the generation fails, not this job here
        raise InconsistentStep(f"step {step}: other ranks said their gradients overflowed {MAX_TRIES} times in a row")
    raise too_many_tries(step, precision or Precision("fp32", device))
