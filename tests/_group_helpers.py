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


def fail_to_form_then_form(rank: int, ports: tuple[int, int], out: object) -> None:
    """Rank 0 first fails to form a 2-rank group (rank 1 never comes: init_process_group times
    out), then both form the next generation's group with deepedge's ProcessGroup and
    all-reduce in it, as a worker that lost its peers does with a freshly started one."""
    from torch._C._distributed_c10d import TCPStore

    from deepedge.training._group import ProcessGroup

    if rank == 0:
        lonely = TCPStore("127.0.0.1", ports[0], 2, is_master=True, wait_for_workers=False)
        try:
            dist.init_process_group("gloo", store=lonely, rank=0, world_size=2, timeout=datetime.timedelta(seconds=1))
        except Exception:  # the peer never came
            pass
        else:
            raise AssertionError("formed a 2-rank group alone")
    store = TCPStore("127.0.0.1", ports[1], 2, is_master=rank == 0, wait_for_workers=False)
    group = ProcessGroup(datetime.timedelta(seconds=10), lambda _gen: False)
    group.form(store, rank, 2, 7, None, set())
    t = torch.ones(4)
    dist.all_reduce(t)
    out.put((rank, float(t[0])))  # type: ignore[attr-defined]
    group.leave()
