"""The torchrun side of ``deepedge bench failover``: the same model, data and batch, trained the
way torchrun's documentation recommends for elastic jobs — checkpoint every few steps, and on a
(re)start load the last checkpoint. Launched by ``torch.distributed.run``; writes one JSON line
per step to ``<log_dir>/rank<r>.jsonl``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from deepedge.training import build_model, load_dataset


def main(dataset: str, out: str, batch: int, epochs: int, ckpt_every: int, lr: float) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    dist.init_process_group("gloo")
    data = load_dataset(dataset)
    torch.manual_seed(3)
    model = build_model("cnn-small", len(data.classes))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ckpt = Path(out) / "torchrun-ckpt.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    log = (Path(out) / f"rank{rank}.jsonl").open("a")
    (Path(out) / f"pid{rank}").write_text(str(os.getpid()))
    per_epoch = -(-len(data) // batch)
    total = epochs * per_epoch
    while step < total:
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
        idx = perm[k * batch : (k + 1) * batch][rank::world]  # DistributedSampler-style: uniform split
        x, y = data.batch(idx)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
        opt.step()
        step += 1
        if step % ckpt_every == 0 and rank == 0:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
            tmp.replace(ckpt)
        log.write(json.dumps({"step": step, "t": time.time(), "restart": restart}) + "\n")
        log.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5]))
