"""The coordinator: cluster view, failure detector, models, planner, job lifecycle and store."""

from deepedge.coordinator._jobs import TRANSITIONS, IllegalTransition, JobRecord, JobState
from deepedge.coordinator._run import run_coordinator
from deepedge.coordinator._service import Coordinator
from deepedge.coordinator._store import JobStore, StoreError
from deepedge.coordinator._view import ClusterView, NodeState

__all__ = [
    "TRANSITIONS",
    "ClusterView",
    "Coordinator",
    "IllegalTransition",
    "JobRecord",
    "JobState",
    "JobStore",
    "NodeState",
    "StoreError",
    "run_coordinator",
]
