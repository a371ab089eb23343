"""Replay the same-group improvement rule on the steps of stored demo runs: how many share-only
plans it publishes, and how long the steps of the plan in effect were, for each persistence
(SHARE_PERSIST_S: the gain must be predicted at every check for that long).

Each worker's accounting (``output/accounting/<node>.jsonl``: per step its share and its busy
seconds) gives the node's measured rate per step. The replay feeds the coordinator's own
ThroughputModel a heartbeat every 0.5 s (the demo's interval) carrying the last step's rate, as
the worker's report does; checks every REPLAN_COOLDOWN_S with the coordinator's own
``should_improve`` and ``held_gain``; and plans shares in proportion to the learned rates (the
planner's optimum for compute alone). A plan's step time is measured against the rates the next
second of steps showed (the oracle: shares in proportion to those).

What it leaves out: a plan's shares move a board's load, and with it its own rate and its LC
apps (a feedback the replay cannot see); caps and the all-reduce.

    python scripts/replay_share_churn.py /tmp/deepedge-demo-runs-*          # demo_runs.sh output
    python scripts/replay_share_churn.py --save docs/benchmarks/data/demo-steps.json.gz /tmp/deepedge-demo-runs-*
    python scripts/replay_share_churn.py docs/benchmarks/data/demo-steps.json.gz   # the stored steps
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import math
import statistics
import sys
from pathlib import Path

from deepedge.coordinator import _policy as policy
from deepedge.coordinator._learning import ThroughputModel

HEARTBEAT_S = 0.5  # the demo's heartbeat interval
TRUE_WINDOW_S = 1.0  # the rates a plan's step time is measured against: the next second's steps
PERSIST = (0.0, 1.0, 2.0, 3.0, 4.0)

Steps = dict[str, list[tuple[float, int, int, float]]]  # node -> (t, step, share, busy_s)


def load_runs(paths: list[Path]) -> dict[str, dict]:
    """{run: {"steps": Steps, "same_group": improvements the run's coordinator published}}."""
    runs: dict[str, dict] = {}
    for path in paths:
        if path.is_file():
            with gzip.open(path, "rt") as f:
                runs.update(json.load(f))
            continue
        for acc in sorted(path.glob("run*/output/accounting")):
            run = f"{path.name}/{acc.parent.parent.name}"
            steps: Steps = {}
            for f in acc.glob("*.jsonl"):
                node = f.stem
                rows = [json.loads(line) for line in f.open()]
                rows = [(r["t"], r["step"], len(r["by"][node]), r["busy"]) for r in rows]
                steps[node] = [r for r in rows if r[2] > 0 and r[3] > 0]
            log = acc.parent.parent / "logs" / "coordinator.log"
            same = sum(1 for line in log.open() if '"plan.improving"' in line and "same group" in line)
            runs[run] = {"steps": steps, "same_group": same}
    return runs


def proportional(rates: dict[str, float]) -> dict[str, float]:
    """Shares in proportion to the rates (the planner's optimum for compute alone)."""
    total = sum(rates.values())
    return {n: r / total for n, r in rates.items()}


def replay(steps: Steps, persist_s: float) -> tuple[int, float, float]:
    """(share-only plans published, the plan in effect's step seconds summed over the heartbeats,
    the oracle's)."""
    steps = {n: rows for n, rows in steps.items() if len(rows) >= 20}
    if len(steps) < 2:
        return 0, 0.0, 0.0
    t0, t1 = min(r[0][0] for r in steps.values()), max(r[-1][0] for r in steps.values())
    by_step: dict[int, int] = {}
    for rows in steps.values():
        for _, k, share, _ in rows:
            by_step[k] = by_step.get(k, 0) + share
    batch, total_steps = statistics.median(by_step.values()), max(by_step) + 1  # the global batch, the job's steps
    times = {n: [r[0] for r in rows] for n, rows in steps.items()}
    models: dict[str, ThroughputModel] = {}
    shares: dict[str, float] | None = None
    checked, improving, published, realized, oracle = -1e9, None, 0, 0.0, 0.0
    t = t0 + HEARTBEAT_S
    while t < t1 - TRUE_WINDOW_S:
        step = 0
        for node, rows in steps.items():
            last = bisect.bisect_right(times[node], t) - 1  # its last step by t
            if last < 0 or t - rows[last][0] > 1.0:  # not training now
                models.pop(node, None)
                continue
            _, step_now, share, busy = rows[last]
            step = max(step, step_now)
            models.setdefault(node, ThroughputModel(prior=share / busy)).observe(share / busy, 1.0)
        rates = {n: m.rate for n, m in models.items() if m.observations >= 2}
        if len(rates) >= 2 and shares is not None and set(shares) == set(rates):
            future = {n: [r for r in steps[n] if t < r[0] <= t + TRUE_WINDOW_S] for n in rates}
            if all(future.values()):
                true = {n: sum(r[2] for r in f) / sum(r[3] for r in f) for n, f in future.items()}
                realized += max(shares[n] / true[n] for n in rates)
                oracle += 1.0 / sum(true.values())
            if t - checked >= policy.REPLAN_COOLDOWN_S:
                checked, since, improving = t, improving, None
                current, new = max(shares[n] / rates[n] for n in rates), 1.0 / sum(rates.values())
                if policy.should_improve(total_steps - step, current * batch, new * batch, same_group=True):
                    improving, held = policy.held_gain(since, 0, t, persist_s)
                    if held:
                        shares, improving = proportional(rates), None
                        published += 1
        elif len(rates) >= 2:  # a new group: planned on what is known
            shares, improving = proportional(rates), None
        t += HEARTBEAT_S
    return published, realized, oracle


def step_noise(rows: list[tuple[float, int, int, float]]) -> float:
    """The standard deviation of a node's log rate per step against the median of the 9 steps
    around it: how much one step's rate (what a heartbeat carries) moves."""
    logs = [math.log(share / busy) for _, _, share, busy in rows]
    devs = [x - statistics.median(logs[max(0, i - 4) : i + 5]) for i, x in enumerate(logs)]
    return statistics.pstdev(devs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="demo_runs.sh output directories, or a --save file")
    ap.add_argument("--save", type=Path, help="write the runs' steps here (json.gz) for a later replay")
    ap.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = ap.parse_args()
    runs = load_runs(args.paths)
    if not runs:
        sys.exit("no demo runs with accounting found")
    if args.save:
        with gzip.open(args.save, "wt") as f:
            json.dump(runs, f, separators=(",", ":"))
    results = {}
    for p in PERSIST:
        got = [replay(r["steps"], p) for r in runs.values()]
        results[p] = (sum(g[0] for g in got), sum(g[1] for g in got), sum(g[2] for g in got), [g[0] for g in got])
    base = results[0.0][1]
    actual = sum(r["same_group"] for r in runs.values())
    r = statistics.correlation([float(n) for n in results[0.0][3]], [float(v["same_group"]) for v in runs.values()])
    print(f"{len(runs)} demo runs; share-only plans their coordinators published: {actual}", end="")
    print(f" (per run, against the replay at 0 s: r = {r:.2f})")
    print("persistence | share-only plans | step time vs 0 s | vs the oracle")
    for p, (published, realized, oracle, _) in results.items():
        print(f"{p:9.1f} s | {published:16d} | {realized / base:16.4f} | {realized / oracle:.3f}")
    zero = results[0.0][3]
    churn = [i for i, n in enumerate(zero) if n >= 5]
    print(
        f"runs with 5 or more share-only plans at 0 s: {len(churn)} (median "
        f"{statistics.median(zero[i] for i in churn) if churn else 0}); at "
        f"{policy.SHARE_PERSIST_S:g} s those runs: median "
        f"{statistics.median(results[policy.SHARE_PERSIST_S][3][i] for i in churn) if churn else 0}"
    )
    noise = [[step_noise(rows) for rows in r["steps"].values() if len(rows) >= 100] for r in runs.values()]
    for label, pick in (("5 or more", lambda n: n >= 5), ("none", lambda n: n == 0)):
        sds = [sd for sds_, n in zip(noise, zero, strict=True) if pick(n) for sd in sds_]
        if sds:
            print(
                f"one step's rate, runs with {label} share-only plans at 0 s: log sd "
                f"{min(sds):.3f}-{max(sds):.3f} (median {statistics.median(sds):.3f}) over {len(sds)} training boards"
            )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "runs": len(runs),
                    "published_by_the_runs": actual,
                    "per_run_correlation_at_0s": r,
                    "by_persistence_s": {
                        str(p): {"share_only_plans": r[0], "step_time_vs_0s": r[1] / base, "vs_oracle": r[1] / r[2]}
                        for p, r in results.items()
                    },
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
