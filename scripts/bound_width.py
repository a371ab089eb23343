"""How wide must the upper bound caps use be? From stored interference-bench runs (knowledge-base
exports, docs/benchmarks/data/interference-runs*.json): fit each model on the design and
adaptive runs, estimate the one-sided 95 % upper quantile of its out-of-fold log residuals three
ways, and report the bound's width (x the median prediction), how much the estimate varies
(bootstrap of the residuals) and the share of held-out runs (stressor mixes never fitted on)
under it. No measurement; about 15 s.

    .venv/bin/python scripts/bound_width.py docs/benchmarks/data/interference-runs*.json

- conformal: what deepedge uses (rank ceil((n + 1) q) of n residuals: finite-sample coverage >= q)
- harrell-davis: a Beta-weighted mean of every order statistic (a smoother estimate of the q-quantile)
- normal-MAD: median + z_q x 1.4826 x MAD (a normal tail)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import beta, norm

from deepedge.bench._interference import split_export
from deepedge.profiling._surrogate import fit
from deepedge.profiling._table import conformal_quantile

Q = 0.95


def harrell_davis(x: Sequence[float], q: float) -> float:
    s = np.sort(np.asarray(x, dtype=float))
    n = len(s)
    weights = np.diff(beta.cdf(np.arange(n + 1) / n, (n + 1) * q, (n + 1) * (1 - q)))
    return float(np.sum(weights * s))


def normal_mad(x: Sequence[float], q: float) -> float:
    a = np.asarray(x, dtype=float)
    med = float(np.median(a))
    return med + float(norm.ppf(q)) * 1.4826 * float(np.median(np.abs(a - med)))


ESTIMATORS: dict[str, Callable[[Sequence[float], float], float]] = {
    "conformal": lambda x, q: conformal_quantile(list(x), q),
    "harrell-davis": harrell_davis,
    "normal-MAD": normal_mad,
}


def main(paths: list[str]) -> None:
    print("| runs | model | estimate | width | bootstrap sd (log) | held-out under it |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        fitted_on, held = split_export(Path(path))
        y = np.log([r.p95_ms for r in held])
        for kind in ("gbm", "loglinear"):
            s = fit(kind, fitted_on)
            res = np.asarray(s.residuals, dtype=float)
            held_res = y - s.model.predict(np.asarray([r.features() for r in held], dtype=float))
            rng = np.random.default_rng(0)
            for name, est in ESTIMATORS.items():
                w = est(res, Q)
                sd = float(np.std([est(rng.choice(res, len(res)), Q) for _ in range(300)]))
                print(
                    f"| {Path(path).name} ({len(fitted_on)} fitted, {len(held)} held out) | {kind} | {name} "
                    f"| x{math.exp(w):.2f} | {sd:.3f} | {np.mean(held_res <= w):.0%} |"
                )


if __name__ == "__main__":
    main(sys.argv[1:])
