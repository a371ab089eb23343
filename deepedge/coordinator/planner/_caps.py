"""Intensity caps: the largest training intensity u in [0, 1] whose predicted LC p95 stays under
(1 - margin) x deadline for every LC app on the node. With a surrogate's curve (monotone
non-decreasing in u) the cap is found by bisection; with the linear model in closed form."""

from __future__ import annotations

from collections.abc import Callable

from deepedge.coordinator.planner._types import NodeModel

__all__ = ["BISECTION_STEPS", "largest_within", "node_cap"]

BISECTION_STEPS = 30  # |error| < 1e-9 of intensity


def largest_within(predict: Callable[[float], float], budget: float, hi: float = 1.0) -> float:
    """The largest u in [0, hi] with predict(u) <= budget, for a non-decreasing ``predict``
    (bisection); 0 when even predict(0) is over."""
    if predict(hi) <= budget:
        return hi
    lo = 0.0
    if predict(lo) > budget:
        return 0.0
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if predict(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def node_cap(node: NodeModel, margin: float) -> tuple[float, str]:
    """(cap, reason): ``reason`` says which app limits the cap when it is 0."""
    cap = min(1.0, max(0.0, node.cap_limit))
    reason = "" if cap > 0 else "its cap was lowered to 0 after LC deadline misses"
    for app in node.lc_apps:
        keep = margin if app.margin is None else app.margin
        budget = (1.0 - keep) * app.deadline_ms
        if app.curve:
            base = app.predict_ms(0.0)
            if base > budget:
                return 0.0, (
                    f"LC app {app.name} is predicted at {base:.1f} ms p95 (upper quantile) with no training, over "
                    f"{budget:.1f} ms ({(1 - keep):.0%} of its {app.deadline_ms:g} ms deadline)"
                    + (f"; {app.basis}" if app.basis else "")
                )
            allowed = largest_within(app.predict_ms, budget, cap)
            if allowed < cap:
                cap = allowed
                reason = f"LC app {app.name} leaves no room ({app.deadline_ms:g} ms deadline)"
            continue
        if app.base_ms > budget:
            return 0.0, (
                f"LC app {app.name} is predicted at {app.base_ms:.1f} ms p95 with no training, over "
                f"{budget:.1f} ms ({(1 - keep):.0%} of its {app.deadline_ms:g} ms deadline)"
            )
        if app.slope_ms > 0:
            allowed = (budget - app.base_ms) / app.slope_ms
            if allowed < cap:
                cap = max(0.0, allowed)
                reason = f"LC app {app.name} leaves no room ({app.deadline_ms:g} ms deadline)"
    return cap, reason
