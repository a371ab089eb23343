"""The process group of one plan generation: formed on the rendezvous store, its gradient
all-reduce abandonable when a newer plan arrives, and left without waiting for a dead peer.

Abandoning needs torch's private c10d registries (``_set_aside``): shutting down a gloo group
with an operation pending blocks until gloo's timeout. They are checked once at import; a torch
build that lacks them (NVIDIA's Jetson wheels are not the pinned 2.13.0) falls back to
``destroy_process_group``, which then may wait out the collective timeout — said in the log.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import threading
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


class ProcessGroup:
    """The default process group of the current generation (gloo: the tensors live on the host;
    host-staged for GPU training)."""

    def __init__(self, timeout: datetime.timedelta, newer_plan: Callable[[int], bool]) -> None:
        self.timeout = timeout
        self._newer_plan = newer_plan
        self._set_aside: list[object] = []  # groups abandoned with an all-reduce pending
        self.generation = -1
        if not PRIVATE_C10D:
            print(
                "worker: this torch lacks the c10d registries deepedge uses to abandon a pending "
                "all-reduce; a survivor may wait out the collective timeout",
                file=sys.stderr,
                flush=True,
            )

    def form(
        self, store: TCPStore, rank: int, world: int, generation: int, comm_nice: int | None, since: set[int]
    ) -> None:
        """Form the group on ``store``; the threads started since ``since`` (the thread ids
        before the rendezvous: its store's, gloo's) run at ``comm_nice``."""
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=self.timeout)
        prioritize_threads(comm_nice, thread_ids() - since)
        self.generation = generation

    def all_reduce_or_abandon(self, flat: torch.Tensor) -> None:
        """All-reduce (SUM) in place; if a newer plan generation arrives while it is pending (a
        peer died silently, or died while this rank waited on a live peer), give up on it and
        raise :class:`NewPlan` at once instead of waiting for gloo's timeout. Raises as
        ``dist.all_reduce`` does when the collective fails."""
        work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
        assert work is not None
        done = threading.Event()
        work.get_future().add_done_callback(lambda _f: done.set())
        while not done.wait(ABANDON_POLL_S):
            if self._newer_plan(self.generation):
                if PRIVATE_C10D:
                    self._set_aside.append(_set_aside_default_group())
                raise NewPlan
        work.wait()

    def leave(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
