"""Exact evaluation of the share LP for one participant set, by water-filling: the smallest
step time T with sum_i clip(rho_i (T - o_i), 0, m_i) = B. Used to search the participant set
quickly; cvxpy then solves the chosen set."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["allreduce_s", "waterfill_time"]

Arr = npt.NDArray[np.float64]


def waterfill_time(rho: Arr, overhead: Arr, ub: Arr, batch: float, iters: int = 100) -> float:
    """Minimal max_i (b_i / rho_i + o_i) over b with sum b = batch, 0 <= b <= ub; inf if
    sum(ub) < batch. Bisection on T; ``rho`` > 0."""
    if ub.sum() < batch - 1e-9:
        return float("inf")
    lo = float(overhead.min())
    hi = float((overhead + ub / rho).max())
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if np.minimum(np.maximum(rho * (mid - overhead), 0.0), ub).sum() >= batch:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return hi


def allreduce_s(k: int, model_bytes: float, bandwidth_bps: float, latency_s: float) -> float:
    """Ring all-reduce: 2(k-1)/k of the gradient bytes over the slowest link, 2(k-1) latencies."""
    if k <= 1:
        return 0.0
    return 2.0 * (k - 1) / k * model_bytes / bandwidth_bps + 2.0 * (k - 1) * latency_s
