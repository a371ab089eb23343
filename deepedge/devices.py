"""Where a board trains and how the boards of a job talk: the decisions as pure functions of
numbers, so they are tested without a GPU. No torch and nothing of ``deepedge.training`` here:
the coordinator, the node daemon and the configuration import this module; the worker uses it
directly and passes in what its torch reports
(``torch.cuda.is_available()``, ``device_count()``, ``mem_get_info()``), the daemon what
``python -m deepedge.training.probe`` printed.

- :func:`check_device_setting`: is a ``training.device`` value well formed (the configuration's
  check; whether the board has that device is :func:`resolve_device`'s).
- :func:`resolve_device`: ``training.device`` (``auto | cpu | cuda | cuda:N``) → ``"cpu"`` or
  ``"cuda:N"``.
- :func:`precision_problem`: can a device of this kind train in ``training.precision``.
- :func:`choose_backend`: ``training.backend`` (``auto | gloo | nccl``) and the participants →
  ``gloo`` or ``nccl``, with the reason. NCCL only when every participant trains on a discrete
  CUDA GPU and its torch has NCCL; otherwise gloo, with a GPU's gradients staged in host memory.
  :func:`job_backend_setting` combines the participants' own settings into the job's.
- :func:`memory_fraction`: what to pass to ``torch.cuda.set_per_process_memory_fraction`` so
  the training worker's caching allocator leaves the LC apps their reserve.
- :func:`max_share`: how many samples one forward/backward pass may hold in the memory left.
- :func:`board_cpus`: which of this machine's CPUs a board is (``node.emulate_cpus``: the demo's
  boards share one machine, a vCPU each).
- :func:`read_meminfo`, :func:`jetson_memory`: a Jetson's GPU memory is the board's RAM
  (``/proc/meminfo``'s ``MemAvailable``, not ``cudaMemGetInfo``'s free, which leaves out memory
  the kernel could reclaim or swap out).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deepedge.errors import DeepEdgeError, ExitCode

__all__ = [
    "BACKEND_SETTINGS",
    "PRECISIONS",
    "BackendChoice",
    "DeviceError",
    "DeviceKind",
    "DeviceMemory",
    "Participant",
    "board_cpus",
    "check_device_setting",
    "choose_backend",
    "device_kind",
    "fit_memory",
    "jetson_memory",
    "job_backend_setting",
    "max_share",
    "memory_fraction",
    "precision_problem",
    "read_meminfo",
    "resolve_device",
]

DeviceKind = Literal["cpu", "cuda", "jetson"]  # cuda: a discrete GPU; jetson: an integrated one
DEVICE_SETTINGS = "auto, cpu, cuda or cuda:N"
BACKEND_SETTINGS = ("auto", "gloo", "nccl")
PRECISIONS = ("fp32", "fp16", "bf16")


class DeviceError(DeepEdgeError):
    """A ``training.device`` / ``training.backend`` / ``training.precision`` setting the board or
    the job cannot honour, or too little memory to train. A configuration error: restarting will
    not help (the worker reports ``failed`` and exits 2, like a ``TrainingError``)."""

    exit_code = ExitCode.CONFIG

    def __init__(self, message: str, *, setting: str, node: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
        self.node = node


_CUDA_N = re.compile(r"cuda:(\d+)")


def check_device_setting(setting: str) -> str:
    """The setting, normalised (``" CUDA:1 "`` → ``"cuda:1"``), or :class:`DeviceError` when it is
    none of ``auto``, ``cpu``, ``cuda``, ``cuda:N``. Says nothing about the board's devices."""
    value = setting.strip().lower()
    if value in ("auto", "cpu", "cuda") or _CUDA_N.fullmatch(value):
        return value
    raise DeviceError(f"training.device must be {DEVICE_SETTINGS}, not {setting!r}", setting="training.device")


def resolve_device(setting: str, cuda_available: bool, device_count: int) -> str:
    """``"cpu"`` or ``"cuda:N"`` for the board's ``training.device``. ``auto``: the first CUDA
    device when torch sees one, else the CPU. ``cuda``/``cuda:N`` where torch sees no such device
    raise :class:`DeviceError` (a board told to train on its GPU must not quietly use its CPU)."""
    value = setting.strip().lower()
    usable = device_count if cuda_available else 0
    if value == "cpu":
        return "cpu"
    if value == "auto":
        return "cuda:0" if usable > 0 else "cpu"
    if value == "cuda":
        value = "cuda:0"
    match = _CUDA_N.fullmatch(value)
    if match is None:
        raise DeviceError(f"training.device must be {DEVICE_SETTINGS}, not {setting!r}", setting="training.device")
    index = int(match.group(1))
    if usable == 0:
        raise DeviceError(
            f"training.device = {setting!r}, but this board's torch sees no CUDA device "
            "(torch.cuda.is_available() is false: a CPU-only torch wheel, or no driver)",
            setting="training.device",
        )
    if index >= usable:
        raise DeviceError(
            f"training.device = {setting!r}, but this board has {usable} CUDA device(s): cuda:0"
            + (f" to cuda:{usable - 1}" if usable > 1 else ""),
            setting="training.device",
        )
    return f"cuda:{index}"


