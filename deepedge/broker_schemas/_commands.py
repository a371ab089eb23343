"""Typed contracts of the commands: one struct for each verb's arguments (decoded from
``CommandRequest.args`` with :func:`args_of`) and one for each reply's result, shared by the
daemon that answers (coordinator or node) and the CLI that asks. Unknown arguments are refused; every number is
bounded like everything else on the wire."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from deepedge.broker_schemas._messages import (
    MAX_INT,
    Finite,
    Fraction,
    Id,
    JobSpec,
    NonNeg,
    NonNegInt,
    ShortStr,
    Text,
)

__all__ = [
    "ArgsError",
    "CancelArgs",
    "CancelResult",
    "CoordinatorSummary",
    "DrainArgs",
    "DrainResult",
    "InterferenceRunResult",
    "JobSummary",
    "LcSummary",
    "NoArgs",
    "NodeSummary",
    "PreflightArgs",
    "ProfileArgs",
    "ProfileStarted",
    "ReasonArgs",
    "RmArgs",
    "RmResult",
    "SetDeadlineArgs",
    "SetDeadlineResult",
    "ShareCap",
    "StatusArgs",
    "StatusResult",
    "StopWorkerArgs",
    "StopWorkerResult",
    "SubmitArgs",
    "args_of",
    "result_of",
]

A = TypeVar("A", bound=msgspec.Struct)


class ArgsError(ValueError):
    """The arguments do not fit the verb's struct; the message names the argument."""


