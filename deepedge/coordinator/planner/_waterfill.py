"""Exact evaluation of the share LP for one participant set, by water-filling: the smallest
step time T with sum_i clip(rho_i (T - o_i), 0, m_i) = B. Used to search the participant set
quickly; cvxpy then solves the chosen set."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["allreduce_s", "waterfill_time"]

Arr = npt.NDArray[np.float64]


def waterfill_time(rho: Arr, overhead: Arr, ub: Arr, batch: float) -> float:
    """Minimal max_i (b_i / rho_i + o_i) over b with sum b = batch, 0 <= b <= ub; inf if
    sum(ub) < batch. Exact: f(T) = sum_i clip(rho_i (T - o_i), 0, ub_i) is piecewise linear,
    rising with slope rho_i between o_i and o_i + ub_i / rho_i; sweep its breakpoints."""
    if ub.sum() < batch - 1e-9:
        return float("inf")
    if batch <= 0:
        return float(overhead.min())
    times = np.concatenate([overhead, overhead + ub / rho])
    deltas = np.concatenate([rho, -rho])
    order = np.argsort(times, kind="stable")
    times, deltas = times[order], deltas[order]
    slope = np.cumsum(deltas)  # slope of f just after each breakpoint
    filled = np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(times))])  # f at each breakpoint
    j = int(np.searchsorted(filled, batch - 1e-12 * batch, side="left"))
    if j == 0:
        return float(times[0])
    # f crosses batch between breakpoints j-1 and j, with slope[j-1] > 0 there
    return float(times[j - 1] + (batch - filled[j - 1]) / slope[j - 1])


def allreduce_s(k: int, model_bytes: float, bandwidth_bps: float, latency_s: float) -> float:
    """Ring all-reduce: 2(k-1)/k of the gradient bytes over the slowest link, 2(k-1) latencies."""
    if k <= 1:
        return 0.0
    return 2.0 * (k - 1) / k * model_bytes / bandwidth_bps + 2.0 * (k - 1) * latency_s
