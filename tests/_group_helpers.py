"""Run in child processes by tests/test_training.py (spawned: importable functions only)."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


def leave_then_rejoin(rank: int, ports: tuple[int, int], set_aside: bool, out: object) -> None:
    """Form a 2-rank group, leave it (rank 0 sets it aside, rank 1 destroys it, or both destroy),
    form the next one and all-reduce in it."""
    from deepedge.training._group import _set_aside_default_group

    timeout = datetime.timedelta(seconds=10)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", rank=rank, world_size=2, timeout=timeout)
    t = torch.ones(4)
    dist.all_reduce(t)
    kept = None
    if set_aside and rank == 0:
        kept = _set_aside_default_group()
    else:
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank, world_size=2, timeout=timeout)
    t = torch.ones(4)
    dist.all_reduce(t)
    out.put((rank, float(t[0])))  # type: ignore[attr-defined]
    del kept
