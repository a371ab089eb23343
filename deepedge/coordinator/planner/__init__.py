"""The interference-aware planner (a pure function on cvxpy). See docs/planner.md."""

from deepedge.coordinator.planner._caps import node_cap
from deepedge.coordinator.planner._exhaustive import exhaustive_best_makespan
from deepedge.coordinator.planner._planner import (
    Planner,
    candidate_sizes,
    integer_shares,
    plan,
    proportional_plan,
    uniform_plan,
)
from deepedge.coordinator.planner._types import (
    MIN_RATE,
    JobModel,
    LcAppModel,
    NetworkModel,
    NodeModel,
    PlanDecision,
    PlannerConfig,
)
from deepedge.coordinator.planner._waterfill import allreduce_s, waterfill_time

__all__ = [
    "MIN_RATE",
    "JobModel",
    "LcAppModel",
    "NetworkModel",
    "NodeModel",
    "PlanDecision",
    "Planner",
    "PlannerConfig",
    "allreduce_s",
    "candidate_sizes",
    "exhaustive_best_makespan",
    "integer_shares",
    "node_cap",
    "plan",
    "proportional_plan",
    "uniform_plan",
    "waterfill_time",
]
