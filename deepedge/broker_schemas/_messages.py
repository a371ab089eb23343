"""Every payload of the design as a frozen, tagged msgspec struct.

Each message carries a ``kind`` tag and a schema version ``v``. New fields always get defaults so
older and newer builds interoperate; ``v`` only changes for an incompatible change.
Nested parts (``Accelerator``, ``AppLatency``, ...) are plain frozen structs without a tag.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from deepedge.compat import StrEnum

__all__ = [
    "MAX_FLOAT",
    "MAX_INT",
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "SUPPORTED_VERSIONS",
    "WORKER_NEWS",
    "Accelerator",
    "AppLatency",
    "ArgValue",
    "Assignment",
    "Cleared",
    "CommandReply",
    "CommandRequest",
    "CoordinatorStatus",
    "ErrorCode",
    "ErrorInfo",
    "Event",
    "Finite",
    "GpuStats",
    "Heartbeat",
    "Id",
    "JobSpec",
    "JobState",
    "LatencyReport",
    "LcPoint",
    "Message",
    "ModelProfile",
    "NodeBirth",
    "NodeDeath",
    "Plan",
    "Progress",
    "Telemetry",
    "TorchInfo",
    "WorkerState",
]

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS: frozenset[int] = frozenset({1})

Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# Every number on the wire is bounded: floats finite (NaN and +-inf are refused by the decoder,
# whatever the field), integers within what a double represents exactly, so no value a peer
# sends can overflow an encoder, a torch.Generator or a float conversion downstream.
MAX_INT = 2**53
MAX_FLOAT = 1e300
Finite = Annotated[float, msgspec.Meta(ge=-MAX_FLOAT, le=MAX_FLOAT)]
NonNeg = Annotated[float, msgspec.Meta(ge=0, le=MAX_FLOAT)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
BoundedInt = Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
ShortStr = Annotated[str, msgspec.Meta(max_length=256)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
ArgValue = str | BoundedInt | Finite | bool | None
ErrorCode = Literal[
    "bad_request",  # the payload did not decode to a command
    "unknown_verb",
    "bad_args",  # the verb exists, its arguments are wrong
    "not_found",  # the node/job/app named does not exist
    "conflict",  # not allowed in the current state
    "unavailable",  # the target cannot do it now (e.g. not built yet)
    "internal",  # a bug; the daemon logged it and carries on
    "timeout",  # set by the requester when no reply came in time
]


class _Part(msgspec.Struct, frozen=True, kw_only=True):
    """A nested part of a message (no tag, no version)."""


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    v: int = SCHEMA_VERSION


# ---- node/<node>/status ------------------------------------------------------------------------


class Accelerator(_Part, frozen=True):
    kind: Literal["cuda", "jetson", "other"]
    index: NonNegInt = 0
    name: ShortStr = ""
    memory_bytes: NonNegInt = 0


class LcPoint(_Part, frozen=True):
    """An LC app's p95 latency measured while training ran beside it at ``intensity``."""

    app: Id
    intensity: Fraction
    p95_ms: NonNeg


class ModelProfile(_Part, frozen=True):
    """What ``deepedge profile`` measured on this board for one model: training throughput
    alone, at full intensity, and the LC apps' p95 at each profiled intensity."""

    samples_per_s: NonNeg
    ts: NonNeg = 0.0
    lc: Annotated[tuple[LcPoint, ...], msgspec.Meta(max_length=64)] = ()


class TorchInfo(_Part, frozen=True):
    """What the board's torch can do, probed once by the daemon (``deepedge.training.probe``),
    and where and how this board trains (its ``[training]`` settings, resolved against it)."""

    version: ShortStr = ""
    distributed: bool = False  # torch.distributed is built in (not in every Jetson wheel)
    gloo: bool = False
    nccl: bool = False
    cuda: bool = False
    device: ShortStr = "cpu"  # where this board trains (training.device resolved)
    error: ShortStr = ""  # why the probe failed, or why the board cannot train as configured
    # the training device: cpu, a discrete CUDA GPU, or a Jetson's integrated GPU
    kind: Literal["cpu", "cuda", "jetson"] = "cpu"
    cuda_devices: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0  # CUDA devices torch sees
    device_name: ShortStr = ""  # the training GPU's name ("" on the CPU)
    device_memory: NonNegInt = 0  # the training GPU's memory in bytes (0 on the CPU)
    bf16: bool = False  # the training device can train in bfloat16 / float16 (autocast)
    fp16: bool = False
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # this board's training.backend
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # this board's training.precision


