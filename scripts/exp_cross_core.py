"""Does one emulated board's training slow the LC app of the other? (issue #15, caps too low)

The demo's boards share this machine: board i and its LC app are pinned to vCPU i mod 2. Each
board's telemetry measured the whole machine, so the coordinator counted the other board's
training (on the other vCPU) as background CPU on this board, and planned its cap from the
interference model at that background: in the LC bench at 05:12 the tracker's caps were 0.07-0.14
at 0.32-0.48 background cores. The profiling's CPU stressor, which the model's background axis was
fitted on, is not pinned: it takes time on the LC app's own vCPU. Whether a load confined to the
*other* vCPU costs the app anything is what this measures.

It starts the demo's cluster (two boards, each LC app on its board's vCPU at ``--rate`` req/s;
no job) and, in alternating rounds, holds one load for ``--hold`` s:

- ``nothing``: the machine's own noise;
- ``train cpuN``: the training profiler (``deepedge.training.profile``: the worker's step code,
  cnn-small, full intensity, no emulated slowness) pinned to vCPU N at the worker's nice (10).

Per round and app: the median of the app's p95 reports over the hold's last half (its report
window is ``--window`` s). Each app is then read against ``nothing`` for a load on its own vCPU
and on the other one.

    python scripts/exp_cross_core.py [--rounds 4] [--out results.json]

Root (the LC apps run at nice -10). Nothing else CPU-heavy."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _lc_cluster import lc_boards, lc_cluster

from deepedge.demo._boards import BoardProfile
from deepedge.profiling._runner import PointRunner, RunnerConfig


class _NoLatency:
    def samples(self, app: str, start: float, end: float) -> list[float]:
        return []


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="deepedge-exp-cross-"))
    boards = lc_boards()
    cpus = sorted({b.cpu for b in boards})
    trainers = {
        c: PointRunner(RunnerConfig(app="-", workdir=root, cpu_affinity=(c,), worker_nice=10), _NoLatency())
        for c in cpus
    }
    app_cpu = {b.lc_app: b.cpu for b in boards if b.lc_app}
    modes = ["nothing", *(f"train cpu{c}" for c in cpus)]
    try:
        return await _rounds(args, root, boards, trainers, app_cpu, modes)
    finally:
        for r in trainers.values():  # (their own sessions: not stopped with this one by a Ctrl-C)
            r.close()


async def _rounds(
    args: argparse.Namespace,
    root: Path,
    boards: list[BoardProfile],
    trainers: dict[int, PointRunner],
    app_cpu: dict[str, int],
    modes: list[str],
) -> dict[str, object]:
    cpus = sorted(trainers)
    rounds: list[dict[str, object]] = []
    async with lc_cluster(root, boards, args.window, args.rate) as (_, _, reports):
        for r in trainers.values():  # torch imported before the rounds, not in them
            await asyncio.to_thread(r._start_trainer)
        await asyncio.sleep(15.0)  # the nodes online, the apps' windows full
        for k in range(args.rounds):
            for mode in modes:
                t0 = time.time()
                if mode == "nothing":
                    await asyncio.sleep(args.hold)
                else:
                    await asyncio.to_thread(trainers[int(mode[len("train cpu") :])]._train, 1.0, args.hold)
                t1 = time.time()
                row: dict[str, object] = {"round": k, "mode": mode}
                for app in sorted(app_cpu):
                    seen = [p for ts, a, p in reports if a == app and (t0 + t1) / 2 <= ts < t1]
                    row[app] = round(statistics.median(seen), 2) if seen else None
                rounds.append(row)
                print(json.dumps(row), flush=True)
                await asyncio.sleep(args.window)  # the next round's windows start clean
    summary: dict[str, dict[str, list[float]]] = {}
    for app, cpu in app_cpu.items():
        for k in range(args.rounds):
            base = next(r[app] for r in rounds if r["round"] == k and r["mode"] == "nothing")
            for c in cpus:
                load = next(r[app] for r in rounds if r["round"] == k and r["mode"] == f"train cpu{c}")
                if isinstance(base, float) and isinstance(load, float):
                    where = "own vCPU" if c == cpu else "other vCPU"
                    summary.setdefault(where, {}).setdefault(app, []).append(round(load / base, 3))
    return {
        "command": " ".join(sys.argv),
        "rate": args.rate,
        "window_s": args.window,
        "hold_s": args.hold,
        "rounds": rounds,
        "p95 / nothing's, per round": summary,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=float, default=40.0, help="each LC app's requests per second")
    ap.add_argument("--window", type=float, default=5.0, help="the LC reports' window (s)")
    ap.add_argument("--hold", type=float, default=16.0, help="seconds each load is held")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result["p95 / nothing's, per round"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
