"""The node daemon (``deepedge node``): runs on every edge board. Never imports torch."""

from deepedge.node._daemon import NodeDaemon, run_node
from deepedge.node._latency import LatencyIntake, LatencyWindows, percentile
from deepedge.node._supervisor import SupervisorState, WorkerSupervisor

__all__ = [
    "LatencyIntake",
    "LatencyWindows",
    "NodeDaemon",
    "SupervisorState",
    "WorkerSupervisor",
    "percentile",
    "run_node",
]
