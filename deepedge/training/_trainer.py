"""Synchronous data-parallel training with heterogeneous shares and in-place elastic recovery.

Each step takes one global batch of an epoch's seeded permutation; this node trains on
``[batch_offset, batch_offset + share)`` of it (an epoch's partial last batch is split in the same
proportions, see :func:`slice_of`). Every rank sums its per-sample losses, the
gradients are all-reduced (SUM) and divided by the batch size: the update equals the one a
single machine would make on the whole batch. When a collective fails (a peer died), the worker
waits for the next plan generation, re-forms the process group, takes parameters, optimizer state
and step from the lowest rank that has them, and continues from the last completed step.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import TCPStore

from deepedge.training._accounting import AccountingLog
from deepedge.training._channel import Channel
from deepedge.training._compute import compute_share
from deepedge.training._data import TensorDataset, load_dataset
from deepedge.training._errors import TrainingError
from deepedge.training._models import build_model, load_checkpoint
from deepedge.training._priority import prioritize_threads, thread_ids
from deepedge.worker_protocol import PlanForWorker, WorkerReport, WorkerState

__all__ = ["Trainer", "slice_of"]


def slice_of(offset: int, share: int, global_batch: int, n: int) -> tuple[int, int]:
    """[start, end) of a node's slice of a batch of ``n`` samples when its plan gives it
    ``[offset, offset + share)`` of a full ``global_batch``. A full batch is sliced as planned;
    an epoch's partial last batch (n < global_batch) in the same proportions, so that every node
    still finishes at the same time (the first nodes taking all of it made that step as slow as
    a full one). The slices of all nodes tile [0, n) exactly: each bound is the same rounding of
    the planned one, and a node's end is the next node's start."""
    if n >= global_batch:
        return offset, offset + share

    def bound(x: int) -> int:  # round(x * n / global_batch), halves up, in integers
        return (x * n + global_batch // 2) // global_batch

    return bound(offset), bound(offset + share)


class _NewPlan(Exception):
    """A later plan generation arrived: re-form at this step boundary."""


ABANDON_POLL_S = 0.05  # how often a pending all-reduce or a rendezvous looks for a newer plan
_TRY = datetime.timedelta(seconds=1)  # one try to reach rank 0's store
_ARRIVED = "deepedge/arrived"  # ranks of this generation at the rendezvous


def _set_aside_default_group() -> object:
    """Unregister the default process group without shutting it down: shutting down a gloo
    group with an operation pending blocks until gloo's timeout. This is
    ``destroy_process_group()`` minus the backends' shutdown, the group-name counter included
    (reset to 0, as destroying does, so that every rank — set aside, destroyed or new — names its
    next group alike: the store-based barrier of ``init_process_group`` keys on that name). The
    caller keeps the returned group referenced, so its destructor does not block either; its
    stuck operation ends at gloo's timeout in gloo's own thread, and nobody waits for it."""
    from torch._C._distributed_c10d import _unregister_all_process_groups
    from torch.distributed import distributed_c10d as c10d  # private API: pinned torch, tested

    group = c10d._get_default_group()
    world = c10d._world
    c10d._update_default_pg(None)
    for registry in (
        world.pg_map,
        world.pg_names,
        world.pg_group_ranks,
        world.pg_backend_config,
        world.pg_to_tag,
        world.tags_to_pg,
        world.pg_coalesce_state,
    ):
        registry.clear()
    _unregister_all_process_groups()
    world.group_count = 0
    return group


class Trainer:
    def __init__(self, first: PlanForWorker, channel: Channel, *, collective_timeout_s: float = 10.0) -> None:
        self.channel = channel
        self.pfw = first
        spec = first.plan.spec
        self.node = first.node
        self.output = Path(spec.output)
        self.timeout = datetime.timedelta(seconds=collective_timeout_s)
        self.data: TensorDataset = load_dataset(spec.dataset)
        self.batch = spec.global_batch
        if len(self.data) < self.batch:
            raise TrainingError(
                f"dataset {spec.dataset} has {len(self.data)} samples, fewer than the global batch {self.batch}"
            )
        self.steps_per_epoch = -(-len(self.data) // self.batch)
        self.total_steps = spec.epochs * self.steps_per_epoch
        torch.manual_seed(spec.seed)
        self.model = build_model(spec.model, len(self.data.classes))
        if spec.base_checkpoint:
            load_checkpoint(self.model, spec.base_checkpoint)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=spec.learning_rate, momentum=0.9)
        for p in self.params:  # explicit zero momentum: the same as torch's first step, and broadcastable
            self.opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self.step = 0  # completed steps
        self.has_state = True  # a joiner that starts from nothing still has the seeded init, but defers
        self.loss_curve: list[tuple[int, float]] = []
        self.generations: list[int] = []
        self.accounting = AccountingLog(self.output, self.node)
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self.intensity = 0.0
        self._set_aside: list[object] = []  # groups abandoned with an all-reduce pending
        if first.plan.resume_step > 0:
            self.resume_from_checkpoint()

    def resume_from_checkpoint(self) -> None:
        """The job had progress before this worker started (a joiner, a restarted worker, or
        every worker lost): start from the newest epoch checkpoint of this job in the output, if
        there is one. ``sync_state`` then takes whichever rank is furthest: live survivors beat a
        checkpoint, a checkpoint beats starting over. Steps redone after it are recorded again
        under the new generation, which is the record that counts."""
        job = self.pfw.plan.job
        found: list[tuple[int, Path]] = []
        for path in self.output.glob("checkpoint-epoch*.pt"):
            try:
                found.append((int(path.stem.removeprefix("checkpoint-epoch")), path))
            except ValueError:
                continue
        for _, path in sorted(found, reverse=True):
            try:
                data = torch.load(path, weights_only=True, map_location="cpu")
                meta = data["meta"]
                if meta.get("job") != job:
                    continue
                self.model.load_state_dict(data["model"])
                for p, buf in zip(self.params, data.get("momentum") or [], strict=False):
                    if buf.shape == p.shape:
                        self.opt.state[p]["momentum_buffer"].copy_(buf)
            except Exception as exc:  # a damaged checkpoint: try the one before it
                print(f"worker: checkpoint {path} not usable: {exc}", file=sys.stderr, flush=True)
                continue
            self.step = int(meta["steps"])
            self.loss_curve = [(int(s), float(v)) for s, v in meta.get("loss_curve", [])]
            self.generations = [int(g) for g in meta.get("plan_generations", [])]
            print(f"worker: resuming from {path.name} at step {self.step}", file=sys.stderr, flush=True)
            return

    # ---- reports ------------------------------------------------------------------------------

    def report(
        self, state: WorkerState, samples_per_s: float = 0.0, loss: float | None = None, message: str = ""
    ) -> None:
        a = self.pfw.assignment
        self.channel.report(
            WorkerReport(
                job=self.pfw.plan.job,
                generation=self.pfw.plan.generation,
                rank=a.rank,
                world_size=len(self.pfw.plan.assignments),
                step=self.step,
                samples_per_s=samples_per_s,
                loss=loss,
                intensity=self.intensity,
                state=state,
                message=message,
            )
        )

    # ---- process group ------------------------------------------------------------------------

    def form_group(self) -> None:
        plan, a = self.pfw.plan, self.pfw.assignment
        world = len(plan.assignments)
        before = thread_ids()
        store = self.meet(plan.rendezvous_host, plan.rendezvous_port, a.rank, world)
        # gloo even where the plan says nccl: the model and its tensors stay on the CPU (GPU
        # training is not built), and NCCL cannot reduce CPU tensors. Every rank decides alike.
        dist.init_process_group("gloo", store=store, rank=a.rank, world_size=world, timeout=self.timeout)
        prioritize_threads(self.pfw.comm_nice, thread_ids() - before)  # the threads forming it started
        self.generations.append(plan.generation)

    def meet(self, host: str, port: int, rank: int, world: int) -> TCPStore:
        """Wait until every rank of this generation is at its rendezvous (rank 0 hosts the store),
        looking for a newer plan between short tries: a peer of this generation that died before
        it got here must not hold the others up until gloo's timeout (raises _NewPlan), and
        ``init_process_group`` then finds everyone there. RuntimeError after the collective
        timeout with no newer plan."""
        gen = self.pfw.plan.generation
        deadline = time.monotonic() + self.timeout.total_seconds()
        store: TCPStore | None = None
        arrived = 0
        while True:
            if self.newer_plan_than(gen):
                raise _NewPlan
            try:
                if store is None:
                    store = TCPStore(host, port, world, is_master=rank == 0, timeout=_TRY, wait_for_workers=False)
                    store.add(_ARRIVED, 1)
                arrived = store.add(_ARRIVED, 0)
            except RuntimeError:  # rank 0's store is not up yet, or a try timed out
                pass
            if store is not None and arrived >= world:
                store.set_timeout(self.timeout)
                return store
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"rendezvous of generation {gen} at {host}:{port}: {arrived} of {world} ranks arrived "
                    f"within {self.timeout.total_seconds():g} s"
                )
            time.sleep(ABANDON_POLL_S)

    def newer_plan_than(self, generation: int) -> bool:
        newer = self.channel.latest()
        return newer is not None and newer.plan.generation > generation

    def leave_group(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()

    def all_reduce_or_abandon(self, flat: torch.Tensor) -> None:
        """All-reduce (SUM) in place; if a newer plan generation arrives while it is pending (a
        peer died silently, or died while this rank waited on a live peer), give up on it and
        raise :class:`_NewPlan` at once instead of waiting for gloo's timeout. Raises as
        ``dist.all_reduce`` does when the collective fails."""
        work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
        assert work is not None
        done = threading.Event()
        work.get_future().add_done_callback(lambda _f: done.set())
        gen = self.pfw.plan.generation
        while not done.wait(ABANDON_POLL_S):
            if self.newer_plan_than(gen):
                self._set_aside.append(_set_aside_default_group())
                raise _NewPlan
        work.wait()

    def sync_state(self) -> None:
        """Everyone takes parameters, optimizer state, step and loss curve from the lowest rank
        with the most progress (survivors agree; a joiner has step -1)."""
        mine = torch.tensor([self.step if self.has_state else -1], dtype=torch.long)
        steps = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
        dist.all_gather(steps, mine)
        values = [int(s.item()) for s in steps]
        source = values.index(max(values))
        flat = torch.cat(
            [p.data.view(-1) for p in self.params]
            + [self.opt.state[p]["momentum_buffer"].view(-1) for p in self.params]
        )
        dist.broadcast(flat, src=source)
        offset = 0
        for tensor in [p.data for p in self.params] + [self.opt.state[p]["momentum_buffer"] for p in self.params]:
            n = tensor.numel()
            tensor.copy_(flat[offset : offset + n].view_as(tensor))
            offset += n
        meta = [self.step, self.loss_curve, self.generations]
        dist.broadcast_object_list(meta, src=source)
        self.step, self.loss_curve, self.generations = int(meta[0]), list(meta[1]), list(meta[2])  # type: ignore[call-overload]
        self.has_state = True

    # ---- one step -----------------------------------------------------------------------------

    def global_batch(self, step: int) -> tuple[int, torch.Tensor]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.pfw.plan.spec.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.data), generator=g), epoch
        return epoch, self._perm[k * self.batch : (k + 1) * self.batch]

    def slice(self, batch: torch.Tensor, offset: int, share: int) -> torch.Tensor:
        start, end = slice_of(offset, share, self.batch, len(batch))
        return batch[start:end]

    def train_step(self) -> tuple[float, float]:
        """(loss, seconds busy computing) of one global step; raises on a failed collective."""
        a = self.pfw.assignment
        epoch, batch = self.global_batch(self.step)
        mine = self.slice(batch, a.batch_offset, a.share)
        for p in self.params:
            p.grad = torch.zeros_like(p)
        loss_sum, busy = compute_share(self.model, self.data, mine, a.intensity_cap, self.pfw.emulated_sample_s)
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = torch.cat([g.view(-1) for g in grads] + [loss_sum])
        t_reduce = time.perf_counter()
        self.all_reduce_or_abandon(flat)
        reduce_s = time.perf_counter() - t_reduce
        n = len(batch)
        offset = 0
        for g in grads:
            k = g.numel()
            g.copy_(flat[offset : offset + k].view_as(g)).div_(n)
            offset += k
        self.opt.step()
        by_node = {x.node: self.slice(batch, x.batch_offset, x.share).tolist() for x in self.pfw.plan.assignments}
        self.accounting.record(self.pfw.plan.generation, self.step, epoch, by_node, busy_s=busy, reduce_s=reduce_s)
        self.step += 1
        return float(flat[-1]) / n, busy

    # ---- the loop -----------------------------------------------------------------------------

    def save(self, path: Path, final: bool) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "model": self.model.state_dict(),
                "momentum": [self.opt.state[p]["momentum_buffer"] for p in self.params],
                "meta": {
                    "job": self.pfw.plan.job,
                    "steps": self.step,
                    "samples_seen": min(self.step * self.batch, self.total_steps * self.batch),
                    "epochs_done": self.step // self.steps_per_epoch,
                    "plan_generations": self.generations,
                    "loss_curve": self.loss_curve,
                    "final": final,
                    "classes": self.data.classes,
                },
            },
            tmp,
        )
        tmp.replace(path)  # never a half-written checkpoint

    def run_generation(self) -> None:
        gen = self.pfw.plan.generation
        last_report = 0.0
        while self.step < self.total_steps:
            if self.newer_plan_than(gen):
                raise _NewPlan
            t0 = time.perf_counter()
            loss, busy = self.train_step()
            wall = max(1e-9, time.perf_counter() - t0)
            self.intensity = min(1.0, busy / wall)  # the achieved duty cycle, waits for peers included
            self.loss_curve.append((self.step, round(loss, 6)))
            if self.step % self.steps_per_epoch == 0 and self.pfw.assignment.rank == 0:
                self.save(self.output / f"checkpoint-epoch{self.step // self.steps_per_epoch}.pt", final=False)
            now = time.perf_counter()
            first_of_generation = last_report == 0.0  # reported at once: recovery is visible
            if first_of_generation or now - last_report >= 0.2 or self.step == self.total_steps:
                last_report = now
                # samples/s over the whole step; / intensity = the rate at full intensity (planner)
                self.report("training", self.pfw.assignment.share / wall, loss)

    def run(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        while True:
            self.report("starting")
            try:
                self.form_group()
                self.sync_state()
                self.run_generation()
            except _NewPlan:
                self.leave_group()
                self.pfw = self.channel.latest() or self.pfw
                continue
            except (RuntimeError, dist.DistError) as exc:  # a peer died or the group broke
                self.leave_group()
                gen = self.pfw.plan.generation
                self.report("recovering", message=f"collective failed at step {self.step}: {str(exc)[:200]}")
                newer = self.channel.wait_newer(gen, timeout=600)
                if newer is None:
                    raise TrainingError(f"no new plan after the group of generation {gen} broke") from None
                self.pfw = newer
                continue
            break
        if self.pfw.assignment.rank == 0:
            self.save(self.output / "model.pt", final=True)
        self.report("done", loss=self.loss_curve[-1][1] if self.loss_curve else None)
        self.leave_group()
        self.accounting.close()
