"""The local channel between a node daemon and its training worker (never MQTT).

The daemon writes one JSON line per plan generation to the worker's stdin: ``PlanForWorker``.
The worker writes one JSON line per report to its stdout: ``WorkerReport``. Anything else a
worker prints on stdout is logged and ignored; its stderr goes to the daemon's log.
"""

from __future__ import annotations

from typing import Any

import msgspec

from deepedge.broker_schemas import Assignment, Plan, WorkerState
from deepedge.config import TrainingConfig

__all__ = [
    "COMM_THREADS",
    "STANDBY_READY",
    "PlanForWorker",
    "WorkerReport",
    "decode_plan_line",
    "decode_report_line",
    "encode_line",
]

# What a standby worker (``--standby``) prints on stdout once its imports are done; not a report.
STANDBY_READY = "worker: standby ready"

# Name prefixes (Linux thread names, /proc/PID/task/TID/comm) of the threads torch.distributed
# starts for communication: gloo's socket loop and work threads, the TCPStore's server loop.
# Their CPU priority is the daemon's ``worker_comm_nice``, the rest of the worker's ``worker_nice``.
COMM_THREADS = ("gloo_tcp_loop", "pt_gloo_runloop", "pt_tcpstore")


class PlanForWorker(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    plan: Plan
    assignment: Assignment  # this node's part of the plan
    emulated_sample_s: float = 0.0  # node.emulate_sample_ms: the least time one sample may take
    # node.worker_comm_nice: the nice value of the worker's communication threads (COMM_THREADS),
    # set again for each process group it forms (None: left as they are).
    comm_nice: int | None = None
    # From this node's own configuration, never from the plan: the address its rendezvous store
    # and gloo bind to (node.training_address), and what a job may name here ([training]).
    training_address: str = "127.0.0.1"
    policy: TrainingConfig = TrainingConfig()


class WorkerReport(msgspec.Struct, frozen=True, kw_only=True):
    job: str
    generation: int
    rank: int
    world_size: int = 0
    step: int = 0
    samples_per_s: float = 0.0
    loss: float | None = None
    intensity: float = 0.0
    state: WorkerState = WorkerState.TRAINING
    message: str = ""
    # Step timing and link measurements (medians since the last report; see Heartbeat)
    compute_s: float = 0.0
    allreduce_s: float = 0.0
    step_s: float = 0.0
    comm_bytes: int = 0
    link_bps: float = 0.0
    link_latency_s: float = 0.0
    forming_s: float = 0.0
    startup_s: float = 0.0
    pending_s: float = 0.0

    def heartbeat_fields(self) -> dict[str, Any]:
        """The step timing and link fields, bounded as the wire's Heartbeat wants them (a
        daemon copies them into the heartbeat it publishes)."""

        def ok(x: float, high: float = 1e12) -> float:
            return min(max(float(x), 0.0), high) if x == x else 0.0  # NaN -> 0

        return {
            "compute_s": ok(self.compute_s),
            "allreduce_s": ok(self.allreduce_s),
            "step_s": ok(self.step_s),
            "comm_bytes": int(ok(self.comm_bytes, 2**53)),
            "link_bps": ok(self.link_bps),
            "link_latency_s": ok(self.link_latency_s),
            "forming_s": ok(self.forming_s),
            "startup_s": ok(self.startup_s),
            "pending_s": ok(self.pending_s),
        }


_PLAN = msgspec.json.Decoder(PlanForWorker)
_REPORT = msgspec.json.Decoder(WorkerReport)
_ENC = msgspec.json.Encoder()


def encode_line(item: PlanForWorker | WorkerReport) -> bytes:
    return _ENC.encode(item) + b"\n"


def decode_plan_line(line: bytes) -> PlanForWorker:
    return _PLAN.decode(line)


def decode_report_line(line: bytes) -> WorkerReport:
    """Raises msgspec.DecodeError (or ValidationError) for a line that is not a report."""
    return _REPORT.decode(line)
