"""Does work in the idle scheduling class take CPU time from a busy task on the same vCPU?
(issue #15: a job's start raises the LC apps' p95 whatever its priority)

A meter spins on CPU 0 at nice -20 for a few seconds and records every gap of more than 0.5 ms
between two iterations (time it was not running). Half a second in, one load starts, in the idle
class from its first instruction, on CPU 0 or CPU 1: a spinning loop, 1 GiB of fresh memory
touched page by page, or ``import torch``. If the meter sees no more gaps with the load than
without, the load took no CPU time from it; whatever then slows an LC app beside such a load is
not CPU time but what the two share (caches, memory, the hypervisor).

    python scripts/exp_vcpu_stall.py [--rounds 2] [--out results.json]

Root (nice -20). Nothing else CPU-heavy."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LOADS = {
    "spin": "import time\nt = time.time()\nwhile time.time() - t < 3: pass\n",
    "touch 1 GiB": "import mmap\nm = mmap.mmap(-1, 1 << 30)\nfor i in range(0, 1 << 30, 4096): m[i] = 1\n",
    "import torch": "import torch\n",
}


def meter(seconds: float, load: str | None, load_cpu: int) -> dict[str, object]:
    os.sched_setaffinity(0, {0})
    os.setpriority(os.PRIO_PROCESS, 0, -20)

    def idle() -> None:  # the load's CPU, nice and class before it runs a single instruction
        os.sched_setaffinity(0, {load_cpu})
        os.setpriority(os.PRIO_PROCESS, 0, 0)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    proc = None
    gaps: list[float] = []
    t0 = last = time.perf_counter()
    while (now := time.perf_counter()) - t0 < seconds:
        if now - last > 0.0005:
            gaps.append(now - last)
        last = now
        if proc is None and load is not None and now - t0 > 0.5:
            proc = subprocess.Popen([sys.executable, "-c", LOADS[load]], preexec_fn=idle)
            started = last = time.perf_counter()
    done = 0.0
    if proc is not None:
        proc.wait()
        done = time.perf_counter() - started
    return {
        "load": load or "nothing",
        "load_cpu": load_cpu if load else None,
        "gaps_over_0.5ms": len(gaps),
        "gaps_over_2ms": sum(g > 0.002 for g in gaps),
        "longest_ms": round(1000 * max(gaps, default=0.0), 1),
        "stolen_ms": round(1000 * sum(gaps), 1),
        # from the load's start to its end; a load on CPU 0 gets (almost) no CPU until the meter stops
        "load_done_after_s": round(done, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for _ in range(args.rounds):
        rows.append(meter(args.seconds, None, 0))
        print(rows[-1], flush=True)
        for load in LOADS:
            for cpu in (0, 1):
                rows.append(meter(args.seconds, load, cpu))
                print(rows[-1], flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
