"""Intensity caps: the largest training intensity u in [0, 1] whose predicted LC p95 stays under
(1 - margin) x deadline for every LC app on the node."""

from __future__ import annotations

from deepedge.coordinator.planner._types import NodeModel

__all__ = ["node_cap"]


def node_cap(node: NodeModel, margin: float) -> tuple[float, str]:
    """(cap, reason): ``reason`` says which app limits the cap when it is 0."""
    cap = min(1.0, max(0.0, node.cap_limit))
    reason = "" if cap > 0 else "its cap was lowered to 0 after LC deadline misses"
    for app in node.lc_apps:
        budget = (1.0 - margin) * app.deadline_ms
        if app.base_ms > budget:
            return 0.0, (
                f"LC app {app.name} is predicted at {app.base_ms:.1f} ms p95 with no training, over "
                f"{budget:.1f} ms ({(1 - margin):.0%} of its {app.deadline_ms:g} ms deadline)"
            )
        if app.slope_ms > 0:
            allowed = (budget - app.base_ms) / app.slope_ms
            if allowed < cap:
                cap = max(0.0, allowed)
                reason = f"LC app {app.name} leaves no room ({app.deadline_ms:g} ms deadline)"
    return cap, reason
