"""The process group of one plan generation: formed on the rendezvous store, its gradient
all-reduce abandonable when a newer plan arrives, and left without waiting for a dead peer.

Two backends, as the plan says (``Plan.backend``):

- **gloo** (the default; CPU boards, Jetsons, mixed clusters): the tensors it reduces live on
  the host. A GPU worker's flat gradient buffer is *host-staged*: copied to the CPU, all-reduced,
  copied back. Abandoning a pending all-reduce needs torch's private c10d registries
  (``_set_aside``): shutting down a gloo group with an operation pending blocks until gloo's
  timeout. They are checked once at import; a torch build that lacks them (NVIDIA's Jetson
  wheels are not the pinned 2.13.0) falls back to ``destroy_process_group``, which then may wait
  out the collective timeout — said in the log.
- **nccl** (every participant on a discrete GPU with NCCL): the buffer is reduced on the device.
  A pending NCCL all-reduce is watched with ``Work.is_completed()`` (a CUDA event query; the
  future of an NCCL work completes when it is *queued*, not when it is done). To give it up, the
  communicator is aborted (``ncclCommAbort`` through ``distributed_c10d._abort_process_group``):
  its kernel that waits for a dead peer stops occupying the GPU, and the next generation forms a
  new communicator. ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` defaults to 2 here (abort the
  communicator on an error or timeout, do not kill the process: torch's default, 3, tears the
  worker down), so a failed NCCL collective raises in the worker, which reports ``recovering``
  like a failed gloo one. Built, not run on a GPU yet (docs/training.md).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import TCPStore

from deepedge.training._priority import prioritize_threads, thread_ids
from deepedge.training._rendezvous import ABANDON_POLL_S, NewPlan

__all__ = ["PRIVATE_C10D", "ProcessGroup"]


def _private_c10d() -> bool:
    try:
        from torch._C._distributed_c10d import _unregister_all_process_groups  # noqa: F401
        from torch.distributed import distributed_c10d as c10d

        world = c10d._world
        for name in ("pg_map", "pg_names", "pg_group_ranks", "pg_backend_config", "pg_to_tag", "tags_to_pg"):
            getattr(world, name)
        return callable(c10d._update_default_pg) and callable(c10d._get_default_group) and hasattr(world, "group_count")
    except (ImportError, AttributeError):
        return False


PRIVATE_C10D = _private_c10d()


def _set_aside_default_group() -> object:
    """Unregister the default process group without shutting it down. This is
    ``destroy_process_group()`` minus the backends' shutdown, the group-name counter included
    (reset to 0, as destroying does, so that every rank — set aside, destroyed or new — names its
    next group alike: the store-based barrier of ``init_process_group`` keys on that name). The
    caller keeps the returned group referenced, so its destructor does not block either; its
    stuck operation ends at gloo's timeout in gloo's own thread, and nobody waits for it."""
    from torch._C._distributed_c10d import _unregister_all_process_groups
    from torch.distributed import distributed_c10d as c10d

    group = c10d._get_default_group()
    world = c10d._world
    c10d._update_default_pg(None)
    for name in (
        "pg_map",
        "pg_names",
        "pg_group_ranks",
        "pg_backend_config",
        "pg_to_tag",
        "tags_to_pg",
        "pg_coalesce_state",
    ):
        registry = getattr(world, name, None)
        if registry is not None:
            registry.clear()
    _unregister_all_process_groups()
    world.group_count = 0
    return group


def _abort_default_group() -> bool:
    """Abort every NCCL communicator of this process and unregister the groups (torch's
    ``_abort_process_group``: also resets the group-name counter, as destroying does). False
    where this torch has no such function or it failed: the caller sets the group aside."""
    from torch.distributed import distributed_c10d as c10d

    abort = getattr(c10d, "_abort_process_group", None)
    if abort is None:
        return False
    try:
        abort()
    except Exception as exc:  # an abort that fails must not hide the re-form that follows
        print(f"worker: aborting the NCCL group failed: {str(exc)[:300]}", file=sys.stderr, flush=True)
        return False
    return True


class ProcessGroup:
    """The default process group of the current generation: gloo (its tensors on the host; a
    GPU's buffer host-staged) or NCCL (on the training device)."""

    def __init__(self, timeout: datetime.timedelta, newer_plan: Callable[[int], bool]) -> None:
        self.timeout = timeout
        self._newer_plan = newer_plan
        self._set_aside: list[object] = []  # groups abandoned with an all-reduce pending
        self.generation = -1
        self.backend = "gloo"
        self.device = torch.device("cpu")
        if not PRIVATE_C10D:
            print(
                "worker: this torch lacks the c10d registries deepedge uses to abandon a pending "
                "all-reduce; a survivor may wait out the collective timeout",
                file=sys.stderr,
                flush=True,
            )

    def form(
        self,
        store: TCPStore,
        rank: int,
        world: int,
        generation: int,
        comm_nice: int | None,
        since: set[int],
        *,
        backend: str = "gloo",
        device: torch.device | None = None,
    ) -> None:
        """Form the group on ``store``; the threads started since ``since`` (the thread ids
        before the rendezvous: its store's, gloo's) run at ``comm_nice``. ``backend`` "nccl"
        needs ``device`` to be a CUDA device."""
        device = device or torch.device("cpu")
        if backend == "nccl":
            # read when the NCCL group is made: abort the communicator on errors, keep the process
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
            torch.cuda.set_device(device)
            dist.init_process_group(
                "nccl", store=store, rank=rank, world_size=world, timeout=self.timeout, device_id=device
            )
        else:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=self.timeout)
        prioritize_threads(comm_nice, thread_ids() - since)
        self.generation, self.backend, self.device = generation, backend, device

    @property
    def comm_device(self) -> torch.device:
        """Where the tensors of this group's collectives must be: the GPU for NCCL, else the host."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_or_abandon(self, flat: torch.Tensor) -> None:
        """All-reduce (SUM) in place; if a newer plan generation arrives while it is pending (a
        peer died silently, or died while this rank waited on a live peer), give up on it and
        raise :class:`NewPlan` at once instead of waiting for the collective timeout. Raises as
        ``dist.all_reduce`` does when the collective fails. A GPU tensor in a gloo group is
        staged through host memory."""
        if flat.device != self.comm_device:
            host = flat.to(self.comm_device)
            self._all_reduce(host)
            flat.copy_(host)
        else:
            self._all_reduce(flat)

    def _all_reduce(self, flat: torch.Tensor) -> None:
        work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
        assert work is not None
        if self.backend == "nccl":
            self._watch_nccl(work)
            return
        done = threading.Event()
        work.get_future().add_done_callback(lambda _f: done.set())
        while not done.wait(ABANDON_POLL_S):
            if self._newer_plan(self.generation):
                if PRIVATE_C10D:
                    self._set_aside.append(_set_aside_default_group())
                raise NewPlan
        work.wait()

    def _watch_nccl(self, work: dist.Work) -> None:
        """Poll an NCCL work until its kernels are done; on a newer plan, or past the collective
        timeout (should the watchdog not have ended it), abort the communicator and leave."""
        deadline = time.monotonic() + self.timeout.total_seconds() + 5.0
        while not work.is_completed():
            if self._newer_plan(self.generation):
                self._abandon_nccl()
                raise NewPlan
            if time.monotonic() > deadline:
                self._abandon_nccl()
                raise RuntimeError(
                    f"NCCL all-reduce of generation {self.generation} not done within "
                    f"{self.timeout.total_seconds():g} s: communicator aborted"
                )
            time.sleep(ABANDON_POLL_S)
        work.wait()

    def _abandon_nccl(self) -> None:
        if not _abort_default_group() and PRIVATE_C10D and dist.is_initialized():
            self._set_aside.append(_set_aside_default_group())

    def leave(self, failed: bool = False) -> None:
        """Leave the group: destroyed; an NCCL group whose collective ``failed`` is aborted (its
        communicator may wait for a dead peer, and destroying it would wait too)."""
        if not dist.is_initialized():
            return
        if failed and self.backend == "nccl" and _abort_default_group():
            return
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
