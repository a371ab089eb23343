"""What does a standby (the worker, or the pre-flight checker) save at a job's start? (issue #15:
start-up misses, makespan)

Runs the demo's job on its cluster (two boards with their LC apps, shared boundaries, no kill),
in alternating rounds with ``node.standby_worker`` (``--what worker``, the default) or
``node.standby_checker`` (``--what checker``; the worker's standby then off) off and on, each on
a fresh cluster; the other key at its default. Before
each job the LC apps run alone for ``--alone`` seconds (the standby, where on, is started then,
in the idle class, once the boards are idle). Per run:

- ``start_s``: from the submission to the first training heartbeat of the job;
- ``makespan_s``: from the submission to the job's completion;
- per app, the median p95 of its reports alone, and the highest p95 of its reports in the first
  ``--window`` seconds after the submission (the start), both over its deadline;
- ``missed``: the job's reports over the deadline (the start included).

Prints each run as a JSON line and, at the end, the medians per mode (and the ratio on/off of
each), and writes everything to ``--out``.

    python scripts/exp_standby.py [--what worker|checker] [--rounds 3] [--epochs 2] [--trace constant:40]
        [--out results.json]

Nothing else CPU-heavy: the boards' apps and workers share this machine's CPUs."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from deepedge.demo._boards import cluster_profiles
from deepedge.demo._cluster import DemoCluster
from deepedge.demo._data import make_image_folder
from deepedge.demo._run import DemoOptions, run_cluster_job

MODES = ("off", "on")
KEYS = {"worker": "standby_worker", "checker": "standby_checker"}  # --what: the node key switched
TAKEN = {"worker": "worker.standby_taken", "checker": "preflight.standby_taken"}  # its daemons' log event


def one_run(mode: str, k: int, args: argparse.Namespace, root: Path, data: Path, size: int) -> dict[str, object]:
    workdir = root / f"{mode}-{k}"
    workdir.mkdir()
    opts = DemoOptions(
        nodes=2,
        kill_after_s=None,
        epochs=args.epochs,
        boards="shared",
        alone_s=args.alone,
        workdir=workdir,
        lc_trace=args.trace,
    )
    cluster = DemoCluster(
        workdir,
        cluster_profiles(2, with_lc=True),
        boundaries="shared",
        node_extra=f"{KEYS[args.what]} = {'true' if mode == 'on' else 'false'}\n",
        data_roots=(root,),
    )
    cluster.start()
    try:
        run = asyncio.run(
            run_cluster_job(
                cluster, opts, job=f"standby-{mode}-{k}", dataset=data, dataset_size=size, output=workdir / "out"
            )
        )
    finally:
        cluster.stop()
    first = run.watch.first_step_ts()
    row: dict[str, object] = {
        "mode": mode,
        "round": k,
        "start_s": round(first - run.submitted_ts, 2) if first else None,
        "makespan_s": round(run.finished_ts - run.submitted_ts, 2) if run.finished_ts else None,
        # the boards whose worker (checker) was the standby (their daemons' logs)
        "standbys_taken": sum(
            f'"{TAKEN[args.what]}"' in line
            for b in cluster.boards
            for line in (workdir / "logs" / f"{b.node}.log").read_text(errors="replace").splitlines()
        ),
    }
    for app, rec in sorted(run.watch.apps.items()):
        alone = run.alone.get(app)
        deadline = rec.deadline_ms or 0.0
        start = [p for ts, p, _ in rec.series if ts - run.submitted_ts <= args.window]
        row[app] = {
            "deadline_ms": round(deadline, 2),
            "alone_median": round(statistics.median(alone.p95s) / deadline, 3) if alone and alone.p95s else None,
            "start_worst": round(max(start) / deadline, 3) if start and deadline else None,
            "missed": f"{rec.violations} of {rec.reports}",
        }
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", choices=sorted(KEYS), default="worker")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--alone", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--trace", default=None, help="the LC apps' request rate, e.g. constant:40 (default: their own)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="deepedge-exp-standby-"))
    data = root / "data"
    size = make_image_folder(data, 3000)
    rows = []
    for k in range(args.rounds):
        for mode in ("off", "on") if k % 2 == 0 else ("on", "off"):
            row = one_run(mode, k, args, root, data, size)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary: dict[str, dict[str, float]] = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        starts = [r["start_s"] for r in mine if isinstance(r["start_s"], float)]
        spans = [r["makespan_s"] for r in mine if isinstance(r["makespan_s"], float)]
        worst = [v["start_worst"] for r in mine for v in r.values() if isinstance(v, dict) and v.get("start_worst")]
        summary[mode] = {
            "start_s": statistics.median(starts) if starts else float("nan"),
            "makespan_s": statistics.median(spans) if spans else float("nan"),
            "start_worst_p95_over_deadline": statistics.median(worst) if worst else float("nan"),
        }
    summary["on/off"] = {key: summary["on"][key] / summary["off"][key] for key in summary["off"]}
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.write_text(
            json.dumps({"command": " ".join(sys.argv), "runs": rows, "summary": summary}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
