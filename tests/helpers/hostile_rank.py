"""A hostile rank 0, for tests/test_trust.py: a real torch.distributed peer that hosts the
rendezvous of a plan generation, forms the gloo group with a real worker, claims to be the
furthest rank and then sends crafted bytes where the state sync expects numbers.

    python hostile_rank.py PORT WORLD MODE MARKER

MODE ``header``: an impossible header (a step far beyond the job). MODE ``pickle``: a pickle
whose unpickling would create MARKER, sent as raw bytes in place of the state tensors. Exits 0
after sending (the receiver's reaction is what the test checks)."""

from __future__ import annotations

import datetime
import pickle
import sys
import time

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import TCPStore

from deepedge.training._group import ProcessGroup


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def main() -> int:
    port, world, mode, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    timeout = datetime.timedelta(seconds=10)
    store = TCPStore("127.0.0.1", port, world, is_master=True, timeout=timeout, wait_for_workers=False)
    store.add("deepedge/arrived", 1)
    deadline = time.monotonic() + 30
    while store.add("deepedge/arrived", 0) < world and time.monotonic() < deadline:
        time.sleep(0.05)
    dist.init_process_group("gloo", store=store, rank=0, world_size=world, timeout=timeout)
    group = ProcessGroup(timeout, lambda _generation: False)
    group.probe_links(0, world)  # the link probe every rank takes part in when a group forms
    steps = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(steps, torch.tensor([10**6], dtype=torch.long))  # "I am the furthest"
    sums = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(sums, torch.tensor([1.0, 2.0], dtype=torch.float64))  # "my state differs": it must travel
    if mode == "header":
        dist.broadcast(torch.tensor([2**62, 2**40, 7], dtype=torch.long), src=0)
    else:
        dist.broadcast(torch.tensor([0, 0, 0], dtype=torch.long), src=0)  # a plausible header
        payload = pickle.dumps(_Payload(marker))
        dist.broadcast(torch.frombuffer(bytearray(payload), dtype=torch.uint8), src=0)
    time.sleep(2)  # let the receiver read it before the connection goes
    print("hostile: sent", mode, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