class _Args(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class _Result(msgspec.Struct, frozen=True, kw_only=True):
    pass


def args_of(args: dict[str, Any], cls: type[A]) -> A:
    """``args`` as ``cls``; ArgsError with a one-line reason otherwise."""
    try:
        return msgspec.convert(args, cls, strict=False)
    except msgspec.ValidationError as exc:
        text = re.sub(r" - at `\$\.?(\w*)`", r" (\1)", str(exc))
        text = text.replace("Object contains unknown field", "unknown argument")
        text = text.replace("Object missing required field", "missing argument")
        text = text.replace(
            "Expected `str` matching regex '^[A-Za-z0-9_.-]{1,64}$'", "must be an id ([A-Za-z0-9_.-]{1,64})"
        )
        raise ArgsError(text) from None


def result_of(result: dict[str, Any], cls: type[A]) -> A:
    """A reply's result as ``cls`` (the requester's side)."""
    return msgspec.convert(result, cls, strict=False)


# ---- submit -------------------------------------------------------------------------------------


class SubmitArgs(_Args, frozen=True, kw_only=True):
    job: Id | None = None  # default: generated
    model: ShortStr
    dataset: Text
    output: Text
    epochs: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    global_batch: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    learning_rate: Annotated[float, msgspec.Meta(gt=0, le=1e6)]
    base_checkpoint: Text | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    split: Literal["planned", "uniform", "proportional"] = "planned"
    dataset_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    model_bytes: NonNegInt = 4_000_000  # gradient bytes all-reduced per step
    lc_control: Literal["forecast", "reactive", "unaware"] = "forecast"

    def spec(self) -> JobSpec:
        return JobSpec(
            model=self.model,
            dataset=self.dataset,
            output=self.output,
            epochs=self.epochs,
            global_batch=self.global_batch,
            learning_rate=self.learning_rate,
            base_checkpoint=self.base_checkpoint,
            seed=self.seed,
            split=self.split,
            lc_control=self.lc_control,
        )


class ShareCap(_Result, frozen=True, kw_only=True):
    share: NonNegInt
    cap: Finite


class JobSummary(_Result, frozen=True, kw_only=True):
    job: Id
    state: ShortStr
    generation: NonNegInt = 0
    step: NonNegInt = 0
    total_steps: NonNegInt = 0
    samples_done: NonNegInt = 0
    loss: Finite | None = None
    reason: Text = ""
    participants: dict[ShortStr, ShareCap] = {}
    excluded: dict[ShortStr, Text] = {}  # nodes left out of the job, and why
    # While it runs: time since submit + the rest at the current plan's predicted step time;
    # once completed, the actual time from submit to completion (``makespan_actual``).
    predicted_makespan_s: NonNeg | None = None
    makespan_actual: bool = False


# ---- status -------------------------------------------------------------------------------------


class StatusArgs(_Args, frozen=True, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None  # default: what fits in a reply
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 0


class LcSummary(_Result, frozen=True, kw_only=True):
    p95_ms: NonNeg
    deadline_ms: NonNeg | None = None
    count: NonNegInt = 0


class NodeSummary(_Result, frozen=True, kw_only=True):
    node: Id
    alive: bool
    drained: bool = False
    why_dead: Text = ""
    cpu_percent: NonNeg | None = None
    mem_percent: NonNeg | None = None
    rate: NonNeg | None = None  # samples/s at full intensity the planner uses now
    rate_source: ShortStr = ""  # "learned", "profile <model>" or "prior"
    cap_limit: NonNeg | None = None
    background_cores: NonNeg | None = None  # busy cores less its training and LC apps (telemetry)
    lc: dict[ShortStr, LcSummary] = {}


class CoordinatorSummary(_Result, frozen=True, kw_only=True):
    session: ShortStr
    version: ShortStr
    nodes: NonNegInt
    alive: NonNegInt
    jobs: dict[ShortStr, NonNegInt]
    uptime_s: NonNeg
    dropped: NonNegInt = 0  # node messages dropped because the coordinator fell behind


class StatusResult(_Result, frozen=True, kw_only=True):
    coordinator: CoordinatorSummary
    nodes: list[NodeSummary]
    nodes_total: NonNegInt
    jobs: list[JobSummary]
    jobs_total: NonNegInt = 0
    offset: NonNegInt = 0
    truncated: bool = False  # more than fits in one reply: ask again with --offset


# ---- cancel, drain, rm --------------------------------------------------------------------------


class CancelArgs(_Args, frozen=True, kw_only=True):
    job: Id
    reason: Text = ""


class CancelResult(_Result, frozen=True, kw_only=True):
    job: Id
    state: ShortStr


class DrainArgs(_Args, frozen=True, kw_only=True):
    node: Id
    reason: Text = ""


class DrainResult(_Result, frozen=True, kw_only=True):
    node: Id
    drained: bool


class RmArgs(_Args, frozen=True, kw_only=True):
    """Remove finished jobs: one by id, or every one that finished more than
    ``older_than_s`` ago."""

    job: Id | None = None
    older_than_s: NonNeg | None = None


class RmResult(_Result, frozen=True, kw_only=True):
    removed: list[Id]


# ---- the node's verbs (cmd/node/<id>/<verb>) -----------------------------------------------


class NoArgs(_Args, frozen=True, kw_only=True):
    """``status``: no arguments."""


class ReasonArgs(_Args, frozen=True, kw_only=True):
    """``drain`` / ``undrain`` on a node: why (shown in events)."""

    reason: Text = ""


class SetDeadlineArgs(_Args, frozen=True, kw_only=True):
    app: Id
    deadline_ms: Annotated[float, msgspec.Meta(gt=0, lt=1e7)] | None = None  # None: remove it


class SetDeadlineResult(_Result, frozen=True, kw_only=True):
    app: Id
    deadline_ms: NonNeg | None = None


class StopWorkerArgs(_Args, frozen=True, kw_only=True):
    job: Id | None = None  # None: every worker


class StopWorkerResult(_Result, frozen=True, kw_only=True):
    stopped: list[Id]


class ProfileArgs(_Args, frozen=True, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] = "cnn-small"
    levels: ShortStr | None = None  # comma-separated intensities in (0, 1]
    seconds: Annotated[float, msgspec.Meta(ge=0.5, le=3600)] | None = None
    # One interference run (``deepedge profile NODE --interference`` sends one per design point):
    # the LC app measured (default: the board's only app with a deadline), the training
    # intensity, the LC request rate asked of the app, stressor levels (gpu: only on a board that
    # trains on a GPU), stress-ng workers each.
    interference: bool = False
    app: Id | None = None
    intensity: Fraction = 0.0
    rate: Annotated[float, msgspec.Meta(gt=0, le=100_000)] | None = None
    cpu: Fraction = 0.0
    cache: Fraction = 0.0
    mem: Fraction = 0.0
    io: Fraction = 0.0
    gpu: Fraction = 0.0
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1


class InterferenceRunResult(_Result, frozen=True, kw_only=True):
    """One interference run's raw measurement (``deepedge.profiling.Run`` as a dict)."""

    node: Id
    run: dict[ShortStr, Any]


class ProfileStarted(_Result, frozen=True, kw_only=True):
    started: bool
    model: ShortStr
    levels: ShortStr
    seconds: NonNeg


class PreflightArgs(_Args, frozen=True, kw_only=True):
    """``preflight``: the job and its spec's fields, checked as the wire checks a plan's spec."""

    job: Id
    model: ShortStr
    dataset: Text
    output: Text
    epochs: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    global_batch: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    learning_rate: Annotated[float, msgspec.Meta(gt=0, le=1e6)]
    base_checkpoint: Text | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    split: Literal["planned", "uniform", "proportional"] = "planned"
    lc_control: Literal["forecast", "reactive", "unaware"] = "forecast"

    def spec(self) -> JobSpec:
        return JobSpec(**{f: getattr(self, f) for f in JobSpec.__struct_fields__})