class NodeBirth(_Msg, tag="birth", frozen=True):
    """Retained on ``node/<node>/status`` while the node is up."""

    node: Id
    session: Id  # changes on every start: a node that returns with a new session is a new member
    ts: NonNeg
    hostname: ShortStr = ""
    device_model: ShortStr = ""
    cpu_model: ShortStr = ""
    cpu_cores: NonNegInt = 0
    memory_bytes: NonNegInt = 0
    accelerators: Annotated[tuple[Accelerator, ...], msgspec.Meta(max_length=16)] = ()
    os: ShortStr = ""
    jetpack: ShortStr | None = None
    software: Annotated[dict[ShortStr, ShortStr], msgspec.Meta(max_length=32)] = {}
    drained: bool = False
    profiles: Annotated[dict[ShortStr, ModelProfile], msgspec.Meta(max_length=16)] = {}  # by model name
    # Where this board's training worker listens (its own ``node.training_address``, an IP
    # literal): the coordinator names it as the rendezvous when this board is rank 0.
    training_address: ShortStr = ""
    max_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1  # training workers it runs at once
    torch: TorchInfo | None = None  # what the worker's torch can do (probed once at start)


class NodeDeath(_Msg, tag="death", frozen=True):
    """Retained on ``node/<node>/status`` when the node is gone: its last will
    (``reason='lost'``) or its own clean shutdown (``reason='shutdown'``)."""

    node: Id
    session: Id
    reason: Literal["lost", "shutdown"] = "lost"
    ts: NonNeg = 0.0


# ---- node/<node>/telemetry ---------------------------------------------------------------------


class GpuStats(_Part, frozen=True):
    index: NonNegInt = 0
    name: ShortStr = ""
    util_percent: Percent | None = None
    mem_used_bytes: NonNegInt | None = None
    mem_total_bytes: NonNegInt | None = None
    power_w: NonNeg | None = None
    temp_c: Finite | None = None


class Telemetry(_Msg, tag="telemetry", frozen=True):
    node: Id
    ts: NonNeg
    cpu_percent: Percent = 0.0
    cpu_per_core: Annotated[tuple[Percent, ...], msgspec.Meta(max_length=1024)] = ()
    load_avg: Annotated[tuple[NonNeg, ...], msgspec.Meta(max_length=3)] = ()
    mem_total_bytes: NonNegInt = 0
    mem_used_bytes: NonNegInt = 0
    mem_percent: Percent = 0.0
    swap_percent: Percent = 0.0
    net_rx_bps: NonNeg = 0.0
    net_tx_bps: NonNeg = 0.0
    disk_read_bps: NonNeg = 0.0
    disk_write_bps: NonNeg = 0.0
    temperatures_c: Annotated[dict[ShortStr, Finite], msgspec.Meta(max_length=64)] = {}
    gpus: Annotated[tuple[GpuStats, ...], msgspec.Meta(max_length=16)] = ()


# ---- node/<node>/latency -----------------------------------------------------------------------


class AppLatency(_Part, frozen=True):
    app: Id
    count: NonNegInt
    p50_ms: NonNeg
    p95_ms: NonNeg
    p99_ms: NonNeg
    deadline_ms: NonNeg | None = None
    violations: NonNegInt = 0  # requests over the deadline in this window


class LatencyReport(_Msg, tag="latency", frozen=True):
    node: Id
    ts: NonNeg
    window_s: NonNeg
    apps: Annotated[tuple[AppLatency, ...], msgspec.Meta(max_length=64)] = ()
    # the window overlaps the node's own profiling (stressors, a driven request rate): shown,
    # not learned from (neither the apps' latency models nor their request-rate forecasts)
    profiling: bool = False


# ---- node/<node>/heartbeat ---------------------------------------------------------------------


class WorkerState(StrEnum):
    """A training worker's state: the one definition, in its reports to its daemon
    (``deepedge.worker_protocol.WorkerReport``) and in its node's heartbeats."""

    STARTING = "starting"  # started, or forming a group (its link probed, state synchronised)
    TRAINING = "training"
    WAITING = "waiting"  # for a plan generation that includes it
    RECOVERING = "recovering"  # a collective failed: waiting for the next generation
    DONE = "done"
    FAILED = "failed"  # a TrainingError: the job cannot run here (not restarted)


# A worker's states the coordinator acts on: its node publishes them at once (and at QoS 1)
# rather than with the next periodic heartbeat.
WORKER_NEWS = frozenset({WorkerState.RECOVERING, WorkerState.DONE, WorkerState.FAILED})
# Why a board being profiled refuses a job's pre-flight and plan (the end of its failed
# heartbeat's message): it is busy, not unfit, so the coordinator leaves it out of the job for a
# while instead of for good. A worker beside the profile's stressors and training would hit its
# LC apps with both, and the profile would measure the job.
BEING_PROFILED = "this board is being profiled (deepedge profile): it takes no job until the profile ends"


