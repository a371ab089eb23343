"""What at a job's start raises the LC apps' p95? (issue #15, start-up misses)

In the LC bench's timelines (``--timeline``) the apps' p95 rose from ~10 ms to 15-21 ms within
0.5 s of a job's submission, before its plan and long before any worker trained: during the
boards' pre-flight checks. This starts the demo's cluster (two boards, each with its LC app on its
own vCPU, the apps at 20 req/s, nothing else running) and, in alternating rounds, does one thing
at a time and records every latency report around it:

- ``nothing``: waits (the machine's own noise);
- ``daemon preflight``: the ``preflight`` command to both boards' node daemons, as the coordinator
  sends it at a submission (the daemon starts ``python -m deepedge.training.preflight`` on the
  board's CPU at the worker's nice), for a job the boards have not checked before (its seed is
  new every round, so the pre-flight cache, ``node.preflight_cache_s``, has no entry for it);
- ``daemon preflight cached``: the same for a job the boards checked before the first round (the
  check's torch part answered from the cache);
- ``direct nice 10``: the checker's heavy part (import torch, build cnn-small, a forward pass),
  started directly on each board's CPU at nice 10 from its first instruction (``preexec_fn``);
- ``direct nice 0``: the same at nice 0 (as a process starts before its nice is set);
- ``direct idle``: the same in the idle scheduling class (SCHED_IDLE: any other task that wakes
  on its CPU preempts it at once);
- ``direct paced U[@P]``: the same in the idle class, paced from outside at a duty cycle of U
  (SIGSTOP / SIGCONT, P s per cycle, default ``PACE_PERIOD_S``), as a daemon can pace a process it cannot
  change (an interpreter importing torch);
- ``decode D``: a worker's data loading (the dataset decoded, torch imported ahead) paced in
  the process at a duty cycle of D, as the worker's slow start paces it, in the idle class;
- ``warm fork``: what a fork server would leave: a process on each board's CPU at nice 10 that
  imported torch before the round forks a child that builds the model and runs the forward pass.

Per round: each app's median p95 over the 3 s before and its highest p95 in the 6 s after, or
until a window after the thing ended if it took longer (the report window is 2 s here, so a
burst shows within it and is gone before the next round).

    python scripts/exp_startup_burst.py [--rounds 4] [--out results.json]

Root (the LC apps run at nice -10). Nothing else CPU-heavy."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _lc_cluster import lc_boards, lc_cluster

from deepedge.broker_schemas import JobSpec, Topics
from deepedge.demo._data import make_image_folder
from deepedge.transport import Requester

CHECK = "import torch\nfrom deepedge.training._models import SmallCNN\nm = SmallCNN(10)\nm(torch.rand(8, 3, 32, 32))\n"
# a warm process (a fork server's): torch imported once, ahead; on a line on stdin, a forked child
# builds the model and runs the forward pass (what is left of the check with torch already loaded)
WARM = (
    "import os, sys, torch\nfrom deepedge.training._models import SmallCNN\nprint('ready', flush=True)\n"
    "sys.stdin.readline()\npid = os.fork()\n"
    "if pid == 0:\n    m = SmallCNN(10)\n    m(torch.rand(8, 3, 32, 32))\n    os._exit(0)\n"
    "os.waitpid(pid, 0)\n"
)
# a worker's data loading, torch imported ahead: on a line on stdin, decode the dataset with the
# worker's in-process pacer at the duty cycle given in argv (1 = unpaced)
DECODE = (
    "import sys\nfrom deepedge.training._compute import Pacer\nfrom deepedge.training._data import load_dataset\n"
    "print('ready', flush=True)\nsys.stdin.readline()\n"
    "load_dataset(sys.argv[2], pace=Pacer(float(sys.argv[1])))\n"
)
SETTLE_S = 9.0
CACHED_SEED = 7  # the "daemon preflight cached" job's seed (checked once before the rounds)
AFTER_S = 6.0
PACE_PERIOD_S = 0.1


async def _paced(procs: list[subprocess.Popen[bytes]], duty: float, period: float = PACE_PERIOD_S) -> None:
    """Run ``procs`` ``duty`` of each ``period``, stopped the rest, until they exit."""
    while any(p.poll() is None for p in procs):
        await asyncio.sleep(duty * period)
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGSTOP)
        await asyncio.sleep((1 - duty) * period)
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)


def _direct(cpu: int, how: str, code: str = CHECK, args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    def setup() -> None:
        os.sched_setaffinity(0, {cpu})
        if how == "idle" or how.startswith("paced"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, 0, int(how.split()[1]))

    pipes = subprocess.PIPE if code in (WARM, DECODE) else None
    return subprocess.Popen([sys.executable, "-c", code, *args], preexec_fn=setup, stdin=pipes, stdout=pipes)


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="deepedge-exp-startup-"))
    boards = lc_boards()
    data = root / "data"
    make_image_folder(data, args.images)
    rounds: list[dict[str, object]] = []
    async with lc_cluster(root, boards, args.window, args.rate) as (cluster, t, reports):
        topics = Topics(cluster.cluster)
        await asyncio.sleep(15.0)  # the nodes online, the apps' windows full
        out = str(root / "out")
        spec = JobSpec(model="cnn-small", dataset=str(data), output=out, epochs=1, global_batch=32, learning_rate=1)
        fields = {f: getattr(spec, f) for f in JobSpec.__struct_fields__}

        async def preflights(job: str, seed: int) -> list[str]:
            replies = await asyncio.gather(
                *(
                    rpc.request(topics.node_command(b.node, "preflight"), {**fields, "job": job, "seed": seed})
                    for b in boards
                )
            )
            assert all(r.ok and r.result["ok"] for r in replies), replies
            return [str(r.result.get("cache")) for r in replies]

        async with Requester(t, topics, timeout_s=60) as rpc:
            if "daemon preflight cached" in args.modes.split(","):
                print("warm-up check:", await preflights("warm-up", CACHED_SEED), flush=True)
            for k in range(args.rounds):
                for mode in args.modes.split(","):
                    warm = [_direct(b.cpu, "nice 10", WARM) for b in boards] if mode == "warm fork" else []
                    if mode.startswith("decode "):
                        warm = [_direct(b.cpu, "idle", DECODE, (mode.split()[1], str(data))) for b in boards]
                    for p in warm:  # torch imported before the settling time, not in it
                        assert p.stdout is not None
                        await asyncio.to_thread(p.stdout.readline)
                    await asyncio.sleep(SETTLE_S)
                    t0 = time.time()
                    took = 0.0
                    cache: list[str] = []
                    if warm:
                        for p in warm:
                            assert p.stdin is not None
                            p.stdin.write(b"go\n")
                            p.stdin.flush()
                        for p in warm:
                            await asyncio.to_thread(p.wait)
                        took = time.time() - t0
                    elif mode.startswith("daemon preflight"):
                        cached = mode == "daemon preflight cached"
                        cache = await preflights(f"x{k}", CACHED_SEED if cached else 1000 + k)
                        took = time.time() - t0
                    elif mode.startswith("direct "):
                        how = mode.split(" ", 1)[1]
                        procs = [_direct(b.cpu, how) for b in boards]
                        if how.startswith("paced "):
                            duty, _, period = how.split()[1].partition("@")
                            await _paced(procs, float(duty), float(period or PACE_PERIOD_S))
                        for p in procs:
                            await asyncio.to_thread(p.wait)
                        took = time.time() - t0
                    elif mode != "nothing":
                        raise SystemExit(f"unknown mode {mode!r}")
                    after_s = max(AFTER_S, took + args.window + 1.0)  # the whole start, and a window
                    await asyncio.sleep(max(0.0, after_s - (time.time() - t0)))
                    row: dict[str, object] = {"round": k, "mode": mode, "took_s": round(took, 2)}
                    if mode.startswith("daemon preflight"):
                        row["cache"] = cache
                    for app in sorted({a for _, a, _ in reports}):
                        before = [p for ts, a, p in reports if a == app and t0 - 3 <= ts < t0]
                        after = [p for ts, a, p in reports if a == app and t0 <= ts < t0 + after_s]
                        median = round(statistics.median(before), 2) if before else None
                        row[app] = [median, max(after, default=None)]
                    rounds.append(row)
                    print(json.dumps(row), flush=True)
    summary: dict[str, dict[str, float]] = {}
    for mode in args.modes.split(","):
        rises = [
            v[1] / v[0]
            for r in rounds
            if r["mode"] == mode
            for key, v in r.items()
            if key != "cache" and isinstance(v, list) and v[0] and v[1]
        ]
        summary[mode] = {"median_rise": round(statistics.median(rises), 3), "worst_rise": round(max(rises), 3)}
    return {"command": " ".join(sys.argv), "rate": args.rate, "window_s": args.window, "rounds": rounds} | {
        "summary": summary
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--images", type=int, default=300, help="the dataset's size (the decode modes)")
    ap.add_argument("--modes", default="nothing,daemon preflight,direct nice 10,direct nice 0,direct idle")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result["summary"], indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
