"""A fitted model compiled for planning: the upper quantile of an LC app's p95 on a grid over
(training intensity, LC request rate, background CPU load), made monotone non-decreasing along
every axis, with multilinear interpolation. Plain Python and JSON: the coordinator plans with it
without scikit-learn, without refitting and without unpickling anything."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CapTable", "compile_table", "conformal_quantile"]

MAX_GRID = 64  # points per axis of a table read from a file or the knowledge base (each is a few)
# the largest latency (ms) and grid value a table holds or predicts: an imported table with 1e308
# at its last rate extrapolated to inf, and log(p95 / inf) failed every job on that device model
MAX_TABLE_VALUE = 1e7


def conformal_quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of ``values`` with split conformal prediction's finite-sample correction
    (rank ceil((n + 1) q), clamped to the sample); 0 for none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered), max(1, math.ceil((len(ordered) + 1) * q))) - 1])


def _locate(grid: Sequence[float], x: float) -> tuple[int, float]:
    """(i, t): x lies at grid[i] + t * (grid[i+1] - grid[i]); t > 1 beyond the last point
    (extrapolated along the last segment), clamped to 0 below the first."""
    if len(grid) == 1:
        return 0, 0.0
    i = min(max(0, bisect.bisect_right(grid, x) - 1), len(grid) - 2)
    t = (x - grid[i]) / (grid[i + 1] - grid[i])
    return i, max(0.0, t)


@dataclass(frozen=True)
class CapTable:
    app: str
    kind: str  # the surrogate it was compiled from
    q: float  # the quantile its values are (e.g. 0.95)
    intensity: tuple[float, ...]
    rate: tuple[float, ...]
    cpu: tuple[float, ...]
    upper: tuple[float, ...]  # ms, [i_u][i_rate][i_cpu] flattened, monotone along every axis
    median: tuple[float, ...]  # ms, the median prediction, same layout

    def _at(self, values: Sequence[float], u: float, rate: float, cpu: float) -> float:
        nr, nc = len(self.rate), len(self.cpu)
        (iu, tu), (ir, tr), (ic, tc) = (
            _locate(self.intensity, min(max(u, 0.0), 1.0)),
            _locate(self.rate, rate),
            _locate(self.cpu, cpu),
        )
        tu = min(tu, 1.0)  # intensity never goes beyond 1
        out = 0.0
        for du, dr, dc in itertools.product((0, 1), repeat=3):
            ju = min(iu + du, len(self.intensity) - 1)
            jr = min(ir + dr, nr - 1)
            jc = min(ic + dc, nc - 1)
            # beyond the grid (t > 1) the weights extrapolate along the last segment: the slope
            # there is >= 0 (monotone table), so a higher rate or load never predicts less
            w = (tu if du else 1 - tu) * (tr if dr else 1 - tr) * (tc if dc else 1 - tc)
            out += w * values[(ju * nr + jr) * nc + jc]
        return min(out, MAX_TABLE_VALUE) if out == out else MAX_TABLE_VALUE  # bounded, never NaN

    def upper_ms(self, u: float, rate: float, cpu: float = 0.0) -> float:
        return self._at(self.upper, u, rate, cpu)

    def median_ms(self, u: float, rate: float, cpu: float = 0.0) -> float:
        return self._at(self.median, u, rate, cpu)

    def curve(self, rate: float, cpu: float = 0.0, points: int = 21) -> tuple[float, ...]:
        """The upper p95 at ``points`` evenly spaced intensities 0 .. 1 (monotone)."""
        return tuple(self.upper_ms(k / (points - 1), rate, cpu) for k in range(points))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CapTable:
        t = cls(
            app=str(d["app"]),
            kind=str(d["kind"]),
            q=float(d["q"]),
            **{k: tuple(float(v) for v in d[k]) for k in ("intensity", "rate", "cpu", "upper", "median")},
        )
        grids = (t.intensity, t.rate, t.cpu)
        if any(len(g) > MAX_GRID for g in grids):
            raise ValueError(f"cap table of {t.app}: more than {MAX_GRID} points on an axis")
        n = len(t.intensity) * len(t.rate) * len(t.cpu)
        if not (len(t.upper) == len(t.median) == n and n > 0):
            raise ValueError(f"cap table of {t.app}: {len(t.upper)} values for a {n}-point grid")
        if not all(0 <= v <= MAX_TABLE_VALUE for g in (*grids, t.upper, t.median) for v in g):
            raise ValueError(f"cap table of {t.app}: a value is negative, not finite or over {MAX_TABLE_VALUE:g}")
        if any(list(g) != sorted(set(g)) for g in grids):
            raise ValueError(f"cap table of {t.app}: a grid is not strictly increasing")
        if not 0 < t.q < 1:
            raise ValueError(f"cap table of {t.app}: quantile {t.q} is not in (0, 1)")
        return t


def _monotone(values: list[float], shape: tuple[int, int, int]) -> list[float]:
    """A running maximum along each axis: the smallest monotone table above ``values``."""
    nu, nr, nc = shape
    v = list(values)

    def idx(a: int, b: int, c: int) -> int:
        return (a * nr + b) * nc + c

    for a, b, c in itertools.product(range(nu), range(nr), range(nc)):
        best = v[idx(a, b, c)]
        if a:
            best = max(best, v[idx(a - 1, b, c)])
        if b:
            best = max(best, v[idx(a, b - 1, c)])
        if c:
            best = max(best, v[idx(a, b, c - 1)])
        v[idx(a, b, c)] = best
    return v


def compile_table(
    app: str,
    kind: str,
    q: float,
    predict: Callable[[list[list[float]]], tuple[Sequence[float], Sequence[float]]],
    rate_range: tuple[float, float],
    cpu_max: float = 1.0,
    points: tuple[int, int, int] = (21, 6, 6),
) -> CapTable:
    """Tabulate ``predict(features) -> (upper, median)`` (features as in ``FEATURES``, with
    cache, memory and I/O stressors at 0 and no GPU: what the coordinator cannot observe on a
    board is left to its online residual correction) and make it monotone."""
    nu, nr, nc = points
    us = [round(k / (nu - 1), 4) for k in range(nu)]
    lo, hi = rate_range
    rates = [round(lo + (hi - lo) * k / max(1, nr - 1), 3) for k in range(nr)] if hi > lo else [lo]
    cpus = [round(cpu_max * k / max(1, nc - 1), 4) for k in range(nc)]
    feats = [[u, r, c, 0.0, 0.0, 0.0, 0.0] for u in us for r in rates for c in cpus]
    upper, median = predict(feats)
    shape = (len(us), len(rates), len(cpus))
    return CapTable(
        app,
        kind,
        q,
        tuple(us),
        tuple(rates),
        tuple(cpus),
        tuple(round(float(v), 4) for v in _monotone([float(x) for x in upper], shape)),
        tuple(round(float(v), 4) for v in _monotone([float(x) for x in median], shape)),
    )
