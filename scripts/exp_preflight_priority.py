"""Does a job's pre-flight check hurt the LC app on its CPU? (issue #15, start-up misses)

The node runs ``python -m deepedge.training.preflight`` on the training's CPUs at the worker's
nice (10), not in the idle class (it must answer in seconds). This measures what that costs the
LC app sharing the CPU: the demo's LC app (``deepedge.demo.lc_app``, nice -10, 40 req/s) pinned
to the last CPU, and in alternating 10 s phases nothing else, or back to back a process that does
the check's heavy part (import torch, build cnn-small, a forward pass) on the same CPU at nice 10,
or in SCHED_IDLE (``--modes`` adds others: ``nice 0`` is how the node daemon, the broker and the
demo's coordinator run). Per phase: the app's p95 and the worst p95 over 2 s windows (every 0.5 s).

    python scripts/exp_preflight_priority.py [--rounds 8] [--out results.json]

Root for the LC app's nice -10. Run it on a quiet machine: nothing else CPU-heavy."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deepedge.profiling._runner import LatencySink, percentile, rate_file_for, write_rate

CHECK = "import torch\nfrom deepedge.training._models import SmallCNN\nm = SmallCNN(10)\nm(torch.rand(8, 3, 32, 32))\n"
PHASE_S = 10.0


def _check(mode: str, cpu: int) -> subprocess.Popen[bytes]:
    def setup() -> None:
        os.sched_setaffinity(0, {cpu})
        if mode.startswith("nice "):
            os.setpriority(os.PRIO_PROCESS, 0, int(mode.split()[1]))
        elif mode == "idle class":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    return subprocess.Popen([sys.executable, "-c", CHECK], preexec_fn=setup)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--modes",
        default="nothing,nice 10,idle class",
        help="comma-separated: nothing, nice N (e.g. nice 0: as the daemons and the coordinator run), idle class",
    )
    args = ap.parse_args()
    cpu = sorted(os.sched_getaffinity(0))[-1]
    root = Path(tempfile.mkdtemp(prefix="deepedge-exp-preflight-"))
    sock = root / "latency.sock"
    sink = LatencySink(sock)
    write_rate(rate_file_for(sock, "lc"), args.rate)
    lc = subprocess.Popen(
        [sys.executable, "-m", "deepedge.demo.lc_app", "--app", "lc", "--socket", str(sock)],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    results: dict[str, list[dict[str, float]]] = {}
    try:
        time.sleep(8.0)  # torch imported, warmed up
        for k in range(args.rounds):
            for mode in [m.strip() for m in args.modes.split(",")]:
                t0, checks = time.monotonic(), []
                while time.monotonic() - t0 < PHASE_S:
                    if mode == "nothing":
                        time.sleep(0.5)
                        continue
                    s = time.monotonic()
                    _check(mode, cpu).wait()
                    checks.append(time.monotonic() - s)
                t1 = time.monotonic()
                lat = sink.samples("lc", t0, t1)
                windows = [
                    percentile(sink.samples("lc", a, a + 2.0), 95)
                    for a in (t0 + 0.5 * i for i in range(int((t1 - t0 - 2.0) / 0.5)))
                ]
                row = {
                    "p95_ms": percentile(lat, 95),
                    "worst_window_p95_ms": max(windows),
                    "checks": len(checks),
                    "check_s": statistics.median(checks) if checks else 0.0,
                }
                results.setdefault(mode, []).append(row)
                print(f"round {k} {mode:10s} " + " ".join(f"{n} {v:.2f}" for n, v in row.items()), flush=True)
                time.sleep(1.0)
    finally:
        lc.terminate()
        lc.wait(10)
        sink.close()
    print("\nmedians over rounds (max of the worst windows):")
    for mode, rows in results.items():
        print(
            f"  {mode:10s} p95 {statistics.median(r['p95_ms'] for r in rows):.2f} ms, worst 2 s window "
            f"{statistics.median(r['worst_window_p95_ms'] for r in rows):.2f} ms "
            f"(max {max(r['worst_window_p95_ms'] for r in rows):.2f}), "
            f"a check {statistics.median(r['check_s'] for r in rows):.2f} s"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