def device_kind(device: str, integrated: bool) -> DeviceKind:
    """The kind of a resolved device: ``integrated`` is the probe's answer for a Jetson's GPU."""
    if device == "cpu":
        return "cpu"
    return "jetson" if integrated else "cuda"


@dataclass(frozen=True)
class Participant:
    node: str
    device: DeviceKind  # where it trains: the CPU, a discrete CUDA GPU, or a Jetson's integrated GPU
    nccl: bool  # its torch has NCCL (torch.distributed.is_nccl_available())


@dataclass(frozen=True)
class BackendChoice:
    backend: Literal["gloo", "nccl"]
    reason: str
    host_staged: bool  # gloo with a participant on a GPU: its gradients go through host memory


def precision_problem(precision: str, kind: DeviceKind, *, bf16: bool, fp16: bool) -> str | None:
    """Why a device of ``kind`` cannot train in ``precision`` (None: it can). ``bf16``/``fp16``:
    the probe's answer for the GPU (compute capability 8.0 / 5.3 and up). On the CPU torch's
    autocast has both (bf16 is fast only with AVX-512 BF16 or AMX, fp16 only with AVX-512 FP16;
    slow is allowed, the profile shows it)."""
    if precision not in PRECISIONS:
        return f"training.precision must be {', '.join(PRECISIONS)}, not {precision!r}"
    if precision == "fp32" or kind == "cpu":
        return None
    if precision == "bf16" and not bf16:
        return "training.precision = bf16, but this board's GPU has no bfloat16 (compute capability below 8.0)"
    if precision == "fp16" and not fp16:
        return "training.precision = fp16, but this board's GPU has no fast float16 (compute capability below 5.3)"
    return None


def job_backend_setting(settings: Sequence[str]) -> str:
    """The job's ``training.backend`` from its participants' own: ``gloo`` if any board says
    gloo (a board may keep NCCL out, e.g. where its NCCL is broken), else ``nccl`` if any says
    nccl, else ``auto``. The job then gets NCCL only where :func:`choose_backend` allows it."""
    values = {s.strip().lower() for s in settings}
    if "gloo" in values:
        return "gloo"
    return "nccl" if "nccl" in values else "auto"


def _why_not_nccl(p: Participant) -> str | None:
    if p.device == "cpu":
        return f"node {p.node!r} trains on its CPU"
    if p.device == "jetson":
        return f"node {p.node!r} trains on a Jetson's integrated GPU (NCCL is used only on discrete GPUs)"
    if not p.nccl:
        return f"node {p.node!r} has a torch without NCCL"
    return None


def choose_backend(setting: str, participants: Sequence[Participant]) -> BackendChoice:
    """The job's collective backend. ``auto``: NCCL when every participant trains on a discrete
    CUDA GPU and its torch has NCCL, otherwise gloo (a GPU's gradients staged in host memory).
    ``gloo``: always gloo. ``nccl``: NCCL, or :class:`DeviceError` naming the first node that
    cannot use it."""
    value = setting.strip().lower()
    if value not in BACKEND_SETTINGS:
        raise DeviceError(
            f"training.backend must be {', '.join(BACKEND_SETTINGS)}, not {setting!r}", setting="training.backend"
        )
    if not participants:
        raise ValueError("choose_backend needs at least one participant")
    on_gpu = any(p.device != "cpu" for p in participants)
    if value == "gloo":
        return BackendChoice("gloo", "training.backend = gloo", host_staged=on_gpu)
    blockers = [(p, why) for p in participants if (why := _why_not_nccl(p)) is not None]
    if value == "nccl":
        if blockers:
            p, why = blockers[0]
            raise DeviceError(f"training.backend = nccl, but {why}", setting="training.backend", node=p.node)
        return BackendChoice("nccl", "training.backend = nccl", host_staged=False)
    if blockers:
        more = f" (and {len(blockers) - 1} more)" if len(blockers) > 1 else ""
        return BackendChoice("gloo", f"auto: gloo, {blockers[0][1]}{more}", host_staged=on_gpu)
    return BackendChoice("nccl", "auto: nccl, every participant trains on a discrete GPU with NCCL", host_staged=False)


