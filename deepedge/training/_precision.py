"""Mixed precision for one rank: the forward pass under ``torch.autocast`` (``bf16``, or ``fp16``
with dynamic loss scaling by ``torch.amp.GradScaler``); ``fp32`` is the plain path, untouched.

Parameters, gradients, the momentum and the all-reduce stay float32 in every precision: autocast
only changes the arithmetic of the forward pass (and so of the backward through it).

**Every rank takes the same step.** With fp16 each rank scales its loss by its own scale before
the backward pass and unscales its own gradients *before* the all-reduce (so ranks in different
precisions, or with different scales, sum true gradients). Whether a rank's gradients overflowed
travels in the all-reduce itself, one more element of the flat buffer (:data:`OVERFLOW`); after
it every rank sees the same sum, so if any rank overflowed, **every** rank throws the step away,
the rank that overflowed lowers its scale, and all of them compute the same step again (the
same samples: the accounting stays exact). No rank ever steps alone. A step that keeps
overflowing :data:`MAX_TRIES` times is a diverged model, a :class:`TrainingError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from deepedge.devices import DeviceError, precision_problem
from deepedge.training._errors import TrainingError

__all__ = ["MAX_TRIES", "Precision", "check_precision", "too_many_tries"]

MAX_TRIES = 32  # tries of one step under fp16 before the job fails (2^16 halves to 1 in 16)
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_precision(precision: str, device: torch.device) -> None:
    """:class:`DeviceError` if ``device`` cannot train in ``precision``."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        integrated = bool(getattr(torch.cuda.get_device_properties(device), "is_integrated", False))
        problem = precision_problem(
            precision, "jetson" if integrated else "cuda", bf16=cap >= (8, 0), fp16=cap >= (5, 3)
        )
    else:
        problem = precision_problem(precision, "cpu", bf16=True, fp16=True)
    if problem is not None:
        raise DeviceError(problem, setting="training.precision")


class Precision:
    """One rank's precision: ``autocast()`` around the forward pass, ``backward(loss)``, and
    around the all-reduce ``overflowed(opt, grads)`` / ``update()`` (fp16 only; no-ops else)."""

    def __init__(self, name: str, device: torch.device, init_scale: float = 2.0**16) -> None:
        self.name = name
        self.device = device
        self.dtype = _DTYPES.get(name)
        self.scaler: torch.amp.GradScaler | None = None
        if name == "fp16":
            self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()  # type: ignore[no-untyped-call]

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Divide this rank's gradients by its scale, in place (fp16 only), before the all-reduce.
        Call :meth:`update` after the all-reduce, whatever it found."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def overflowed(self, values: torch.Tensor) -> float:
        """1.0 if ``values`` (this rank's unscaled gradients and loss) are not all finite under
        fp16, else 0.0: the element this rank adds to the all-reduce. Always 0.0 in fp32 and bf16
        (their behaviour is not changed: a non-finite value there goes on as before)."""
        if self.scaler is None:
            return 0.0
        return 0.0 if bool(torch.isfinite(values).all()) else 1.0

    def update(self) -> None:
        """Next scale: halved after this rank's own overflow, doubled after 2000 clean tries."""
        if self.scaler is not None:
            self.scaler.update()

    @property
    def scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0


def too_many_tries(step: int, precision: Precision) -> TrainingError:
    return TrainingError(
        f"step {step}: non-finite gradients in {MAX_TRIES} tries under training.precision = {precision.name} "
        f"(loss scale now {precision.scale:g}): the model diverged, or fp16 cannot represent it (try bf16 or fp32)"
    )
