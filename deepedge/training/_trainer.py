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

A newer generation that only changes shares, offsets or caps (``Plan.same_group``) is taken
without re-forming: every rank writes into control slots appended to the gradient all-reduce the
generation it trained this step with and the newest such plan it holds; when every rank holds the
same newer one, all switch to it after this step (see :meth:`Trainer.train_step`). A step whose
ranks trained under different generations is never applied: the generation fails and re-forms.

The gradient all-reduce carries float32, or float16 when the plan says so (``grad_dtype``: half
the bytes on slow links; the gradient is divided by the batch size before the cast, so it cannot
overflow, and summed in float16).

What the job names (model, dataset, output, base checkpoint) is checked against this board's
own ``[training]`` configuration (``deepedge.job_policy``) before anything is loaded; where it
trains (``training.device``) and in which precision (``training.precision``) come from there too,
never from the plan. The plan says only the job's backend (gloo, or NCCL on the device).
"""

from __future__ import annotations

import datetime
import statistics
import sys
import time
from collections import deque
from typing import TYPE_CHECKING

import psutil
import torch
import torch.distributed as dist

from deepedge.broker_schemas import WorkerState
from deepedge.devices import DeviceError
from deepedge.job_policy import JobRefused, check_job
from deepedge.training._accounting import AccountingLog
from deepedge.training._channel import Channel
from deepedge.training._compute import RAMP_FLOOR, InconsistentStep, Pacer, ramp, ramp_head_start, reduce_step
from deepedge.training._cuda import training_device
from deepedge.training._data import TensorDataset, load_dataset
from deepedge.training._data_cache import DataCache
from deepedge.training._errors import TrainingError
from deepedge.training._files import ensure_dir
from deepedge.training._group import ProcessGroup
from deepedge.training._models import build_model, load_checkpoint
from deepedge.training._precision import Precision, check_precision
from deepedge.training._priority import thread_ids
from deepedge.training._rendezvous import ARRIVAL_S, NewPlan, Rendezvous
from deepedge.training._state import TrainState, checkpoint_name, prune_checkpoints
from deepedge.worker_protocol import PlanForWorker, WorkerReport

if TYPE_CHECKING:
    from deepedge.broker_schemas import Plan

__all__ = ["Trainer", "slice_of"]

REPORT_EVERY_S = 0.2
PENDING_REPORT_S = 1.0  # while an all-reduce waits longer than this, say so every PENDING_EVERY_S:
# the coordinator's stall limit (2.5 expected steps, at least 2 s) is crossed by a report at most
# this long after it is (at 1 s, a 2.2 s limit was seen at 3 s: a degraded link's failover)
PENDING_EVERY_S = 0.5


def _label(plan: Plan) -> int:
    """The generation whose process group ``plan`` runs in (its own, unless it continues one)."""
    return plan.group_generation if plan.same_group else plan.generation


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
        arrival = datetime.timedelta(seconds=max(collective_timeout_s, ARRIVAL_S))
        self.rendezvous = Rendezvous(first.training_address, timeout, self.must_leave, arrival)
        self.group = ProcessGroup(timeout, self.must_leave, self._waiting)
        # paced like a slow-started step, so decoding the dataset does not hit the LC apps
        self.data: TensorDataset = load_dataset(
            str(checked.dataset),
            pace=Pacer(first.assignment.intensity_cap * RAMP_FLOOR),
            cache=DataCache(first.policy.data_cache_dir, first.policy.data_cache_mb),
        )
        if self.data.origin:
            print(f"worker: dataset {spec.dataset}: {self.data.origin}", file=sys.stderr, flush=True)
        self.batch = spec.global_batch
        if len(self.data) < self.batch:
            raise TrainingError(
                f"dataset {spec.dataset} has {len(self.data)} samples, fewer than the global batch {self.batch}"
            )
        self.steps_per_epoch = -(-len(self.data) // self.batch)
        self.total_steps = spec.epochs * self.steps_per_epoch
        policy = first.policy
        self.device = training_device(policy.device, policy.lc_memory_reserve_mb << 20)
        check_precision(policy.precision, self.device)
        self.precision = Precision(policy.precision, self.device)
        planned = first.assignment.device
        if planned and planned != str(self.device):
            print(f"worker: the plan says {planned}, training.device gives {self.device}", file=sys.stderr, flush=True)
        torch.manual_seed(spec.seed)
        model = build_model(spec.model, len(self.data.classes))
        if checked.base_checkpoint is not None:
            load_checkpoint(model, checked.base_checkpoint)  # on the CPU, then moved with the model
        if self.device.type != "cpu":
            model.to(self.device)
        self.state = TrainState(model, spec.learning_rate)  # its momentum buffers on the model's device
        self.model, self.params = model, self.state.params
        self.has_state = True  # a joiner that starts from nothing still has the seeded init, but defers
        self.accounting = AccountingLog(self.output, self.node)
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self.intensity = 0.0
        self.group_label = -1  # the generation whose process group this worker is in
        self._offered: PlanForWorker | None = None  # the same-group plan it offered in this step's slots
        self.switches = 0  # generations taken without re-forming
        # what the reports carry: this generation's step timing, the last formation's, the link
        self._timing: deque[tuple[float, float, float]] = deque(maxlen=64)  # (compute, all-reduce, step)
        self._last_step_end = 0.0
        self.comm_bytes = 0
        self.link = (0.0, 0.0)  # (bytes/s, one-way latency s) from the probe
        self.forming_s = 0.0
        self.startup_s = 0.0
        self._met = 0.0
        self.pending_s = 0.0
        self._pending_reported = 0.0
        self._born = psutil.Process().create_time()
        self.generation_started = time.monotonic()
        self.last_trained: tuple[float, float] | None = None  # (when, intensity) of the last step
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
        timing = list(self._timing)
        self._timing.clear()

        def median(i: int) -> float:
            return statistics.median(t[i] for t in timing) if timing else 0.0

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
                compute_s=median(0),
                allreduce_s=median(1),
                step_s=median(2),
                comm_bytes=self.comm_bytes,
                link_bps=self.link[0],
                link_latency_s=self.link[1],
                forming_s=self.forming_s,
                startup_s=self.startup_s,
                pending_s=self.pending_s,
            )
        )

    def _waiting(self, seconds: float) -> None:
        """An all-reduce has been pending ``seconds``: past PENDING_REPORT_S, say so every
        PENDING_EVERY_S (a link that degrades mid-step shows here before the step ends)."""
        self.pending_s = seconds
        if seconds >= PENDING_REPORT_S and seconds - self._pending_reported >= PENDING_EVERY_S:
            self._pending_reported = seconds
            self.report(WorkerState.TRAINING, loss=None)

    # ---- process group ------------------------------------------------------------------------

    def form_group(self) -> None:
        """Meet, form the process group and probe this board's link to its peers."""
        plan, a = self.pfw.plan, self.pfw.assignment
        world = len(plan.assignments)
        self.group_label = _label(plan)
        before = thread_ids()
        if plan.backend == "nccl" and self.device.type != "cuda":
            raise DeviceError(
                f"the plan of generation {plan.generation} says nccl, but this worker trains on {self.device} "
                f"(training.device = {self.pfw.policy.device!r})",
                setting="training.device",
                node=self.node,
            )
        if not self.startup_s:  # its own start: imports, data, model (not the wait for its peers)
            self.startup_s = time.time() - self._born
        asked = time.monotonic()
        store = self.rendezvous.join(plan.rendezvous_host, plan.rendezvous_port, a.rank, world, self.group_label)
        self._met = time.monotonic()  # every rank is there: forming starts
        self.group.form(
            store, a.rank, world, self.group_label, self.pfw.comm_nice, before, backend=plan.backend, device=self.device
        )
        formed = time.monotonic()
        self.state.add_generation(plan.generation)
        if world > 1:
            self.link = self.group.probe_links(a.rank, world)
            self.report(WorkerState.STARTING)  # the probed link, before the state sync: a collapsed one re-plans now
        # where a re-form's time goes (the node's log keeps a worker's stderr)
        print(
            f"worker: generation {plan.generation} formed (rank {a.rank} of {world}): rendezvous "
            f"{self._met - asked:.2f} s, process group {formed - self._met:.2f} s, link probe "
            f"{time.monotonic() - formed:.2f} s ({self.link[0] * 8 / 1e6:.1f} Mb/s)",
            file=sys.stderr,
            flush=True,
        )

    def continues_group(self, pfw: PlanForWorker, label: int) -> bool:
        """Whether ``pfw`` may be taken at a step boundary within the group formed at ``label``:
        same participants at the same ranks, same rendezvous, backend and gradient dtype."""
        new, cur = pfw.plan, self.pfw.plan
        return (
            new.same_group
            and new.group_generation == label
            and [(x.node, x.rank) for x in new.assignments] == [(x.node, x.rank) for x in cur.assignments]
            and (new.rendezvous_host, new.rendezvous_port, new.backend, new.grad_dtype)
            == (cur.rendezvous_host, cur.rendezvous_port, cur.backend, cur.grad_dtype)
        )

    def must_leave(self, label: int) -> bool:
        """A newer plan arrived that the group formed at ``label`` cannot continue into."""
        newer = self.channel.latest()
        if newer is None or newer.plan.generation <= self.pfw.plan.generation:
            return False
        return not self.continues_group(newer, label)

    def leave_if_newer(self) -> None:
        """Raise NewPlan if a newer plan arrived that this group cannot continue into."""
        if self.must_leave(self.group_label):
            raise NewPlan

    def sync_state(self) -> None:
        self.state.sync(self.has_state, self.total_steps, self.group.comm_device, self.group.wait)
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

    def _slots(self) -> list[int]:
        """This rank's control slots: the generation it trains this step with, and the newest
        plan it holds that continues this group (or the same generation)."""
        world, rank = len(self.pfw.plan.assignments), self.pfw.assignment.rank
        newer = self.channel.latest()
        offer = self.pfw.plan.generation
        self._offered = None
        if newer is not None and newer.plan.generation > offer and self.continues_group(newer, self.group_label):
            self._offered, offer = newer, newer.plan.generation
        slots = [0] * (2 * world)
        slots[rank], slots[world + rank] = self.pfw.plan.generation, offer
        return slots

    def train_step(self) -> tuple[float, float, int]:
        """(loss, seconds busy computing, samples this rank trained) of one global step; raises
        on a failed collective.

        The all-reduced tensor is [gradients, loss, control slots]: 2 x world integers, rank r
        writing slot r (the generation of the assignment it trained with) and slot world + r
        (the newest plan it holds that continues this group). Everyone sees every slot after
        the sum; a step whose first slots differ is not applied (InconsistentStep), and when
        every rank offered the same newer generation, all take it after this step."""
        a = self.pfw.assignment
        half = self.pfw.plan.grad_dtype == "float16"
        epoch, batch = self.global_batch(self.step)
        n = len(batch)
        mine = self.slice(batch, a.batch_offset, a.share)
        world = len(self.pfw.plan.assignments)
        self.pending_s = self._pending_reported = 0.0
        used = ramp(time.monotonic() - self.generation_started, a.intensity_cap)
        try:
            r = reduce_step(
                self.model,
                self.state.opt,
                self.data,
                mine,
                used,  # the slow start
                self.group.all_reduce_or_abandon,
                emulated_sample_s=self.pfw.emulated_sample_s,
                device=self.device,
                precision=self.precision,
                step=self.step,
                control=self._slots(),
                half_over=n if half else 0,
                interrupt=self.leave_if_newer,  # not after a throttled share: at once
            )
        finally:  # done, failed or given up: nothing is pending any more
            self.pending_s = 0.0
        grads, summed, busy, reduce_s = r.grads, r.summed, r.busy_s, r.reduce_s
        self.comm_bytes = r.comm_bytes
        trained, offered = r.control[:world], r.control[world:]
        if len(set(trained)) > 1:
            raise InconsistentStep(f"step {self.step}: the ranks trained under generations {trained}; not applied")
        if not half:
            summed.div_(n)
        offset = 0
        for g in grads:
            k = g.numel()
            g.copy_(summed[offset : offset + k].view_as(g))
            offset += k
        self.state.opt.step()
        by_node = {x.node: self.slice(batch, x.batch_offset, x.share).tolist() for x in self.pfw.plan.assignments}
        self.accounting.record(self.pfw.plan.generation, self.step, epoch, by_node, busy_s=busy, reduce_s=reduce_s)
        self.state.step += 1
        self.last_trained = (time.monotonic(), used)
        now = time.perf_counter()
        if self._last_step_end:
            self._timing.append((busy, reduce_s, now - self._last_step_end))
        self._last_step_end = now
        if (
            len(set(offered)) == 1
            and self._offered is not None
            and offered[0] == self._offered.plan.generation > self.pfw.plan.generation
        ):
            self.switch(self._offered)
        return float(summed[-1]), busy, len(mine)

    def switch(self, pfw: PlanForWorker) -> None:
        """Take a plan of the same group at this step boundary (every rank does, at the same one)."""
        self.pfw = pfw
        self.state.add_generation(pfw.plan.generation)
        self.switches += 1
        self._timing.clear()
        self._last_step_end = 0.0

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
        last_report = 0.0
        self._timing.clear()
        self._last_step_end = 0.0
        now = time.monotonic()  # the slow start (``ramp``) counts from here, or goes on after a re-form
        self.generation_started = now - ramp_head_start(self.pfw.assignment.intensity_cap, self.last_trained, now)
        while self.step < self.total_steps:
            self.leave_if_newer()
            gen = self.pfw.plan.generation
            t0 = time.perf_counter()
            loss, busy, trained = self.train_step()
            wall = max(1e-9, time.perf_counter() - t0)
            self.intensity = min(1.0, busy / wall)  # the achieved duty cycle, waits for peers included
            self.state.add_loss(self.step, loss)
            if self.step % self.steps_per_epoch == 0 and self.pfw.assignment.rank == 0:
                self.save(checkpoint_name(self.step // self.steps_per_epoch), final=False)
                prune_checkpoints(self.output, self.pfw.policy.keep_checkpoints)
            now = time.perf_counter()
            if self.pfw.plan.generation != gen:
                last_report = 0.0  # switched without re-forming: say so at once
            first_of_generation = last_report == 0.0  # reported at once: recovery is visible
            if first_of_generation or now - last_report >= REPORT_EVERY_S or self.step == self.total_steps:
                last_report = now
                # samples/s over the whole step; / intensity = the rate at full intensity (planner)
                # (what it trained in that step: its share then, a partial last batch's part)
                self.report(WorkerState.TRAINING, trained / wall, loss)

    def run(self) -> None:
        while True:
            self.report(WorkerState.STARTING)
            phase = "forming"
            try:
                self.form_group()
                phase = "state sync"
                self.sync_state()
                self.forming_s = time.monotonic() - self._met  # process group, probe, state sync
                phase = "training"
                self.run_generation()
            except NewPlan:
                left_at, old = time.monotonic(), self.pfw.plan.generation
                self.group.leave()
                self.pfw = self.channel.latest() or self.pfw
                print(
                    f"worker: left generation {old} during its {phase} for generation {self.pfw.plan.generation} "
                    f"(leaving the group took {time.monotonic() - left_at:.2f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            except (RuntimeError, dist.DistError) as exc:  # a peer died, the group broke, a bad state
                left_at = time.monotonic()
                self.group.leave(failed=True)
                gen = self.pfw.plan.generation
                print(
                    f"worker: generation {gen}'s group broke during its {phase} ({type(exc).__name__}; "
                    f"leaving it took {time.monotonic() - left_at:.2f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                self.report(WorkerState.RECOVERING, message=f"collective failed at step {self.step}: {str(exc)[:200]}")
                newer = self.channel.wait_newer(gen, timeout=600)
                if newer is None:
                    raise TrainingError(f"no new plan after the group of generation {gen} broke") from None
                self.pfw = newer
                continue
            break
        if self.pfw.assignment.rank == 0:
            self.save("model.pt", final=True)
        curve = self.state.loss_curve
        self.report(WorkerState.DONE, loss=curve[-1][1] if curve else None)
        self.group.leave()
        self.accounting.close()
