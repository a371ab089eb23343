"""The profiling space: what a design point asks for and what a run measured.

A design point names a training intensity, an LC request rate and a level in [0, 1] for each
stressor (CPU, cache, memory bandwidth, disk I/O, and the GPU where the board trains on one). A
run is the raw measurement of one point on a board: the levels *achieved* (verified from the
processes' CPU time, the machine's telemetry and the GPU stressor's own kernel times, not assumed
from what was asked), the LC app's request rate as it arrived, and its latency percentiles.
Models are fitted on what was achieved."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ALL_STRESSORS", "FEATURES", "GPU", "STRESSORS", "Point", "Run"]

STRESSORS = ("cpu", "cache", "mem", "io")  # every board's
GPU = "gpu"  # a board that trains on a GPU also has this one (deepedge.training.gpu_stress)
ALL_STRESSORS = (*STRESSORS, GPU)
# What a model predicts from: training intensity, LC request rate (req/s), the stressors'
# achieved levels, the GPU stressor's achieved level (0 where there is no GPU).
FEATURES = ("intensity", "rate", "cpu", "cache", "mem", "io", "gpu")


@dataclass(frozen=True)
class Point:
    """A design point: what a run asks the board to do."""

    intensity: float = 0.0
    rate: float = 20.0  # LC requests per second
    cpu: float = 0.0
    cache: float = 0.0
    mem: float = 0.0
    io: float = 0.0
    gpu: float = 0.0

    def stressors(self) -> dict[str, float]:
        return {s: getattr(self, s) for s in ALL_STRESSORS}

    def mix(self) -> str:
        """Which stressors are on, e.g. ``cpu+mem`` (``none``)."""
        return "+".join(s for s in ALL_STRESSORS if getattr(self, s) > 0) or "none"


@dataclass(frozen=True)
class Run:
    """One measured run. ``intensity``, ``rate`` and the stressor levels are what was achieved;
    ``cpu`` is the board's background CPU in cores (busy cores less the training's and the LC
    app's own: the cpu stressor, the other stressors' CPU and anything else running), measured as
    the coordinator measures it from telemetry: over the whole machine, or over an emulated
    board's CPUs (``node.emulate_cpus``); ``cpu_stress`` the cpu stressor's own level."""

    asked: Point
    intensity: float
    rate: float
    cpu: float
    cache: float
    mem: float
    io: float
    p95_ms: float
    p50_ms: float
    count: int
    seconds: float
    gpu: float = 0.0
    cpu_stress: float = 0.0
    machine_cpu: float = 0.0  # the board's CPU utilisation over the run (telemetry, as ``cpu``), 0..1
    disk_bps: float = 0.0  # the machine's disk bytes/s over the run (telemetry)
    # CPU pressure (deepedge.profiling._pressure): before training (the stressors and the LC app
    # alone, RunnerConfig.background_s; 0 if not measured) and over the run
    bg_psi: float = 0.0
    bg_runnable: float = 0.0
    psi: float = 0.0
    runnable: float = 0.0
    phase: str = "design"  # design | adaptive | heldout
    scenario: str = ""  # a held-out scenario's name
    ts: float = 0.0
    notes: tuple[str, ...] = field(default=())  # e.g. a stressor that did not reach its level

    def features(self, columns: tuple[str, ...] = FEATURES) -> list[float]:
        """The model's features (``FEATURES``), or other fields of the run by name."""
        return [float(getattr(self, f)) for f in columns]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        """A run from JSON (a knowledge-base export, a node's reply): every number finite and
        non-negative, strings and notes bounded; ValueError (or TypeError, KeyError) otherwise."""
        d = dict(d)
        asked = Point(**{k: _number(k, v) for k, v in dict(d.pop("asked")).items() if k in Point.__dataclass_fields__})
        known: dict[str, Any] = {}
        for k, v in d.items():
            f = cls.__dataclass_fields__.get(k)
            if f is None:
                continue
            if k == "notes":
                known[k] = tuple(str(n)[:200] for n in list(v)[:16])
            elif f.type in ("str", str):
                known[k] = str(v)[:100]
            elif f.type in ("int", int):
                known[k] = int(_number(k, v))
            else:
                known[k] = _number(k, v)
        return cls(asked=asked, **known)


def _number(name: str, value: Any) -> float:
    x = float(value)
    if not (math.isfinite(x) and 0 <= x <= 1e15):
        raise ValueError(f"{name} = {value!r}: not a finite non-negative number")
    return x
