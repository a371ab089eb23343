"""Synchronous data-parallel training with heterogeneous shares and in-place elastic recovery:
the step loop. (The rendezvous is ``_rendezvous``, the process group ``_group``, the state, its
sync and checkpoints ``_state``, the files ``_files``.)

Each step takes one global batch of an epoch's seeded permutation; this node trains on
``[batch_offset, batch_offset + share)`` of it (an epoch's partial last batch is split in the same
proportions, see :func:`slice_of`). Every rank sums its per-sample losses, the
gradients are all-reduced (SUM) and divided by the batch size: the update equals the one a
single machine would make on the whole batch. When a collective fails (a peer died), the worker
waits for the next plan generation, re-forms the process group, takes parameters, optimizer state
and step from the lowest rank that has them, and continues from the last completed step.

What the job names (model, dataset, output, base checkpoint) is checked against this board's
own ``[training]`` configuration (``deepedge.job_policy``) before anything is loaded.
"""

from __future__ import annotations

import datetime
import sys
import time

import torch
import torch.distributed as dist

from deepedge.job_policy import JobRefused, check_job
from deepedge.training._accounting import AccountingLog
from deepedge.training._channel import Channel
from deepedge.training._compute import RAMP_FLOOR, Pacer, compute_share, ramp
from deepedge.training._data import TensorDataset, load_dataset
from deepedge.training._errors import TrainingError
from deepedge.training._files import ensure_dir
from deepedge.training._group import ProcessGroup
from deepedge.training._models import build_model, load_checkpoint
from deepedge.training._priority import thread_ids
from deepedge.training._rendezvous import NewPlan, Rendezvous
from deepedge.training._state import TrainState, checkpoint_name, prune_checkpoints
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


