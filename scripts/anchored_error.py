"""Does anchoring the model to what the LC app shows before training lower its error on new
stressor mixes? The coordinator predicts an app's *increase* over its live reports
(docs/planner.md, the anchor); the bench's held-out figures predict the p95 itself. From stored
interference-bench runs (knowledge-base exports, docs/benchmarks/data/interference-runs*.json),
without measuring: each model fitted on the design and adaptive runs as the bench fits it; in
each held-out scenario the run without training (u 0: what the app reported before a job
started) is the anchor, and each of the scenario's runs with training is predicted as
``model(run) x measured(anchor) / model(anchor)``. Reported beside the plain prediction and
beside "training adds nothing" (the anchor's p95 itself). About 20 s.

    .venv/bin/python scripts/anchored_error.py docs/benchmarks/data/interference-runs*.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from deepedge.bench._interference import split_export
from deepedge.profiling import Run
from deepedge.profiling._surrogate import fit

KINDS = ("gbm", "loglinear", "gp", "linear")


def _median_and_worst(errors: dict[str, list[float]]) -> str:
    flat = [e for v in errors.values() for e in v]
    worst = max(float(np.median(v)) for v in errors.values())
    return f"{np.median(flat):.1%} | {worst:.1%}"


def main(paths: list[str]) -> None:
    print("| runs | model | plain: median | worst scenario | anchored: median | worst scenario |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        fitted_on, held = split_export(Path(path))
        scenarios: dict[str, list[Run]] = {}
        for r in held:
            scenarios.setdefault(r.scenario, []).append(r)
        pairs = []  # (anchor, run with training)
        for runs in scenarios.values():
            anchor, *trained = sorted(runs, key=lambda r: r.intensity)
            if anchor.intensity <= 0.05:
                pairs += [(anchor, r) for r in trained]
        name = f"{Path(path).name} ({len(pairs)} runs with training)"
        none: dict[str, list[float]] = {}
        for a, r in pairs:
            none.setdefault(r.scenario, []).append(abs(a.p95_ms - r.p95_ms) / r.p95_ms)
        for kind in KINDS:
            s = fit(kind, fitted_on)
            plain: dict[str, list[float]] = {}
            anchored: dict[str, list[float]] = {}
            for a, r in pairs:
                m_run, m_anchor = s.median_ms([r.features(), a.features()])
                plain.setdefault(r.scenario, []).append(abs(m_run - r.p95_ms) / r.p95_ms)
                anchored.setdefault(r.scenario, []).append(abs(m_run * a.p95_ms / m_anchor - r.p95_ms) / r.p95_ms)
            print(f"| {name} | {kind} | {_median_and_worst(plain)} | {_median_and_worst(anchored)} |")
        print(f"| {name} | training adds nothing (the anchor's p95) | - | - | {_median_and_worst(none)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
