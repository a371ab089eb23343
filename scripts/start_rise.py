"""How much a plan that puts a board into a running job raises that board's LC apps, from the
stored LC-bench timelines (``deepedge bench makespan --timeline``), without measuring.

For each plan of a job that changes its participants, every LC app's p95 in the last report
before the plan and its highest report in the 10 s after, for the boards the plan adds, keeps
and drops; and, for a rule that adds a board only while ``p95 now x R <= deadline``, how many
additions it allows and how many of those went over the deadline. It is where
``deepedge.coordinator._policy.START_RISE`` comes from (docs/coordinator.md).

    .venv/bin/python scripts/start_rise.py docs/benchmarks/data/lc-timeline-*.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

AFTER_S = 10.0


def changes(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """(rise, p95 before / deadline, highest after / deadline) per role: added, kept, dropped."""
    out: dict[str, list[tuple[float, float, float]]] = {"added": [], "kept": [], "dropped": []}
    for run in json.loads(path.read_text())["runs"]:
        before_nodes: set[str] | None = None
        for _generation, t, assignment in run.get("plans") or []:
            nodes = set(assignment)
            if before_nodes is not None and nodes != before_nodes:
                for app in (run.get("apps") or {}).values():
                    reports, deadline = app["reports"], app["deadline_ms"]
                    before = [p for ts, p, *_ in reports if t - 1.0 <= ts <= t]
                    after = [p for ts, p, *_ in reports if t < ts <= t + AFTER_S]
                    if not before or not after or not deadline or before[-1] <= 0:
                        continue
                    if app["node"] in nodes - before_nodes:
                        role = "added"
                    elif app["node"] in nodes:
                        role = "kept"
                    elif app["node"] in before_nodes:
                        role = "dropped"
                    else:
                        role = ""
                    if role:
                        out[role].append((max(after) / before[-1], before[-1] / deadline, max(after) / deadline))
            before_nodes = nodes
    return out


def main(paths: list[str]) -> None:
    rows: dict[str, list[tuple[float, float, float]]] = {"added": [], "kept": [], "dropped": []}
    for p in paths:
        for role, xs in changes(Path(p)).items():
            rows[role] += xs
    print(f"{len(paths)} timelines; p95 in the {AFTER_S:g} s after a plan that changes the participants\n")
    print(
        "| board | plans | rise: median | 90th percentile | went over the deadline "
        "| R 1.5: allowed, over | R 1.75: allowed, over | R 2: allowed, over |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for role, xs in rows.items():
        if not xs:
            continue
        rises = sorted(x[0] for x in xs)
        cells = []
        for r in (1.5, 1.75, 2.0):
            ok = [x for x in xs if x[1] * r <= 1.0]
            cells.append(f"{len(ok)}, {sum(x[2] > 1.0 for x in ok)}")
        over = sum(x[2] > 1.0 for x in xs)
        print(
            f"| {role} | {len(xs)} | {statistics.median(rises):.2f}x | {rises[int(0.9 * len(rises))]:.2f}x "
            f"| {over} | " + " | ".join(cells) + " |"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(str(p) for p in Path("docs/benchmarks/data").glob("lc-timeline-*.json")))
