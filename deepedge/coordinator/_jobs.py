"""Job lifecycle: states, the allowed transitions (anything else is a bug and raises), and the
job record the store persists."""

from __future__ import annotations

import msgspec

from deepedge.broker_schemas import JobSpec, JobState, Plan
from deepedge.errors import DeepEdgeError

__all__ = ["MAX_REASON", "TERMINAL", "TRANSITIONS", "IllegalTransition", "JobRecord", "JobState"]

MAX_REASON = 1000  # characters of a stored reason (a node's message can be longer)

# Every move real runs make: e.g. RECOVERING -> COMPLETED when the last participant was drained
# and its worker finished the job anyway.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.PLANNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.PLANNING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.RUNNING: frozenset({JobState.RECOVERING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}),
    JobState.RECOVERING: frozenset({JobState.RUNNING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class IllegalTransition(DeepEdgeError):
    pass


class JobRecord(msgspec.Struct, kw_only=True):
    job: str
    spec: JobSpec
    dataset_size: int
    model_bytes: int
    state: JobState = JobState.QUEUED
    generation: int = 0
    plan: Plan | None = None
    step: int = 0  # the highest step every participant has completed
    samples_done: int = 0
    loss: float | None = None
    reason: str = ""
    # nodes left out of this job and why (pre-flight refused, worker crash loop, refused the plan)
    excluded: dict[str, str] = msgspec.field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0

    def samples_after(self, step: int) -> int:
        """Samples trained once ``step`` steps are done: each epoch's last batch is partial."""
        epochs, k = divmod(min(step, self.total_steps), self.steps_per_epoch)
        return epochs * self.dataset_size + k * self.spec.global_batch

    @property
    def steps_per_epoch(self) -> int:
        """ceil(N / B): every epoch ends with a (possibly partial) batch, as the worker trains."""
        return -(-self.dataset_size // self.spec.global_batch)

    @property
    def total_steps(self) -> int:
        return self.spec.epochs * self.steps_per_epoch

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def move(self, to: JobState, reason: str = "") -> None:
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"job {self.job}: {self.state.value} -> {to.value} is not allowed")
        self.state = to
        if reason:
            self.reason = reason[:MAX_REASON]