class Trainer:
    def __init__(self, first: PlanForWorker, channel: Channel, *, collective_timeout_s: float = 10.0) -> None:
        self.channel = channel
        self.pfw = first
        spec = first.plan.spec
        self.node = first.node
        try:
            checked = check_job(spec, first.policy)
        except JobRefused as exc:
            raise TrainingError(str(exc)) from None
        self.output = checked.output
        ensure_dir(self.output)
        timeout = datetime.timedelta(seconds=collective_timeout_s)
        self.rendezvous = Rendezvous(first.training_address, timeout, self.newer_plan_than)
        self.group = ProcessGroup(timeout, self.newer_plan_than)
        # paced like a slow-started step, so decoding the dataset does not hit the LC apps
        self.data: TensorDataset = load_dataset(
            str(checked.dataset), pace=Pacer(first.assignment.intensity_cap * RAMP_FLOOR)
        )
        self.batch = spec.global_batch
        if len(self.data) < self.batch:
            raise TrainingError(
                f"dataset {spec.dataset} has {len(self.data)} samples, fewer than the global batch {self.batch}"
            )
        self.steps_per_epoch = -(-len(self.data) // self.batch)
        self.total_steps = spec.epochs * self.steps_per_epoch
        torch.manual_seed(spec.seed)
        model = build_model(spec.model, len(self.data.classes))
        if checked.base_checkpoint is not None:
            load_checkpoint(model, checked.base_checkpoint)
        self.state = TrainState(model, spec.learning_rate)
        self.model, self.params = model, self.state.params
        self.has_state = True  # a joiner that starts from nothing still has the seeded init, but defers
        self.accounting = AccountingLog(self.output, self.node)
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self.intensity = 0.0
        self.generation_started = time.monotonic()
        if first.plan.resume_step > 0:
            self.resume_from_checkpoint()

    @property
    def step(self) -> int:
        return self.state.step

    def resume_from_checkpoint(self) -> None:
        """The job had progress before this worker started (a joiner, a restarted worker, or
        every worker lost): start from the newest epoch checkpoint of this job in the output, if
        there is one. The state sync then takes whichever rank is furthest: live survivors beat a
        checkpoint, a checkpoint beats starting over. Steps redone after it are recorded again
        under the new generation, which is the record that counts."""
        path = self.state.resume(self.output, self.pfw.plan.job)
        if path is not None:
            print(f"worker: resuming from {path.name} at step {self.step}", file=sys.stderr, flush=True)

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
        store = self.rendezvous.join(plan.rendezvous_host, plan.rendezvous_port, a.rank, world, plan.generation)
        self.group.form(store, a.rank, world, plan.generation, self.pfw.comm_nice, before)
        self.state.add_generation(plan.generation)

    def newer_plan_than(self, generation: int) -> bool:
        newer = self.channel.latest()
        return newer is not None and newer.plan.generation > generation

    def sync_state(self) -> None:
        self.state.sync(self.has_state, self.total_steps)
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
        cap = ramp(time.monotonic() - self.generation_started, a.intensity_cap)
        loss_sum, busy = compute_share(self.model, self.data, mine, cap, self.pfw.emulated_sample_s)
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = torch.cat([g.view(-1) for g in grads] + [loss_sum])
        t_reduce = time.perf_counter()
        self.group.all_reduce_or_abandon(flat)
        reduce_s = time.perf_counter() - t_reduce
        n = len(batch)
        offset = 0
        for g in grads:
            k = g.numel()
            g.copy_(flat[offset : offset + k].view_as(g)).div_(n)
            offset += k
        self.state.opt.step()
        by_node = {x.node: self.slice(batch, x.batch_offset, x.share).tolist() for x in self.pfw.plan.assignments}
        self.accounting.record(self.pfw.plan.generation, self.step, epoch, by_node, busy_s=busy, reduce_s=reduce_s)
        self.state.step += 1
        return float(flat[-1]) / n, busy

    # ---- the loop -----------------------------------------------------------------------------

    def save(self, name: str, final: bool) -> None:
        self.state.save(
            self.output / name,
            {
                "job": self.pfw.plan.job,
                "samples_seen": min(self.step * self.batch, self.total_steps * self.batch),
                "epochs_done": self.step // self.steps_per_epoch,
                "final": final,
                "classes": self.data.classes,
            },
        )

    def run_generation(self) -> None:
        gen = self.pfw.plan.generation
        last_report = 0.0
        self.generation_started = time.monotonic()  # the slow start (``ramp``) counts from here
        while self.step < self.total_steps:
            if self.newer_plan_than(gen):
                raise NewPlan
            t0 = time.perf_counter()
            loss, busy = self.train_step()
            wall = max(1e-9, time.perf_counter() - t0)
            self.intensity = min(1.0, busy / wall)  # the achieved duty cycle, waits for peers included
            self.state.add_loss(self.step, loss)
            if self.step % self.steps_per_epoch == 0 and self.pfw.assignment.rank == 0:
                self.save(checkpoint_name(self.step // self.steps_per_epoch), final=False)
                prune_checkpoints(self.output, self.pfw.policy.keep_checkpoints)
            now = time.perf_counter()
            first_of_generation = last_report == 0.0  # reported at once: recovery is visible
            if first_of_generation or now - last_report >= 0.2 or self.step == self.total_steps:
                last_report = now
                # samples/s over the whole step; / intensity = the rate at full intensity (planner)
                self.report("training", self.pfw.assignment.share / wall, loss)

    def run(self) -> None:
        while True:
            self.report("starting")
            try:
                self.form_group()
                self.sync_state()
                self.run_generation()
            except NewPlan:
                self.group.leave()
                self.pfw = self.channel.latest() or self.pfw
                continue
            except (RuntimeError, dist.DistError) as exc:  # a peer died, the group broke, a bad state
                self.group.leave()
                gen = self.pfw.plan.generation
                self.report("recovering", message=f"collective failed at step {self.step}: {str(exc)[:200]}")
                newer = self.channel.wait_newer(gen, timeout=600)
                if newer is None:
                    raise TrainingError(f"no new plan after the group of generation {gen} broke") from None
                self.pfw = newer
                continue
            break
        if self.pfw.assignment.rank == 0:
            self.save("model.pt", final=True)
        curve = self.state.loss_curve
        self.report("done", loss=curve[-1][1] if curve else None)
        self.group.leave()
        self.accounting.close()
