"""Designed experiments (FECBench's DoE): a space-filling Latin hypercube over training
intensity, LC request rate and stressor levels, instead of the full grid; and an adaptive step
that adds the candidates where the fitted model is least certain.

Stressor *mixes* matter as much as levels: a design point switches on at most ``max_mix``
stressors (the others are 0), cycling through every mix of up to that many. Three by default:
designs of at most two left the models extrapolating to a machine with three or four loads at
once, and they erred most there (the chosen model's worst held-out scenario 12.9-22.0 % in three
bench runs with three, 17.1-29.7 % in four with two: a trend, docs/benchmarks/interference.md);
all four stressors together stay out of the design, so
``deepedge bench interference`` still tests a mix the model never saw. A board that trains on a
GPU has a fifth stressor, the GPU's (``Space.stressors``; ``deepedge.profiling._remote`` adds it
where the board's status lists it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from deepedge.profiling._space import ALL_STRESSORS, STRESSORS, Point

__all__ = ["Space", "adaptive_points", "latin_hypercube"]


@dataclass(frozen=True)
class Space:
    """The factors' ranges and the levels of the full grid the design is measured against."""

    rate_min: float = 10.0
    rate_max: float = 40.0
    intensity_levels: int = 5  # 0, 0.25, ... 1 in the full grid
    rate_levels: int = 3
    stressor_levels: int = 3  # 0, 0.5, 1
    max_mix: int = 3  # stressors on at once in a design point
    stressors: tuple[str, ...] = STRESSORS  # the board's: STRESSORS, and "gpu" where it trains on a GPU

    def __post_init__(self) -> None:
        kept = tuple(self.stressors)  # (a list, from a stored space's JSON)
        if not kept or len(set(kept)) != len(kept) or not set(kept) <= set(ALL_STRESSORS):
            raise ValueError(f"stressors {kept!r}: distinct names among {', '.join(ALL_STRESSORS)}")
        object.__setattr__(self, "stressors", kept)

    @property
    def full_grid(self) -> int:
        """Runs of the full factorial grid (what a design's budget is reported against)."""
        return int(self.intensity_levels * self.rate_levels * self.stressor_levels ** len(self.stressors))

    def point(self, unit: Sequence[float], mask: Sequence[bool]) -> Point:
        """A point from a vector in [0, 1]^(2 + stressors) (intensity, rate, each stressor's
        level); stressors off where ``mask`` is False. Intensities and levels are rounded to 0.05
        (what a throttle can hold)."""
        u, r, *levels = unit

        def q(x: float) -> float:
            return round(round(float(x) / 0.05) * 0.05, 2)

        rate = round(self.rate_min + float(r) * (self.rate_max - self.rate_min), 1)
        stress = {s: (q(v) if on else 0.0) for s, v, on in zip(self.stressors, levels, mask, strict=True)}
        return Point(intensity=q(u), rate=rate, **stress)


def _masks(n: int, k: int, max_mix: int, rng: np.random.Generator) -> list[tuple[bool, ...]]:
    """n masks of ``k`` stressors cycling through every mix of 0..max_mix of them, in a shuffled
    order (so small designs still see each stressor alone and in pairs)."""
    mixes: list[tuple[bool, ...]] = []
    for size in range(max_mix + 1):
        for combo in _combinations(range(k), size):
            mixes.append(tuple(i in combo for i in range(k)))
    order = list(rng.permutation(len(mixes)))
    out: list[tuple[bool, ...]] = []
    while len(out) < n:
        out.extend(mixes[i] for i in order)
        order = list(rng.permutation(len(mixes)))
    return out[:n]


def _combinations(items: range, size: int) -> list[tuple[int, ...]]:
    from itertools import combinations

    return list(combinations(items, size))


def latin_hypercube(space: Space, n: int, seed: int = 0) -> list[Point]:
    """``n`` design points: a Latin hypercube (scipy.stats.qmc, optimised for space filling) over
    intensity, rate and stressor levels, each point with a stressor mix of at most
    ``space.max_mix`` stressors."""
    from scipy.stats import qmc

    if n < 1:
        return []
    k = len(space.stressors)
    sampler = qmc.LatinHypercube(d=2 + k, seed=seed, optimization="random-cd" if n > 1 else None)
    unit = sampler.random(n)
    rng = np.random.default_rng(seed)
    return [space.point(row, mask) for row, mask in zip(unit, _masks(n, k, space.max_mix, rng), strict=True)]


def adaptive_points(
    space: Space,
    uncertainty: Callable[[list[Point]], Sequence[float]],
    k: int,
    taken: Sequence[Point] = (),
    candidates: int = 400,
    seed: int = 1,
) -> list[Point]:
    """The ``k`` candidates (a fresh Latin hypercube of ``candidates`` points) where
    ``uncertainty`` (e.g. the width of the model's prediction interval) is largest, skipping
    points already measured and spreading them out (no two within 0.1 in intensity and rate of
    each other with the same mix)."""
    pool = [p for p in latin_hypercube(space, candidates, seed) if p not in set(taken)]
    if not pool or k < 1:
        return []
    scores = list(uncertainty(pool))
    order = sorted(range(len(pool)), key=lambda i: -scores[i] if math.isfinite(scores[i]) else 0.0)
    out: list[Point] = []
    for i in order:
        p = pool[i]
        span = space.rate_max - space.rate_min or 1.0
        if any(
            q.mix() == p.mix() and abs(q.intensity - p.intensity) < 0.1 and abs(q.rate - p.rate) / span < 0.1
            for q in out
        ):
            continue
        out.append(p)
        if len(out) == k:
            break
    return out