@dataclass(frozen=True)
class DeviceMemory:
    total: int  # bytes: torch.cuda.get_device_properties(d).total_memory (what the fraction multiplies)
    free: int  # bytes free for this worker: mem_get_info()[0] or NVML on a discrete GPU, MemAvailable on Jetson


def memory_fraction(memory: DeviceMemory, reserve: int, held: int = 0) -> float:
    """The fraction for ``torch.cuda.set_per_process_memory_fraction(fraction, device)``: torch
    lets this process's caching allocator hold at most ``fraction x total`` bytes (an
    allocation beyond raises out-of-memory in the worker instead of starving the LC apps). The
    allocator may hold what it ``held`` already (``torch.cuda.memory_reserved()``) plus what is
    free, less the ``reserve`` kept for the LC apps. Measure ``free`` after the worker's CUDA
    context exists: the context's own memory is outside the allocator and the fraction.
    :class:`DeviceError` when nothing is left above the reserve."""
    if memory.total <= 0:
        raise ValueError(f"total device memory must be positive, not {memory.total}")
    budget = min(memory.total, held + memory.free - reserve)
    if budget <= 0:
        raise DeviceError(
            f"no GPU memory for training: {_mib(memory.free)} free, {_mib(reserve)} reserved for the LC apps",
            setting="training.device",
        )
    return float(budget) / float(memory.total)


def max_share(free: int, reserve: int, fixed: int, per_sample: int) -> int:
    """Samples that one forward/backward pass may hold: ``(free - reserve - fixed) // per_sample``,
    at least 0. ``fixed``: the bytes that do not grow with the batch (parameters, gradients,
    optimizer state, workspace); ``per_sample``: the bytes each sample adds (activations kept for
    backward, its input). A worker that computes its whole share in one pass is bounded by this;
    one that accumulates over micro-batches needs it only for the micro-batch."""
    if per_sample <= 0:
        raise ValueError(f"bytes per sample must be positive, not {per_sample}")
    return max(0, (free - reserve - fixed) // per_sample)


def fit_memory(points: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """``(fixed, per_sample)`` bytes from peak memory measured at two or more batch sizes
    (``[(batch, peak bytes), ...]``, e.g. ``torch.cuda.max_memory_allocated()`` after a step):
    the least-squares line through them, rounded up, neither below 0."""
    if len({b for b, _ in points}) < 2:
        raise ValueError("fit_memory needs peaks at two or more batch sizes")
    n = len(points)
    mb = sum(b for b, _ in points) / n
    mp = sum(p for _, p in points) / n
    slope = sum((b - mb) * (p - mp) for b, p in points) / sum((b - mb) ** 2 for b, _ in points)
    per_sample = max(0, math.ceil(slope))
    return max(0, math.ceil(mp - per_sample * mb)), per_sample


def read_meminfo(path: str | Path = "/proc/meminfo") -> dict[str, int]:
    """``/proc/meminfo`` as bytes per field (``{"MemTotal": ..., "MemAvailable": ...}``)."""
    out: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if not fields or not fields[0].isdigit():
            continue
        out[name.strip()] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    return out


def jetson_memory(meminfo: Mapping[str, int], total: int | None = None) -> DeviceMemory:
    """A Jetson's GPU memory: the board's RAM, shared with the CPU and the LC apps.
    ``MemAvailable`` counts what the kernel can reclaim (page cache) for a new allocation;
    ``cudaMemGetInfo`` on Tegra leaves that out (and swap), so it under-reports what training
    could get. ``total``: torch's ``total_memory`` of the device when the worker has it (the
    fraction multiplies that); ``MemTotal`` otherwise."""
    try:
        return DeviceMemory(total=meminfo["MemTotal"] if total is None else total, free=meminfo["MemAvailable"])
    except KeyError as exc:
        raise ValueError(f"/proc/meminfo without {exc.args[0]} (a kernel older than 3.14?)") from None


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def board_cpus(emulate: Sequence[int], count: int) -> tuple[int, ...]:
    """The CPUs (indices into this machine's ``count``) a board's CPU figures cover: those of
    ``emulate`` (``node.emulate_cpus``) that exist, in order, each once; all of them when none
    is named or none exists (an emulated board is never a board of no CPU). The node daemon
    refuses to start on a configuration that names an absent CPU; this is the telemetry's
    fallback if one goes offline."""
    named = tuple(dict.fromkeys(c for c in emulate if 0 <= c < count))
    return named or tuple(range(max(0, count)))
