"""Where a job's training time went, from the timing in its accounting records: for each step,
the interval between two consecutive steps' ends is split into the slowest rank's compute, the
all-reduce itself, and the rest (ranks arriving at the all-reduce apart for reasons other than
their compute: their work between steps, sleeping past the pacing, waiting for a CPU)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from deepedge.training._accounting import read_records

__all__ = ["StepTiming", "step_timing"]


@dataclass(frozen=True)
class StepTiming:
    steps: int  # step intervals measured (consecutive steps of one plan generation)
    interval_s: float  # their sum
    compute_s: float  # sum of the slowest rank's compute (pacing included) in each
    allreduce_s: float  # sum of the all-reduce time of the last rank to arrive (the communication)
    rest_s: float  # interval - compute - all-reduce
    median_interval_ms: float
    median_compute_ms: float
    median_allreduce_ms: float
    median_rest_ms: float


def step_timing(output: str | Path) -> StepTiming | None:
    """None when the records carry no timing (written before it existed) or too few steps."""
    kept: dict[int, dict[str, dict[str, float]]] = {}  # step -> node -> its record (the counting generation)
    gens: dict[int, int] = {}
    for node, rows in read_records(output).items():
        for row in rows:
            step, gen = int(row["step"]), int(row["gen"])
            if "t" not in row or gen < gens.get(step, -1):
                continue
            if gen > gens.get(step, -1):
                gens[step], kept[step] = gen, {}
            kept[step][node] = row
    intervals, compute, allreduce = [], [], []
    for step in sorted(kept):
        before = kept.get(step - 1)
        if before is None or gens[step - 1] != gens[step] or set(before) != set(kept[step]):
            continue  # the first step of a generation: its interval holds the re-forming
        now = kept[step].values()
        intervals.append(max(r["t"] for r in now) - max(r["t"] for r in before.values()))
        compute.append(max(r["busy"] for r in now))
        allreduce.append(min(r["reduce"] for r in now))
    if len(intervals) < 2:
        return None
    rest = [i - c - a for i, c, a in zip(intervals, compute, allreduce, strict=True)]

    def ms(xs: list[float]) -> float:
        return round(statistics.median(xs) * 1000, 2)

    return StepTiming(
        steps=len(intervals),
        interval_s=round(sum(intervals), 3),
        compute_s=round(sum(compute), 3),
        allreduce_s=round(sum(allreduce), 3),
        rest_s=round(sum(rest), 3),
        median_interval_ms=ms(intervals),
        median_compute_ms=ms(compute),
        median_allreduce_ms=ms(allreduce),
        median_rest_ms=ms(rest),
    )
