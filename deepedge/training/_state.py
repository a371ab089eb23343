"""What a worker carries from step to step — model parameters and buffers, momentum, the step,
the loss curve and the plan generations it trained under — how ranks agree on it after a
re-form, and how it goes to and comes back from epoch checkpoints.

The state sync moves **numbers only**: a header of three int64s, then tensors whose sizes the
receiver computes from its own model and the header; nothing received is unpickled. A rank that
sends an impossible header or non-finite values fails the generation (:class:`BadState`, a
RuntimeError: the worker reports ``recovering``). A malicious rank can still poison the model —
that is data-parallel training — but it cannot run code on its peers.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from deepedge.training._files import load_weights, write_atomic

__all__ = [
    "MAX_CURVE",
    "MAX_GENERATIONS",
    "BadState",
    "TrainState",
    "checkpoint_name",
    "epoch_checkpoints",
    "prune_checkpoints",
]

MAX_CURVE = 100_000  # loss curve points kept (halved in resolution when full)
MAX_GENERATIONS = 10_000
_EPOCH = re.compile(r"^checkpoint-epoch(\d{1,9})\.pt$")


class BadState(RuntimeError):
    """A peer's state could not be taken: the generation fails, the worker recovers."""


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-epoch{epoch}.pt"


class TrainState:
    def __init__(self, model: nn.Module, learning_rate: float) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=learning_rate, momentum=0.9)
        for p in self.params:  # explicit zero momentum: the same as torch's first step, and broadcastable
            self.opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self.step = 0  # completed steps
        self.loss_curve: list[tuple[int, float]] = []
        self.generations: list[int] = []

    # ---- what is synchronised -----------------------------------------------------------------

    def momentum(self) -> list[torch.Tensor]:
        return [self.opt.state[p]["momentum_buffer"] for p in self.params]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the state, in an order all ranks agree on: parameters, momentum,
        buffers (e.g. BatchNorm's running statistics)."""
        return [p.data for p in self.params] + self.momentum() + list(self.model.buffers())

    def add_loss(self, step: int, loss: float) -> None:
        self.loss_curve.append((step, round(loss, 6)))
        if len(self.loss_curve) > MAX_CURVE:  # bounded: keep every other point (first and last stay)
            self.loss_curve = self.loss_curve[::2]

    def add_generation(self, generation: int) -> None:
        self.generations.append(generation)
        del self.generations[:-MAX_GENERATIONS]

    def sync(
        self,
        has_state: bool,
        total_steps: int,
        comm: torch.device | None = None,
        wait: Callable[[dist.Work], None] | None = None,
    ) -> int:
        """Everyone takes the state of the lowest rank with the most progress (survivors agree; a
        joiner without state has step -1). Returns the source rank. ``comm``: where the group's
        collectives take their tensors (the GPU for NCCL; the host for gloo, through which a GPU
        worker's state is staged). ``wait``: how to wait for each collective (the process
        group's, which gives it up for a newer plan: a board whose link collapsed must not hold a
        re-form for the minutes its copy of the model would take). Nothing is applied until
        everything has arrived: given up half way, the state is as it was."""
        comm = comm or torch.device("cpu")

        def done(work: dist.Work | None) -> None:
            assert work is not None
            if wait is not None:
                wait(work)
            else:
                work.wait()

        world = dist.get_world_size()
        mine = torch.tensor([self.step if has_state else -1], dtype=torch.long, device=comm)
        steps = [torch.zeros(1, dtype=torch.long, device=comm) for _ in range(world)]
        done(dist.all_gather(steps, mine, async_op=True))
        values = [int(s.item()) for s in steps]
        source = values.index(max(values))
        is_source = dist.get_rank() == source
        # Ranks that trained together hold the same state (each applied the same all-reduced
        # update): when every rank is at the same step with the same checksum, the model need
        # not travel again — over a 50 Mb/s link, MobileNetV2's parameters and momentum take 3 s.
        sums = [torch.zeros(2, dtype=torch.float64, device=comm) for _ in range(world)]
        done(dist.all_gather(sums, self.checksum().to(comm), async_op=True))
        same = min(values) >= 0 and len(set(values)) == 1 and all(torch.equal(sums[0], s) for s in sums[1:])
        header = torch.tensor([self.step, len(self.loss_curve), len(self.generations)], dtype=torch.long, device=comm)
        done(dist.broadcast(header, src=source, async_op=True))
        step, n_curve, n_gen = (int(x) for x in header.tolist())
        if not (0 <= step <= total_steps and 0 <= n_curve <= MAX_CURVE and 0 <= n_gen <= MAX_GENERATIONS):
            raise BadState(
                f"rank {source} sent an impossible state: step {step} of {total_steps}, "
                f"{n_curve} loss points, {n_gen} generations"
            )
        received = []
        for dtype, group in [] if same else _by_dtype(self.tensors()).items():
            if is_source:
                flat = torch.cat([t.reshape(-1) for t in group]).to(comm)
            else:
                flat = torch.empty(sum(t.numel() for t in group), dtype=dtype, device=comm)
            done(dist.broadcast(flat, src=source, async_op=True))
            if dtype.is_floating_point and not bool(torch.isfinite(flat).all()):
                raise BadState(f"rank {source} sent non-finite {dtype} state")
            received.append((group, flat))
        if is_source:
            curve = torch.tensor(self.loss_curve, dtype=torch.float64).reshape(-1, 2).to(comm)
            gens = torch.tensor(self.generations, dtype=torch.long).to(comm)
        else:
            curve = torch.empty(n_curve, 2, dtype=torch.float64, device=comm)
            gens = torch.empty(n_gen, dtype=torch.long, device=comm)
        done(dist.broadcast(curve, src=source, async_op=True))
        done(dist.broadcast(gens, src=source, async_op=True))
        points = curve.tolist()
        if not all(math.isfinite(s) and math.isfinite(v) and 0 <= s <= total_steps for s, v in points):
            raise BadState(f"rank {source} sent a loss curve with impossible points")
        if not all(0 <= g < 2**53 for g in gens.tolist()):
            raise BadState(f"rank {source} sent impossible plan generations")
        for group, flat in received:
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
        self.step = step
        self.loss_curve = [(int(s), float(v)) for s, v in points]
        self.generations = [int(g) for g in gens.tolist()]
        return source

    def checksum(self) -> torch.Tensor:
        """(sum, sum of squares) of every tensor of the state, in float64."""
        total = squares = 0.0
        for t in self.tensors():  # on the training device; the two sums come back to the host
            x = t.detach().to(torch.float64)
            total += float(x.sum())
            squares += float((x * x).sum())
        return torch.tensor([total, squares], dtype=torch.float64)

    # ---- checkpoints --------------------------------------------------------------------------

    def save(self, path: Path, meta: dict[str, object]) -> None:
        """Model, momentum and metadata, on the CPU (loadable on any device), written atomically."""
        data = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "momentum": [m.detach().cpu() for m in self.momentum()],
            "meta": {
                **meta,
                "steps": self.step,
                "plan_generations": list(self.generations),
                "loss_curve": list(self.loss_curve),
            },
        }
        with write_atomic(path) as fh:
            torch.save(data, fh)

    def resume(self, output: Path, job: str) -> Path | None:
        """Load the newest usable epoch checkpoint of ``job`` in ``output`` (damaged ones are
        skipped); the path loaded, or None. Loaded on the CPU (``map_location="cpu"``) and copied
        into the model's and momentum's tensors, wherever they live."""
        for _, path in sorted(epoch_checkpoints(output), reverse=True):
            try:
                data = load_weights(path, "checkpoint")
                meta = data["meta"]
                if meta.get("job") != job:
                    continue
                self.model.load_state_dict(data["model"])
                for buf, saved in zip(self.momentum(), data.get("momentum") or [], strict=False):
                    if saved.shape == buf.shape:
                        buf.copy_(saved)
                self.step = int(meta["steps"])
                self.loss_curve = [(int(s), float(v)) for s, v in meta.get("loss_curve", [])][-MAX_CURVE:]
                self.generations = [int(g) for g in meta.get("plan_generations", [])][-MAX_GENERATIONS:]
            except Exception as exc:  # a damaged checkpoint: try the one before it
                print(f"worker: checkpoint {path} not usable: {str(exc)[:300]}", file=sys.stderr, flush=True)
                continue
            return path
        return None


def epoch_checkpoints(output: Path) -> list[tuple[int, Path]]:
    found = []
    for path in output.glob("checkpoint-epoch*.pt"):
        m = _EPOCH.match(path.name)
        if m and not path.is_symlink():
            found.append((int(m.group(1)), path))
    return found


def prune_checkpoints(output: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` epoch checkpoints."""
    for _, path in sorted(epoch_checkpoints(output), reverse=True)[keep:]:
        path.unlink(missing_ok=True)


def _by_dtype(tensors: list[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    out: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        out.setdefault(t.dtype, []).append(t)
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))