class Heartbeat(_Msg, tag="heartbeat", frozen=True):
    node: Id
    ts: NonNeg
    job: Id
    generation: NonNegInt
    rank: NonNegInt
    world_size: NonNegInt = 0
    step: NonNegInt = 0
    samples_per_s: NonNeg = 0.0
    loss: Finite | None = None
    intensity: Fraction = 0.0  # achieved compute duty cycle
    state: WorkerState = WorkerState.TRAINING
    message: Text = ""  # why, when state is "failed"
    # Where a step's time goes on this board (medians over the steps since its last report), and
    # what its worker measured of its link: what the coordinator learns the all-reduce from.
    compute_s: NonNeg = 0.0  # computing its share (emulated pacing and the intensity throttle included)
    allreduce_s: NonNeg = 0.0  # in the gradient all-reduce, waits for slower peers included
    step_s: NonNeg = 0.0  # from one step's end to the next's
    comm_bytes: NonNegInt = 0  # bytes of the tensor it all-reduces each step
    link_bps: NonNeg = 0.0  # its link to its peers in bytes/s, probed when the group formed (0: unknown)
    link_latency_s: NonNeg = 0.0  # one-way latency to its nearest peer, probed likewise
    forming_s: NonNeg = 0.0  # the last group formation once every rank met: process group, probe, state sync
    startup_s: NonNeg = 0.0  # from the worker's start to its arrival at its first rendezvous
    pending_s: NonNeg = 0.0  # how long the current all-reduce has been waiting (0: none pending)


# ---- coordinator/status ------------------------------------------------------------------------


class CoordinatorStatus(_Msg, tag="coordinator_status", frozen=True):
    state: Literal["online", "offline"]
    session: Id
    version: ShortStr = ""
    ts: NonNeg = 0.0


# ---- job/<job>/plan and job/<job>/progress -----------------------------------------------------


class JobSpec(_Part, frozen=True):
    model: ShortStr
    dataset: Text
    output: Text
    epochs: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    global_batch: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    learning_rate: Annotated[float, msgspec.Meta(gt=0, le=MAX_FLOAT)]
    base_checkpoint: Text | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0  # torch.Generator seeds derive from it
    # "planned": the interference-aware plan; "uniform": every node the same share at full
    # intensity (what torchrun + DistributedSampler does); "proportional": every node, shares in
    # proportion to its throughput, at full intensity (LB-BSP-style, no node left out). The two
    # baselines are for comparisons (deepedge bench makespan).
    split: Literal["planned", "uniform", "proportional"] = "planned"
    # How a planned job treats LC apps: "forecast" (the knowledge base's surrogate where there is
    # one, the request-rate forecast, re-plans before a cap stops being safe), "reactive" (the
    # linear model and miss-then-back-off only: deepedge before issue #15), "unaware" (LC apps
    # ignored: shares in proportion to the rates at full intensity; a baseline to measure against)
    lc_control: Literal["forecast", "reactive", "unaware"] = "forecast"


class Assignment(_Part, frozen=True):
    node: Id
    rank: NonNegInt
    share: NonNegInt  # samples of every global batch
    batch_offset: NonNegInt  # this node takes [batch_offset, batch_offset + share) of each batch
    intensity_cap: Fraction
    # Where this participant trains ("cpu", "cuda:0", ...), from its birth; "" where its birth
    # did not say. The worker trains where its own training.device says; this is the record.
    device: ShortStr = ""


class Plan(_Msg, tag="plan", frozen=True):
    job: Id
    generation: NonNegInt
    ts: NonNeg
    spec: JobSpec
    rendezvous_host: ShortStr  # rank 0's training address, from its own birth
    rendezvous_port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    backend: Literal["gloo", "nccl"]
    assignments: Annotated[tuple[Assignment, ...], msgspec.Meta(max_length=4096)]
    total_steps: NonNegInt
    resume_step: NonNegInt = 0
    predicted_step_s: NonNeg = 0.0
    predicted_makespan_s: NonNeg = 0.0
    ideal_makespan_s: NonNeg = 0.0
    # A generation that keeps its predecessor's participants at the same ranks (only shares,
    # offsets or caps changed) continues the process group formed at ``group_generation``:
    # running workers switch to it at a step boundary they agree on, without re-forming.
    same_group: bool = False
    group_generation: NonNegInt = 0
    grad_dtype: Literal["float32", "float16"] = "float32"  # what the gradient all-reduce carries
    predicted_startup_s: NonNeg = 0.0  # of the predicted makespan: starting the workers or re-forming
    predicted_allreduce_s: NonNeg = 0.0  # of the predicted step time: the all-reduce
    # The coordinator session that made this plan (its retained status carries the same): a
    # node acts only on plans of the coordinator that is online now, so a plan of an earlier
    # session, replayed or left retained, starts nothing.
    session: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{0,64}$")] = ""


