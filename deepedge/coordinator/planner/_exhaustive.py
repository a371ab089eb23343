"""The best plan by exhaustive search over every participant subset, with optimal integer
shares: the reference the planner is measured against on small clusters (tests, bench)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from deepedge.coordinator.planner._caps import node_cap
from deepedge.coordinator.planner._planner import integer_shares
from deepedge.coordinator.planner._types import MIN_RATE, JobModel, NetworkModel, NodeModel, PlannerConfig
from deepedge.coordinator.planner._waterfill import allreduce_s

__all__ = ["exhaustive_best_makespan"]


def exhaustive_best_makespan(
    nodes: Sequence[NodeModel], job: JobModel, net: NetworkModel, config: PlannerConfig
) -> float:
    """The least makespan over all subsets (inf if none holds the batch). Exponential: small n only."""
    feasible = []
    for n in nodes:
        cap, _ = node_cap(n, config.margin)
        if cap >= config.min_cap and n.rate >= MIN_RATE and n.max_share > 0:
            feasible.append((n, n.rate * cap))
    best = math.inf
    for k in range(1, len(feasible) + 1):
        for subset in itertools.combinations(feasible, k):
            ub = [n.max_share for n, _ in subset]
            if sum(ub) < job.global_batch:
                continue
            rho = [r for _, r in subset]
            shares = integer_shares([0.0] * k, rho, [n.overhead_s for n, _ in subset], ub, job.global_batch)
            used = [(n, s, r) for (n, r), s in zip(subset, shares, strict=True) if s > 0]
            compute = max(s / r + n.overhead_s for n, s, r in used)
            slowest = max(n.latency(net.latency_s) for n, _, _ in used)
            ar = allreduce_s(len(used), job.model_bytes, min(n.bandwidth_bps for n, _, _ in used), slowest)
            best = min(best, job.steps * (compute + ar))
    return best
