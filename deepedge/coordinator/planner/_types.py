"""The planner's inputs and output: plain frozen data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MIN_RATE", "JobModel", "LcAppModel", "NetworkModel", "NodeModel", "PlanDecision", "PlannerConfig"]

# samples/s at full intensity under which a node counts as without a measured throughput: a rate
# such as 5e-324 (a legal float a node may claim) times a cap underflows to 0 and divided by zero
MIN_RATE = 1e-3


@dataclass(frozen=True, slots=True)
class LcAppModel:
    """An LC app's predicted p95 latency as a function of training intensity u in [0, 1]:
    ``curve``, when given, is the upper quantile of a surrogate model (knowledge base) at
    ``len(curve)`` evenly spaced intensities from 0 to 1, monotone non-decreasing, interpolated
    linearly; otherwise ``p95(u) = base_ms + slope_ms * u`` (fitted from observations;
    conservative by default)."""

    name: str
    deadline_ms: float
    base_ms: float
    slope_ms: float
    curve: tuple[float, ...] = ()
    # this app's safety margin instead of the planner's: a surrogate's curve is already its upper
    # quantile (the measured error), so the margin is not taken a second time (0)
    margin: float | None = None
    basis: str = ""  # what the prediction rests on, in words (for the reason when it leaves no room)

    def predict_ms(self, u: float) -> float:
        if len(self.curve) >= 2:
            x = min(1.0, max(0.0, u)) * (len(self.curve) - 1)
            k = min(int(x), len(self.curve) - 2)
            return self.curve[k] + (x - k) * (self.curve[k + 1] - self.curve[k])
        return self.base_ms + self.slope_ms * u


@dataclass(frozen=True, slots=True)
class NodeModel:
    node: str
    rate: float  # samples/s training alone at full intensity
    max_share: int  # samples per step that fit in its memory
    overhead_s: float = 0.0  # per-step fixed cost (data loading, optimizer step)
    bandwidth_bps: float = 1e9  # its link's bytes/s (the name is historical: bytes, not bits)
    lc_apps: tuple[LcAppModel, ...] = ()
    cap_limit: float = 1.0  # from feedback: an LC deadline was missed at a higher cap
    unavailable: str = ""  # why this known node cannot train now (busy, no training address); "" if it can
    startup_s: float = 0.0  # until its worker trains in a new plan: start-up, or re-forming a group
    # its link's probed one-way latency (s); None: unknown, the NetworkModel's is assumed. A set's
    # all-reduce waits for its slowest hop: the largest among the set's own nodes, never a node
    # outside it (one that could train but was not chosen slowed every plan ~2x: attacker review)
    latency_s: float | None = None

    def latency(self, default: float) -> float:
        return self.latency_s if self.latency_s is not None else default


@dataclass(frozen=True, slots=True)
class JobModel:
    global_batch: int
    dataset_size: int
    epochs: int
    model_bytes: int  # gradient bytes all-reduced per step
    remaining_steps: int | None = None  # a running job's steps still to do (None: all of them)

    @property
    def steps(self) -> int:
        return self.epochs * -(-self.dataset_size // self.global_batch)

    @property
    def left(self) -> int:
        """Steps over which a participant's start-up is paid back."""
        return max(1, self.steps if self.remaining_steps is None else self.remaining_steps)


@dataclass(frozen=True, slots=True)
class NetworkModel:
    latency_s: float = 0.5e-3  # alpha: per-message latency of the ring all-reduce


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    margin: float = 0.1  # caps keep predicted p95 under (1 - margin) x deadline
    min_cap: float = 0.05  # a node allowed less than this is not worth training on
    solver: str = "HIGHS"
    # float16 gradient communication (half the bytes, ~1e-4 from float32: docs/training.md) when
    # it shortens the predicted step by at least ``half_gain``
    allow_half: bool = False
    half_gain: float = 0.1


@dataclass(frozen=True)
class PlanDecision:
    feasible: bool
    reason: str = ""  # why not, in words a person can act on
    participants: tuple[str, ...] = ()  # in rank order
    shares: dict[str, int] = field(default_factory=dict)
    caps: dict[str, float] = field(default_factory=dict)  # every candidate's cap (0: excluded by LC deadlines)
    excluded: dict[str, str] = field(default_factory=dict)  # node -> why it does not train
    steps: int = 0
    compute_s: float = 0.0  # max_i b_i / (r_i u_i) + o_i
    allreduce_s: float = 0.0
    step_s: float = 0.0
    makespan_s: float = 0.0
    ideal_makespan_s: float = 0.0  # epochs * N / sum(r_i u_i): no overheads, no communication
    uniform_makespan_s: float = float("inf")  # the same job split evenly over every feasible node
    grad_dtype: str = "float32"  # what the all-reduce carries (float16: half the bytes)
    startup_s: float = 0.0  # the slowest participant's start-up (or re-forming), before the first step