class JobState(StrEnum):
    """A job's lifecycle: the one definition, on the wire (``Progress.state``) and in the
    coordinator, whose transition table (``deepedge.coordinator.TRANSITIONS``) says which moves
    a job may make."""

    QUEUED = "queued"  # accepted, not planned yet
    PLANNING = "planning"  # the planner is deciding
    RUNNING = "running"  # a plan is published and workers train
    RECOVERING = "recovering"  # a participant died or a cap dropped: re-planning / waiting for nodes
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Progress(_Msg, tag="progress", frozen=True):
    job: Id
    state: JobState
    ts: NonNeg
    generation: NonNegInt = 0
    step: NonNegInt = 0
    total_steps: NonNegInt = 0
    samples_done: NonNegInt = 0
    samples_per_s: NonNeg = 0.0
    eta_s: NonNeg | None = None
    loss: Finite | None = None
    deadline_violations: NonNegInt = 0
    message: Text = ""


# ---- cmd/... and reply/... ---------------------------------------------------------------------


class CommandRequest(_Msg, tag="command", frozen=True):
    """A command; the verb is in the topic. The coordinator's reply goes to
    ``reply/<reply_to>/coordinator/<request_id>``, a node's to its own ``reply/node/<node>``:
    ``reply_to`` is the requester's client id, never a free topic, so a command cannot make a
    daemon publish anywhere else."""

    request_id: Id
    reply_to: Id
    args: Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], ArgValue], msgspec.Meta(max_length=64)] = {}
    sender: ShortStr = ""
    ts: NonNeg = 0.0


class ErrorInfo(_Part, frozen=True):
    code: ErrorCode
    message: Text


MAX_RESULT_DEPTH = 16


def check_free_form(value: Any, depth: int = 0) -> None:
    """Raise ValueError unless ``value`` is bounded as every typed field is: floats finite within
    MAX_FLOAT, integers within MAX_INT, nesting at most MAX_RESULT_DEPTH (its size is the
    payload's). For the free-form ``CommandReply.result``: a node's reply carried NaN, inf and
    2**64 - 1, which decoded and reached its readers (the coordinator's pre-flight took an ``ok``
    of NaN for true; attacker review, 2026-12-06)."""
    if depth > MAX_RESULT_DEPTH:
        raise ValueError(f"nested deeper than {MAX_RESULT_DEPTH}")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise ValueError(f"integer {value} out of [-2**53, 2**53]")
    elif isinstance(value, float):
        if not -MAX_FLOAT <= value <= MAX_FLOAT:  # False for NaN
            raise ValueError(f"float {value} not finite within 1e300")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_free_form(k, depth + 1)
            check_free_form(v, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_free_form(v, depth + 1)


class CommandReply(_Msg, tag="reply", frozen=True):
    request_id: Id
    ok: bool
    result: dict[str, Any] = {}  # free-form, bounded by check_free_form (on decode and when built)
    error: ErrorInfo | None = None
    ts: NonNeg = 0.0

    def __post_init__(self) -> None:
        check_free_form(self.result)  # a ValueError here is a ValidationError when decoding


# ---- events ------------------------------------------------------------------------------------


class Event(_Msg, tag="event", frozen=True):
    """One line of ``deepedge logs -f``."""

    ts: NonNeg
    source: ShortStr
    event: ShortStr  # dotted name, e.g. "plan.published"
    level: Literal["debug", "info", "warning", "error"] = "info"
    node: Id | None = None
    job: Id | None = None
    message: Text = ""
    fields: Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], ArgValue], msgspec.Meta(max_length=64)] = {}


class Cleared(msgspec.Struct, frozen=True):
    """Not on the wire: what an empty payload means on a retained topic (the retained message
    was cleared)."""


Message = (
    NodeBirth
    | NodeDeath
    | Telemetry
    | LatencyReport
    | Heartbeat
    | CoordinatorStatus
    | Plan
    | Progress
    | CommandRequest
    | CommandReply
    | Event
)

MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = (
    NodeBirth,
    NodeDeath,
    Telemetry,
    LatencyReport,
    Heartbeat,
    CoordinatorStatus,
    Plan,
    Progress,
    CommandRequest,
    CommandReply,
    Event,
)
